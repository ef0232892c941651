"""Property-based tests and fuzzing (Hypothesis): parsers raise only our errors, and the verifier never accepts
a token that an independent reference check rejects. 200 examples each by default, 5,000 with EDGE_TOKEN_SOAK=1.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey

from conftest import CLIENT_ID, FIGURES, SOAK
from edge_token.config import load_config
from edge_token.core.errors import ConfigError, EdgeTokenError, VerificationError
from edge_token.provider.jwks import build_key_set
from edge_token.provider.oauth import parse_token_answer
from edge_token.provider.verify import Rules, decode_unverified, verify_token

EXAMPLES = 5000 if SOAK else 200
PROFILE = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ISSUER, AUDIENCE, NOW = "https://issuer.example/", "https://api.example", 1_800_000_000.0
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
KEYS = build_key_set([KEY.as_dict(private=False)])
RULES = Rules(issuer=ISSUER, audience=AUDIENCE, client_id=CLIENT_ID, leeway=60)
COUNTS: dict[str, int] = {}


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1
    FIGURES["property tests"] = {f"{k} examples": v for k, v in COUNTS.items()}


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)  # fmt: skip
answers = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {}, optional={"access_token": json_values | st.text(), "expires_in": json_values, "token_type": json_values,
                      "scope": json_values}
    ).map(lambda d: json.dumps(d).encode()),
)  # fmt: skip


@PROFILE
@given(raw=answers, form=st.booleans())
def test_token_answer_parser_raises_only_our_errors(raw: bytes, form: bool) -> None:
    """Any body: a parsed answer or an EdgeTokenError, nothing else (no KeyError, TypeError, ...)."""
    count("token answer")
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    try:
        answer = parse_token_answer(raw, content_type, NOW)
    except EdgeTokenError:
        return
    assert isinstance(answer.access_token, str) and answer.access_token
    assert answer.expires_in is None or (math.isfinite(answer.expires_in) and answer.expires_in > 0)


jwt_like = st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/", max_size=60), min_size=1, max_size=6).map(".".join)  # fmt: skip


async def keys(kid: str | None, suspect: bool = False) -> Any:
    return KEYS


@PROFILE
@given(token=st.one_of(jwt_like, st.text(max_size=200)))
async def test_verifier_raises_only_verification_errors_on_garbage(token: str) -> None:
    """Random JWT-shaped text never crashes the verifier or the unverified decoder."""
    count("garbage token")
    with pytest.raises(VerificationError):
        await verify_token(token, keys, RULES, NOW)
    try:
        header, claims = decode_unverified(token)
    except VerificationError:
        return
    assert isinstance(header, dict) and isinstance(claims, dict)


def reference_accepts(claims: dict[str, Any], now: float) -> bool:
    """An independent statement of the rules (DESIGN.md "Verification"), for comparison."""

    def number(name: str) -> float | None:
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    exp = number("exp")
    if exp is None or exp <= now or abs(exp - now) > 3e9:
        return False
    for name in ("nbf", "iat"):
        if name in claims and (number(name) is None or number(name) > now + 60 or abs(number(name) - now) > 3e9):  # type: ignore[operator]
            return False
    aud = claims.get("aud")
    if claims.get("iss") != ISSUER or AUDIENCE not in (aud if isinstance(aud, list) else [aud]):
        return False
    named = [claims[n] for n in ("azp", "client_id", "appid") if n in claims]
    if named:
        return all(value == CLIENT_ID for value in named)
    return claims.get("sub") in (CLIENT_ID, f"{CLIENT_ID}@clients")


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(None), strategy)


claims_strategy = st.fixed_dictionaries({
    "iss": maybe(st.sampled_from([ISSUER, ISSUER.rstrip("/"), "https://evil/", ISSUER.upper()]) | json_scalars),
    "aud": maybe(st.sampled_from([AUDIENCE, [AUDIENCE], ["x", AUDIENCE], ["x"], "x"]) | json_scalars),
    "exp": maybe(st.sampled_from([NOW + 3600, NOW - 1, NOW, NOW + 1, 1e20, -5, True, "9999999999"]) | st.floats(NOW - 10, NOW + 10)),
    "iat": maybe(st.sampled_from([NOW - 10, NOW + 30, NOW + 61, "now", False])),
    "nbf": maybe(st.sampled_from([NOW - 10, NOW + 59, NOW + 3600])),
    "azp": maybe(st.sampled_from([CLIENT_ID, "client-b", [CLIENT_ID], ""])),
    "client_id": maybe(st.sampled_from([CLIENT_ID, "client-b"])),
    "sub": maybe(st.sampled_from([CLIENT_ID, f"{CLIENT_ID}@clients", "client-b@clients", "user-uuid"])),
}).map(lambda d: {k: v for k, v in d.items() if v is not None})  # fmt: skip


@PROFILE
@given(claims=claims_strategy)
async def test_verifier_never_accepts_what_the_reference_rejects(claims: dict[str, Any]) -> None:
    """Properly signed tokens with mutated claims: the verifier agrees with the reference check, both ways."""
    count("signed claims")
    token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, KEY)
    try:
        await verify_token(token, keys, RULES, NOW)
        accepted = True
    except VerificationError:
        accepted = False
    assert accepted == reference_accepts(claims, NOW), claims


toml_keys = st.sampled_from(["client_id", "client_secret_env", "client_secret", "token_url", "issuer", "audience",
                             "jwks_url", "refresh_at", "algorithms", "leeway_seconds", "sinks", "mode", "type",
                             "path", "format", "listen", "bogus"])  # fmt: skip
toml_scalars = st.one_of(st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20))  # fmt: skip


def toml_line(key: str, value: Any) -> str:
    return f"{key} = {json.dumps(value)}"


@PROFILE
@given(
    daemon=st.dictionaries(toml_keys, toml_scalars, max_size=3),
    profile=st.dictionaries(toml_keys, toml_scalars | st.lists(toml_scalars, max_size=3), max_size=6),
    sink=st.dictionaries(toml_keys, toml_scalars, max_size=4),
    raw=st.text(max_size=80),
)
@example(daemon={}, profile={}, sink={}, raw="=")  # found by Hypothesis: the hint for a bare "=" crashed (exit 70)
def test_config_loader_raises_only_config_errors(daemon: dict[str, Any], profile: dict[str, Any],
                                                  sink: dict[str, Any], raw: str) -> None:  # fmt: skip
    """Random configs (and random text) either load or fail with a ConfigError naming the file."""
    count("config")
    body = "[daemon]\n" + "\n".join(toml_line(k, v) for k, v in daemon.items() if k != "sinks")
    body += "\n[profiles.p]\n" + "\n".join(toml_line(k, v) for k, v in profile.items() if k != "sinks")
    body += "\n[[profiles.p.sinks]]\n" + "\n".join(toml_line(k, v) for k, v in sink.items() if k != "sinks")
    with tempfile.TemporaryDirectory() as directory:
        for text in (body, raw):
            path = Path(directory) / "config.toml"
            path.write_text(text)
            path.chmod(0o600)
            try:
                load_config(path, environ={})
            except ConfigError as exc:
                assert str(path) in str(exc)
