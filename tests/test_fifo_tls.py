"""A PEM file that is a FIFO never blocks: `check` refuses it at once, and a running daemon whose ca_file turns
into a FIFO keeps answering /healthz, classifies the failure as a config error and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import profile_toml
from daemonproc import DaemonProcess
from edge_token.localauth import LocalAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


def config_with_ca(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, ca: Path, listen: str = "") -> Path:
    config = tmp_path / "config.toml"
    text = profile_toml("main", auth, secret_file, [{"path": str(tmp_path / "t.jwt")}], ca_file=str(ca))
    config.write_text(f'[daemon]\nlog_format = "json"\nlisten = "{listen}"\n' + text)
    return config


def test_check_refuses_a_fifo_ca_file_at_once(auth: LocalAuthServer, tmp_path: Path, secret_file: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "edge_token", "check", "-c", str(config_with_ca(tmp_path, auth, secret_file, fifo))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 78 and "not a regular file" in result.stderr, result.stderr
    assert time.monotonic() - started < 10


@pytest.mark.skipif(not SYSTEM_CAS.exists(), reason="needs a system CA bundle to copy")
async def test_a_ca_file_turning_into_a_fifo_neither_blocks_nor_survives_sigterm(
    auth: LocalAuthServer, tmp_path: Path, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(SYSTEM_CAS.read_bytes())
    config = config_with_ca(tmp_path, auth, secret_file, ca, listen="127.0.0.1:0")
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    address = (await daemon.wait_for("http.listening"))["address"]
    await daemon.wait_for("token.renewed")
    ca.unlink()
    os.mkfifo(ca, 0o600)
    daemon.send(signal.SIGUSR1)  # renew now: the request needs the TLS settings, so the bundle is looked at
    failed = await daemon.wait_for("token.renewal_failed")
    assert failed["error"] == "config" and "not a regular file" in failed["message"]
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(f"http://{address}/healthz") as response:
        assert response.status == 200
    started = time.monotonic()
    assert await daemon.stop(timeout=15) == 0 and time.monotonic() - started < 11
    await asyncio.sleep(0)
