"""A config that loads never pins a claim that no token the verifier accepts can carry (and one that can be met
always loads): `required_claims` contradicting issuer, client id or a NumericDate is refused at `check`, instead of
a profile that silently never gets a token."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_token.config import load_config
from edge_token.core.errors import ConfigError, VerificationError
from edge_token.provider.verify import Rules, check_claims

ISSUER, AUDIENCE, CLIENT = "https://issuer.example/", "https://api.example", "client-1"
NAMES = ["jti", "iss", "aud", "azp", "client_id", "appid", "sub", "exp", "iat", "nbf", "tenant_id", "scope", "org"]


def load(pins: dict[str, str]) -> Any:
    table = ", ".join(f'"{name}" = "{value}"' for name, value in pins.items())
    text = (
        f'[profiles.p]\nclient_id = "{CLIENT}"\nclient_secret_env = "S"\nissuer = "{ISSUER}"\n'
        f'audience = "{AUDIENCE}"\nrequired_claims = {{ {table} }}\n[[profiles.p.sinks]]\npath = "/tmp/t.jwt"\n'
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_text(text)
        path.chmod(0o600)
        return load_config(path, environ={})


def satisfiable(pins: dict[str, str]) -> bool:
    """The most permissive token carrying every pin: list-valued where the verifier allows a list (aud), the pin's
    string itself elsewhere. If even it fails the verifier, no token can pass. `jti` is a token's unique id: a pin
    could match one token, never the next one."""
    if "jti" in pins:
        return False
    now = time.time()
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "azp": CLIENT, "exp": now + 3600, "iat": now}
    for name, value in pins.items():
        claims[name] = [AUDIENCE, value] if name == "aud" else value
    rules = Rules(issuer=ISSUER, audience=AUDIENCE, client_id=CLIENT, required_claims=tuple(sorted(pins.items())))
    try:
        check_claims(claims, rules, now)
    except VerificationError:
        return False
    return True


values = st.sampled_from([ISSUER, AUDIENCE, CLIENT, "other", "1700000000"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=4))
def test_a_config_loads_exactly_when_its_pins_can_be_met(pins: dict[str, str]) -> None:
    try:
        load(pins)
    except ConfigError as exc:
        assert not satisfiable(pins), f"{pins} can be met, yet refused: {exc}"
        assert "required_claims" in str(exc)
        return
    assert satisfiable(pins), f"{pins} can never be met, yet the config loaded"


@pytest.mark.parametrize(
    ("pins", "said"),
    [
        ({"iss": "https://other.example/"}, "issuer"),
        ({"azp": "client-2"}, "client_id"),
        ({"exp": "1700000000"}, "NumericDate"),
        ({"jti": "abc"}, "unique"),
    ],
)
def test_the_refusal_names_the_pin_and_the_setting_it_contradicts(pins: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError, match=f"required_claims.{next(iter(pins))}.*{said}"):
        load(pins)
