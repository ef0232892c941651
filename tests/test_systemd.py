"""sd_notify against a real AF_UNIX datagram socket and the real daemon: READY -> WATCHDOG pings -> STOPPING."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import profile_toml
from daemonproc import DaemonProcess
from edge_token.observe.systemd import Notifier, watchdog_interval
from faultyauth import Fault, FaultyAuthServer

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
def config(tmp_path: Path, auth: FaultyAuthServer, secret_file: Path) -> Callable[..., Path]:
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
    notify: NotifySocket, config: Callable[..., Path], auth: FaultyAuthServer
) -> None:
    """With the provider down, READY=1 is withheld (STATUS explains), then sent once a token is written."""
    auth.token_faults.extend(Fault(503, b"down", {"Retry-After": "1"}) for _ in range(3))
    daemon = await run(config(), {"NOTIFY_SOCKET": notify.address})
    try:
        await daemon.wait_for("token.renewal_failed", count=2)
        assert notify.lines("READY=1") == []
        assert any("not ready: main" in m for m in notify.messages)
        await notify.wait_for("READY=1")
        # the log line is written before READY=1 is sent, but the two reach us on different pipes
        await daemon.wait_for("token.renewed")
        assert daemon.count("token.renewed") == 1
    finally:
        await daemon.stop()


async def test_ready_timeout_sends_ready_with_an_explanation(
    notify: NotifySocket, config: Callable[..., Path], auth: FaultyAuthServer
) -> None:
    """After ready_timeout_seconds without a token, READY=1 goes out anyway, saying which profiles wait."""
    auth.token_faults.extend(Fault(503, b"down") for _ in range(1000))
    daemon = await run(config("ready_timeout_seconds = 1"), {"NOTIFY_SOCKET": notify.address})
    try:
        await notify.wait_for("READY=1")
        message = notify.messages[notify.lines("READY=1")[0]]
        assert "ready_timeout reached; 1 profile still without a verified token: main" in message
    finally:
        await daemon.stop()


async def test_ready_timeout_with_more_waiting_than_a_status_line_holds_says_how_many_first(
    notify: NotifySocket, tmp_path: Path, auth: FaultyAuthServer, secret_file: Path
) -> None:
    """150 profiles without a token at ready_timeout: STATUS= (systemd keeps 400 characters) says how many before
    it names any and shows where it was cut; the log line names the first 100 and counts the other 50."""
    auth.token_faults.extend(Fault(503, b"down") for _ in range(5000))
    text = '[daemon]\nlog_format = "json"\nlisten = ""\nready_timeout_seconds = 1\n'
    for i in range(150):
        text += profile_toml(f"p{i:03d}", auth, secret_file, [{"path": str(tmp_path / f"p{i:03d}.jwt")}])
    (config := tmp_path / "many.toml").write_text(text)
    daemon = await run(config, {"NOTIFY_SOCKET": notify.address})
    try:
        await notify.wait_for("READY=1")
        status = notify.messages[notify.lines("READY=1")[0]].split("STATUS=", 1)[1]
        assert status.startswith("ready_timeout reached; 150 profiles still without a verified token: p000, p001, ")
        assert len(status) == 400 and status.endswith("..."), status
        line = await daemon.wait_for("daemon.ready_timeout")
        assert line["not_ready"].endswith("p099 and 50 more"), line
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


def test_a_full_notify_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    """Invariant: `send` never blocks. Against a real datagram socket nobody drains, every send returns at once;
    what the kernel queue cannot hold is dropped and counted (sent + dropped = attempts)."""
    address = str(tmp_path / "undrained.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    warnings: list[str] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append(event)

    notifier = Notifier({"NOTIFY_SOCKET": address}, Log())
    results: list[bool] = []
    durations: list[float] = []

    def sender() -> None:
        for _ in range(200):
            started = time.monotonic()
            results.append(notifier.send("WATCHDOG=1"))
            durations.append(time.monotonic() - started)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    thread.join(10.0)
    blocked = thread.is_alive()
    receiver.close()  # unblocks a stuck sender (ECONNREFUSED) so the test never hangs
    thread.join(5.0)
    assert not blocked, f"send blocked after {len(results)} messages on a full queue"
    sent = results.count(True)
    assert 0 < sent < 200 and notifier.dropped == 200 - sent
    assert max(durations) < 0.5
    assert warnings == ["systemd.notify_dropped"]  # said once, not per dropped message


async def test_daemon_keeps_working_when_nobody_drains_the_notify_socket(
    tmp_path: Path, config: Callable[..., Path]
) -> None:
    """A real daemon pinging the watchdog every 50 ms into an undrained socket still renews on SIGUSR1 and stops
    on SIGTERM within seconds (before: the event loop blocked in sendto once the queue held 10 datagrams)."""
    address = str(tmp_path / "undrained.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    daemon = await run(config(), {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"})
    try:
        await daemon.wait_for("token.renewed")
        await asyncio.sleep(1.0)  # 20 watchdog ticks: far more than the queue holds
        daemon.send(signal.SIGUSR1)
        await daemon.wait_for("token.renewed", count=2, timeout=10.0)
        started = time.monotonic()
        assert await daemon.stop(timeout=10.0) == 0
        assert time.monotonic() - started < 5.0
    finally:
        await daemon.kill()
        receiver.close()
