"""`once`: reuse a FRESH token with zero requests, renew a STALE one, bounded retries, sysexits codes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import CLIENT_ID, FakeClock
from edge_token.app import exit_code, run_once
from edge_token.core.settings import Config
from faultyauth import Fault, FaultyAuthServer


def fake_sleep(clock: FakeClock) -> Callable[[float], Any]:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return sleep


async def once(config: Config, clock: FakeClock, log: Any, **kwargs: Any) -> int:
    results = await run_once(config, clock, log, environ={}, sleep=fake_sleep(clock), **kwargs)
    return exit_code(results)


async def test_fresh_token_on_disk_is_reused_without_a_request(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """A restarting init container must not spend provider quota: the second run makes no token request."""
    config = make_config()
    assert await once(config, clock, log) == 0
    first = (tmp_path / "token.jwt").read_text()
    assert auth.token_requests == 1
    clock.advance(700)  # 70 % of the 1000 s lifetime: still FRESH (refresh_at 0.8)
    assert await once(config, clock, log) == 0
    assert auth.token_requests == 1
    assert (tmp_path / "token.jwt").read_text() == first


async def test_stale_token_is_renewed(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """Past refresh_at of its lifetime the token is replaced by a new one."""
    config = make_config()
    assert await once(config, clock, log) == 0
    first = (tmp_path / "token.jwt").read_text()
    clock.advance(850)
    assert await once(config, clock, log) == 0
    assert auth.token_requests == 2
    assert (tmp_path / "token.jwt").read_text() != first


async def test_foreign_token_on_disk_is_replaced(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """A token for another client (or garbage) in the sink is never adopted."""
    config = make_config()
    (tmp_path / "token.jwt").write_text(auth.mint({**auth.claims_for("client-b", "https://api.sitecorecloud.io")}))
    assert await once(config, clock, log) == 0
    assert auth.token_requests == 1
    claims_written = (tmp_path / "token.jwt").read_text()
    assert claims_written != "" and "client-b" not in claims_written


async def test_missing_sink_is_filled_from_an_adopted_token(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """A FRESH token found in one sink is copied to a sink that lost it, with no token request."""
    sinks = [{"path": str(tmp_path / "a.jwt")}, {"path": str(tmp_path / "b.json"), "format": "json"}]
    config = make_config(sinks=sinks)
    assert await once(config, clock, log) == 0
    (tmp_path / "b.json").unlink()
    assert await once(config, clock, log) == 0
    assert auth.token_requests == 1
    assert (tmp_path / "a.jwt").read_text() in (tmp_path / "b.json").read_text()


async def test_transient_failures_are_retried_within_the_timeout(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """503, then 429 with Retry-After, then success: once still succeeds, honouring the 30 s wait."""
    auth.token_faults.extend([Fault(503, b"x"), Fault(429, b"x", {"Retry-After": "30"})])
    start = clock.time()
    assert await once(make_config(), clock, log, timeout=120) == 0
    assert auth.token_requests == 3
    assert clock.time() - start >= 30
    assert (tmp_path / "token.jwt").exists()


async def test_outage_longer_than_the_timeout_fails_with_69(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """A provider down for longer than --timeout: exit 69, nothing written."""
    auth.token_faults.extend([Fault(503, b"x")] * 50)
    assert await once(make_config(), clock, log, timeout=20) == 69
    assert not (tmp_path / "token.jwt").exists()


async def test_rejected_credentials_fail_fast_with_77(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, secret_file: Path
) -> None:
    """Wrong secret: one request, exit 77 (no retry loop for a permanent refusal)."""
    secret_file.write_text("wrong")
    assert await once(make_config(), clock, log) == 77
    assert auth.token_requests == 1


async def test_stale_token_survives_an_outage(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """Provider down but the token on disk is STALE and still valid: exit 0, the old token stays."""
    config = make_config()
    assert await once(config, clock, log) == 0
    before = (tmp_path / "token.jwt").read_text()
    clock.advance(900)
    auth.token_faults.extend([Fault(503, b"x")] * 50)
    assert await once(config, clock, log, timeout=10) == 0
    assert (tmp_path / "token.jwt").read_text() == before


async def test_unwritable_sink_fails_with_73(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, tmp_path: Path
) -> None:
    """A sink in a missing directory: exit 73; another sink of the profile is still written."""
    sinks = [{"path": str(tmp_path / "missing" / "a.jwt")}, {"path": str(tmp_path / "b.jwt")}]
    assert await once(make_config(sinks=sinks), clock, log) == 73
    assert (tmp_path / "b.jwt").exists()


async def test_client_binding_uses_the_configured_client(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any
) -> None:
    """The token the server issues names our client id in azp and sub."""
    results = await run_once(make_config(), clock, log, environ={}, sleep=fake_sleep(clock))
    outcome = results[0].outcome
    assert outcome is not None and outcome.token is not None
    assert outcome.token.claims["azp"] == CLIENT_ID
    assert outcome.token.claims["sub"] == f"{CLIENT_ID}@clients"


async def test_a_missing_secret_file_fails_at_once_with_78(
    make_config: Callable[..., Config], auth: FaultyAuthServer, clock: FakeClock, log: Any, secret_file: Path
) -> None:
    """A configuration problem found at the first attempt is not retried until the timeout: exit 78 at once."""
    config = make_config()
    secret_file.unlink()
    started = clock.time()
    assert await once(config, clock, log, timeout=60) == 78
    assert clock.time() - started < 1 and auth.token_requests == 0
