"""Which exposition format a /metrics scrape gets: the one its `Accept` header prefers.

Prometheus's scrape-protocol negotiation: serve the acceptable format with the highest quality value; when the
header accepts neither format we serve, fall back to the classic text format, never 406 (a scraper with an odd
header still gets metrics). Prometheus itself lists every format with a distinct `q`, so ties come only from
other clients: between equal q, a format the header names beats one it reaches through `text/*` or `*/*`
(`curl`'s `*/*` gets text), and between two named ones OpenMetrics wins, as prometheus_client's own
`choose_encoder` does (it picks OpenMetrics whenever it is listed). Version parameters are not matched: whoever
asks for either type gets the version prometheus-client renders.
"""

from __future__ import annotations

import re

OPENMETRICS, TEXT = "application/openmetrics-text", "text/plain"
# RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ); anything else refuses the range
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


def prefers_openmetrics(accept: str) -> bool:
    """True if `accept` prefers OpenMetrics to the classic text format (module docstring: q, then how
    specifically the header names the format, then OpenMetrics). The q of a format is that of the most specific
    range matching it (its own name, then `type/*`, then `*/*`; the highest q among equally specific ones)."""
    best: dict[str, tuple[int, float]] = {}  # format -> (specificity, q) of the range that decides its q
    for item in accept.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        name, quality = name.lower(), 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                quality = float(value) if _QVALUE.match(value) else 0.0
        for served in (OPENMETRICS, TEXT):
            specificity = {served: 2, served.split("/")[0] + "/*": 1, "*/*": 0}.get(name)
            if specificity is not None and (specificity, quality) > best.get(served, (-1, 0.0)):
                best[served] = (specificity, quality)
    openmetrics, text = best.get(OPENMETRICS, (-1, 0.0)), best.get(TEXT, (-1, 0.0))
    if openmetrics[1] <= 0:
        return False  # refused or not named: text, whatever else the header says (the last resort)
    ours, theirs = (openmetrics[1], openmetrics[0]), (text[1], text[0])
    return ours > theirs or (ours == theirs and openmetrics[0] == 2)  # a tie goes to OpenMetrics only if named
