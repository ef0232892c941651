"""sd_notify against a real AF_UNIX datagram socket and the real daemon: READY -> WATCHDOG pings -> STOPPING."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import profile_toml
from daemonproc import DaemonProcess
from edge_token.localauth import Fault, LocalAuthServer
from edge_token.systemd import Notifier, watchdog_interval

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]


class NotifySocket:
    """What systemd would be: a datagram socket that records every message."""

    def __init__(self, address: str) -> None:
        self.messages: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.address = address
        self._task = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.messages.append((await loop.sock_recv(self.sock, 65536)).decode())

    def lines(self, prefix: str) -> list[int]:
        """Indexes of the messages containing a line that starts with `prefix`."""
        return [i for i, m in enumerate(self.messages) if any(line.startswith(prefix) for line in m.splitlines())]

    async def wait_for(self, prefix: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines(prefix)) < count:
            assert time.monotonic() < deadline, f"no {count}x {prefix}; got {self.messages[-5:]}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.sock.close()


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    server = NotifySocket(str(tmp_path / "notify.sock"))
    yield server
    await server.close()


@pytest.fixture
def config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> Callable[..., Path]:
    def make(daemon: str = "") -> Path:
        path = tmp_path / "config.toml"
        sinks = [{"path": str(tmp_path / "token.jwt")}]
        path.write_text(
            f'[daemon]\nlog_format = "json"\nlisten = ""\n{daemon}\n' + profile_toml("main", auth, secret_file, sinks)
        )
        return path

    return make


async def run(config: Path, env: dict[str, str]) -> DaemonProcess:
    return await DaemonProcess(config, env=env).start()


async def test_ready_watchdog_stopping_sequence(notify: NotifySocket, config: Callable[..., Path]) -> None:
    """READY=1 (with a STATUS line) after the first token, WATCHDOG=1 every half interval, STOPPING=1 at the end."""
    daemon = await run(config(), {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    try:
        await notify.wait_for("READY=1")
        await notify.wait_for("WATCHDOG=1", count=len(notify.lines("WATCHDOG=1")) + 3)
    finally:
        assert await daemon.stop() == 0
    await notify.wait_for("STOPPING=1")
    ready, stopping = notify.lines("READY=1")[0], notify.lines("STOPPING=1")[0]
    pings_after_ready = [i for i in notify.lines("WATCHDOG=1") if ready < i < stopping]
    assert len(pings_after_ready) >= 3
    assert "STATUS=1/1 profiles fresh" in notify.messages[ready]
    assert len(notify.lines("READY=1")) == 1
    assert daemon.count("token.renewed") == 1


async def test_no_ready_before_the_first_token(
    notify: NotifySocket, config: Callable[..., Path], auth: LocalAuthServer
) -> None:
    """With the provider down, READY=1 is withheld (STATUS explains), then sent once a token is written."""
    auth.token_faults.extend(Fault(503, b"down", {"Retry-After": "1"}) for _ in range(3))
    daemon = await run(config(), {"NOTIFY_SOCKET": notify.address})
    try:
        await daemon.wait_for("token.renewal_failed", count=2)
        assert notify.lines("READY=1") == []
        assert any("not ready: main" in m for m in notify.messages)
        await notify.wait_for("READY=1")
        assert daemon.count("token.renewed") == 1
    finally:
        await daemon.stop()


async def test_ready_timeout_sends_ready_with_an_explanation(
    notify: NotifySocket, config: Callable[..., Path], auth: LocalAuthServer
) -> None:
    """After ready_timeout_seconds without a token, READY=1 goes out anyway, saying which profiles wait."""
    auth.token_faults.extend(Fault(503, b"down") for _ in range(1000))
    daemon = await run(config("ready_timeout_seconds = 1"), {"NOTIFY_SOCKET": notify.address})
    try:
        await notify.wait_for("READY=1")
        message = notify.messages[notify.lines("READY=1")[0]]
        assert "ready_timeout reached; still without a verified token: main" in message
    finally:
        await daemon.stop()


async def test_abstract_socket_and_foreign_watchdog_pid(tmp_path: Path) -> None:
    """`@name` addresses the abstract namespace; a WATCHDOG_PID of another process disables our pings."""
    server = NotifySocket(f"@edge-token-test-{tmp_path.name}")
    try:
        notifier = Notifier({"NOTIFY_SOCKET": server.address}, log=None)
        assert notifier.send("STATUS=über ✓")
        await server.wait_for("STATUS=über ✓")
    finally:
        await server.close()
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_missing_socket_is_reported_once(tmp_path: Path) -> None:
    """A vanished notify socket logs one warning, not one per watchdog tick, and never raises."""
    warnings: list[Any] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append(event)

    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, Log())
    assert not notifier.send("WATCHDOG=1") and not notifier.send("WATCHDOG=1")
    assert warnings == ["systemd.notify_failed"]
