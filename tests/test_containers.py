"""Container roles: `edge-token exec` as a process wrapper, and PID 1 duties (prompt SIGTERM, no zombies)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT_SECRET, profile_toml
from daemonproc import reference_check
from edge_token.localauth import LocalAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]


@pytest.fixture
def config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> Callable[..., Path]:
    def make(sinks: list[dict[str, Any]] | None = None, **settings: Any) -> Path:
        path = tmp_path / "config.toml"
        sinks = sinks or [{"path": str(tmp_path / "token.jwt")}]
        text = '[daemon]\nlog_format = "json"\nlisten = ""\n'
        path.write_text(text + profile_toml("main", auth, secret_file, sinks, **{"leeway_seconds": 1, **settings}))
        return path

    return make


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})}
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def child(script: str) -> list[str]:
    return [sys.executable, "-c", script]


async def test_exec_starts_the_child_with_a_verified_token_and_returns_its_status(
    config: Callable[..., Path], auth: LocalAuthServer, tmp_path: Path
) -> None:
    """The token exists and verifies before the child starts; the child's exit status is ours; no secret leaks."""
    seen = tmp_path / "seen.json"
    script = (
        "import json, os, sys\n"
        "path = os.environ['EDGE_TOKEN_PATH']\n"
        f"json.dump({{'env': dict(os.environ), 'token': open(path).read()}}, open({str(seen)!r}, 'w'))\n"
        "sys.exit(7)"
    )
    process = await spawn(
        sys.executable, "-m", "edge_token", "exec", "-c", str(config()), "--", *child(script),
        env={"EDGE_TOKEN_MAIN_CLIENT_SECRET_ENV": "MY_SECRET", "MY_SECRET": CLIENT_SECRET},
    )  # fmt: skip
    code, _, err = await finish(process)
    assert code == 7, err
    report = json.loads(seen.read_text())
    assert reference_check(report["token"], auth) is None
    assert report["env"]["EDGE_TOKEN_PATH_MAIN"] == str(tmp_path / "token.jwt")
    assert CLIENT_SECRET not in json.dumps(report["env"]) and "MY_SECRET" not in report["env"]
    assert auth.token_requests == 1  # the background daemon adopted the token `once` had just written


async def test_exec_fails_fast_without_a_token(config: Callable[..., Path], secret_file: Path, tmp_path: Path) -> None:
    """Rejected credentials: exit 77 and the child is never started."""
    secret_file.write_text("wrong")
    marker = tmp_path / "started"
    process = await spawn(
        sys.executable, "-m", "edge_token", "exec", "-c", str(config()), "--", *child(f"open({str(marker)!r}, 'w')")
    )
    code, _, err = await finish(process)
    assert code == 77 and "credentials rejected" in err
    assert not marker.exists()


async def test_exec_signals_the_child_after_each_rotation(config: Callable[..., Path], auth: LocalAuthServer) -> None:
    """--on-rotation signal --signal USR1: the child gets one USR1 per new token."""
    auth.ttl = 3
    script = (
        "import signal, sys, time\ncount = [0]\n"
        "signal.signal(signal.SIGUSR1, lambda *a: count.__setitem__(0, count[0] + 1))\n"
        "deadline = time.time() + 30\n"
        "while count[0] < 2 and time.time() < deadline: time.sleep(0.05)\n"
        "sys.exit(0 if count[0] >= 2 else 1)"
    )
    process = await spawn(
        sys.executable, "-m", "edge_token", "exec", "-c", str(config(refresh_at=0.5)),
        "--on-rotation", "signal", "--signal", "USR1", "--", *child(script),
    )  # fmt: skip
    code, _, err = await finish(process, 40)
    assert code == 0, err
    assert err.count('"exec.signalled"') >= 2


async def test_exec_restarts_the_child_with_the_new_token(
    config: Callable[..., Path], auth: LocalAuthServer, tmp_path: Path
) -> None:
    """--on-rotation restart --token-env: each start sees a different, valid token in its environment;
    SIGTERM to the wrapper is forwarded and its status returned."""
    auth.ttl = 3
    starts = tmp_path / "starts"
    script = f"import os, time\nopen({str(starts)!r}, 'a').write(os.environ['EDGE_TOKEN'] + '\\n')\ntime.sleep(60)"
    process = await spawn(
        sys.executable, "-m", "edge_token", "exec", "-c", str(config(refresh_at=0.5)),
        "--on-rotation", "restart", "--token-env", "--", *child(script),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while (not starts.exists() or len(starts.read_text().split()) < 3) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    code, _, err = await finish(process)
    tokens = starts.read_text().split()
    assert len(tokens) >= 3 and len(set(tokens)) == len(tokens), err
    assert code == 128 + signal.SIGTERM  # the child died of the forwarded SIGTERM


async def test_exec_forwards_hup_to_the_child(config: Callable[..., Path], tmp_path: Path) -> None:
    """SIGHUP to the wrapper reaches the child (which handles it and exits 0)."""
    ready = tmp_path / "ready"
    script = (
        "import signal, sys, time\nsignal.signal(signal.SIGHUP, lambda *a: sys.exit(0))\n"
        f"open({str(ready)!r}, 'w')\ntime.sleep(30)\nsys.exit(1)"
    )
    process = await spawn(sys.executable, "-m", "edge_token", "exec", "-c", str(config()), "--", *child(script))
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    process.send_signal(signal.SIGHUP)
    code, _, err = await finish(process)
    assert code == 0, err


def zombies_of(pid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z" and fields[1] == str(pid):
            count += 1
    return count


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def test_as_pid1_orphans_are_reaped_and_sigterm_is_prompt(
    config: Callable[..., Path], auth: LocalAuthServer, tmp_path: Path
) -> None:
    """In its own PID namespace (PID 1), hooks that leave background children behind cause no zombies,
    and SIGTERM stops the daemon promptly with status 0."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    auth.ttl = 2
    hook = ["/bin/sh", "-c", "sleep 0.05 & sleep 0.05 & exit 0"]
    sinks = [{"path": str(tmp_path / "token.jwt"), "on_update": hook}]
    process = await spawn(
        "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
        sys.executable, "-m", "edge_token", "run", "-c", str(config(sinks, refresh_at=0.5)),
    )  # fmt: skip
    assert process.stderr is not None
    finished = 0
    daemon_pid = None
    while finished < 5:
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        assert line, "daemon exited early"
        if b'"hook.finished"' in line:
            finished += 1
        daemon_pid = daemon_pid or next(iter(children_of(process.pid)), None)
    assert daemon_pid is not None
    await asyncio.sleep(0.3)  # let the last hook's background sleeps (50 ms) end and be reaped
    assert zombies_of(daemon_pid) == 0
    started = time.monotonic()
    os.kill(daemon_pid, signal.SIGTERM)
    code, _, _ = await finish(process, 15)
    assert code == 0 and time.monotonic() - started < 5
