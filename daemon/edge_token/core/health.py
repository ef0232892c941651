"""PURE health: a per-profile status snapshot, and liveness / readiness decided from it.

The snapshot is what `/status`, `/readyz`, the metrics state gauge and systemd's STATUS= line show. It never
holds a token, a secret or a claim that could serve as one: a key id and a short fingerprint at most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from edge_token.core.errors import CredentialsRejected, EdgeTokenError
from edge_token.core.policy import TokenState
from edge_token.core.record import Record, field


class ProfileStatus(Record):
    """One profile, as operators see it (a Record, not a dataclass: the decorator cost every start ~1 ms)."""

    profile: str
    state: str  # fresh | stale | expired | credentials_rejected
    expires_at: float | None
    last_success_at: float | None
    next_attempt_at: float | None
    last_error: EdgeTokenError | None
    sinks: Mapping[str, str | None] = field(default_factory=dict)  # sink -> error message, None if it holds the token
    kid: str | None = None
    fingerprint: str | None = None
    fleet_role: str | None = None  # leader | follower | standalone, in fleet mode
    expired: bool = False  # the held token's own state, whatever `state` shows (credentials_rejected overrides it)

    @property
    def token_valid(self) -> bool:
        """The profile holds a verified token that has not expired. Not judged by `state` alone: a profile whose
        credentials are refused shows credentials_rejected, also once its last token has expired."""
        return self.state != TokenState.EXPIRED.value and not self.expired and self.expires_at is not None

    @property
    def ready(self) -> bool:
        """An unexpired verified token, written to every sink."""
        return self.token_valid and all(error is None for error in self.sinks.values())

    def to_json(self) -> dict[str, Any]:
        """The profile's entry in /status: errors as class and reason only (see `error_summary`)."""
        return {
            "state": self.state,
            "ready": self.ready,
            "expires_at": self.expires_at,
            "last_success_at": self.last_success_at,
            "next_attempt_at": self.next_attempt_at,
            "last_error": None if self.last_error is None else error_summary(self.last_error),
            "sinks": {
                name: {"ok": error is None, "error": None if error is None else SEE_LOG}
                for name, error in self.sinks.items()
            },
            "kid": self.kid,
            "fingerprint": self.fingerprint,
            "fleet_role": self.fleet_role,
        }


SEE_LOG = "failing; the reason is in the daemon log"


def error_summary(error: EdgeTokenError) -> dict[str, Any]:
    """How /status shows an error: its class and bounded reason, never its message. Messages quote what the
    provider or a store said, and a server that echoes our request can say anything; the log keeps a
    scrubbed copy for the operator, /status (reachable by anyone who can connect) keeps none."""
    reason = getattr(error, "reason", None)
    return {"class": error.kind, "reason": reason if isinstance(reason, str) else None}


def state_name(token_state: TokenState, last_error: EdgeTokenError | None) -> str:
    """The operator-facing state: credentials_rejected overrides while the provider keeps refusing us."""
    if isinstance(last_error, CredentialsRejected):
        return "credentials_rejected"
    name: str = token_state._value_  # the value without the enum's `value` property (asked after every cycle)
    return name


#: a sink's problem while its profile holds no token at all: the profile's state says why, the sink has not failed
NO_TOKEN_YET = "no verified token yet"


#: /readyz names at most this many unready profiles, the first by name, and counts the rest (`unlisted`): a probe
#: answered 0.5 MB of JSON for 10,000 unready profiles, 155 ms of the event loop, every few seconds of their fill
LISTED = 100


def readiness(statuses: Iterable[ProfileStatus]) -> tuple[bool, dict[str, Any]]:
    """(ready, details): ready only if every profile is; details name what is not (`readyz_body`). A sink is named
    failing when its write failed or it does not hold the profile's token yet, not while the profile has none (at
    start that named, and scrubbed, every sink path of every profile for the first probe: ~45 ms at 1,000)."""
    not_ready: dict[str, Any] = {}
    roles: dict[str, str] = {}
    for status in statuses:
        if status.fleet_role:
            roles[status.profile] = status.fleet_role
        if not status.ready:
            failing = [name for name, error in status.sinks.items() if error is not None and error != NO_TOKEN_YET]
            not_ready[status.profile] = {"state": status.state, "sinks_failing": failing}
    details = readyz_body(sorted(not_ready), not_ready.__getitem__)
    if roles:
        details["fleet_roles"] = roles  # leader / follower / standalone per profile
    return not not_ready, details


def readyz_body(unready: list[str], entry: Callable[[str], Any]) -> dict[str, Any]:
    """/readyz's answer for the unready profiles `unready` (sorted by name): `entry(name)` for each of the first
    LISTED, built for those only, and `unlisted`, how many more there are, when there are more."""
    body: dict[str, Any] = {"ready": not unready, "not_ready": {name: entry(name) for name in unready[:LISTED]}}
    if len(unready) > LISTED:
        body["unlisted"] = len(unready) - LISTED
    return body


def waiting(details: Mapping[str, Any]) -> str:
    """The unready profiles of a readiness answer, for a person, their number first (systemd keeps 400 characters
    of a STATUS= line): "2 profiles still without a verified token: a, b", "150 ...: a, b, ... and 50 more"."""
    names, more = sorted(details["not_ready"]), details.get("unlisted", 0)
    count = len(names) + more
    text = f"{count} profile{'' if count == 1 else 's'} still without a verified token: {', '.join(names)}"
    return text + (f" and {more} more" if more else "")


def alive(last_tick: float, now: float, tick_seconds: float, scheduler_running: bool) -> bool:
    """The loop is alive if the scheduler runs and the tick fired recently (3 ticks + 5 s of slack)."""
    return scheduler_running and now - last_tick <= 3 * tick_seconds + 5.0


def summary(statuses: list[ProfileStatus], next_renewal: float | None) -> str:
    """A one-line status for systemd's STATUS= ("3/3 profiles fresh, next renewal 14:02Z")."""
    fresh = sum(1 for status in statuses if status.state == "fresh")
    return summary_line(fresh, len(statuses), [s.profile for s in statuses if not s.ready], next_renewal)


def summary_line(fresh: int, total: int, not_ready: list[str], next_renewal: float | None) -> str:
    """`summary` from its counts, for callers that know them without a status per profile."""
    from datetime import UTC, datetime

    text = f"{fresh}/{total} profiles fresh"
    if not_ready:
        text += f", not ready: {', '.join(not_ready[:5])}" + ("..." if len(not_ready) > 5 else "")
    if next_renewal is not None:
        text += ", next renewal " + datetime.fromtimestamp(next_renewal, UTC).strftime("%H:%MZ")
    return text


class ReadinessIndex:
    """Which profiles may be unready, kept in O(1) per cycle: those whose last cycle left them unready, and those
    whose token has expired since. /readyz and READY=1 then look at those few, never at every profile's status
    (1,000 snapshots cost ~30 ms and ran after every cycle of a fill: O(N^2))."""

    def __init__(self) -> None:
        self.unready: set[str] = set()
        self._expiries: dict[str, float] = {}  # profile -> when its token stops being usable (our clock)

    def waiting(self, name: str) -> None:
        """A profile that has not finished a cycle yet (added, or its settings changed)."""
        self.unready.add(name)

    def update(self, name: str, ready: bool, expires_at: float | None) -> None:
        """After a cycle: ready means a valid token in every sink, until `expires_at`."""
        self._expiries[name] = expires_at if expires_at is not None else -float("inf")
        (self.unready.discard if ready else self.unready.add)(name)

    def forget(self, name: str) -> None:
        """A removed profile."""
        self.unready.discard(name)
        self._expiries.pop(name, None)

    def suspects(self, now: float) -> set[str]:
        """The profiles that may not be ready at `now`; every other one is."""
        return self.unready | {name for name, expiry in self._expiries.items() if now >= expiry}
