"""JWKS cache: only public signing keys, last good set kept on failure, periodic and rate-limited refetches."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import OctKey, RSAKey

from conftest import FakeClock
from edge_token.core.errors import JwksError
from edge_token.net.http import make_session
from edge_token.provider.jwks import JwksCache, usable_keys
from faultyauth import Fault, FaultyAuthServer


def public(key: RSAKey) -> dict[str, Any]:
    return key.as_dict(private=False)


@pytest.mark.filterwarnings("ignore:Key size should be")
def test_only_public_asymmetric_signing_keys_are_accepted() -> None:
    """Private parts, symmetric keys, encryption keys and short RSA keys are skipped with a reason."""
    good = RSAKey.generate_key(2048, parameters={"kid": "good"})
    document = {
        "keys": [
            public(good),
            good.as_dict(private=True),
            OctKey.generate_key(256).as_dict(),
            {**public(good), "kid": "enc", "use": "enc"},
            {**public(good), "kid": "ops", "key_ops": ["encrypt"]},
            {**public(RSAKey.generate_key(1024, parameters={"kid": "small"}, private=True))},
            {"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"},
            "not a key",
        ]
    }
    accepted, skipped = usable_keys(document)
    assert [key["kid"] for key in accepted] == ["good"]
    reasons = " | ".join(skipped)
    for expected in ("private key material", "not an RSA/EC/OKP", "not a signature-verification key",
                     "shorter than 2048", "kid is not a string"):  # fmt: skip
        assert expected in reasons


@pytest.mark.parametrize("document", [[], {"keys": "x"}, {"nokeys": []}, "text", None])
def test_malformed_documents_are_errors(document: Any) -> None:
    """A JWKS that is not an object with a keys list is refused as a whole."""
    with pytest.raises(JwksError):
        usable_keys(document)


@pytest.fixture
async def cache(auth: FaultyAuthServer, clock: FakeClock) -> AsyncIterator[JwksCache]:
    async with make_session() as session:
        yield JwksCache(auth.jwks_url, session, clock, refresh_seconds=3600, min_refetch_seconds=30)


async def test_failed_or_malformed_refresh_keeps_the_last_good_set(
    auth: FaultyAuthServer, cache: JwksCache, clock: FakeClock
) -> None:
    """Outages, garbage and key-less sets never replace a good key set."""
    kid = auth.signing_key.kid
    await cache.key_set(kid)
    for fault in (Fault(503, b"down"), Fault(200, b"<html>"), Fault(200, {"keys": []}),
                  Fault(200, {"keys": [OctKey.generate_key(256).as_dict()]})):  # fmt: skip
        auth.jwks_faults.append(fault)
        await cache.refresh()
        assert cache.kids == {kid}
        assert cache.last_error is not None
        keys = await cache.key_set(kid)
        assert keys.get_by_kid(kid) is not None


async def test_no_good_set_yet_raises(auth: FaultyAuthServer, cache: JwksCache) -> None:
    """Without any good fetch, the error says why."""
    auth.jwks_faults.append(Fault(500, b"x"))
    with pytest.raises(JwksError, match="answered HTTP 500"):
        await cache.key_set("k")


async def test_periodic_refresh_is_driven_by_the_clock(
    auth: FaultyAuthServer, cache: JwksCache, clock: FakeClock
) -> None:
    """A known kid causes no fetch until the refresh interval (jittered 90-100 %) has passed."""
    kid = auth.signing_key.kid
    await cache.key_set(kid)
    fetched = auth.jwks_requests
    clock.advance(3000)
    await cache.key_set(kid)
    assert auth.jwks_requests == fetched
    clock.advance(601)
    await cache.key_set(kid)
    assert auth.jwks_requests == fetched + 1


async def test_unknown_kid_refetch_is_rate_limited(auth: FaultyAuthServer, cache: JwksCache, clock: FakeClock) -> None:
    """Unknown kids trigger at most one refetch per 30 s; a new key appearing is then found."""
    await cache.key_set(auth.signing_key.kid)
    fetched = auth.jwks_requests
    await cache.key_set("nope")
    assert auth.jwks_requests == fetched
    clock.advance(30)
    await cache.key_set("nope")
    await cache.key_set("nope")
    assert auth.jwks_requests == fetched + 1
    new = auth.rotate_key()
    clock.advance(30)
    await cache.key_set(new.kid)
    assert new.kid in cache.kids and auth.jwks_requests == fetched + 2


async def test_failed_refetch_is_retried_sooner_than_the_rate_limit(
    auth: FaultyAuthServer, cache: JwksCache, clock: FakeClock
) -> None:
    """After a failed refetch an unknown kid may try again 5 s later, not only after the 30 s rate limit."""
    await cache.key_set(auth.signing_key.kid)
    new = auth.rotate_key()
    clock.advance(30)
    auth.jwks_faults.append(Fault(503, b"down"))
    await cache.key_set(new.kid)
    assert new.kid not in cache.kids
    fetched = auth.jwks_requests
    clock.advance(4)
    await cache.key_set(new.kid)
    assert auth.jwks_requests == fetched  # still limited
    clock.advance(1)
    await cache.key_set(new.kid)
    assert new.kid in cache.kids and auth.jwks_requests == fetched + 1


def b64url_uint(value: int, zero_octets: int = 0) -> str:
    octets = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(b"\0" * zero_octets + octets).rstrip(b"=").decode()


@pytest.mark.filterwarnings("ignore:Key size should be")
@pytest.mark.parametrize("bits", [512, 1024])
def test_a_weak_modulus_padded_with_zero_octets_is_refused(bits: int) -> None:
    """A 512/1024-bit modulus whose `n` is padded to 2048 bits' worth of characters is still a weak key."""
    real = public(RSAKey.generate_key(1024, parameters={"kid": "weak"}, private=True))
    n = int.from_bytes(base64.urlsafe_b64decode(real["n"] + "=="), "big") >> (1024 - bits)
    weak = {**real, "n": b64url_uint(n | 1)}
    padded = {**weak, "n": b64url_uint(n | 1, zero_octets=256 - bits // 8)}
    assert len(padded["n"]) * 6 >= 2048  # what counting characters saw
    accepted, skipped = usable_keys({"keys": [padded, weak]})
    assert accepted == []
    assert "not a minimal" in skipped[0] and f"({bits}-bit modulus)" in skipped[1], skipped


ENCODINGS = st.sampled_from(["canonical", "zero_octets", "padding", "stray_bits", "foreign_char", "standard_b64"])


@settings(max_examples=300, deadline=None)
@given(
    modulus=st.one_of(
        st.integers(1, 2**4200), st.integers(2**2047, 2**2048 - 1), st.integers(2**16383, 2**16385), st.just(0)
    ),
    exponent=st.sampled_from([65537, 3, 1, 2, 0, 2**31 + 1]),
    encoding=ENCODINGS,
    zero_octets=st.integers(1, 300),
)
def test_rsa_strength_is_judged_on_the_integer_whatever_the_encoding(
    modulus: int, exponent: int, encoding: str, zero_octets: int
) -> None:
    """Property: an RSA key is accepted iff `n` and `e` are canonical Base64urlUInt and the integers make a
    2048..16384-bit odd modulus with an odd exponent >= 3; any other spelling of the same integers is refused."""
    n = b64url_uint(modulus)
    if encoding == "zero_octets":
        n = b64url_uint(modulus, zero_octets)
    elif encoding == "padding":
        n += "=" * (-len(n) % 4 or 4)
    elif encoding == "stray_bits" and len(n) % 4:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        n = n[:-1] + alphabet[alphabet.index(n[-1]) ^ 1]  # the last character's low bit is a leftover bit
    elif encoding == "foreign_char":
        n = n[:1] + "+" + n[1:]
    elif encoding == "standard_b64":
        n = n.replace("-", "+").replace("_", "/")
    key = {"kty": "RSA", "kid": "k", "n": n, "e": b64url_uint(exponent)}
    accepted, _ = usable_keys({"keys": [key]})
    canonical = n == b64url_uint(modulus)
    strong = 2048 <= modulus.bit_length() <= 16384 and modulus % 2 == 1 and exponent >= 3 and exponent % 2 == 1
    assert bool(accepted) == (canonical and strong)
