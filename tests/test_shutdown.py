"""A graceful stop is quiet and prompt: SIGTERM while many profiles renew ends with exit 0 within the grace period,
no error-level log line, and no temp file left behind."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from conftest import profile_toml
from daemonproc import DaemonProcess
from edge_token.localauth import LocalAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]


async def test_sigterm_during_renewals_is_quiet_and_prompt(
    auth: LocalAuthServer, tmp_path: Path, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    auth.ttl = 2
    text = '[daemon]\nlog_format = "json"\nlisten = ""\n'
    for i in range(100):
        text += profile_toml(f"p{i}", auth, secret_file, [{"path": str(tmp_path / f"p{i}.jwt")}], leeway_seconds=1)
    config = tmp_path / "config.toml"
    config.write_text(text)
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    await daemon.wait_for("token.renewed", count=300, timeout=60)  # three rounds: renewals now run continuously
    daemon.send(signal.SIGTERM)
    started = time.monotonic()
    assert await daemon.wait(timeout=15) == 0
    assert time.monotonic() - started < 10.5
    errors = [e for e in daemon.events if e.get("level") in ("error", "critical") or e.get("event") == "non-json"]
    assert errors == [], errors[:3]
    assert not [
        p.name for p in tmp_path.iterdir() if "tmp" in p.name and p.suffix != ".toml" and p.name != "client.secret"
    ]
    await asyncio.sleep(0)
