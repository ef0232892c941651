"""/metrics honours what the scraper accepts, quality values included: `q=0` refuses a format or an encoding."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from edge_token.observe.metrics import Metrics


@pytest.mark.parametrize(
    ("accept", "encoding", "openmetrics", "gzip"),
    [
        ("", "", False, False),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", "gzip", True, True),
        ("application/openmetrics-text;q=0, text/plain", "gzip;q=0", False, False),
        ("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0.7", "deflate, gzip;q=0.3", True, True),
        ("Application/OpenMetrics-Text", "GZIP", True, True),
        ("text/plain", "br, identity", False, False),
    ],
)
def test_metrics_negotiation(accept: str, encoding: str, openmetrics: bool, gzip: bool) -> None:
    _, headers = Metrics(CollectorRegistry()).exposition(accept, encoding)
    assert ("openmetrics" in headers["Content-Type"]) is openmetrics
    assert (headers.get("Content-Encoding") == "gzip") is gzip
