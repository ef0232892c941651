"""JWKS key cache, one per JWKS URL, shared by every profile that uses it.

Rules (DESIGN.md "Verification"): refreshed when older than the refresh interval (jittered); an unknown `kid`
triggers one refetch, at most once per `min_refetch_seconds`; a failed fetch keeps the last good key set; a
malformed set never replaces a good one; only public asymmetric signing keys are accepted (no symmetric keys,
no private parts, RSA at least 2048 bits).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from edge_token import egress
from edge_token.clock import Clock
from edge_token.errors import EdgeTokenError, JwksError
from edge_token.httpcall import exchange
from edge_token.oauth import sanitize

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
RETRY_AFTER_FAILURE = 5.0  # an unknown kid may refetch this soon after a *failed* fetch (not min_refetch)
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
ALLOWED_KTY = frozenset({"RSA", "EC", "OKP"})


def usable_keys(document: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Split a JWKS document into the keys we accept and a reason for each key we skip.

    Raises JwksError if the document itself is malformed (not an object with a `keys` list).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('JWKS is not a JSON object with a "keys" list')
    accepted: list[dict[str, Any]] = []
    skipped: list[str] = []
    for index, key in enumerate(document["keys"][:MAX_KEYS]):
        label = f"key {index}" + (f" (kid {sanitize(key.get('kid'), (), 40)})" if isinstance(key, dict) else "")
        if not isinstance(key, dict) or key.get("kty") not in ALLOWED_KTY:
            skipped.append(f"{label}: not an RSA/EC/OKP public key")
        elif PRIVATE_MEMBERS & key.keys():
            skipped.append(f"{label}: contains private key material")
        elif key.get("use", "sig") != "sig" or (
            "key_ops" in key and (not isinstance(key["key_ops"], list) or "verify" not in key["key_ops"])
        ):
            skipped.append(f"{label}: not a signature-verification key")
        elif "kid" in key and not isinstance(key["kid"], str):
            skipped.append(f"{label}: kid is not a string")
        elif key["kty"] == "RSA" and _rsa_bits(key) < 2048:
            skipped.append(f"{label}: RSA key shorter than 2048 bits")
        else:
            accepted.append(key)
    return accepted, skipped


def _rsa_bits(key: dict[str, Any]) -> int:
    modulus = key.get("n")
    if not isinstance(modulus, str):
        return 0
    # base64url without padding: 4 characters carry 3 bytes
    return len(modulus.rstrip("=")) * 6


def build_key_set(keys: list[dict[str, Any]]) -> KeySet:
    """Import accepted keys into a joserfc KeySet; JwksError if none survive import."""
    imported = []
    for key in keys:
        try:
            imported.append(KeySet.import_key_set({"keys": [key]}).keys[0])
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    if not imported:
        raise JwksError("JWKS holds no usable public signing key")
    return KeySet(imported)


class JwksCache:
    """The key set of one JWKS URL, fetched lazily, refreshed periodically, refetched on an unknown kid."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        refresh_seconds: float = 3600.0,
        min_refetch_seconds: float = 30.0,
        timeout_seconds: float = 10.0,
        rng: random.Random | None = None,
        on_fetch: Callable[[str, str, int], None] | None = None,
        egress_settings: egress.Egress = egress.DIRECT,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self._egress, self._environ = egress_settings, environ or {}
        self._session, self._clock = session, clock
        self._refresh_seconds, self._min_refetch = refresh_seconds, min_refetch_seconds
        self._timeout = timeout_seconds
        self._rng = rng or random.Random()
        self._on_fetch = on_fetch  # (url, result, keys loaded) for metrics and logs
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = -float("inf")  # monotonic time of the last attempt
        self._refresh_due = -float("inf")  # monotonic time the loaded set goes stale
        self._lock = asyncio.Lock()
        self.last_error: JwksError | None = None

    @property
    def kids(self) -> frozenset[str]:
        """Key ids currently loaded."""
        return self._kids

    async def key_set(self, kid: str | None, suspect: bool = False) -> KeySet:
        """The key set to verify a token whose header names `kid`.

        Fetches if nothing is loaded or the set is due for refresh; refetches once (rate-limited) if `kid` is
        unknown, or if the caller `suspect`s the loaded key for it (a signature that did not verify: the provider
        may have replaced a key under the same kid). On a failed fetch the last good set is returned; with none
        at all, JwksError.
        """
        now = self._clock.monotonic()
        unknown = suspect or (kid is not None and kid not in self._kids)
        if self._keys is None or now >= self._refresh_due or (unknown and now - self._fetched_at >= self._min_refetch):
            await self.refresh(force=False)
        if self._keys is None:
            raise self.last_error or JwksError(f"no JWKS loaded from {self._host}")
        return self._keys

    @property
    def _host(self) -> str:
        return urlsplit(self.url).netloc

    async def refresh(self, force: bool = True) -> None:
        """Fetch the JWKS now; keep the last good set on any failure (recorded in `last_error`)."""
        async with self._lock:
            now = self._clock.monotonic()
            if not force and now - self._fetched_at < 1.0:  # someone else just fetched while we waited
                return
            self._fetched_at = now
            try:
                keys, kids = await self._fetch()
            except JwksError as exc:
                self.last_error = exc
                self._report("failure", len(self._kids))
                # a failed fetch taught us nothing: during a key rotation with a flaky JWKS endpoint, waiting the
                # full min_refetch (30 s) would keep refusing good tokens; allow another try a few seconds on
                self._fetched_at = now - self._min_refetch + min(self._min_refetch, RETRY_AFTER_FAILURE)
                # retry a failed periodic refresh sooner than the full interval
                self._refresh_due = now + min(self._refresh_seconds, max(self._min_refetch, 60.0))
                if self._keys is None:
                    raise
                return
            self._keys, self._kids, self.last_error = keys, kids, None
            self._refresh_due = now + self._refresh_seconds * self._rng.uniform(0.9, 1.0)
            self._report("success", len(kids))

    def _report(self, result: str, keys: int) -> None:
        if self._on_fetch is not None:
            self._on_fetch(self.url, result, keys)

    async def _fetch(self) -> tuple[KeySet, frozenset[str]]:
        what = f"JWKS {self._host}"
        try:
            via = egress.route(self._egress, self.url, self._environ)
        except EdgeTokenError as exc:
            raise JwksError(f"{what}: {exc}") from None
        status, raw = await exchange(
            self._session, "GET", self.url, what=what, error=JwksError, limit=MAX_JWKS_BYTES,
            timeout=self._timeout, headers={"Accept": "application/json"}, tls=via.ssl, via=via,
        )  # fmt: skip
        if status != 200:
            raise JwksError(f"{what} answered HTTP {status}")
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise JwksError(f"JWKS {self._host} is not valid JSON") from None
        accepted, _skipped = usable_keys(document)
        key_set = build_key_set(accepted)
        kids = frozenset(key.kid for key in key_set.keys if key.kid)
        return key_set, kids
