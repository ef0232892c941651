"""Scheduling that survives clock jumps and suspend, and consumer notification after a write."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import time_machine

from conftest import CLIENT_SECRET, profile_toml
from daemonproc import DaemonProcess
from edge_token.config import load_config
from edge_token.daemon import Daemon
from edge_token.localauth import LocalAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait for a condition of the in-process daemon (bounded); True if it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def run_jump(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, tick: float) -> bool:
    """Start a daemon, jump the wall clock past the refresh moment (monotonic untouched): renewed in time?"""
    path = tmp_path / "config.toml"
    sinks = [{"path": str(tmp_path / "token.jwt")}]
    path.write_text('[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret_file, sinks, leeway_seconds=1))
    daemon = Daemon(load_config(path, environ={}), environ={}, tick_seconds=tick)
    task = asyncio.create_task(daemon.run())
    try:
        assert await until(lambda: daemon.scheduler.next_run("profile:main") is not None, 10)
        # the scheduler's pass queued by that scheduling runs in the next loop turn, before the jump: queued behind
        # it, this task resumes after it (a pass left for after the jump would see the new time and be a wake-up)
        await asyncio.sleep(0)
        assert auth.tokens_issued == 1
        with time_machine.travel(time.time() + 900, tick=True):  # past 0.8 x 1000 s
            renewed = await until(lambda: auth.tokens_issued == 2, 1.5)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    return renewed


async def test_wall_clock_jump_forward_renews_within_a_tick(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """After a wall-clock jump (as after a suspend), the overdue renewal runs within a tick, not 12 min later."""
    assert await run_jump(tmp_path, auth, secret_file, tick=0.05)


async def test_without_wakeups_the_jump_would_be_missed(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """Control: with no periodic wake-up, APScheduler keeps waiting on the monotonic clock."""
    assert not await run_jump(tmp_path, auth, secret_file, tick=3600)


async def test_a_run_moved_after_a_wall_clock_jump_is_not_left_to_the_old_timer() -> None:
    """After the wall clock jumps forward (suspend, an NTP step) past the armed timer's run, a job moved to run in
    0.2 s runs then, not when the old timer fires on the monotonic clock (the scheduler compared a wall-clock run
    with a wall-clock due time that no longer meant "sooner": outside attack)."""
    from edge_token.scheduler import Scheduler

    scheduler, ran = Scheduler(), asyncio.Event()
    scheduler.start()
    try:
        scheduler.at("p", time.time() + 0.01, lambda: None)
        scheduler.at("far", time.time() + 30, lambda: None)  # the timer waits for this one
        await asyncio.sleep(0.1)
        with time_machine.travel(time.time() + 3600, tick=True):
            scheduler.at("p", time.time() + 0.2, ran.set)
            await asyncio.wait_for(ran.wait(), 3)
    finally:
        scheduler.shutdown()


async def test_consumers_are_told_with_a_minimal_environment(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """on_update runs without a shell and without the daemon's environment; the pidfile's process gets SIGHUP."""
    seen = tmp_path / "hook-env.json"
    hook = [sys.executable, "-c", f"import json, os; open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))"]
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import signal, sys, time\nsignal.signal(signal.SIGHUP, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\ntime.sleep(60)",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert consumer.stdout is not None
    await consumer.stdout.readline()
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(f"{consumer.pid}\n")
    sink: dict[str, Any] = {
        "path": str(tmp_path / "token.jwt"), "on_update": hook, "signal": "HUP", "pid_file": str(pid_file),
    }  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_format = "json"\nlisten = ""\n' + profile_toml("main", auth, secret_file, [sink]))
    daemon = await DaemonProcess(config, env={"SOME_SECRET": CLIENT_SECRET}).start()
    try:
        await daemon.wait_for("hook.finished")
        assert await asyncio.wait_for(consumer.wait(), 10) == 42
    finally:
        await daemon.stop()
    env = json.loads(seen.read_text())
    assert env["EDGE_TOKEN_PATH"] == str(tmp_path / "token.jwt") and env["EDGE_TOKEN_PROFILE"] == "main"
    assert CLIENT_SECRET not in json.dumps(env) and "SOME_SECRET" not in env
    assert daemon.count("consumer.signalled") == 1
