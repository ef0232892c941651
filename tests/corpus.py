"""The hostile corpus shared by test_pipeline.py and test_hostile.py: bad tokens and bad token answers, each with
the error class and reason it must be refused with, and a few helpers to build them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

from conftest import CLIENT_ID, OTHER_CLIENT
from edge_token.core.errors import CredentialsRejected, ProtocolError, TransientError
from edge_token.localauth import LocalAuthServer
from faultyauth import Fault


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def good_claims(auth: LocalAuthServer, **changes: Any) -> dict[str, Any]:
    claims = auth.claims_for(CLIENT_ID, "https://api.sitecorecloud.io")
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def hs256_with_public_pem(auth: LocalAuthServer) -> str:
    pem = auth.signing_key.as_pem(private=False)
    signing_input = f"{b64({'alg': 'HS256', 'kid': auth.signing_key.kid})}.{b64(good_claims(auth))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def stranger_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "stranger"})


BAD_TOKENS: dict[str, tuple[Callable[[LocalAuthServer], str], str]] = {
    "alg none": (lambda a: f"{b64({'alg': 'none'})}.{b64(good_claims(a))}.{b64(b'x')}", "algorithm"),
    "alg None": (lambda a: f"{b64({'alg': 'None'})}.{b64(good_claims(a))}.{b64(b'x')}", "algorithm"),
    "alg none, empty signature": (lambda a: f"{b64({'alg': 'none'})}.{b64(good_claims(a))}.", "malformed"),
    "HS256 signed with the public key PEM": (hs256_with_public_pem, "algorithm"),
    "RS384 when only RS256 is allowed": (
        lambda a: a.mint(good_claims(a), {"alg": "RS384"}, key=RSAKey.generate_key(2048, parameters={"kid": "k"})),
        "algorithm",
    ),
    "unknown kid": (lambda a: a.mint(good_claims(a), key=stranger_key()), "unknown_kid"),
    "key not in JWKS under a known kid": (
        lambda a: a.mint(good_claims(a), {"kid": a.signing_key.kid}, key=stranger_key()),
        "signature",
    ),
    "embedded jwk header (oversized header)": (
        lambda a: a.mint(good_claims(a), {"kid": a.signing_key.kid, "jwk": stranger_key().as_dict(private=False)},
                         key=stranger_key()),
        "malformed",
    ),
    "jku header pointing elsewhere": (
        lambda a: a.mint(good_claims(a), {"kid": a.signing_key.kid, "jku": "https://evil.example/jwks"},
                         key=stranger_key()),
        "signature",
    ),
    "expired": (lambda a: a.mint(good_claims(a, iat=int(a.now()) - 100, exp=int(a.now()) - 10)), "expired"),
    "exp equal to now": (lambda a: a.mint(good_claims(a, exp=int(a.now()))), "expired"),
    "missing exp": (lambda a: a.mint(good_claims(a, exp=None)), "expired"),
    "exp as a string": (lambda a: a.mint(good_claims(a, exp=str(int(a.now()) + 100))), "malformed"),
    "nbf in the future": (lambda a: a.mint(good_claims(a, nbf=int(a.now()) + 3600)), "not_yet_valid"),
    "iat in the future": (lambda a: a.mint(good_claims(a, iat=int(a.now()) + 3600)), "not_yet_valid"),
    "issuer without trailing slash": (lambda a: a.mint(good_claims(a, iss=a.issuer.rstrip("/"))), "issuer"),
    "issuer with an extra slash": (lambda a: a.mint(good_claims(a, iss=a.issuer + "/")), "issuer"),
    "another issuer": (lambda a: a.mint(good_claims(a, iss="https://evil.example/")), "issuer"),
    "missing issuer": (lambda a: a.mint(good_claims(a, iss=None)), "issuer"),
    "wrong aud": (lambda a: a.mint(good_claims(a, aud="https://other.api")), "audience"),
    "aud list without ours": (lambda a: a.mint(good_claims(a, aud=["https://a", "https://b"])), "audience"),
    "another client's azp": (lambda a: a.mint(good_claims(a, azp=OTHER_CLIENT)), "client_binding"),
    "another client's sub only": (
        lambda a: a.mint(good_claims(a, azp=None, sub=f"{OTHER_CLIENT}@clients")),
        "client_binding",
    ),
    "another client's client_id claim": (lambda a: a.mint(good_claims(a, client_id=OTHER_CLIENT)), "client_binding"),
    "two parts": (lambda a: ".".join(a.mint(good_claims(a)).split(".")[:2]), "malformed"),
    "four parts": (lambda a: a.mint(good_claims(a)) + ".AAAA", "malformed"),
    "40 KiB token": (lambda a: a.mint(good_claims(a, padding="x" * 30_000)), "size"),
    "payload not JSON": (lambda a: f"{b64({'alg': 'RS256'})}.{b64(b'not json')}.{b64(b'x')}", "signature"),
    "duplicate header member": (
        lambda a: base64.urlsafe_b64encode(b'{"alg":"RS256","alg":"none"}').rstrip(b"=").decode() + ".e30.eA",
        "malformed",
    ),
}  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.endswith((".jwt", ".tmp"))}


ANSWERS: dict[str, tuple[Fault, type[Exception], str]] = {
    "401 access_denied": (
        Fault(401, {"error": "access_denied", "error_description": "Unauthorized"}),
        CredentialsRejected,
        "(401 access_denied)",
    ),
    "400 invalid_client": (Fault(400, {"error": "invalid_client"}), CredentialsRejected, "invalid_client"),
    "403 unauthorized_client": (Fault(403, {"error": "unauthorized_client"}), CredentialsRejected, "unauthorized"),
    "429 with Retry-After": (Fault(429, b"slow down", {"Retry-After": "17"}), TransientError, "429"),
    "503": (Fault(503, b"<html>down</html>"), TransientError, "503"),
    "500 temporarily_unavailable": (Fault(500, {"error": "temporarily_unavailable"}), TransientError, "500"),
    "400 temporarily_unavailable": (Fault(400, {"error": "temporarily_unavailable"}), TransientError, "400"),
    "404": (Fault(404, b"nope"), ProtocolError, "check token_url"),
    "redirect": (Fault(302, b"", {"Location": "https://evil.example/token"}), ProtocolError, "redirect"),
    "HTML page with 200": (Fault(200, b"<html>login</html>"), ProtocolError, "HTML page"),
    "truncated JSON": (Fault(200, b'{"access_token": "eyJ'), ProtocolError, "invalid JSON syntax"),
    "JSON array": (Fault(200, [1, 2]), ProtocolError, "not an object"),
    "NaN expires_in": (
        Fault(200, b'{"access_token": "a.b.c", "expires_in": NaN}'),
        ProtocolError,
        "NaN, which is not JSON",
    ),
    "no access_token": (Fault(200, {"token_type": "Bearer"}), ProtocolError, "no access_token"),
    "negative expires_in": (Fault(200, {"access_token": "a.b.c", "expires_in": -5}), ProtocolError, "expires_in"),
    "expires_in as text": (Fault(200, {"access_token": "a.b.c", "expires_in": "soon"}), ProtocolError, "expires_in"),
    "token_type DPoP": (Fault(200, {"access_token": "a.b.c", "token_type": "DPoP"}), ProtocolError, "Bearer"),
    "body over 64 KiB": (Fault(200, b"{" + b" " * 70_000 + b"}"), ProtocolError, "limit"),
    "100 KiB token": (Fault(200, {"access_token": "eyJ" + "A" * 102_400}), ProtocolError, "limit"),
}
