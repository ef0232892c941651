"""PURE refresh policy: token state, when to try next, backoff with jitter, Retry-After parsing.

No I/O and no clock reads: every function takes `now` and a random source, so the whole policy is table-tested
exactly. Modelled on botocore's refreshable credentials: a FRESH token is left alone; a STALE one is renewed
but failures are tolerated (the old token keeps being served); an EXPIRED one makes the profile unready.
"""

from __future__ import annotations

import enum
import math
import random

from edge_token.core.errors import CredentialsRejected, EdgeTokenError, TransientError
from edge_token.core.record import Record
from edge_token.core.strictnum import ascii_uint
from edge_token.core.token import Token

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
REJECTED_BACKOFF = 900.0
MAX_RETRY_AFTER = 3600.0  # a hostile or confused server must not park a profile for days
MIN_DELAY = 1.0
MIN_BACKOFF = 0.05  # the shortest retry gap, even for tokens that live only seconds
MIN_RUN_GAP = 0.05  # no job is ever scheduled sooner than this: nothing can spin
MAX_RETRY_AFTER_CHARS = 64
MAX_PARSED_DELAY = 10**9  # seconds; the policy caps a wait at MAX_RETRY_AFTER anyway


class TokenState(enum.Enum):
    """Where a token is in its life."""

    FRESH = "fresh"  # before refresh_at x lifetime: nothing to do
    STALE = "stale"  # renewal due; still served while renewal fails
    EXPIRED = "expired"  # unusable; readiness fails


class RefreshSettings(Record):
    """The per-profile knobs of the policy."""

    refresh_at: float = 0.8
    jitter: float = 0.05
    retry_max: float = BACKOFF_CAP


def token_state(token: Token | None, now: float, settings: RefreshSettings) -> TokenState:
    """Classify a token at `now` (our wall clock); no token counts as EXPIRED."""
    if token is None or now >= token.expires_at:
        return TokenState.EXPIRED
    if now < token.received_at + settings.refresh_at * token.lifetime:
        return TokenState.FRESH
    return TokenState.STALE


def refresh_due_at(token: Token, settings: RefreshSettings, rng: random.Random) -> float:
    """The renewal moment: `refresh_at` of the lifetime after receipt, jittered earlier only (no stampede).

    Drawn once per token by its holder (`Renewer.take`), not at every look: a moment re-drawn on each call
    would wander, and a FRESH check against the un-jittered point would make the jitter a busy wait.
    """
    fraction = settings.refresh_at - rng.uniform(0.0, settings.jitter)
    return token.received_at + fraction * token.lifetime


def backoff_delay(failures: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Capped exponential backoff with full jitter (AWS style), never below `base`.

    `failures` counts consecutive failures including the one just seen (1 for the first).
    """
    ceiling = min(cap, base * 2.0 ** min(max(failures - 1, 0), 32))
    return max(base, rng.uniform(0.0, ceiling))


def backoff_bounds(token: Token | None, settings: RefreshSettings) -> tuple[float, float]:
    """(base, cap) of the backoff: 1 s doubling to `retry_max` (300 s), scaled down for short-lived tokens.

    With the usual 24 h token nothing changes. A token living only seconds (tests, some dev servers) gets a base
    of 1 % and a cap of 25 % of its lifetime: a 1 s floor would leave a 4 s token only two attempts between its
    refresh point and its expiry, and a 5 min cap would leave it expired for minutes after the provider recovers.
    """
    if token is None:
        return BACKOFF_BASE, settings.retry_max
    base = max(MIN_BACKOFF, min(BACKOFF_BASE, token.lifetime / 100))
    return base, min(settings.retry_max, max(base, token.lifetime / 4))


def next_attempt_at(
    now: float,
    token: Token | None,
    error: EdgeTokenError | None,
    failures: int,
    settings: RefreshSettings,
    rng: random.Random,
) -> float:
    """When this profile should try again, after a success (`error is None`) or a failure.

    Failure rules: credentials rejected back off 15 minutes; everything else backs off exponentially
    (`backoff_bounds`). A backoff that would overshoot the expiry of a still-valid token is pulled in to halfway to
    that expiry, so a retry can still save it. A server's wait hint (Retry-After, a rate-limit reset) can only make
    the wait longer, never shorter (capped at an hour): a hint of 0, or a date or reset already past, once made a
    failing profile ask every second, forever.
    """
    if error is None and token is not None:
        return max(now, refresh_due_at(token, settings, rng))
    base, cap = backoff_bounds(token, settings)
    if isinstance(error, CredentialsRejected):
        delay = REJECTED_BACKOFF * rng.uniform(0.9, 1.0)
    else:
        delay = backoff_delay(failures, rng, base, cap)
    if token is not None and now < token.expires_at < now + delay:
        delay = max(base, (token.expires_at - now) / 2)
    hint = error.retry_after if isinstance(error, TransientError) else None
    if hint is not None and hint > delay:
        delay = min(hint, MAX_RETRY_AFTER)
    return now + max(delay, MIN_BACKOFF)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date, as seconds from `now`; None if absent or garbage.

    Strict, because the value is the server's: ASCII digits only (`"١٢".isdigit()` is True in Python), at most
    ten of them, and a date of bounded length that must parse as GMT. Never raises.
    """
    if value is None or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    seconds = ascii_uint(value, 10)
    if seconds is not None:
        return float(min(seconds, MAX_PARSED_DELAY))
    from email.utils import parsedate_to_datetime  # rare path: keep the email package out of start-up

    try:
        when = parsedate_to_datetime(value.strip())
        delay = when.timestamp() - now if when.tzinfo is not None else None  # an HTTP-date is always GMT
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, delay), MAX_PARSED_DELAY) if delay is not None and math.isfinite(delay) else None


def next_run_at(now: float, attempt_at: float, sink_retry_in: float | None, poll_in: float | None) -> float:
    """The one next run of a profile's job: the earliest of its renewal attempt, its failed sinks' retry and (fleet
    mode) its poll of the shared store, but never sooner than MIN_RUN_GAP from now, whatever the inputs."""
    when = attempt_at
    for delay in (sink_retry_in, poll_in):
        if delay is not None:
            when = min(when, now + delay)
    return max(when, now + MIN_RUN_GAP) if math.isfinite(when) else now + BACKOFF_CAP
