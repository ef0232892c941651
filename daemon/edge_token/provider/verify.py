"""Token verification: every rule of DESIGN.md "Verification", before any sink sees a token.

joserfc checks the signature only (REFERENCE.md): `jwt.decode` validates no claim, and passing `registry=`
silently disables the algorithm allow-list. So we pass a non-empty `algorithms=` and no registry to
`jws.deserialize_compact` (what `jwt.decode` calls), parse the payload with strictjson, and check the claims
here, explicitly, with one bounded `reason` per rule for metrics.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from joserfc import jws
from joserfc.errors import (
    BadSignatureError,
    ExceededSizeError,
    InvalidKeyIdError,
    JoseError,
    UnsupportedAlgorithmError,
    UnsupportedHeaderError,
)
from joserfc.jwk import KeySet

from edge_token.core import strictjson
from edge_token.core.errors import EdgeTokenError, VerificationError
from edge_token.core.record import Record
from edge_token.core.settings import ProfileConfig
from edge_token.core.strictnum import finite
from edge_token.core.token import COMPACT_JWS, Token

MAX_TOKEN_BYTES = 16 * 1024
PLAUSIBLE_SECONDS = 100 * 365 * 86400.0  # a NumericDate further than this from now is garbage
KeySetLookup = Callable[[str | None, bool], Awaitable[KeySet]]  # (kid, suspect the cached key) -> keys


class Rules(Record):
    """What a token must satisfy for one profile."""

    issuer: str
    audience: str
    client_id: str
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: float = 60.0
    required_claims: tuple[tuple[str, str], ...] = ()  # config `required_claims`: (claim, exact value) pins


def rules_for(profile: ProfileConfig) -> Rules:
    """A profile's verification rules."""
    return Rules(
        issuer=profile.issuer, audience=profile.audience, client_id=profile.client_id, algorithms=profile.algorithms,
        leeway=profile.leeway_seconds, required_claims=profile.required_claims,
    )  # fmt: skip


async def verifies(jwt: str, keys: KeySetLookup, rules: Rules, now: float) -> bool:
    """Does `jwt` pass verification? (A secret store asks before keeping another writer's "newer" token; when the
    keys cannot be had, the answer is no: our own verified token then replaces it, which is never wrong.)"""
    try:
        await verify_token(jwt, keys, rules, now)
    except EdgeTokenError:
        return False
    return True


def fail(reason: str, message: str) -> VerificationError:
    """A VerificationError with its metric `reason`."""
    return VerificationError(f"token rejected: {message}", reason)


def parse_header(token: object) -> dict[str, Any]:
    """Structural checks and the decoded JOSE header; VerificationError(reason="malformed"/"size")."""
    if not isinstance(token, str):
        raise fail("malformed", "access_token is not a string")
    if len(token) > MAX_TOKEN_BYTES:
        raise fail("size", f"token is {len(token)} bytes, more than the {MAX_TOKEN_BYTES} byte limit")
    parts = token.split(".")
    if len(parts) != 3:
        kind = "an encrypted JWE" if len(parts) == 5 else f"{len(parts)} parts"
        raise fail("malformed", f"not a compact JWS (expected 3 dot-separated parts, got {kind})")
    if not COMPACT_JWS.fullmatch(token):  # fullmatch: a `$` anchor would let a final "\n" through
        raise fail("malformed", "a JWT part is empty or not base64url")
    return _json_object(_b64decode(parts[0]), "header")


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    """A JWT part's JSON object; the message names the defect (strictjson), never the token."""
    try:
        value = strictjson.loads(raw)
    except ValueError as exc:  # strictjson.JsonDefect
        raise fail("malformed", f"malformed JWT {part}: {exc}") from None
    if not isinstance(value, dict):
        raise fail("malformed", f"malformed JWT {part}: {strictjson.kind(value)}, not a JSON object")
    return value


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise fail("malformed", "a JWT part is not base64url") from None


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) WITHOUT checking anything but structure: for `inspect` and diagnostics only."""
    header = parse_header(token)
    return header, _json_object(_b64decode(token.split(".")[1]), "payload")


async def verify_token(
    token: str,
    keys: KeySetLookup,
    rules: Rules,
    now: float,
    *,
    received_at: float | None = None,
    expires_in: float | None = None,
    scope: str | None = None,
) -> Token:
    """Verify signature and claims; return the Token value object or raise VerificationError.

    `received_at` is our clock when the provider answered; None means the token was read back from a sink,
    in which case its `iat` stands in for the receipt time.
    """
    header = parse_header(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        allowed = ", ".join(rules.algorithms)
        raise fail("algorithm", f"algorithm {str(alg)[:20]!r} is not allowed (allowed: {allowed})")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise fail("malformed", "the JWT header's kid is not a string")
    claims = await _verified_claims(token, keys, kid, alg, rules.algorithms)
    lifetime = check_claims(claims, rules, now, received_at=received_at, expires_in=expires_in)
    start = received_at if received_at is not None else _number(claims, "iat", now)
    return Token(
        jwt=token,
        claims=claims,
        received_at=start if start is not None else now,
        lifetime=lifetime,
        token_type="Bearer",  # every field given: a Record then fills in no defaults (a call fewer per renewal)
        scope=scope if scope is not None else (claims.get("scope") if isinstance(claims.get("scope"), str) else None),
        kid=kid,
    )


async def _verified_claims(
    token: str, keys: KeySetLookup, kid: str | None, alg: str, algorithms: tuple[str, ...]
) -> dict[str, Any]:
    """The payload of `token` if its signature verifies under the JWKS key `kid` (one rate-limited refetch when a
    key was replaced under the same kid), parsed by strictjson (duplicates, NaN, depth); every joserfc failure
    becomes a VerificationError with its reason. (joserfc's `jwt.decode` is this signature check plus a
    `json.loads` of the payload; parsing it ourselves spares a second parser per renewal.)"""
    key_set = await keys(kid, False)
    try:
        try:
            signed = jws.deserialize_compact(token, key_set, algorithms=list(algorithms))
        except BadSignatureError:
            fresher = await keys(kid, True)
            if fresher is key_set:
                raise
            signed = jws.deserialize_compact(token, fresher, algorithms=list(algorithms))
    except InvalidKeyIdError:
        raise fail("unknown_kid", "its signing key is not in the provider's JWKS (unknown kid)") from None
    except BadSignatureError:
        raise fail("signature", "bad signature") from None
    except UnsupportedAlgorithmError:
        raise fail("algorithm", f"algorithm {alg!r} does not match the signing key") from None
    except (UnsupportedHeaderError, ExceededSizeError):
        raise fail("malformed", "unsupported or oversized JWT header") from None
    except (JoseError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise fail("malformed", f"cannot decode the JWT ({type(exc).__name__})") from None
    return _json_object(signed.payload or b"", "payload")


def _number(claims: Mapping[str, Any], name: str, now: float) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is int and now - PLAUSIBLE_SECONDS <= value <= now + PLAUSIBLE_SECONDS:
        return float(value)  # what nearly every token has (whole seconds, near now): `finite`'s answer, in one step
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail("malformed", f"claim {name} is not a NumericDate")
    number = finite(value, now - PLAUSIBLE_SECONDS, now + PLAUSIBLE_SECONDS)  # range first: 10**400 never floats
    if number is None:
        raise fail("malformed", f"claim {name} is not a plausible NumericDate")
    return number


def check_claims(
    claims: Mapping[str, Any],
    rules: Rules,
    now: float,
    *,
    received_at: float | None = None,
    expires_in: float | None = None,
) -> float:
    """Apply the claim rules; return the token's lifetime in seconds (from `iat`, else `expires_in`)."""
    exp = _number(claims, "exp", now)
    if exp is None:
        raise fail("expired", "it has no exp claim")
    if exp <= now:
        raise fail("expired", "it has expired")
    nbf = _number(claims, "nbf", now)
    if nbf is not None and nbf > now + rules.leeway:
        raise fail("not_yet_valid", "its nbf is in the future")
    iat = _number(claims, "iat", now)
    if iat is not None and iat > now + rules.leeway:
        raise fail("not_yet_valid", "its iat is in the future")
    if claims.get("iss") != rules.issuer:
        raise fail(
            "issuer",
            f"the token's issuer (iss) is {sanitize_claim(claims.get('iss'))} but the configured issuer is "
            f"{rules.issuer!r}; if this provider is the right one, set issuer = {sanitize_claim(claims.get('iss'))} "
            "in the profile (an older Sitecore tenant or another token_url issues under another name)",
        )
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if rules.audience not in audiences:
        raise fail(
            "audience",
            f"the token's audience (aud) is {sanitize_claim(audience)} and does not include the configured "
            f"audience {rules.audience!r}; set audience in the profile to the API this client is granted",
        )
    check_client_binding(claims, rules.client_id)
    check_required_claims(claims, rules.required_claims)
    if iat is not None and exp > iat:
        lifetime = exp - iat
    elif expires_in is not None:
        lifetime = expires_in
    else:
        lifetime = exp - (received_at if received_at is not None else now)
    if received_at is not None:
        # on our clock the token must never outlive its own exp: consumers check exp against clocks like ours
        lifetime = min(lifetime, exp - received_at)
    return max(lifetime, 1.0)


def check_required_claims(claims: Mapping[str, Any], required: tuple[tuple[str, str], ...]) -> None:
    """Pinned claims (`required_claims`): a string claim must equal the value exactly; a list claim must contain
    it. Anything else (missing, a number, an object) fails. This is what keeps another tenant's token, from a
    mixed-up client secret, away from this profile's consumers."""
    for name, expected in required:
        value = claims.get(name)
        if value == expected or (isinstance(value, list) and expected in value):
            continue
        got = "is missing" if name not in claims else f"is {sanitize_claim(value)}"
        raise fail(
            "required_claim",
            f"required claim {name!r} {got}, not {expected!r} (required_claims); this token belongs to another "
            "tenant or client: check the client id and secret of this profile",
        )


def check_client_binding(claims: Mapping[str, Any], client_id: str) -> None:
    """The token must be ours: azp / client_id / appid name our client, or else sub does.

    A present `azp`, `client_id` or `appid` naming another client is always fatal. Providers put the client
    in different claims (Auth0: azp and sub=<id>@clients; RFC 9068 and oidc-provider: client_id with sub=<id>;
    Keycloak: azp with a user UUID in sub; Azure AD: azp or appid), so sub is only required when none of the
    others is present.
    """
    named = False
    for name in ("azp", "client_id", "appid"):  # a loop, not a list and a generator: two calls fewer a renewal
        if name in claims:
            if claims[name] != client_id:
                raise fail("client_binding", "it was issued to another client (azp/client_id)")
            named = True
    if named:
        return
    if claims.get("sub") not in (client_id, f"{client_id}@clients"):
        raise fail("client_binding", "it names no client (azp, client_id or sub) matching our client_id")


def sanitize_claim(value: object) -> str:
    """A claim value short and safe enough to name in a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."
