"""The pure refresh policy: states, refresh moment, backoff, Retry-After, and the save-the-token rule."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from edge_token.core.errors import CredentialsRejected, ProtocolError, TransientError, VerificationError
from edge_token.core.policy import (
    BACKOFF_CAP,
    MAX_RETRY_AFTER,
    RefreshSettings,
    TokenState,
    backoff_bounds,
    backoff_delay,
    next_attempt_at,
    parse_retry_after,
    refresh_due_at,
    token_state,
)
from edge_token.core.token import Token

NOW = 1_800_000_000.0
SETTINGS = RefreshSettings(refresh_at=0.8, jitter=0.05)


def token(received_at: float = NOW, lifetime: float = 1000.0) -> Token:
    return Token(jwt="a.b.c", claims={"exp": received_at + lifetime}, received_at=received_at, lifetime=lifetime)


@pytest.mark.parametrize(
    ("offset", "state"),
    [(0, TokenState.FRESH), (799.9, TokenState.FRESH), (800, TokenState.STALE), (999.9, TokenState.STALE),
     (1000, TokenState.EXPIRED), (5000, TokenState.EXPIRED)],
)  # fmt: skip
def test_token_state_follows_lifetime(offset: float, state: TokenState) -> None:
    """FRESH before refresh_at x lifetime, STALE until expiry, EXPIRED from expiry on."""
    assert token_state(token(), NOW + offset, SETTINGS) is state


def test_no_token_is_expired() -> None:
    """A profile without a token is as unready as one with an expired token."""
    assert token_state(None, NOW, SETTINGS) is TokenState.EXPIRED


def test_refresh_moment_is_jittered_earlier_only() -> None:
    """Over many draws the refresh lands in [0.75, 0.80] of the lifetime, never later."""
    rng = random.Random(7)
    moments = [refresh_due_at(token(), SETTINGS, rng) - NOW for _ in range(2000)]
    assert 750.0 <= min(moments) < 752.0
    assert 798.0 < max(moments) <= 800.0


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 1.0), (2, 2.0), (4, 8.0), (9, 256.0), (10, 300.0), (60, 300.0)])
def test_backoff_is_capped_exponential_with_full_jitter(failures: int, ceiling: float) -> None:
    """Delays lie in [1 s, min(cap, 2^(n-1))] and spread over that range."""
    rng = random.Random(3)
    delays = [backoff_delay(failures, rng) for _ in range(500)]
    assert min(delays) >= 1.0
    assert max(delays) <= ceiling
    if ceiling > 4:
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.3 * ceiling


def test_success_schedules_the_jittered_refresh() -> None:
    """After a success the next attempt is the refresh moment of the new token."""
    when = next_attempt_at(NOW, token(), None, 0, SETTINGS, random.Random(1))
    assert NOW + 750 <= when <= NOW + 800


def test_retry_after_wins_but_is_capped() -> None:
    """Retry-After beats backoff; an absurd one is capped at an hour; zero still waits a second."""
    rng = random.Random(1)
    assert next_attempt_at(NOW, None, TransientError("x", 42), 1, SETTINGS, rng) == NOW + 42
    assert next_attempt_at(NOW, None, TransientError("x", 10**9), 1, SETTINGS, rng) == NOW + MAX_RETRY_AFTER
    assert next_attempt_at(NOW, None, TransientError("x", 0), 1, SETTINGS, rng) == NOW + 1


def test_rejected_credentials_back_off_about_fifteen_minutes() -> None:
    """Permanent refusals are retried slowly (the secret may be rotated), not hammered."""
    when = next_attempt_at(NOW, None, CredentialsRejected("no"), 1, SETTINGS, random.Random(1))
    assert NOW + 810 <= when <= NOW + 900


@pytest.mark.parametrize(
    "error", [TransientError("x"), ProtocolError("x"), VerificationError("x", "signature"), CredentialsRejected("x")]
)
def test_backoff_never_overshoots_a_token_that_can_still_be_saved(error: Exception) -> None:
    """With 60 s of validity left and a long backoff, the retry comes halfway to expiry."""
    held = token(received_at=NOW - 940)  # expires at NOW + 60
    when = next_attempt_at(NOW, held, error, 20, SETTINGS, random.Random(1))  # type: ignore[arg-type]
    assert when <= held.expires_at
    assert when == pytest.approx(NOW + 30) or when < NOW + 30


def test_backoff_after_expiry_continues_at_the_cap() -> None:
    """Once the token is gone, failures keep retrying at the capped interval, forever."""
    held = token(received_at=NOW - 5000)
    when = next_attempt_at(NOW, held, TransientError("x"), 50, SETTINGS, random.Random(2))
    assert NOW + 1 <= when <= NOW + BACKOFF_CAP


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), (None, None), ("soon", None), ("-5", None), ("1.5", None),
     (format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True), 90.0),
     (format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True), 0.0)],
)  # fmt: skip
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After as delay-seconds or HTTP-date, relative to now; garbage is ignored."""
    assert parse_retry_after(value, NOW) == expected


def test_backoff_scales_down_for_short_lived_tokens() -> None:
    """A 4 s token gets retries from the 50 ms floor and a 1 s cap; a 24 h token keeps 1 s to 5 min."""
    short, day = token(lifetime=4.0), token(lifetime=86400.0)
    assert backoff_bounds(short, SETTINGS) == (0.05, 1.0)
    assert backoff_bounds(day, SETTINGS) == (1.0, 300.0)
    assert backoff_bounds(None, SETTINGS) == (1.0, 300.0)
    rng = random.Random(5)
    expired_short = token(received_at=NOW - 10, lifetime=4.0)
    delays = [next_attempt_at(NOW, expired_short, TransientError("x"), 30, SETTINGS, rng) - NOW for _ in range(200)]
    assert max(delays) <= 1.0 + 1e-6 and min(delays) >= 0.04 - 1e-6  # float precision at 1.8e9
