"""Crash safety: kill -9 at random moments, including inside writes to twenty sinks, then restart.

After every kill each sink holds a complete verified token (the previous or the next), temp files a kill left
behind are gone after the next start, and a restart with a FRESH token makes no token request. 20 kills by
default, 300 with EDGE_TOKEN_SOAK=1.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from conftest import FIGURES, SOAK, profile_toml
from daemonproc import DaemonProcess, reference_check
from edge_token.localauth import LocalAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]
AUTH_TTL = 3600  # conftest.live_auth
SINKS = 20


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".edge-token-tmp")]


async def test_kill_minus_nine_never_corrupts_a_sink(auth: LocalAuthServer, tmp_path: Path, secret_file: Path) -> None:
    """Each round: start (adopt, no request), SIGUSR1 to rewrite all sinks, SIGKILL 0-40 ms later, check."""
    kills = 300 if SOAK else 20
    rng = random.Random(7)
    sinks = tmp_path / "sinks"
    sinks.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = ""\n'
        + profile_toml("main", auth, secret_file, [{"path": str(sinks / f"s{i:02}.jwt")} for i in range(SINKS)])
    )
    first = await DaemonProcess(config).start()
    await first.wait_for("token.renewed")
    await first.stop()
    corrupt = leftover_after_restart = restart_requests = temps_seen = 0
    rounds = 0
    while rounds < kills or (temps_seen == 0 and rounds < 3 * kills):  # until some kill landed inside a write
        rounds += 1
        requests_before = auth.token_requests
        daemon = await DaemonProcess(config).start()
        await daemon.wait_for("token.adopted")
        restart_requests += auth.token_requests - requests_before
        leftover_after_restart += len(temp_files(sinks))
        daemon.send(signal.SIGUSR1)
        await asyncio.sleep(rng.uniform(0.0, 0.04))
        await daemon.kill()
        temps_seen += len(temp_files(sinks))
        for path in sorted(sinks.glob("*.jwt")):
            if reference_check(path.read_text(), auth) is not None:
                corrupt += 1
    FIGURES["crash safety"] = {
        "kills": rounds, "corrupt sinks": corrupt, "temp files left by kills": temps_seen,
        "temp files after restart": leftover_after_restart, "token requests at restart": restart_requests,
    }  # fmt: skip
    assert temps_seen > 0, "no kill landed inside a write: the test proved nothing about interrupted writes"
    assert corrupt == 0
    assert leftover_after_restart == 0
    assert restart_requests == 0
    assert len(list(sinks.glob("*.jwt"))) == SINKS
