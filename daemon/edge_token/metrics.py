"""Every Prometheus metric, defined once on an injected CollectorRegistry and fed from renewal outcomes.

Labels are bounded: profile and sink come from the config, `result`/`reason`/`state` from fixed sets, `url` is a
configured JWKS URL. No label or value can carry a token or a secret.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge_token import __version__
from edge_token.errors import VerificationError
from edge_token.renewer import RenewalOutcome

STATES = ("fresh", "stale", "expired", "credentials_rejected")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's metrics. One instance per registry (tests use a fresh registry each)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("profile",)) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("profile",)) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        gauge("edge_token_build_info", "Build information (value 1).", ("version",)).labels(__version__).set(1)
        self.expiry = gauge("edge_token_token_expiry_timestamp_seconds", "Expiry (exp claim) of the held token.")
        self.issued = gauge("edge_token_token_issued_timestamp_seconds", "When the held token was received or issued.")
        self.lifetime = gauge("edge_token_token_lifetime_seconds", "Lifetime of the held token.")
        self.next_refresh = gauge("edge_token_next_refresh_timestamp_seconds", "Next scheduled renewal attempt.")
        self.last_success = gauge("edge_token_last_success_timestamp_seconds", "Last successful renewal or adoption.")
        self.state = gauge(
            "edge_token_token_state", "1 for the profile's current state, 0 for the others.", ("profile", "state")
        )
        self.refresh = counter(
            "edge_token_refresh", "Renewal attempts by result (success, adopted, transient, rejected, "
            "invalid_token, protocol, jwks, config, sink).", ("profile", "result"),
        )  # fmt: skip
        self.duration = Histogram(
            "edge_token_refresh_duration_seconds", "Duration of renewal attempts.", ("profile",),
            buckets=DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.requests = counter("edge_token_token_requests", "Token requests sent to the provider (quota use).")
        self.verification_failures = counter(
            "edge_token_verification_failures", "Tokens refused by verification, by rule.", ("profile", "reason")
        )
        self.jwks_fetches = counter("edge_token_jwks_fetches", "JWKS fetches by result.", ("url", "result"))
        self.jwks_keys = gauge("edge_token_jwks_keys", "Keys loaded from the JWKS.", ("url",))
        self.sink_writes = counter("edge_token_sink_writes", "Sink writes by result.", ("profile", "sink", "result"))
        self.sink_last_success = gauge(
            "edge_token_sink_last_success_timestamp_seconds",
            "Last time the sink was confirmed to hold the current token.",
            ("profile", "sink"),
        )
        self.sink_healthy = gauge(
            "edge_token_sink_healthy", "1 if the sink holds the profile's current token.", ("profile", "sink")
        )

    def observe(self, outcome: RenewalOutcome, state: str, next_attempt: float | None) -> None:
        """Record one renewal outcome (called by the daemon after every cycle)."""
        profile = outcome.profile
        self.refresh.labels(profile, outcome.result).inc()
        self.duration.labels(profile).observe(outcome.duration)
        if outcome.requested:
            self.requests.labels(profile).inc()
        if isinstance(outcome.error, VerificationError):
            self.verification_failures.labels(profile, outcome.error.reason).inc()
        token = outcome.token
        if token is not None:
            self.expiry.labels(profile).set(token.exp)
            self.issued.labels(profile).set(token.received_at)
            self.lifetime.labels(profile).set(token.lifetime)
        if outcome.error is None and outcome.result in ("success", "adopted"):
            self.last_success.labels(profile).set(outcome.started_at + outcome.duration)
        if next_attempt is not None:
            self.next_refresh.labels(profile).set(next_attempt)
        for name in STATES:
            self.state.labels(profile, name).set(1 if name == state else 0)
        for sink in outcome.sinks_written:
            self.sink_writes.labels(profile, sink, "success").inc()
            self.sink_last_success.labels(profile, sink).set(outcome.started_at + outcome.duration)
            self.sink_healthy.labels(profile, sink).set(1)
        for sink in outcome.sink_errors:
            self.sink_writes.labels(profile, sink, "failure").inc()
            self.sink_healthy.labels(profile, sink).set(0)

    def jwks_fetched(self, url: str, result: str, keys: int) -> None:
        self.jwks_fetches.labels(url, result).inc()
        self.jwks_keys.labels(url).set(keys)

    def forget(self, profile: str, sinks: list[str]) -> None:
        """Drop a removed profile's series so dashboards do not show ghosts."""
        for metric in (self.expiry, self.issued, self.lifetime, self.next_refresh, self.last_success, self.requests):
            _remove(metric, profile)
        for name in STATES:
            _remove(self.state, profile, name)
        for sink in sinks:
            _remove(self.sink_last_success, profile, sink)
            _remove(self.sink_healthy, profile, sink)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
