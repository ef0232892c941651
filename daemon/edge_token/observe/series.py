"""The per-profile series behind /metrics: what the families are, and how one profile's sample lines look.

`metrics.py` keeps a `ProfileSeries` per profile and renders it with `profile_lines` each time it changes; the
lines are the same for text 0.0.4 and OpenMetrics (only a counter family's HELP/TYPE name differs: `HEADERS`).
"""

from __future__ import annotations

import math

from edge_token.core.ratelimit import RateLimit

STATES = ("fresh", "stale", "expired", "credentials_rejected")

# (name, type, help) of the per-profile families, in exposition order
GAUGES = (
    ("edge_token_token_expiry_timestamp_seconds", "Expiry (exp claim) of the held token.", "expiry"),
    ("edge_token_token_issued_timestamp_seconds", "When the held token was received or issued.", "issued"),
    ("edge_token_token_lifetime_seconds", "Lifetime of the held token.", "lifetime"),
    ("edge_token_next_refresh_timestamp_seconds", "Next scheduled renewal attempt.", "next_refresh"),
    ("edge_token_last_success_timestamp_seconds", "Last successful renewal or adoption.", "last_success"),
)


def escape(value: str) -> str:
    """A label value as the exposition formats quote it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SinkSeries:
    """One sink's counts and gauges. (Plain classes, not dataclasses: the decorator cost every start ~1.4 ms.)"""

    __slots__ = ("healthy", "labels", "last_success", "writes")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.writes: dict[str, float] = {}  # result -> count
        self.last_success: float | None = None
        self.healthy: float | None = None


class ProfileSeries:
    """One profile's counts and gauges, as the outcomes left them."""

    __slots__ = (
        "fleet_events", "fleet_role", "gauges", "labels", "leadership_changes", "name", "quota", "ratelimit",
        "refresh", "requests", "sinks", "state", "verification_failures",
    )  # fmt: skip

    def __init__(self, name: str, labels: str) -> None:
        self.name = name
        self.labels = labels  # 'profile="x"', escaped once
        self.gauges: dict[str, float] = {}
        self.state: str | None = None
        self.refresh: dict[str, float] = {}  # result -> count
        self.requests = 0.0
        self.verification_failures: dict[str, float] = {}
        self.sinks: dict[str, SinkSeries] = {}
        self.fleet_role: str | None = None
        self.fleet_events: dict[str, float] = {}  # published / received / rejected
        self.leadership_changes = 0.0
        self.ratelimit: dict[str, float] = {}  # remaining / reset, as the provider last said
        self.quota: dict[str, float] = {}  # Auth0 quota bucket -> remaining


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


def rate_limit(series: ProfileSeries, limits: RateLimit) -> None:
    """Keep what the provider said last; a figure an answer leaves out keeps its previous value (Auth0 sends the
    quota header only in fine-grained quota mode, the rate-limit headers on most answers)."""
    if limits.remaining is not None:
        series.ratelimit["remaining"] = float(limits.remaining)
    if limits.reset_at is not None:
        series.ratelimit["reset"] = limits.reset_at
    if limits.quotas:
        series.quota = {quota.bucket: float(quota.remaining) for quota in limits.quotas}


def number(value: float) -> str:
    """A sample value as both formats spell it (Python's repr, except the infinities and NaN)."""
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def profile_lines(p: ProfileSeries) -> dict[str, bytes]:
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
        name: "".join(f"{name}{{{labels}}} {number(value)}\n" for labels, value in rows).encode()
        for name, rows in samples.items()
        if rows
    }
