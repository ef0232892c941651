"""Request -> verify -> write over real loopback HTTP: every bad answer and bad token is refused specifically,
nothing is written, and the last good token stays on disk."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CLIENT_ID, FakeClock
from corpus import ANSWERS, BAD_TOKENS, good_claims, snapshot, stranger_key
from edge_token.core.errors import CredentialsRejected, TransientError, VerificationError
from edge_token.renewer import Renewer
from faultyauth import Fault, FaultyAuthServer


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_is_refused_and_never_written(
    case: str, auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], tmp_path: Path
) -> None:
    """A 200 answer carrying a bad JWT fails verification with a specific reason; the good file stays."""
    renewer = renewer_for()
    assert (await renewer.renew()).ok
    before = snapshot(tmp_path)
    make_token, reason = BAD_TOKENS[case]
    auth.token_faults.append(Fault(status=200, access_token=make_token(auth)))
    outcome = await renewer.renew()
    assert isinstance(outcome.error, VerificationError), outcome.error
    assert outcome.error.reason == reason
    assert snapshot(tmp_path) == before
    assert renewer.current is not None and (tmp_path / "token.jwt").read_text() == renewer.current.jwt


async def test_unknown_kid_refetches_the_jwks_once(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], clock: FakeClock
) -> None:
    """A token with an unknown kid makes one JWKS refetch (rate-limited), then fails verification."""
    renewer = renewer_for()
    assert (await renewer.renew()).ok
    clock.advance(31)  # the first fetch was just now; refetches are rate-limited to one per 30 s
    fetched = auth.jwks_requests
    for _ in range(3):
        auth.token_faults.append(Fault(status=200, access_token=auth.mint(good_claims(auth), key=stranger_key())))
        outcome = await renewer.renew()
        assert isinstance(outcome.error, VerificationError) and outcome.error.reason == "unknown_kid"
    assert auth.jwks_requests == fetched + 1


async def test_key_rotation_is_picked_up_by_kid(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], clock: FakeClock
) -> None:
    """After the provider rotates its key, the new kid triggers a refetch and the token verifies."""
    renewer = renewer_for()
    assert (await renewer.renew()).ok
    auth.rotate_key(keep_old=False)
    clock.advance(31)
    outcome = await renewer.renew()
    assert outcome.ok, outcome.error
    assert outcome.token is not None and outcome.token.kid == auth.signing_key.kid


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_bad_answer_is_classified_and_nothing_written(
    case: str, auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], tmp_path: Path
) -> None:
    """Each failure of the token endpoint is classified once, with a useful message; the file stays."""
    renewer = renewer_for()
    assert (await renewer.renew()).ok
    before = snapshot(tmp_path)
    fault, error_class, text = ANSWERS[case]
    auth.token_faults.append(fault)
    outcome = await renewer.renew()
    assert type(outcome.error) is error_class, outcome.error
    assert text in str(outcome.error)
    assert snapshot(tmp_path) == before


async def test_retry_after_is_carried_to_the_policy(auth: FaultyAuthServer, renewer_for: Callable[..., Renewer],
                                                    clock: FakeClock) -> None:  # fmt: skip
    """A 429's Retry-After becomes the next attempt time."""
    renewer = renewer_for()
    auth.token_faults.append(Fault(429, {"error": "too_many_requests"}, {"Retry-After": "42"}))
    outcome = await renewer.renew()
    assert isinstance(outcome.error, TransientError) and outcome.error.retry_after == 42
    assert outcome.next_attempt_at == clock.time() + 42


async def test_connection_refused_and_timeout_are_transient(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]
) -> None:
    """No server, or a server too slow for timeout_seconds: a transient error naming the host."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = await renewer_for(token_url=f"http://127.0.0.1:{closed_port}/oauth/token").renew()
    assert isinstance(refused.error, TransientError) and "unreachable" in str(refused.error)
    auth.token_faults.append(Fault(200, {}, delay=2.0))
    slow = await renewer_for(timeout_seconds=0.3).renew()
    assert isinstance(slow.error, TransientError) and "did not answer within 0.3s" in str(slow.error)


@pytest.mark.parametrize(
    "settings",
    [{"request_format": "json"}, {"request_format": "form"}, {"auth_method": "client_secret_basic"}],
)
async def test_request_encodings_all_work(settings: dict[str, str], renewer_for: Callable[..., Renewer]) -> None:
    """JSON body, form body and HTTP Basic client authentication all obtain a verified token."""
    outcome = await renewer_for(**settings).renew()
    assert outcome.ok, outcome.error


async def test_expires_in_missing_falls_back_to_the_claims(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]
) -> None:
    """RFC 6749 makes expires_in RECOMMENDED only: without it the lifetime comes from exp - iat."""
    token = auth.mint(good_claims(auth))
    auth.token_faults.append(Fault(200, {"access_token": token, "token_type": "bearer"}))
    outcome = await renewer_for().renew()
    assert outcome.ok and outcome.token is not None and outcome.token.lifetime == 1000


async def test_form_encoded_answer_and_oidc_provider_claim_shape(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]
) -> None:
    """A form-encoded answer, and RFC 9068 claims (client_id, bare sub, aud list, at+jwt) are accepted."""
    claims = good_claims(auth, azp=None, sub=CLIENT_ID, client_id=CLIENT_ID, aud=["x", "https://api.sitecorecloud.io"])
    token = auth.mint(claims, {"typ": "at+jwt"})
    body = f"access_token={token}&token_type=Bearer&expires_in=1000".encode()
    auth.token_faults.append(Fault(200, body, {"Content-Type": "application/x-www-form-urlencoded"}))
    outcome = await renewer_for().renew()
    assert outcome.ok, outcome.error


async def test_secret_echoed_by_a_hostile_server_is_scrubbed(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]
) -> None:
    """An error_description that repeats our secret does not carry it into the error message: the provider's free
    text is never repeated (it could encode the secret in ways no scrubber enumerates), a known code is."""
    from conftest import CLIENT_SECRET

    auth.token_faults.append(Fault(401, {"error": "access_denied", "error_description": f"bad {CLIENT_SECRET}"}))
    outcome = await renewer_for().renew()
    assert isinstance(outcome.error, CredentialsRejected)
    assert CLIENT_SECRET not in str(outcome.error) and "bad" not in str(outcome.error)
    assert "401 access_denied" in str(outcome.error)


async def test_rotated_secret_heals_without_restart(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], secret_file: Path
) -> None:
    """The secret is re-read on every attempt: rejected, then accepted once the file is fixed."""
    from conftest import CLIENT_SECRET

    secret_file.write_text("wrong-secret")
    renewer = renewer_for()
    assert isinstance((await renewer.renew()).error, CredentialsRejected)
    secret_file.write_text(CLIENT_SECRET)
    assert (await renewer.renew()).ok
