"""Shared fixtures: a fake clock, the bundled auth server on 127.0.0.1:0, config files in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from edge_token.app import Parts
from edge_token.config import load_config
from edge_token.core.settings import Config
from edge_token.localauth import LocalAuthServer
from edge_token.net.http import make_session
from edge_token.renewer import Renewer
from faultyauth import FaultyAuthServer

if TYPE_CHECKING:
    from daemonproc import DaemonProcess

CLIENT_ID = "client-a"
CLIENT_SECRET = "s3cret-a-7f9c2e1d"
OTHER_CLIENT = "client-b"
OTHER_SECRET = "s3cret-b-0a1b2c3d"
START = 1_800_000_000.0
SOAK = os.environ.get("EDGE_TOKEN_SOAK") == "1"  # full-length reliability runs (README "Reliability")
FIGURES: dict[str, dict[str, Any]] = {}  # reliability figures, printed at the end of the run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures the reliability tests recorded (chaos soak, crash safety, hostile inputs, ...)."""
    if not FIGURES:
        return
    terminalreporter.section(f"reliability figures ({'full soak' if SOAK else 'short CI run'})")
    for name, figures in FIGURES.items():
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


class FakeClock:
    """Wall and monotonic time that only move when a test says so."""

    def __init__(self, wall: float = START) -> None:
        self.wall, self.mono = wall, 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture(autouse=True)
def _own_secret_registry() -> Iterator[None]:
    """Each test starts with an empty process-wide secret registry (`scrub.SECRETS`): a secret another test
    registered (Hypothesis draws secrets and messages from one pool of constants) would otherwise be cut, rightly,
    from text this test expects to see intact (CI once failed a journal test on "Scunthorpe" that way)."""
    from edge_token.core import scrub

    scrub.SECRETS.__init__()  # type: ignore[misc]  # in place: modules hold this object (`scrub.register`)
    yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def auth(clock: FakeClock) -> AsyncIterator[FaultyAuthServer]:
    server = FaultyAuthServer({CLIENT_ID: CLIENT_SECRET, OTHER_CLIENT: OTHER_SECRET}, ttl=1000, now=clock.time)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def live_auth(auth: FaultyAuthServer, request: pytest.FixtureRequest) -> FaultyAuthServer:
    """The auth server on the real clock, for tests that run the daemon as a child process; token lifetime from
    the test module's AUTH_TTL (default 1000 s)."""
    auth.now = time.time
    auth.ttl = getattr(request.module, "AUTH_TTL", 1000)
    return auth


@pytest.fixture
async def renewer_for(
    make_config: Callable[..., Config], clock: FakeClock, log: Any
) -> AsyncIterator[Callable[..., Renewer]]:
    """Build a Renewer for a one-profile config (settings override the profile) over one shared session."""
    async with make_session() as session:

        def build(**settings: Any) -> Renewer:
            config = make_config(**settings)
            return Parts(config, session, clock, log, environ={}).renewer(config.profiles["main"])

        yield build


@pytest.fixture(autouse=True)
def no_daemon_left_behind() -> Iterator[None]:
    """Whatever happened in the test, no daemon child it started outlives it (SIGKILL: its loop may be gone)."""
    yield
    from daemonproc import DaemonProcess

    for daemon in list(DaemonProcess.LIVE):
        DaemonProcess.LIVE.discard(daemon)
        if daemon.process is not None and daemon.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.process.pid, signal.SIGKILL)


@pytest.fixture
async def daemons() -> AsyncIterator[list[DaemonProcess]]:
    """Daemon child processes a test starts; killed at the end whatever happened."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        await daemon.kill()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp that unprivileged users (`nobody`) can reach: pytest's tmp_path lives under a
    0700 parent, so a test whose child drops privileges needs this instead."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="edge-token-public-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.secret"
    path.write_text(CLIENT_SECRET + "\n")
    path.chmod(0o600)
    return path


async def run_child(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes, bytes]:
    """Run a child to its end (exit code, stdout, stderr); killed and reaped if the wait fails or times out, so a
    failing test leaves no process behind."""
    pipe = asyncio.subprocess.PIPE
    child = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), timeout)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode is not None
    return child.returncode, out, err


def profile_toml(
    name: str, server: LocalAuthServer, secret_file: Path, sinks: list[dict[str, Any]], **settings: Any
) -> str:
    """One [profiles.NAME] table pointing at the local auth server, with TOML-rendered overrides."""
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "token_url": server.token_url,
        "issuer": server.issuer,
        "jwks_url": server.jwks_url,
        **settings,
    }
    lines = [f"[profiles.{name}]"] + [f"{key} = {toml_value(value)}" for key, value in values.items()]
    for sink in sinks:
        lines.append(f"[[profiles.{name}.sinks]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in sink.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


@pytest.fixture
def make_config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> Callable[..., Config]:
    """Write a one-profile config (sink: tmp_path/token.jwt unless given) and load it."""

    def make(sinks: list[dict[str, Any]] | None = None, daemon: str = "", **settings: Any) -> Config:
        sinks = sinks if sinks is not None else [{"path": str(tmp_path / "token.jwt")}]
        path = tmp_path / "config.toml"
        path.write_text(daemon + "\n" + profile_toml("main", auth, secret_file, sinks, **settings))
        path.chmod(0o600)
        return load_config(path, environ={})

    return make


@pytest.fixture
def log() -> Any:
    return structlog.get_logger("test")


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


def no_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_TOKEN_")}


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The step-by-step daemon scaffold (harness.LoopWorld), closed after the test. Token lifetime 1,000 s unless a
    test parametrizes it: `@pytest.mark.parametrize("world", [100.0], indirect=True)`."""
    from harness import LoopWorld

    built = LoopWorld(ttl=getattr(request, "param", 1000.0))
    yield built
    built.close()


@pytest.fixture
async def k8s() -> AsyncIterator[Any]:
    """An in-process Kubernetes API server (fakestores.FakeKubernetes) on loopback."""
    from fakestores import FakeKubernetes

    server = FakeKubernetes()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test starts; killed (with their process group) at the end whatever happened."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()


def python_calls(action: Callable[[], Any]) -> list[str]:
    """The Python functions `action()` calls, in order (qualified names; C functions are not counted): what a hot
    path costs in calls, each of which is microseconds when its code is cold (tests of the renewal's costs)."""
    calls: list[str] = []

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls[1:]  # the first is `action` itself
