"""Readiness never says more than is true: a profile whose credentials are refused is not ready once its last token
has expired (/readyz, /status and READY=1 agree), and a reload before the first READY=1 does not tell systemd the
service is up."""

from __future__ import annotations

import random
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from edge_token.config import load_config
from edge_token.observe.systemd import Notifier
from faultyauth import Fault
from harness import LoopWorld


@pytest.mark.parametrize("world", [100.0], indirect=True)  # tokens of 100 s
def test_rejected_credentials_and_an_expired_token_are_not_ready(world: LoopWorld) -> None:
    world.write("a.jwt")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    assert daemon.profiles.readiness()[0]
    world.auth.token_faults.extend(Fault(401, {"error": "invalid_client"}) for _ in range(50))
    world.clock.advance(150)  # past the token's expiry (100 s)
    world.harness.on_loop(daemon.profiles.renew_all)
    world.harness.settle()
    (status,) = daemon.profiles.statuses()
    assert status.state == "credentials_rejected"  # the cause stays visible ...
    assert not status.ready and not status.to_json()["ready"]  # ... but the expired token is not ready
    ready, details = daemon.profiles.readiness()
    assert not ready and "main" in details["not_ready"]
    assert not daemon.profiles.all_ready()


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="edge-token-notify-")
    path = str(Path(directory) / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    yield receiver, path
    receiver.close()
    Path(path).unlink()
    Path(directory).rmdir()


def received(receiver: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(receiver.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_a_reload_before_the_first_ready_sends_no_ready(notify_socket: tuple[socket.socket, str]) -> None:
    """systemd takes the READY=1 that ends a reload as the end of the start (Type=notify): before our own first
    READY=1 a reload may say what it did (STATUS=), nothing more; after it, the usual RELOADING=1 ... READY=1."""
    receiver, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path}, structlog.get_logger("test"))
    notifier.reloading()
    notifier.reloaded("reloaded: 0 added, 0 removed, 0 changed")
    before = received(receiver)
    assert not any("READY=1" in m or "RELOADING=1" in m for m in before), before
    assert any("STATUS=reloaded" in m for m in before)
    notifier.ready("1/1 profiles fresh")
    notifier.reloading()
    notifier.reloaded("reloaded: 1 added, 0 removed, 0 changed")
    after = received(receiver)
    assert [m.split("\n")[0] for m in after] == ["READY=1", "RELOADING=1", "READY=1"]
