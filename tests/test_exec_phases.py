"""`edge-token exec` fails fast and always stops: a daemon-part start failure ends it before the child starts,
SIGTERM is honoured in every phase (also as PID 1 and during a restart), hook timeouts kill the whole process
group, and no child or hook sees a variable any secret source names."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT_SECRET, profile_toml
from edge_token.config import load_config
from edge_token.core.settings import SinkConfig
from edge_token.observe.hooks import hook_environment, run_on_update, secret_variables
from fakestores import FakeVault
from faultyauth import Fault, FaultyAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]


async def spawn(processes: list[asyncio.subprocess.Process], *args: str, env: dict[str, str] | None = None) -> Any:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
        start_new_session=True,
    )  # fmt: skip
    processes.append(process)
    return process


def write_config(
    tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, daemon: str = 'listen = ""', **kw: Any
) -> Path:
    path = tmp_path / "config.toml"
    sinks = kw.pop("sinks", None) or [{"path": str(tmp_path / "token.jwt")}]
    text = f'[daemon]\nlog_format = "json"\n{daemon}\n'
    path.write_text(text + profile_toml("main", auth, secret_file, sinks, **{"leeway_seconds": 1, **kw}))
    path.chmod(0o600)
    return path


def exec_args(config: Path, *options: str, script: str) -> list[str]:
    return [sys.executable, "-m", "edge_token", "exec", "-c", str(config), *options, "--", sys.executable, "-c", script]


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_daemon_part_start_failure_exits_before_the_child_starts(
    tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, processes: list[Any]
) -> None:
    """The listen address is taken: exec exits 78 naming the problem, and the child never ran."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    marker = tmp_path / "child-ran"
    try:
        config = write_config(tmp_path, auth, secret_file, daemon=f'listen = "127.0.0.1:{port}"')
        process = await spawn(processes, *exec_args(config, script=f"open({str(marker)!r}, 'w')"))
        _, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        taken.close()
    assert process.returncode == 78, err.decode()
    assert "already in use" in err.decode()
    assert not marker.exists(), "the child started although the daemon part could not"


async def test_sigterm_in_the_initial_token_phase_as_pid1_ends_exec(
    tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, processes: list[Any]
) -> None:
    """As PID 1 (own PID namespace) while the token request hangs: SIGTERM ends exec at once with 143 and the
    child never starts (before: PID 1 had no handler, the kernel dropped SIGTERM, exec waited on)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    auth.token_faults.extend([Fault(status=503, delay=6.0)] * 3)  # short: the server drains it at teardown
    marker = tmp_path / "child-ran"
    config = write_config(tmp_path, auth, secret_file)
    process = await spawn(
        processes, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
        *exec_args(config, script=f"open({str(marker)!r}, 'w')"),
    )  # fmt: skip
    await wait_until(lambda: auth.token_requests >= 1 and bool(children_of(process.pid)), 20, "the token request")
    pid1 = children_of(process.pid)[0]
    started = time.monotonic()
    os.kill(pid1, signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 128 + signal.SIGTERM, err.decode()
    assert time.monotonic() - started < 3.0  # well before the hanging request would have answered
    assert not marker.exists()


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


RESTARTABLE_CHILD = """
import os, signal, sys, time
log = open({log!r}, "a", buffering=1)
def stop(*_):
    log.write("term %d\\n" % os.getpid())
    time.sleep(1.0)  # a slow, graceful shutdown: the window in which a SIGTERM to exec used to get lost
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
log.write("start %d\\n" % os.getpid())
while True:
    time.sleep(1)
"""


async def test_sigterm_during_a_restart_stops_exec_and_starts_no_new_child(
    tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, processes: list[Any]
) -> None:
    """--on-rotation restart: SIGTERM arrives while the old child is shutting down for the restart. exec must not
    start a new child; it exits 143 promptly (before: a new child started and exec ran on)."""
    auth.ttl = 3
    log = tmp_path / "child.log"
    config = write_config(tmp_path, auth, secret_file, refresh_at=0.5)
    process = await spawn(
        processes, *exec_args(config, "--on-rotation", "restart", script=RESTARTABLE_CHILD.format(log=str(log)))
    )

    def lines() -> list[str]:
        return log.read_text().split("\n") if log.exists() else []

    try:
        await wait_until(lambda: any(line.startswith("term") for line in lines()), 30, "the restart's SIGTERM")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
        assert time.monotonic() - started < 5.0
        assert sum(line.startswith("start") for line in lines()) == 1, lines()
    finally:  # the children run in their own sessions: the fixture's killpg does not reach them
        for line in lines():
            if line.startswith("start"):
                try:
                    os.kill(int(line.split()[1]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


async def test_a_timed_out_hook_is_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    """on_update runs `sleep 300 &` and hangs: at the timeout the hook and its background child are both gone."""
    pid_file = tmp_path / "background.pid"
    sink = SinkConfig(
        type="file", path=tmp_path / "t.jwt", on_update_timeout=0.5,
        on_update=("/bin/sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"),
    )  # fmt: skip
    log = _Log()
    assert await run_on_update(sink, "main", {"PATH": os.environ["PATH"]}, log) is None
    assert log.events == ["hook.timed_out"]
    background = int(pid_file.read_text())
    await wait_until(lambda: not alive(background), 5, f"the hook's background child {background} to die")


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def error(self, event: str, **_fields: Any) -> None:
        self.events.append(event)

    info = error


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


async def test_no_exec_child_or_hook_sees_any_secret_source_variable(
    tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, processes: list[Any]
) -> None:
    """Client secret from an env variable, a Vault token from token_env, a per-profile override: the exec child's
    environment holds none of these names or values; the hook environment excludes them even when allow-listed."""
    vault = FakeVault()
    await vault.start()
    try:
        sinks = [
            {"path": str(tmp_path / "token.jwt")},
            {"type": "vault_kv", "address": vault.url, "path": "edge-token/p", "token_env": "STORE_TOKEN_X"},
        ]
        config = write_config(tmp_path, auth, secret_file, sinks=sinks)
        text = config.read_text().replace(f'client_secret_file = "{secret_file}"', 'client_secret_env = "MY_SECRET"')
        config.write_text(text)
        seen = tmp_path / "env.json"
        env = {"MY_SECRET": CLIENT_SECRET, "STORE_TOKEN_X": "root-token", "EDGE_TOKEN_OTHER_CLIENT_SECRET": "x-9"}
        script = f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"
        process = await spawn(processes, *exec_args(config, script=script), env=env)
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()[-2000:]
    finally:
        await vault.stop()
    child_env = json.loads(seen.read_text())
    leaked = {name for name in env if name in child_env} | {v for v in env.values() if v in json.dumps(child_env)}
    assert leaked == set()
    assert child_env["EDGE_TOKEN_PATH"] == str(tmp_path / "token.jwt")
    loaded = load_config(config, environ=env)
    names = secret_variables(loaded)
    assert {"MY_SECRET", "STORE_TOKEN_X", "EDGE_TOKEN_MAIN_CLIENT_SECRET"} <= names
    hook_env = hook_environment(loaded.profiles["main"].sinks[0], "main", {**env, "HOME": "/root"}, names | {"HOME"})
    assert "HOME" not in hook_env and not set(env) & set(hook_env)


IGNORING_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
open({pidfile!r}, "w").write(str(os.getpid()))
while True:
    time.sleep(0.1)
"""


async def test_sigterm_ends_exec_even_when_the_child_ignores_it(
    tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, processes: list[Any]
) -> None:
    """A child that ignores SIGTERM gets the grace period, then SIGKILL; exec exits 143 and renews no more (before:
    exec ran on for as long as the child did, renewing and signalling it)."""
    auth.ttl = 3
    pidfile = tmp_path / "child.pid"
    config = write_config(tmp_path, auth, secret_file, refresh_at=0.5)
    process = await spawn(
        processes, *exec_args(config, "--on-rotation", "signal", script=IGNORING_CHILD.format(pidfile=str(pidfile)))
    )
    await wait_until(lambda: pidfile.exists() and pidfile.read_text() != "", 30, "the child")
    child = int(pidfile.read_text())
    try:
        process.send_signal(signal.SIGTERM)
        issued, started = auth.tokens_issued, time.monotonic()
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
        assert time.monotonic() - started < 13.0  # the 10 s grace, and a little
        assert auth.tokens_issued <= issued + 1, "exec kept renewing after SIGTERM"  # at most one already in flight
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    finally:  # the child runs in its own session: the fixture's killpg does not reach it
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
