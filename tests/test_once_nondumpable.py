"""`once` holds the client secret and a token in memory, so it is non-dumpable like the daemon (hardening.py):
another process of the same uid cannot read its /proc/PID/environ (nor its memory). prctl is called without
importing `ctypes` (issue 15: ~1.5 ms of a cold `once`), and through `ctypes` where `_ctypes` lacks the calls."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLIENT_SECRET
from faultyauth import Fault, FaultyAuthServer
from unprivileged import as_user, secret_in_environment

NOBODY = 65534


async def read_as_nobody(path: str) -> tuple[int, bytes]:
    """`cat PATH` as nobody: its exit code and what it read."""
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    reader = await asyncio.create_subprocess_exec(
        *setpriv, "cat", path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(reader.communicate(), 20)
    assert reader.returncode is not None
    return reader.returncode, out


@pytest.mark.usefixtures("live_auth")
async def test_a_running_once_is_unreadable_by_its_own_uid(auth: FaultyAuthServer, public_dir: Path) -> None:
    """A real `once` as nobody (secret in its environment), held in its token request: another process of uid
    nobody cannot read its environment. The control, a plain process of that uid with the same variable, is read
    by the same reader, so the test would see a leak if there were one."""
    config, env = secret_in_environment(public_dir, auth)
    auth.token_faults.append(Fault(503, delay=5.0))  # short: the server drains it at teardown
    once = await asyncio.create_subprocess_exec(
        *as_user(NOBODY, NOBODY, sys.executable, "-m", "edge_token", "once", "-c", str(config), "--timeout", "30"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    control = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sleep", "60", env=env
    )
    try:
        for _ in range(600):  # `once` is in its token request (long past prctl) when the server sees it
            if auth.request_times or once.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert auth.request_times and once.returncode is None
        code, environ = await read_as_nobody(f"/proc/{control.pid}/environ")
        assert code == 0 and CLIENT_SECRET.encode() in environ  # the reader works, and would see it
        code, environ = await read_as_nobody(f"/proc/{once.pid}/environ")
        assert code != 0 and environ == b""
    finally:
        for process in (once, control):
            if process.returncode is None:
                process.kill()
            await process.wait()


CENSUS = """
import json, sys
if sys.argv[1] == "without":
    import _ctypes
    del _ctypes.call_function  # an interpreter whose _ctypes lacks it
from edge_token.hardening import is_dumpable, make_non_dumpable
before = is_dumpable()
made = make_non_dumpable()
print(json.dumps([before, made, is_dumpable(), "ctypes" in sys.modules]))
"""


@pytest.mark.parametrize(("ctypes_calls", "imports_ctypes"), [("with", False), ("without", True)])
def test_non_dumpable_with_or_without_the_ctypes_calls(ctypes_calls: str, imports_ctypes: bool) -> None:
    """A fresh process starts dumpable and ends non-dumpable (PR_GET_DUMPABLE says so), through `_ctypes` alone
    (ctypes never imported) or, where `_ctypes` lacks the calls, through ctypes."""
    done = subprocess.run(
        [sys.executable, "-c", CENSUS, ctypes_calls], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == [True, None, False, imports_ctypes]  # None: no failure to report
