"""The provider's rate-limit and quota signals, parsed strictly from the token endpoint's answer headers.

Auth0 (behind auth.sitecorecloud.io) rate-limits `/oauth/token` and says so in `x-ratelimit-limit`,
`x-ratelimit-remaining` and `x-ratelimit-reset` (a UNIX time); in its fine-grained M2M quota mode it also answers
`Auth0-Client-Quota-Limit: b=per_hour;q=100;r=90;t=3600,b=per_day;q=1000;r=950;t=86400` (bucket, quota,
remaining, seconds until the bucket resets). Every token counts against the tenant's quota, so operators want to
see the remaining figures before they run out, and a 429 without `Retry-After` should wait until the reset.

Headers are hostile input: ASCII digits only, bounded lengths and counts (strictnum). A malformed header is
ignored as a whole (never half-parsed), so a bad value can neither crash a cycle nor invent a long wait.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from edge_token.core.errors import TransientError
from edge_token.core.record import Record
from edge_token.core.strictnum import ascii_uint

MAX_HEADER_CHARS = 512
MAX_BUCKETS = 8
MAX_WAIT = 3600.0  # like Retry-After: a reset further away than an hour is capped (policy.MAX_RETRY_AFTER)
ABSOLUTE_AFTER = 10**9  # an x-ratelimit-reset this large is a UNIX time (Auth0); smaller, seconds from now
_BUCKET = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Quota(Record):
    """One bucket of Auth0-Client-Quota-Limit."""

    bucket: str  # e.g. per_hour, per_day; [a-z][a-z0-9_]{0,31}, so safe as a metric label
    quota: int
    remaining: int
    reset_seconds: int


class RateLimit(Record):
    """What one token-endpoint answer said about our limits; every part is optional (None / empty)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None  # UNIX time the rate-limit window resets
    quotas: tuple[Quota, ...] = ()

    def wait_seconds(self, now: float) -> float | None:
        """How long a 429 without Retry-After should wait: until the rate-limit reset, or, when a quota bucket is
        exhausted, until that bucket resets (the later of the two); capped at an hour. None: nothing to go on."""
        waits = []
        if self.reset_at is not None:
            waits.append(self.reset_at - now)
        waits += [float(q.reset_seconds) for q in self.quotas if q.remaining == 0]
        if not waits:
            return None
        return min(max(max(waits), 0.0), MAX_WAIT)


LIMIT, REMAINING, RESET = "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"
QUOTA = "Auth0-Client-Quota-Limit"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None or len(value) > MAX_HEADER_CHARS or not value.isascii():
        return None
    return value


def parse_reset(value: str | None, now: float) -> float | None:
    """x-ratelimit-reset as a UNIX time: Auth0 sends one; a small number is read as seconds from now."""
    number = ascii_uint(value, 12)
    if number is None:
        return None
    return float(number) if number >= ABSOLUTE_AFTER else now + number


def parse_quota(value: str | None) -> tuple[Quota, ...] | None:
    """Auth0-Client-Quota-Limit: comma-separated buckets of `b=NAME;q=N;r=N;t=N` (any order, each key once).
    None if the header is absent or malformed in any part (the whole header is then ignored)."""
    if value is None or len(value) > MAX_HEADER_CHARS or not value.isascii():
        return None
    buckets = value.split(",")
    if len(buckets) > MAX_BUCKETS:
        return None
    quotas: list[Quota] = []
    for bucket in buckets:
        fields: dict[str, str] = {}
        for pair in bucket.strip().split(";"):
            key, sep, item = pair.strip().partition("=")
            if not sep or key not in ("b", "q", "r", "t") or key in fields:
                return None
            fields[key] = item.strip()
        if fields.keys() != {"b", "q", "r", "t"} or not _BUCKET.fullmatch(fields["b"]):
            return None
        quota, remaining, reset = (ascii_uint(fields[k], 12) for k in ("q", "r", "t"))
        if quota is None or remaining is None or reset is None or remaining > quota:
            return None
        if any(q.bucket == fields["b"] for q in quotas):
            return None
        quotas.append(Quota(fields["b"], quota, remaining, reset))
    return tuple(quotas)


def parse(headers: Mapping[str, str], now: float) -> RateLimit | None:
    """The RateLimit an answer's headers carry, or None if they carry none (each header parsed on its own)."""
    get = headers.get
    if get(LIMIT) is None and get(REMAINING) is None and get(RESET) is None and get(QUOTA) is None:
        return None  # most answers: four lookups, not four parses of nothing (every renewal asks)
    limit = ascii_uint(_header(headers, LIMIT), 12)
    remaining = ascii_uint(_header(headers, REMAINING), 12)
    reset_at = parse_reset(_header(headers, RESET), now)
    quotas = parse_quota(_header(headers, QUOTA)) or ()
    if limit is None and remaining is None and reset_at is None and not quotas:
        return None
    return RateLimit(limit, remaining, reset_at, quotas)


def attach(error: Exception, limits: RateLimit | None, status: int, now: float) -> Exception:
    """Carry `limits` on a transient failure (for metrics), and give a 429 without Retry-After the wait until the
    reset it announced. Other errors pass through unchanged."""
    if isinstance(error, TransientError) and limits is not None:
        error.rate_limit = limits
        if status == 429 and error.retry_after is None:
            error.retry_after = limits.wait_seconds(now)
    return error
