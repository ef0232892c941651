"""`edge-token run` as a real child process against the bundled auth server with lifetimes of a few seconds."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import profile_toml
from daemonproc import DaemonProcess, Reader, reference_check
from edge_token.provider.verify import decode_unverified
from faultyauth import Fault, FaultyAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]

Profiles = dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]  # name -> (sinks, settings)


@pytest.fixture
def write(tmp_path: Path, auth: FaultyAuthServer, secret_file: Path) -> Callable[..., Path]:
    """Write config.toml with the given profiles: {name: (sinks, settings)}; default one profile 'main'."""

    def make(profiles: Profiles | None = None, **settings: Any) -> Path:
        if profiles is None:
            profiles = {"main": ([{"path": str(tmp_path / "token.jwt")}], settings)}
        text = '[daemon]\nlog_format = "json"\nlisten = ""\njwks_min_refetch_seconds = 1\n'
        for name, (sinks, extra) in profiles.items():
            text += profile_toml(name, auth, secret_file, sinks, **{"leeway_seconds": 1, **extra})
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return make


async def start(daemons: list[DaemonProcess], config: Path) -> DaemonProcess:
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    return daemon


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".edge-token-tmp")]


async def test_one_request_per_rotation_and_readers_never_see_a_bad_token(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Over five rotations: one request each, distinct tokens, and a tight-loop reader sees only good tokens."""
    auth.ttl = 3
    reader = Reader(tmp_path / "token.jwt", auth, reference_check).start()
    daemon = await start(daemons, write(refresh_at=0.5))
    await daemon.wait_for("token.renewed", count=5, timeout=30)
    await reader.stop()
    assert await daemon.stop() == 0
    renewed = [e["fingerprint"] for e in daemon.events if e["event"] == "token.renewed"]
    assert auth.token_requests == auth.tokens_issued == len(renewed)
    assert len(set(renewed)) == len(renewed)
    assert reader.reads > 100 and reader.bad == []
    assert temp_files(tmp_path) == []


async def test_restart_with_a_fresh_token_makes_no_request(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """Stop and start again: the token on disk is adopted, the provider is not asked."""
    auth.ttl = 1000
    config = write()
    first = await start(daemons, config)
    await first.wait_for("token.renewed")
    assert await first.stop() == 0
    second = await start(daemons, config)
    adopted = await second.wait_for("token.adopted")
    assert adopted["state"] == "fresh"
    assert await second.stop() == 0
    assert auth.token_requests == 1


async def test_outage_longer_than_the_lifetime_then_recovery(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """The token expires during an outage; retries go on; within the backoff cap of recovery it is renewed."""
    auth.ttl = 2
    daemon = await start(daemons, write(refresh_at=0.5, retry_max_seconds=1))
    await daemon.wait_for("token.renewed")
    auth.token_faults.extend(Fault(503, b"down") for _ in range(10_000))
    await daemon.wait_for("token.renewal_failed", state="expired", timeout=15)
    auth.token_faults.clear()
    recovered = time.monotonic()
    await daemon.wait_for("token.renewed", count=2, timeout=10)
    assert time.monotonic() - recovered < 1 + 1.5  # the 1 s cap plus scheduling slack
    assert reference_check((tmp_path / "token.jwt").read_text(), auth) is None


async def test_retry_after_is_respected(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess]
) -> None:
    """A 503 with Retry-After: 2 delays the next request by at least two seconds."""
    auth.token_faults.append(Fault(503, b"busy", {"Retry-After": "2"}))
    daemon = await start(daemons, write())
    await daemon.wait_for("token.renewed", timeout=15)
    assert len(auth.request_times) == 2
    assert auth.request_times[1] - auth.request_times[0] >= 2.0


async def test_jwks_rotation_mid_run(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """The provider switches to a new key and drops the old one: the next renewal verifies with the new kid."""
    auth.ttl = 3
    daemon = await start(daemons, write(refresh_at=0.5))
    await daemon.wait_for("token.renewed")
    new_key = auth.rotate_key(keep_old=False)
    await daemon.wait_for("token.renewed", count=3, timeout=20)
    token = (tmp_path / "token.jwt").read_text()
    assert reference_check(token, auth) is None
    assert decode_unverified(token)[0]["kid"] == new_key.kid
    assert daemon.count("token.renewal_failed") <= 2  # at most one rate-limited JWKS refetch round


async def test_failing_sink_is_retried_without_new_token_requests(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """A sink whose directory is missing is retried on its own timer; the other sink is written at once."""
    auth.ttl = 1000
    missing = tmp_path / "later"
    sinks = [{"path": str(missing / "a.jwt")}, {"path": str(tmp_path / "b.jwt")}]
    daemon = await start(daemons, write({"main": (sinks, {})}))
    await daemon.wait_for("sink.write_failed")
    await daemon.wait_for("sink.written", sink=f"file:{tmp_path / 'b.jwt'}")
    missing.mkdir()
    await daemon.wait_for("sink.written", sink=f"file:{missing / 'a.jwt'}", timeout=15)
    assert (missing / "a.jwt").read_text() == (tmp_path / "b.jwt").read_text()
    assert auth.token_requests == 1


async def test_sighup_adds_removes_and_rejects_invalid_configs(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """SIGHUP: a new profile starts, an unchanged one keeps its token, a bad config is refused, removal stops."""
    auth.ttl = 1000
    one: Profiles = {"one": ([{"path": str(tmp_path / "one.jwt")}], {})}
    two: Profiles = {"two": ([{"path": str(tmp_path / "two.jwt")}], {})}
    config = write(one)
    daemon = await start(daemons, config)
    await daemon.wait_for("token.renewed", profile="one")
    write({**one, **two})
    daemon.send(signal.SIGHUP)
    reloaded = await daemon.wait_for("config.reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (["two"], [], [])
    await daemon.wait_for("token.renewed", profile="two")
    assert auth.token_requests == 2
    config.write_text("[profiles.broken\n")
    daemon.send(signal.SIGHUP)
    failed = await daemon.wait_for("config.reload_failed")
    assert "not valid TOML" in failed["message"]
    write(two)
    daemon.send(signal.SIGHUP)
    reloaded = await daemon.wait_for("config.reloaded", count=2)
    assert reloaded["removed"] == ["one"]
    assert daemon.returncode is None
    assert await daemon.stop() == 0
    assert auth.token_requests == 2


async def test_sigusr1_renews_now(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess]
) -> None:
    """SIGUSR1 renews a FRESH token at once."""
    auth.ttl = 1000
    daemon = await start(daemons, write())
    await daemon.wait_for("token.renewed")
    daemon.send(signal.SIGUSR1)
    await daemon.wait_for("token.renewed", count=2)
    assert auth.token_requests == 2


async def test_sigterm_during_writes_leaves_complete_files_and_no_temp_files(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    """SIGTERM while twenty sinks are being written: exit 0, every sink holds a whole verified token."""
    auth.ttl = 30
    sinks = [{"path": str(tmp_path / f"s{i}.jwt")} for i in range(20)]
    config = write({"main": (sinks, {})})
    for _ in range(3):
        daemon = await start(daemons, config)
        await daemon.wait_for("sink.written")  # the first of twenty writes is done: the rest are in flight
        assert await daemon.stop() == 0
        assert temp_files(tmp_path) == []
        for sink in sinks:
            path = Path(sink["path"])
            if path.exists():
                assert reference_check(path.read_text(), auth) is None
        (tmp_path / "s0.jwt").unlink()  # force a fresh round of writes next time
    assert daemon.count("daemon.stopped") == 1
