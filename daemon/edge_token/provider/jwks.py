"""JWKS key cache, one per JWKS URL, shared by every profile that uses it.

Rules (DESIGN.md "Verification"): refreshed when older than the refresh interval (jittered); an unknown `kid`
triggers one refetch, at most once per `min_refetch_seconds`; a failed fetch keeps the last good key set; a
malformed set never replaces a good one; only public asymmetric signing keys are accepted (no symmetric keys,
no private parts, RSA at least 2048 bits).

RSA strength is measured on the modulus *integer*, not on its encoding: `n` and `e` must be Base64urlUInt
values in their one canonical form (RFC 7518 section 2: unpadded base64url of the minimal big-endian octets).
Counting characters would let a 512-bit modulus padded with zero octets pass as "2048 bits".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from edge_token.core import strictjson
from edge_token.core.clock import Clock
from edge_token.core.errors import ConfigError, EdgeTokenError, JwksAnswerError, JwksConfigError, JwksError
from edge_token.core.settings import DIRECT, Egress
from edge_token.core.token import BASE64URL
from edge_token.net import egress
from edge_token.net.http import exchange, sanitize

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
RETRY_AFTER_FAILURE = 5.0  # an unknown kid may refetch this soon after a *failed* fetch (not min_refetch)
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384  # larger moduli only cost CPU on every verification; no provider uses them
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
ALLOWED_KTY = frozenset({"RSA", "EC", "OKP"})


def usable_keys(document: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Split a JWKS document into the keys we accept and a reason for each key we skip.

    Raises JwksError if the document itself is malformed (not an object with a `keys` list).
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksAnswerError('JWKS is not a JSON object with a "keys" list; check jwks_url')
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
        elif key["kty"] == "RSA" and (problem := rsa_problem(key)):
            skipped.append(f"{label}: {problem}")
        else:
            accepted.append(key)
    return accepted, skipped


def base64url_uint(value: Any) -> int | None:
    """The integer a Base64urlUInt encodes, or None unless `value` is its canonical form.

    Canonical: unpadded base64url alphabet only, no leftover bits, and the minimal octet string (no leading zero
    octet; zero itself is the single octet 0). Any other spelling of the same integer is refused, so no check on
    the text can be fooled by how the number is written.
    """
    if not isinstance(value, str) or not BASE64URL.fullmatch(value) or len(value) % 4 == 1:
        return None
    try:
        octets = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(octets).rstrip(b"=").decode() != value:
        return None  # non-zero leftover bits: another string decodes to the same octets
    if len(octets) > 1 and octets[0] == 0:
        return None
    return int.from_bytes(octets, "big")


def rsa_problem(key: dict[str, Any]) -> str | None:
    """Why an RSA JWK is unusable (None if it is fine), judged on the integers `n` and `e`."""
    modulus, exponent = base64url_uint(key.get("n")), base64url_uint(key.get("e"))
    if modulus is None or exponent is None:
        return "RSA n or e is not a minimal unpadded Base64urlUInt"
    bits = modulus.bit_length()
    if bits < MIN_RSA_BITS:
        return f"RSA key shorter than {MIN_RSA_BITS} bits ({bits}-bit modulus)"
    if bits > MAX_RSA_BITS:
        return f"RSA key longer than {MAX_RSA_BITS} bits"
    if modulus % 2 == 0 or exponent < 3 or exponent % 2 == 0 or exponent >= modulus:
        return "RSA n or e is not a valid public key"
    return None


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
        egress_settings: Egress = DIRECT,
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
    def fresh(self) -> bool:
        """A key set is loaded and not due for refresh: `key_set(None)` would answer it without a fetch (asked
        before every renewal: a look, not an awaited call)."""
        return self._keys is not None and self._clock.monotonic() < self._refresh_due

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
        except ConfigError as exc:
            raise JwksConfigError(f"{what}: {exc}") from None
        except EdgeTokenError as exc:
            raise JwksError(f"{what}: {exc}") from None
        status, raw = await exchange(
            self._session, "GET", self.url, what=what, error=JwksError, limit=MAX_JWKS_BYTES,
            timeout=self._timeout, headers={"Accept": "application/json"}, tls=via.ssl, via=via, key="jwks_url",
            rejected=egress.JwksProxyRejected,
        )  # fmt: skip
        if status == 429 or status >= 500:
            raise JwksError(f"{what} answered HTTP {status}; will retry")
        if status != 200:  # 404, 403, a redirect...: the URL does not serve a key set
            raise JwksAnswerError(f"JWKS {self.url} answered HTTP {status}, not a key set; check jwks_url")
        try:
            document = strictjson.loads(raw)  # the one strict parse of network bodies (duplicates, NaN, depth)
        except ValueError as exc:  # strictjson.JsonDefect: names the defect, never quotes the body
            kind = "an HTML page" if raw.lstrip()[:1] == b"<" else f"not acceptable JSON ({exc})"
            raise JwksAnswerError(f"JWKS {self.url} is {kind}, not a key set; check jwks_url") from None
        accepted, _skipped = usable_keys(document)
        key_set = build_key_set(accepted)
        kids = frozenset(key.kid for key in key_set.keys if key.kid)
        return key_set, kids
