"""SIGHUP/SIGUSR1/SIGUSR2 sent while `run` or `exec` is still starting (importing its libraries, before the event
loop's handlers exist) never kill it: they are held and carried out once it is up, and no hook or wrapped child
inherits the held mask.

Real processes and real signals: the signals are sent in a loop from the moment the child runs our code (its
`/proc/PID/status` shows the held mask, or it has loaded `_asyncio`, which `edge_token.cli` imports, so the
old code is caught too) until the handlers are installed (SigCgt shows SIGHUP caught)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import profile_toml
from daemonproc import DaemonProcess
from faultyauth import FaultyAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]

HELD = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def mask(signals: tuple[signal.Signals, ...]) -> int:
    """The bits /proc/PID/status uses for these signals (signal N is bit N-1)."""
    return sum(1 << (signum - 1) for signum in signals)


def status_masks(pid: int) -> dict[str, int] | None:
    """SigBlk and SigCgt of the process's main thread; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return {key: int(value, 16) for key, value in (line.split(":\t") for line in text.splitlines()) if key in (
        "SigBlk", "SigCgt")}  # fmt: skip


def runs_our_code(pid: int) -> bool:
    """`edge_token.cli` imports asyncio: once `_asyncio` is mapped, the interpreter is running our modules."""
    try:
        return "_asyncio" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


async def pelt_until_handled(
    pid: int, returncode: Callable[[], int | None], signals: tuple[signal.Signals, ...]
) -> int:
    """Send `signals` from the moment our code runs until SIGHUP's handler is installed; how many rounds were
    sent. Fails if the process dies, or if at any moment after the held mask appeared the signals were neither
    blocked nor caught (a window in which their default action would kill it)."""
    rounds, held_seen = 0, False
    while True:
        masks = status_masks(pid)
        assert masks is not None and returncode() is None, f"the process died while starting ({returncode()})"
        if masks["SigCgt"] & mask((signal.SIGHUP,)):
            break
        held = masks["SigBlk"] & mask(signals) == mask(signals)
        assert held or not held_seen, "a held signal was released before its handler was installed"
        held_seen |= held
        if held or runs_our_code(pid):
            for signum in signals:
                os.kill(pid, signum)
            rounds += 1
        await asyncio.sleep(0.001)
    assert held_seen, "the signals were never held during start-up: their default action could kill the process"
    return rounds


def hook_config(tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, mask_file: Path) -> Path:
    """One profile whose sink's on_update hook records its own blocked-signal mask."""
    sink = {
        "path": str(tmp_path / "token.jwt"),
        # written aside and renamed: the hook runs again after the held SIGUSR1, and a reader must not see it half done
        "on_update": [
            "/bin/sh",
            "-c",
            f"grep SigBlk /proc/self/status > {mask_file}.$$ && mv {mask_file}.$$ {mask_file}",
        ],
    }
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\nlog_format = "json"\nlisten = ""\n' + profile_toml("main", auth, secret_file, [sink]))
    return path


def blocked(line: str) -> int:
    """The mask of a `SigBlk:\t<hex>` line."""
    return int(line.split(":")[1].strip(), 16)


async def test_run_survives_reload_and_renew_signals_during_start_up_and_carries_them_out(
    auth: FaultyAuthServer, secret_file: Path, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """SIGHUP+SIGUSR1 in a loop through `run`'s start-up: it lives, reloads and renews once up, and its hook sees
    none of the held signals blocked."""
    mask_file = tmp_path / "hook.mask"
    daemon = await DaemonProcess(hook_config(tmp_path, auth, secret_file, mask_file)).start()
    daemons.append(daemon)
    assert daemon.process is not None
    rounds = await pelt_until_handled(daemon.process.pid, lambda: daemon.returncode, (signal.SIGHUP, signal.SIGUSR1))
    assert rounds >= 3, f"only {rounds} rounds of signals reached the start-up window"
    started = await daemon.wait_for("daemon.started")
    await daemon.wait_for("config.reloaded")
    await daemon.wait_for("daemon.renew_all")
    order = [e["event"] for e in daemon.events]
    assert order.index("daemon.started") < order.index("config.reloaded"), "the held reload ran before start-up"
    assert started["profiles"] == 1
    await daemon.wait_for("hook.finished")
    assert blocked(mask_file.read_text()) & mask(HELD) == 0, mask_file.read_text()
    masks = status_masks(daemon.process.pid)
    assert masks is not None and masks["SigBlk"] & mask(HELD) == 0
    assert daemon.returncode is None
    assert await daemon.stop() == 0


async def test_exec_survives_forwardable_signals_during_start_up_and_its_child_inherits_no_mask(
    auth: FaultyAuthServer, secret_file: Path, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    """SIGHUP+SIGUSR1+SIGUSR2 in a loop through `exec`'s start-up: it lives, runs the child, and the child's
    blocked mask has none of them."""
    config = tmp_path / "config.toml"
    sinks = [{"path": str(tmp_path / "token.jwt")}]
    config.write_text('[daemon]\nlog_format = "json"\nlisten = ""\n' + profile_toml("main", auth, secret_file, sinks))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_token", "exec", "-c", str(config), "--", "/bin/sh", "-c",
        "grep SigBlk /proc/self/status", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    processes.append(process)
    rounds = await pelt_until_handled(process.pid, lambda: process.returncode, HELD)
    assert rounds >= 3, f"only {rounds} rounds of signals reached the start-up window"
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    assert blocked(out.decode()) & mask(HELD) == 0, out
