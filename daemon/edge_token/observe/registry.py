"""The process-wide metric families (build info, JWKS fetches, the renewal-duration histogram, config reloads) on a
prometheus-client CollectorRegistry, which renders them.

The daemon's registry is built at its first scrape, not at start: importing prometheus-client (with the
http.server and wsgiref it pulls in, ~15 ms) and defining its families is work no request has asked for while a
start's profiles become ready. Until then the values wait here as plain numbers (JWKS URLs come from the config,
results and reload outcomes from fixed sets) and are replayed into it when it is built, so the first scrape shows
exactly what a registry built at start would have (tests/test_metrics_registry.py compares the two byte for byte).

The renewal-duration histogram is counted here, always: a bucket count and a sum, rendered by prometheus-client's
own histogram family at each scrape (`_DurationCollector`). Its `Histogram.observe` was five Python calls and two
locks per renewal, on code that is cold by the next renewal; the exposition is the same, byte for byte (tested).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from edge_token import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION = ("edge_token_refresh_duration_seconds", "Duration of renewal attempts (all profiles).")
_BOUNDS = (*DURATION_BUCKETS, math.inf)  # a duration counts in the first bucket it fits (`le`), as Histogram does


class _DurationCollector:
    """The duration histogram as a prometheus-client collector, from the counts `ProcessFamilies` keeps."""

    def __init__(self, counts: list[int], total: Callable[[], float]) -> None:
        self._counts, self._total = counts, total

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        family, seen, buckets = HistogramMetricFamily(*DURATION), 0, []
        for bound, count in zip(_BOUNDS, self._counts, strict=True):
            seen += count
            buckets.append((floatToGoString(bound), seen))  # type: ignore[no-untyped-call]
        family.add_metric([], buckets, self._total())
        yield family

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        yield HistogramMetricFamily(*DURATION)


class _Families:
    """The process-wide families on one registry, and prometheus-client's renderers (imported with them)."""

    def __init__(self, registry: CollectorRegistry, durations: _DurationCollector) -> None:
        from prometheus_client import Counter, Gauge, disable_created_metrics
        from prometheus_client import generate_latest as text_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST as TEXT_CONTENT_TYPE
        from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

        # `*_created` samples double every counter and histogram on each scrape and no rule uses them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.text_latest: Callable[[CollectorRegistry], bytes] = text_latest
        self.openmetrics_latest: Callable[[CollectorRegistry], bytes] = openmetrics_latest
        self.content_types = {False: TEXT_CONTENT_TYPE, True: OPENMETRICS_CONTENT_TYPE}
        Gauge("edge_token_build_info", "Build information (value 1).", ("version",), registry=registry).labels(
            __version__
        ).set(1)
        registry.register(durations)  # a collector by shape (collect, describe)
        self.jwks_fetches = Counter(
            "edge_token_jwks_fetches", "JWKS fetches by result.", ("url", "result"), registry=registry
        )
        self.jwks_keys = Gauge("edge_token_jwks_keys", "Keys loaded from the JWKS.", ("url",), registry=registry)
        self.reloads = Counter(
            "edge_token_config_reload", "SIGHUP reloads by result (success, failure).", ("result",), registry=registry
        )
        self.reload_ok = Gauge(
            "edge_token_config_last_reload_successful",
            "1 if the last reload applied (or none was tried), 0 if the file was refused and the old config runs.",
            registry=registry,
        )
        self.reload_ok.set(1)
        self.reload_at = Gauge(
            "edge_token_config_last_reload_timestamp_seconds", "When the last reload was tried.", registry=registry
        )


class ProcessFamilies:
    """The process-wide families: on `registry` at once, or on a registry of their own built when first needed."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._families: _Families | None = None
        self._duration_counts = [0] * len(_BOUNDS)  # the duration histogram, here before and after the registry
        self._duration_sum = 0.0
        # what the registry will be told once it exists
        self._jwks_fetches: dict[tuple[str, str], int] = {}
        self._jwks_keys: dict[str, int] = {}
        self._reloads: dict[str, int] = {}
        self._reload: tuple[bool, float] | None = None  # the last reload: applied?, when
        if registry is not None:
            self._build(registry)

    @property
    def built(self) -> bool:
        """Does the registry exist yet?"""
        return self._families is not None

    @property
    def registry(self) -> CollectorRegistry:
        """The registry (built now if it was not yet)."""
        return self._built().registry

    def renewal_took(self, seconds: float) -> None:
        """One renewal attempt's duration (the histogram)."""
        self._duration_counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self._duration_sum += seconds

    def jwks_fetched(self, url: str, result: str, keys: int) -> None:
        """One JWKS fetch and the number of keys it left loaded."""
        if self._families is not None:
            self._families.jwks_fetches.labels(url, result).inc()
            self._families.jwks_keys.labels(url).set(keys)
        else:
            self._jwks_fetches[url, result] = self._jwks_fetches.get((url, result), 0) + 1
            self._jwks_keys[url] = keys

    def reloaded(self, ok: bool, at: float) -> None:
        """One SIGHUP reload: applied or refused, and when."""
        result = "success" if ok else "failure"
        if self._families is not None:
            self._families.reloads.labels(result).inc()
            self._families.reload_ok.set(1 if ok else 0)
            self._families.reload_at.set(at)
        else:
            self._reloads[result] = self._reloads.get(result, 0) + 1
            self._reload = (ok, at)

    def render(self, openmetrics: bool) -> bytes:
        """The families in text or OpenMetrics format (without OpenMetrics' final `# EOF`: more families follow)."""
        families = self._built()
        if openmetrics:
            return families.openmetrics_latest(families.registry).removesuffix(b"# EOF\n")
        return families.text_latest(families.registry)

    def content_type(self, openmetrics: bool) -> str:
        """prometheus-client's Content-Type for the format."""
        return self._built().content_types[openmetrics]

    def _built(self) -> _Families:
        families = self._families
        if families is None:
            from prometheus_client import CollectorRegistry

            families = self._build(CollectorRegistry())
        return families

    def _build(self, registry: CollectorRegistry) -> _Families:
        """Define the families on `registry` and tell them what happened so far."""
        families = self._families = _Families(registry, _DurationCollector(self._duration_counts, self._total))
        for (url, result), count in self._jwks_fetches.items():
            families.jwks_fetches.labels(url, result).inc(count)
        for url, keys in self._jwks_keys.items():
            families.jwks_keys.labels(url).set(keys)
        for result, count in self._reloads.items():
            families.reloads.labels(result).inc(count)
        if self._reload is not None:
            families.reload_ok.set(1 if self._reload[0] else 0)
            families.reload_at.set(self._reload[1])
        self._jwks_fetches, self._jwks_keys, self._reloads = {}, {}, {}
        return families

    def _total(self) -> float:
        return self._duration_sum
