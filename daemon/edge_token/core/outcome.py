"""What one step of a profile's cycle did: a frozen `RenewalOutcome` with a `Result` enum.

The renewer returns outcomes; the supervisor decides the next run from them; observers (observe/events.py for the
log lines, metrics, readiness, systemd, rotation callbacks) read them. A result is an enum, never a free string
compared by literal, so "the sinks recovered" can never be mistaken for "a new token arrived".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from edge_token.core.errors import EdgeTokenError, SinkError
from edge_token.core.ratelimit import RateLimit
from edge_token.core.record import Record, field
from edge_token.core.token import Token


class Result(enum.Enum):
    """The kind of step."""

    NEW_TOKEN = "new_token"  # requested, verified, written (some sinks may have failed)
    ADOPTED = "adopted"  # a verified token read back from the sinks at start: no request
    RECEIVED = "received"  # fleet mode: a newer verified token taken from etcd
    SINKS_RETRIED = "sinks_retried"  # failed sinks written again with the token already held
    FAILED = "failed"  # no new token; `error` says why; the previous token (if any) is kept


class RenewalOutcome(Record):
    """One step. Handed to logs, metrics, health and the supervisor; never holds a secret."""

    profile: str
    result: Result
    started_at: float
    duration: float
    token: Token | None  # the token the profile holds after this step (new, adopted or previous)
    error: EdgeTokenError | None = None
    requested: bool = False  # a token request went to the provider (the quota-relevant count)
    sinks_written: tuple[str, ...] = ()
    sink_errors: Mapping[str, SinkError] = field(default_factory=dict)
    next_attempt_at: float | None = None
    rate_limit: RateLimit | None = None  # what the token endpoint said about our rate limit and quota
    sinks_changed: tuple[str, ...] = ()  # the sinks whose content this step changed (hooks ran for these)
    failures: int = 0  # consecutive failed renewals after this step
    state: str = ""  # the held token's state after this step: fresh | stale | expired
    from_fleet: bool = False  # a token another daemon published (fleet mode), taken or refused

    @property
    def ok(self) -> bool:
        """The profile holds a verified token and every sink has it."""
        return self.error is None and not self.sink_errors

    @property
    def new_token(self) -> bool:
        """A token the profile did not hold before arrived (requested or received), not adopted or retried."""
        return self.result in (Result.NEW_TOKEN, Result.RECEIVED)

    @property
    def label(self) -> str:
        """The bounded `result` label of `edge_token_refresh_total` (the names operators' rules already use)."""
        if self.result is Result.FAILED:
            return self.error.kind if self.error is not None else "internal"
        if self.result is Result.SINKS_RETRIED:
            return "sink" if self.sink_errors else "success"
        return "success" if self.result is Result.NEW_TOKEN else self.result.value
