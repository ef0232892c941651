"""Hostile and malformed inputs: a corpus across tokens, token answers, JWKS documents and HTTP behaviour.

Each case asserts the specific error class (and reason), that nothing was written, and that the profile keeps
working afterwards (the next, good renewal succeeds). It adds to the cases of test_pipeline.py; the figures
(cases tried, rejected, written) cover both and are printed at the end of the run.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OctKey, RSAKey

from conftest import CLIENT_ID, FIGURES, FakeClock
from corpus import ANSWERS, BAD_TOKENS, b64, good_claims, snapshot
from edge_token.core.errors import EdgeTokenError, JwksError, ProtocolError, TransientError, VerificationError
from edge_token.renewer import Renewer
from faultyauth import Fault, FaultyAuthServer

TALLY = {"cases tried": 0, "rejected with the expected error": 0, "written": 0}


def record(rejected: bool, written: bool) -> None:
    TALLY["cases tried"] += 1
    TALLY["rejected with the expected error"] += rejected
    TALLY["written"] += written
    FIGURES["hostile inputs"] = dict(TALLY)


def hmac_with_public_pem(auth: FaultyAuthServer, alg: str) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64({'alg': alg, 'kid': auth.signing_key.kid})}.{b64(good_claims(auth))}"
    signature = hmac.new(auth.signing_key.as_pem(private=False), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(header: dict[str, Any], payload: bytes | dict[str, Any]) -> str:
    """A token with a correct-looking structure but a garbage signature (for checks before the signature)."""
    return f"{b64(header)}.{b64(payload)}.{b64(b'sig')}"


def key_swap(auth: FaultyAuthServer, alg: str) -> str:
    key = RSAKey.import_key(auth.signing_key.as_dict(private=True) | {"alg": alg})
    return auth.mint(good_claims(auth), {"alg": alg}, key=key)


def kid(value: Any) -> Callable[[FaultyAuthServer], str]:
    return lambda a: a.mint(good_claims(a), {"kid": value}, key=RSAKey.generate_key(2048))


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


TOKENS: dict[str, tuple[Callable[[FaultyAuthServer], str], str]] = {
    "HS384 with the public key PEM": (lambda a: hmac_with_public_pem(a, "HS384"), "algorithm"),
    "HS512 with the public key PEM": (lambda a: hmac_with_public_pem(a, "HS512"), "algorithm"),
    "RS256 key used as PS256": (lambda a: key_swap(a, "PS256"), "algorithm"),
    "RS256 key used as RS512": (lambda a: key_swap(a, "RS512"), "algorithm"),
    "ES256 header on an RSA signature": (lambda a: unsigned({"alg": "ES256", "kid": a.signing_key.kid}, good_claims(a)), "algorithm"),
    "alg missing": (lambda a: unsigned({"kid": a.signing_key.kid}, good_claims(a)), "algorithm"),
    "alg as a list": (lambda a: unsigned({"alg": ["RS256"]}, good_claims(a)), "algorithm"),
    "x5u header to another key": (lambda a: a.mint(good_claims(a), {"x5u": "https://evil/x"}, key=RSAKey.generate_key(2048, parameters={"kid": "evil"})), "unknown_kid"),
    "x5c header": (lambda a: a.mint(good_claims(a), {"kid": a.signing_key.kid, "x5c": ["MIIB"]}, key=RSAKey.generate_key(2048)), "signature"),
    "unknown critical header": (
        lambda a: unsigned({"alg": "RS256", "kid": a.signing_key.kid, "crit": ["exp2"], "exp2": 1}, good_claims(a)),
        "malformed",
    ),
    "kid path traversal": (kid("../../../../etc/passwd"), "unknown_kid"),
    "kid SQL injection": (kid("' OR '1'='1"), "unknown_kid"),
    "kid with NUL": (kid("a\u0000b"), "unknown_kid"),
    "kid as a number": (lambda a: unsigned({"alg": "RS256", "kid": 7}, good_claims(a)), "malformed"),
    "kid of 400 characters": (kid("k" * 400), "malformed"),
    "header not an object": (lambda a: f"{b64([1, 2])}.{b64(good_claims(a))}.{b64(b'x')}", "malformed"),
    "header not base64": (lambda a: "***." + a.mint(good_claims(a)).split(".", 1)[1], "malformed"),
    "payload deeply nested (over the size limit)": (lambda a: unsigned({"alg": "RS256"}, nested(5000)), "size"),
    "payload deeply nested": (lambda a: unsigned({"alg": "RS256", "kid": a.signing_key.kid}, nested(1000)), "signature"),
    "payload not UTF-8": (lambda a: unsigned({"alg": "RS256", "kid": a.signing_key.kid}, b"\xff\xfe\x00"), "signature"),
    "payload duplicate exp": (
        lambda a: a.mint(good_claims(a)).split(".")[0] + "." + b64(b'{"exp": 1, "exp": 9999999999}') + ".c2ln",
        "signature",
    ),
    "exp huge": (lambda a: a.mint(good_claims(a, exp=10**20)), "malformed"),
    "exp negative": (lambda a: a.mint(good_claims(a, exp=-1)), "expired"),
    "exp true": (lambda a: a.mint(good_claims(a, exp=True)), "malformed"),
    "exp NaN-like string": (lambda a: a.mint(good_claims(a, exp="NaN")), "malformed"),
    "iat as a string": (lambda a: a.mint(good_claims(a, iat="yesterday")), "malformed"),
    "nbf as a list": (lambda a: a.mint(good_claims(a, nbf=[1])), "malformed"),
    "aud as a number": (lambda a: a.mint(good_claims(a, aud=42)), "audience"),
    "aud list of non-strings": (lambda a: a.mint(good_claims(a, aud=[1, {"x": 2}])), "audience"),
    "iss as a list": (lambda a: a.mint(good_claims(a, iss=[a.issuer])), "issuer"),
    "iss with different case": (lambda a: a.mint(good_claims(a, iss=a.issuer.upper())), "issuer"),
    "azp as a list with ours": (lambda a: a.mint(good_claims(a, azp=[CLIENT_ID])), "client_binding"),
    "no client claims at all": (lambda a: a.mint(good_claims(a, azp=None, sub=None)), "client_binding"),
    "sub prefix trick": (lambda a: a.mint(good_claims(a, azp=None, sub=f"{CLIENT_ID}x@clients")), "client_binding"),
    "appid of another client": (lambda a: a.mint(good_claims(a, appid="other")), "client_binding"),
    "token of dots": (lambda a: "..", "malformed"),
    "JWE-shaped token": (lambda a: "a.b.c.d.e", "malformed"),
}  # fmt: skip


HTTP: dict[str, tuple[Fault, type[EdgeTokenError], str]] = {
    "access_token as a number": (Fault(200, {"access_token": 12345}), ProtocolError, "no access_token"),
    "access_token as a list": (Fault(200, {"access_token": ["a.b.c"]}), ProtocolError, "no access_token"),
    "access_token null": (Fault(200, {"access_token": None}), ProtocolError, "no access_token"),
    "access_token empty": (Fault(200, {"access_token": ""}), ProtocolError, "no access_token"),
    "token_type as a number": (Fault(200, {"access_token": "a.b.c", "token_type": 1}), ProtocolError, "token_type"),
    "scope as a list": (Fault(200, {"access_token": "a.b.c", "scope": ["a"]}), ProtocolError, "scope"),
    "expires_in true": (Fault(200, {"access_token": "a.b.c", "expires_in": True}), ProtocolError, "expires_in"),
    "expires_in a list": (Fault(200, {"access_token": "a.b.c", "expires_in": [1]}), ProtocolError, "expires_in"),
    "expires_in zero": (Fault(200, {"access_token": "a.b.c", "expires_in": 0}), ProtocolError, "expires_in"),
    "duplicate access_token members": (Fault(200, b'{"access_token": "a.b.c", "access_token": "d.e.f"}'), ProtocolError, "a member name appears twice"),
    "body not UTF-8": (Fault(200, b'{"access_token": "\xff\xfe"}'), ProtocolError, "not UTF-8 text"),
    "deeply nested JSON": (Fault(200, nested(100_000)), ProtocolError, "limit"),
    "nested JSON under the cap": (Fault(200, nested(8_000)), ProtocolError, "nested deeper than 32 levels"),
    "gzip bomb": (Fault(200, gzip.compress(b"{" + b" " * 20_000_000 + b"}"), {"Content-Encoding": "gzip"}), ProtocolError, "limit"),
    "endless chunked body": (Fault(200, b" " * 8192, chunks=10_000), ProtocolError, "limit"),
    "slowloris answer": (Fault(200, b'{"access_token": "a.b.c", "token_type": "Bearer"}', trickle=0.05), TransientError, "did not answer"),
    "redirect to another host": (Fault(307, b"", {"Location": "http://evil.example/steal"}), ProtocolError, "redirect"),
    "connection reset": (Fault(reset=True), TransientError, "unreachable"),
    "HTML 502 from a proxy": (Fault(502, b"<html>Bad Gateway</html>"), TransientError, "502"),
}  # fmt: skip
# an error body of the wrong types is classified by status: test_error_body_of_wrong_types below


async def check_case(renewer: Renewer, auth: FaultyAuthServer, tmp_path: Path, error_class: type, detail: str) -> None:
    before = snapshot(tmp_path)
    outcome = await renewer.renew()
    matched = type(outcome.error) is error_class and (
        outcome.error.reason == detail if isinstance(outcome.error, VerificationError) else detail in str(outcome.error)
    )
    written = snapshot(tmp_path) != before
    record(matched, written)
    assert matched, outcome.error
    assert not written
    assert (await renewer.renew()).ok, "the profile must keep working after a hostile answer"


@pytest.mark.parametrize("case", list(TOKENS) + list(BAD_TOKENS))
async def test_hostile_tokens(
    case: str, auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], tmp_path: Path
) -> None:
    """Tokens built to confuse the verifier: refused with the named rule, never written."""
    renewer = renewer_for(timeout_seconds=2)
    assert (await renewer.renew()).ok
    make, reason = TOKENS.get(case) or BAD_TOKENS[case]
    auth.token_faults.append(Fault(status=200, access_token=make(auth)))
    await check_case(renewer, auth, tmp_path, VerificationError, reason)


@pytest.mark.parametrize("case", list(HTTP) + list(ANSWERS))
async def test_hostile_answers(
    case: str, auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], tmp_path: Path
) -> None:
    """Token endpoint answers built to break the client: classified precisely, nothing written."""
    renewer = renewer_for(timeout_seconds=1)
    assert (await renewer.renew()).ok
    fault, error_class, detail = HTTP.get(case) or ANSWERS[case]
    auth.token_faults.append(fault)
    await check_case(renewer, auth, tmp_path, error_class, detail)


def signing_kid(auth: FaultyAuthServer) -> str:
    """The kid of the server's signing key (the server always sets one; joserfc types it optional)."""
    kid = auth.signing_key.kid
    assert kid is not None
    return kid


def private(auth: FaultyAuthServer) -> dict[str, Any]:
    return {"keys": [auth.signing_key.as_dict(private=True)]}


JWKS: dict[str, Callable[[FaultyAuthServer], Any]] = {
    "JWKS with only a private key": private,
    "JWKS with a 1024-bit key": lambda a: {"keys": [RSAKey.generate_key(1024, private=True, parameters={"kid": signing_kid(a)}).as_dict(private=False)]},
    "JWKS with a symmetric key": lambda a: {"keys": [OctKey.generate_key(256, parameters={"kid": signing_kid(a)}).as_dict()]},
    "JWKS with duplicate kids, stranger first": lambda a: {"keys": [RSAKey.generate_key(2048, parameters={"kid": signing_kid(a)}).as_dict(private=False), *a.jwks()["keys"]]},
    "JWKS keys not a list": lambda a: {"keys": {"kid": "x"}},
    "JWKS of 300 KiB": lambda a: {"keys": [], "pad": "x" * 300_000},
    "JWKS not JSON": lambda a: b"<html>",
    "JWKS with key of wrong type fields": lambda a: {"keys": [{"kty": "RSA", "kid": a.signing_key.kid, "n": 5, "e": []}]},
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Key size should be")
@pytest.mark.parametrize("case", list(JWKS))
async def test_hostile_jwks_after_rotation(
    case: str, auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], tmp_path: Path, clock: FakeClock
) -> None:
    """The provider rotates its key and then serves a hostile JWKS: the new token cannot be verified, the
    hostile set never replaces the good one, nothing is written; once the JWKS is sane again, renewal works."""
    renewer = renewer_for()
    assert (await renewer.renew()).ok
    auth.rotate_key(keep_old=False)
    body = JWKS[case](auth)
    auth.jwks_faults.append(Fault(200, body if isinstance(body, bytes) else json.dumps(body).encode()))
    clock.advance(31)
    before = snapshot(tmp_path)
    outcome = await renewer.renew()
    matched = isinstance(outcome.error, VerificationError | JwksError)
    record(matched, snapshot(tmp_path) != before)
    assert matched, outcome.error
    assert snapshot(tmp_path) == before
    clock.advance(31)
    assert (await renewer.renew()).ok


async def test_error_body_of_wrong_types(auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]) -> None:
    """An OAuth error body whose fields have the wrong types is still classified by its status."""
    auth.token_faults.append(Fault(400, {"error": 5, "error_description": ["x"]}))
    outcome = await renewer_for().renew()
    record(outcome.error is not None and outcome.error.kind == "rejected", False)
    assert outcome.error is not None and outcome.error.kind == "rejected" and "400" in str(outcome.error)
