"""Every Prometheus metric, defined once, fed from renewal outcomes.

Process-wide metrics (build info, JWKS fetches, the renewal-duration histogram) live on an injected
prometheus-client CollectorRegistry, which renders them. Per-profile series are kept in a plain table and
rendered here: prometheus-client spends ~25 us per sample, which made a 1,000-profile scrape take over half a
second. Rendering is incremental, so a scrape costs what serving a static body of its size costs:
- a profile's sample lines (bytes, per family) are rendered when that profile's series change, right then (the
  cost is spread over the outcomes, ~30 us each, instead of one long stall of the event loop at the next scrape:
  ~0.3 s after a fill of 10,000 profiles);
- each family's samples are the concatenation of those cached lines, and the whole per-profile section (per
  format) is kept until any profile changes: a scrape with no renewal since the last one sends cached bytes;
- with gzip, the section is compressed once per change and the scrape compresses only the small rest (the
  registry's families and the counters read at every scrape), continuing from a copy of the compressor's state.
Every update goes through a method here that re-renders the profile, so a scrape right after an outcome shows it
(counters are exact); the registry's families and the external counters are rendered at every scrape.

Labels are bounded: profile and sink come from the config, `result`/`reason`/`state` from fixed sets, `url` is a
configured JWKS URL. No label or value can carry a token or a secret.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import generate_latest as text_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST as TEXT_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from edge_token import __version__
from edge_token.core.errors import VerificationError
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.core.ratelimit import RateLimit

STATES = ("fresh", "stale", "expired", "credentials_rejected")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# (name, type, help) of the per-profile families, in exposition order
GAUGES = (
    ("edge_token_token_expiry_timestamp_seconds", "Expiry (exp claim) of the held token.", "expiry"),
    ("edge_token_token_issued_timestamp_seconds", "When the held token was received or issued.", "issued"),
    ("edge_token_token_lifetime_seconds", "Lifetime of the held token.", "lifetime"),
    ("edge_token_next_refresh_timestamp_seconds", "Next scheduled renewal attempt.", "next_refresh"),
    ("edge_token_last_success_timestamp_seconds", "Last successful renewal or adoption.", "last_success"),
)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class SinkSeries:
    labels: str
    writes: dict[str, float] = field(default_factory=dict)  # result -> count
    last_success: float | None = None
    healthy: float | None = None


@dataclass(slots=True)
class ProfileSeries:
    name: str
    labels: str  # 'profile="x"', escaped once
    gauges: dict[str, float] = field(default_factory=dict)
    state: str | None = None
    refresh: dict[str, float] = field(default_factory=dict)  # result -> count
    requests: float = 0.0
    verification_failures: dict[str, float] = field(default_factory=dict)
    sinks: dict[str, SinkSeries] = field(default_factory=dict)
    fleet_role: str | None = None
    fleet_events: dict[str, float] = field(default_factory=dict)  # published / received / rejected
    leadership_changes: float = 0.0
    ratelimit: dict[str, float] = field(default_factory=dict)  # remaining / reset, as the provider last said
    quota: dict[str, float] = field(default_factory=dict)  # Auth0 quota bucket -> remaining


class Metrics:
    """The daemon's metrics. One instance per registry (tests use a fresh registry each)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # `*_created` samples double every counter and histogram on each scrape and no rule uses them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        Gauge("edge_token_build_info", "Build information (value 1).", ("version",), registry=registry).labels(
            __version__
        ).set(1)
        self.duration = Histogram(
            "edge_token_refresh_duration_seconds", "Duration of renewal attempts (all profiles).",
            buckets=DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
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
        self.profiles: dict[str, ProfileSeries] = {}
        self._external: list[tuple[str, str, Callable[[], dict[str, int]]]] = []
        # the render cache (see the module docstring)
        self._samples: dict[str, dict[str, bytes]] = {name: {} for name, _kind, _doc in FAMILIES}  # family->profile
        self._sections: dict[bool, bytes] = {}  # openmetrics? -> every per-profile family, headers included
        self._compressed: dict[bool, tuple[bytes, bytes, zlib._Compress]] = {}  # section, its gzip, compressor

    def _changed(self, series: ProfileSeries) -> None:
        """Every update of a profile's series ends here: its lines are rendered now, the assembled answer dropped."""
        lines = _profile_lines(series)
        for family, rows in self._samples.items():
            line = lines.get(family)
            if line:
                rows[series.name] = line
            else:
                rows.pop(series.name, None)
        self._sections.clear()
        self._compressed.clear()

    def _profile(self, name: str) -> ProfileSeries:
        series = self.profiles.get(name)
        if series is None:
            series = self.profiles[name] = ProfileSeries(name, f'profile="{escape(name)}"')
        return series

    def observe(self, outcome: RenewalOutcome, state: str, next_attempt: float | None) -> None:
        """Record one renewal outcome (called by the daemon after every cycle)."""
        series = self._profile(outcome.profile)
        label = outcome.label
        series.refresh[label] = series.refresh.get(label, 0.0) + 1
        self.duration.observe(outcome.duration)
        if outcome.requested:
            series.requests += 1
        if isinstance(outcome.error, VerificationError):
            reason = outcome.error.reason
            series.verification_failures[reason] = series.verification_failures.get(reason, 0.0) + 1
        token, gauges = outcome.token, series.gauges
        if token is not None:
            gauges.update(expiry=token.exp, issued=token.received_at, lifetime=token.lifetime)
        finished = outcome.started_at + outcome.duration
        if outcome.error is None and outcome.result in (Result.NEW_TOKEN, Result.ADOPTED, Result.RECEIVED):
            gauges["last_success"] = finished
        if next_attempt is not None:
            gauges["next_refresh"] = next_attempt
        series.state = state
        if outcome.rate_limit is not None:
            _rate_limit(series, outcome.rate_limit)
        for name, ok in [(n, True) for n in outcome.sinks_written] + [(n, False) for n in outcome.sink_errors]:
            sink = series.sinks.get(name)
            if sink is None:
                sink = series.sinks[name] = SinkSeries(f'{series.labels},sink="{escape(name)}"')
            result = "success" if ok else "failure"
            sink.writes[result] = sink.writes.get(result, 0.0) + 1
            sink.healthy = 1.0 if ok else 0.0
            if ok:
                sink.last_success = finished
        self._changed(series)

    def fleet_role(self, profile: str, role: str) -> None:
        series = self._profile(profile)
        if series.fleet_role is not None and "leader" in (series.fleet_role, role) and role != series.fleet_role:
            series.leadership_changes += 1
        series.fleet_role = role
        self._changed(series)

    def fleet_event(self, profile: str, event: str) -> None:
        series = self._profile(profile)
        series.fleet_events[event] = series.fleet_events.get(event, 0.0) + 1
        self._changed(series)

    def jwks_fetched(self, url: str, result: str, keys: int) -> None:
        self.jwks_fetches.labels(url, result).inc()
        self.jwks_keys.labels(url).set(keys)

    def counters(self, name: str, doc: str, read: Callable[[], dict[str, int]]) -> None:
        """A counter family kept by another part (notifier, HTTP limiter, etcd client): read at every scrape.
        `read` returns {value of the `result` label: count}; the key "" means a single sample without labels."""
        self._external.append((name, doc, read))

    def reloaded(self, ok: bool, at: float) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.reload_ok.set(1 if ok else 0)
        self.reload_at.set(at)

    def forget(self, profile: str) -> None:
        """Drop a removed profile's series so dashboards do not show ghosts."""
        if self.profiles.pop(profile, None) is not None:
            for rows in self._samples.values():
                rows.pop(profile, None)
            self._sections.clear()
            self._compressed.clear()

    # ---- exposition ------------------------------------------------------------------------------------
    def render_profiles(self, openmetrics: bool) -> bytes:
        """The per-profile families in text 0.0.4 or OpenMetrics format, from the cache (module docstring)."""
        section = self._sections.get(openmetrics)
        if section is None:
            headers = HEADERS[openmetrics]
            parts: list[bytes] = []
            for name, _kind, _doc in FAMILIES:
                rows = self._samples[name]
                if rows:
                    parts += (headers[name], b"".join(rows.values()))
            section = self._sections[openmetrics] = b"".join(parts)
        return section

    def _rest(self, openmetrics: bool) -> bytes:
        """What is rendered at every scrape: the registry's families and the counters kept by other parts."""
        if openmetrics:
            head: bytes = openmetrics_latest(self.registry).removesuffix(b"# EOF\n")  # type: ignore[no-untyped-call]
        else:
            head = text_latest(self.registry)
        out = [head]
        for name, doc, read in self._external:
            shown = name.removesuffix("_total") if openmetrics else name
            rows = [(f'{{result="{key}"}}' if key else "", float(value)) for key, value in read().items()]
            lines = "".join(f"{name}{labels} {_number(value)}\n" for labels, value in rows)
            out.append(f"# HELP {shown} {doc}\n# TYPE {shown} counter\n{lines}".encode())
        if openmetrics:
            out.append(b"# EOF\n")
        return b"".join(out)

    def _gzip(self, openmetrics: bool, section: bytes, rest: bytes) -> list[bytes]:
        """gzip of section + rest, as two chunks; the section's compressed bytes and compressor state are kept while
        it is unchanged, so a scrape compresses only `rest` (one gzip member: every client can read it)."""
        cached = self._compressed.get(openmetrics)  # cleared with the section by every change
        if cached is None or cached[0] is not section:
            compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip header and trailer
            # a sync flush ends the section's output on a byte boundary, so the rest can follow from a copy
            head = compressor.compress(section) + compressor.flush(zlib.Z_SYNC_FLUSH)
            cached = self._compressed[openmetrics] = (section, head, compressor)
        compressor = cached[2].copy()
        return [cached[1], compressor.compress(rest) + compressor.flush()]

    def exposition_parts(self, accept: str, accept_encoding: str) -> tuple[list[bytes], dict[str, str]]:
        """The body of GET /metrics as chunks to send one after the other, and its headers: OpenMetrics when asked
        for, else text 0.0.4; gzip when accepted. The big first chunk is the cached object itself: a fresh 1 MiB
        copy per scrape cost more than everything else in a scrape (page faults and the copy)."""
        openmetrics = "application/openmetrics-text" in accept
        headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
        section, rest = self.render_profiles(openmetrics), self._rest(openmetrics)
        if "gzip" in accept_encoding:
            headers["Content-Encoding"] = "gzip"
            return self._gzip(openmetrics, section, rest), headers
        return [section, rest], headers

    def exposition(self, accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        """(body, headers) for GET /metrics, in one piece (see `exposition_parts`)."""
        parts, headers = self.exposition_parts(accept, accept_encoding)
        return b"".join(parts), headers


FAMILIES = (
    *((name, "gauge", doc) for name, doc, _key in GAUGES),
    ("edge_token_token_state", "gauge", "1 for the profile's current state, 0 for the others."),
    ("edge_token_refresh_total", "counter", "Renewal attempts by result (success, adopted, received, "
     "transient, rejected, invalid_token, protocol, jwks, config, sink, internal)."),
    ("edge_token_token_requests_total", "counter", "Token requests sent to the provider (quota use)."),
    ("edge_token_verification_failures_total", "counter", "Tokens refused by verification, by rule."),
    ("edge_token_sink_writes_total", "counter", "Sink writes by result."),
    ("edge_token_sink_last_success_timestamp_seconds", "gauge",
     "Last time the sink was confirmed to hold the current token."),
    ("edge_token_sink_healthy", "gauge", "1 if the sink holds the profile's current token."),
    ("edge_token_fleet_role", "gauge", "Fleet mode: 1 for this daemon's role for the profile."),
    ("edge_token_fleet_leadership_changes_total", "counter",
     "Fleet mode: times this daemon became or stopped being the profile's leader."),
    ("edge_token_fleet_tokens_total", "counter",
     "Fleet mode: tokens published to, received from and rejected from etcd."),
    ("edge_token_provider_ratelimit_remaining", "gauge",
     "Token requests left in the provider's rate-limit window (x-ratelimit-remaining, last answer)."),
    ("edge_token_provider_ratelimit_reset_timestamp_seconds", "gauge",
     "When the provider's rate-limit window resets (x-ratelimit-reset, last answer)."),
    ("edge_token_provider_quota_remaining", "gauge",
     "Tokens left in the provider's quota bucket (Auth0-Client-Quota-Limit, last answer)."),
)  # fmt: skip


def _header(name: str, kind: str, doc: str, openmetrics: bool) -> bytes:
    """A family's HELP and TYPE lines (OpenMetrics names a counter family without its `_total`)."""
    shown = name.removesuffix("_total") if openmetrics and kind == "counter" else name
    return f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n".encode()


HEADERS = {om: {name: _header(name, kind, doc, om) for name, kind, doc in FAMILIES} for om in (False, True)}


def _rate_limit(series: ProfileSeries, limits: RateLimit) -> None:
    """Keep what the provider said last; a figure an answer leaves out keeps its previous value (Auth0 sends the
    quota header only in fine-grained quota mode, the rate-limit headers on most answers)."""
    if limits.remaining is not None:
        series.ratelimit["remaining"] = float(limits.remaining)
    if limits.reset_at is not None:
        series.ratelimit["reset"] = limits.reset_at
    if limits.quotas:
        series.quota = {quota.bucket: float(quota.remaining) for quota in limits.quotas}


def _number(value: float) -> str:
    """A sample value as both formats spell it (Python's repr, except the infinities and NaN)."""
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _profile_lines(p: ProfileSeries) -> dict[str, bytes]:
    """One profile's sample lines, per family (the same for text 0.0.4 and OpenMetrics)."""
    sinks = list(p.sinks.values())
    roles = ("leader", "follower", "standalone")
    samples: dict[str, list[tuple[str, float]]] = {
        **{name: [(p.labels, p.gauges[key])] for name, _doc, key in GAUGES if key in p.gauges},
        "edge_token_token_state": [(f'{p.labels},state="{s}"', float(s == p.state)) for s in STATES] if p.state else [],
        "edge_token_refresh_total": [(f'{p.labels},result="{r}"', n) for r, n in p.refresh.items()],
        "edge_token_token_requests_total": [(p.labels, p.requests)],
        "edge_token_verification_failures_total": [
            (f'{p.labels},reason="{r}"', n) for r, n in p.verification_failures.items()
        ],
        "edge_token_sink_writes_total": [(f'{s.labels},result="{r}"', n) for s in sinks for r, n in s.writes.items()],
        "edge_token_sink_last_success_timestamp_seconds": [
            (s.labels, s.last_success) for s in sinks if s.last_success is not None
        ],
        "edge_token_sink_healthy": [(s.labels, s.healthy) for s in sinks if s.healthy is not None],
        "edge_token_fleet_role": [(f'{p.labels},role="{r}"', float(r == p.fleet_role)) for r in roles]
        if p.fleet_role
        else [],
        "edge_token_fleet_leadership_changes_total": [(p.labels, p.leadership_changes)] if p.fleet_role else [],
        "edge_token_fleet_tokens_total": [(f'{p.labels},event="{e}"', n) for e, n in p.fleet_events.items()],
        "edge_token_provider_ratelimit_remaining": [(p.labels, p.ratelimit["remaining"])]
        if "remaining" in p.ratelimit
        else [],
        "edge_token_provider_ratelimit_reset_timestamp_seconds": [(p.labels, p.ratelimit["reset"])]
        if "reset" in p.ratelimit
        else [],
        "edge_token_provider_quota_remaining": [(f'{p.labels},bucket="{b}"', n) for b, n in p.quota.items()],
    }
    return {
        name: "".join(f"{name}{{{labels}}} {_number(value)}\n" for labels, value in rows).encode()
        for name, rows in samples.items()
        if rows
    }
