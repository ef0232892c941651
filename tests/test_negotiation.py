"""/metrics honours what the scraper accepts, quality values included: the acceptable format with the highest q
wins (`q=0` refuses a format or an encoding), and a header that accepts neither format gets classic text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from edge_token.observe.metrics import Metrics

PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "encoding", "openmetrics", "gzip"),
    [
        ("", "", False, False),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", "gzip", True, True),
        ("application/openmetrics-text;q=0, text/plain", "gzip;q=0", False, False),
        ("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0.7", "deflate, gzip;q=0.3", True, True),
        ("application/openmetrics-text;q=0.5, text/plain;q=0.9", "", False, False),  # preference order, not q > 0
        ("Application/OpenMetrics-Text", "GZIP", True, True),
        ("text/plain", "br, identity", False, False),
        ("*/*", "", False, False),  # curl: text
        ("text/plain, application/openmetrics-text", "", True, False),  # a tie: OpenMetrics, as prometheus_client
        ("application/*;q=0.8, text/*;q=0.3", "", True, False),
        ("application/openmetrics-text;q=0.9, */*", "", False, False),  # */* gives text q=1
        ("application/json", "", False, False),  # nothing we serve: the last resort, text
        (PROMETHEUS_2, "gzip", True, True),
        (PROMETHEUS_3, "gzip", True, True),
    ],
)
def test_metrics_negotiation(accept: str, encoding: str, openmetrics: bool, gzip: bool) -> None:
    _, headers = Metrics(CollectorRegistry()).exposition(accept, encoding)
    assert ("openmetrics" in headers["Content-Type"]) is openmetrics
    assert (headers.get("Content-Encoding") == "gzip") is gzip


NAMES = ["application/openmetrics-text", "text/plain", "text/*", "application/*", "*/*", "application/json",
         "text/html", "application/vnd.google.protobuf", "image/*"]  # fmt: skip
VALID_Q = st.sampled_from(["1", "1.", "1.0", "1.00", "1.000"]) | st.builds(
    lambda dot, digits: "0" + ("." + digits if dot else ""), st.booleans(), st.text("0123456789", max_size=3)
)
INVALID_Q = st.sampled_from(["", "abc", "2", "-1", "nan", "inf", "1.5", "0.0001", "1e-1", ".5", "1.001"])
OWS = st.sampled_from(["", " ", "  ", "\t"])


def mixed_case(text: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(text, upper, strict=True))
    )


@st.composite
def media_range(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """(the text of one range, its lower-case name, its q text or None when it has no q)."""
    name = draw(st.sampled_from(NAMES))
    params = draw(st.lists(st.sampled_from(["version=0.0.4", "version=1.0.0", "charset=utf-8", "escaping=allow-utf-8",
                                            "proto=io.prometheus.client.MetricFamily", "x=y"]), max_size=2))  # fmt: skip
    quality = draw(st.none() | VALID_Q | INVALID_Q)
    key = draw(st.sampled_from(["q", "Q"]))
    if quality is not None:
        params.insert(draw(st.integers(0, len(params))), f"{key}={quality}")
    text = draw(mixed_case(name))
    for param in params:
        text += draw(OWS) + ";" + draw(OWS) + param
    return draw(OWS) + text + draw(OWS), name, quality


def q_of(quality: str | None) -> float:
    """RFC 9110 qvalue: 0 to 1 with at most three decimals; anything else refuses the range."""
    if quality is None:
        return 1.0
    whole, _, decimals = quality.partition(".")
    if len(decimals) > 3 or not (decimals == "" or decimals.isdigit()):
        return 0.0
    if whole == "0":
        return float(quality)
    return 1.0 if whole == "1" and decimals.strip("0") == "" else 0.0


def deciding(ranges: list[tuple[str, str, str | None]], served: str) -> tuple[int, float] | None:
    """(specificity, q) of the range that decides `served`'s quality: the most specific match, its best q."""
    kinds = {served: 2, served.split("/")[0] + "/*": 1, "*/*": 0}
    matches = [(kinds[name], q_of(quality)) for _, name, quality in ranges if name in kinds]
    return max(matches) if matches else None


@given(st.lists(media_range(), max_size=6), st.sampled_from([",", ", ", " ,", ",\t"]))
def test_the_format_served_is_an_acceptable_one_with_the_highest_quality(
    ranges: list[tuple[str, str, str | None]], comma: str
) -> None:
    """For any Accept header: never raises; if either format is acceptable (q > 0) the one served has the highest
    q (a tie goes to OpenMetrics only when the header names it); if neither is, classic text."""
    header = comma.join(text for text, _, _ in ranges)
    _, headers = Metrics(CollectorRegistry()).exposition(header, "")
    chose = "openmetrics" in headers["Content-Type"]
    om, text = deciding(ranges, "application/openmetrics-text"), deciding(ranges, "text/plain")
    om_q, text_q = om[1] if om else 0.0, text[1] if text else 0.0
    if om_q <= 0:
        assert not chose, (header, om, text)
    elif om_q != text_q:
        assert chose is (om_q > text_q), (header, om, text)
    else:
        assert om is not None and text is not None
        assert chose is (om[0] > text[0] or om[0] == 2), (header, om, text)
