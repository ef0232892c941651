"""The verified token: a value object whose repr can never leak the JWT."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, overload

from edge_token.core import strictjson
from edge_token.core.record import Record, field
from edge_token.core.scrub import Plain

T = TypeVar("T")

#: one or more characters of the unpadded base64url alphabet (RFC 7515 section 2), nothing else: use fullmatch
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
#: the shape of a compact JWS (header.payload.signature, each part non-empty base64url): use fullmatch. Strict, for
#: deciding what a token is; core/scrub.py has its own deliberately looser pattern for finding tokens in text.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class _computed_once(Generic[T]):  # lower case: a decorator, like the functools one it stands for
    """`functools.cached_property` without its per-class lock (3.11 takes an RLock on every first computation, and
    a Token's fingerprint is computed once per renewal). The value goes into the instance's own dict, where every
    later lookup finds it first (a non-data descriptor); two threads racing the first look both compute the same
    hash. A Record is frozen through `__setattr__`; its `__dict__` is where its fields live anyway."""

    def __init__(self, function: Callable[[Any], T]) -> None:
        self._function, self._name = function, function.__name__
        self.__doc__ = function.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _computed_once[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> T | _computed_once[T]:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._function(instance)
        return value


class Token(Record):
    """A JWT that passed verification, with the timing the refresh policy needs.

    `received_at` is our own wall time when the provider answered (for a token adopted from a sink: its
    `iat`), and `lifetime` is `exp - iat` from the verified claims. Measuring from our receive time keeps a
    skewed local clock from shortening or stretching the refresh schedule.
    """

    jwt: str = field(compare=False)
    claims: Mapping[str, Any] = field(compare=False)
    received_at: float
    lifetime: float
    token_type: str = "Bearer"
    scope: str | None = None
    kid: str | None = None

    @property
    def expires_at(self) -> float:
        """When the token stops being usable, on our clock."""
        return self.received_at + self.lifetime

    @property
    def exp(self) -> float:
        """The token's own `exp` claim (the provider's clock)."""
        return float(self.claims["exp"])

    @_computed_once  # asked four times per renewal (sinks, logs, rotation): one hash
    def fingerprint(self) -> str:
        """A short, non-reversible id for logs and /status: enough to tell tokens apart, useless to replay."""
        return Plain(hashlib.sha256(self.jwt.encode()).hexdigest()[:12])

    def __repr__(self) -> str:
        expiry = datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds")
        return f"Token(fingerprint={self.fingerprint}, kid={self.kid!r}, expires_at={expiry})"

    __str__ = __repr__


def claimed_exp(jwt: str) -> float | None:
    """The `exp` a compact JWS claims, unverified (None if it is not one, or has no numeric exp).

    Only for deciding whether a value someone else put in a store is worth keeping: its expiry as recorded next to
    it (an annotation, a field) counts only if the value itself claims the same, so garbage or a forged expiry
    beside it cannot freeze the store. Never a reason to use the token: that takes verification."""
    if len(jwt) > 64 * 1024 or not COMPACT_JWS.fullmatch(jwt):
        return None
    payload = jwt.split(".")[1]
    try:
        claims = strictjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp) else None
