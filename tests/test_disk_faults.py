"""Disk and environment faults on a real daemon: read-only filesystem, disk full, permission denied, a dangling
directory symlink and a directory at the sink path — each a specific error, log line and metric; the previous
token stays intact; the healthy sink is unaffected; everything recovers without a restart.

The daemon runs in its own mount namespace (real tmpfs mounts: read-only, and 16 KiB full) as root *without*
CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so file permissions apply to it exactly as to an unprivileged user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import FIGURES, profile_toml
from daemonproc import DaemonProcess, reference_check
from edge_token.localauth import LocalAuthServer
from promsample import sample

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]
AUTH_TTL = 3600  # conftest.live_auth

FAULTS = {  # sink directory -> what the log must say
    "ro": "the filesystem is read-only",
    "full": "no space left on the device",
    "denied": "permission denied",
    "link": "the directory does not exist",
    "isdir": "the sink path is a directory",
}


async def nsenter(pid: int, *command: str) -> None:
    process = await asyncio.create_subprocess_exec("nsenter", "-t", str(pid), "-m", *command)
    assert await process.wait() == 0, command


async def test_disk_faults_are_specific_keep_the_old_token_and_recover(
    auth: LocalAuthServer, tmp_path: Path, secret_file: Path
) -> None:
    """Six sinks, five of them broken in different ways: only the healthy one is written; each broken one
    reports its own cause and keeps the previous token; once repaired, all are written without a new request."""
    for tool in ("unshare", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    nobody = pwd.getpwnam("nobody")
    for name in ("good", *FAULTS):
        (tmp_path / name).mkdir()
    (tmp_path / "link").rmdir()
    (tmp_path / "link").symlink_to(tmp_path / "later")  # dangling until repaired
    (tmp_path / "isdir" / "t.jwt").mkdir()
    sinks = [{"path": str(tmp_path / name / "t.jwt")} for name in ("good", *FAULTS)]
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = "127.0.0.1:0"\n' + profile_toml("main", auth, secret_file, sinks)
    )

    first = await DaemonProcess(config).start()  # the previous token, in every sink that can hold one
    await first.wait_for("token.renewed")
    await first.stop()
    previous = (tmp_path / "good" / "t.jwt").read_text()
    os.chown(tmp_path / "denied", nobody.pw_uid, nobody.pw_gid)
    os.chown(tmp_path / "denied" / "t.jwt", nobody.pw_uid, nobody.pw_gid)
    (tmp_path / "denied" / "t.jwt").chmod(0o644)
    prev = tmp_path / "previous.jwt"
    prev.write_text(previous)
    ro, full = tmp_path / "ro", tmp_path / "full"
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {ro} && cp {prev} {ro}/t.jwt && chmod 600 {ro}/t.jwt"
        f" && mount -o remount,ro {ro}"
        f" && mount -t tmpfs -o size=16k tmpfs {full} && cp {prev} {full}/t.jwt && chmod 600 {full}/t.jwt"
        f" && (dd if=/dev/zero of={full}/filler bs=1k count=64 2>/dev/null; true)"
        f" && exec setpriv --bounding-set=-dac_override,-dac_read_search {sys.executable} -m edge_token run -c {config}"
    )
    daemon = DaemonProcess(config)
    daemon.process = await asyncio.create_subprocess_exec(
        "unshare", "-m", "--propagation", "private", "sh", "-c", script,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    daemon._reader = asyncio.create_task(daemon._read())
    try:
        address = (await daemon.wait_for("http.listening"))["address"]
        await daemon.wait_for("token.adopted")
        daemon.send(signal.SIGUSR1)  # force a new token: every sink must be rewritten
        await daemon.wait_for("token.renewed")
        for name, cause in FAULTS.items():
            failed = await daemon.wait_for("sink.write_failed", sink=f"file:{tmp_path / name / 't.jwt'}")
            assert cause in failed["message"], (name, failed["message"])
        new = (tmp_path / "good" / "t.jwt").read_text()
        assert new != previous and reference_check(new, auth) is None
        root = Path(f"/proc/{daemon.process.pid}/root")
        for name in ("ro", "full", "denied"):
            assert (root / str(tmp_path / name / "t.jwt").lstrip("/")).read_text() == previous, name
        async with aiohttp.ClientSession() as http:
            text = await (await http.get(f"http://{address}/metrics")).text()
        for name in FAULTS:
            assert (
                sample(text, "edge_token_sink_healthy", profile="main", sink=f"file:{tmp_path / name / 't.jwt'}") == 0
            )
        assert sample(text, "edge_token_sink_healthy", profile="main", sink=f"file:{tmp_path / 'good' / 't.jwt'}") == 1

        requests = auth.token_requests
        await nsenter(daemon.process.pid, "mount", "-o", "remount,rw", str(ro))
        await nsenter(daemon.process.pid, "rm", str(full / "filler"))
        os.chown(tmp_path / "denied", 0, 0)
        (tmp_path / "later").mkdir()
        (tmp_path / "isdir" / "t.jwt").rmdir()
        repaired = time.monotonic()
        for name in FAULTS:
            await daemon.wait_for("sink.written", sink=f"file:{tmp_path / name / 't.jwt'}", timeout=45)
            assert (root / str(tmp_path / name / "t.jwt").lstrip("/")).read_text() == new, name
        assert auth.token_requests == requests  # sink retries reuse the held token
        FIGURES["disk faults"] = {
            "faults": len(FAULTS), "specific errors": len(FAULTS), "previous tokens intact": 3,
            "recovered without restart": len(FAULTS), "seconds to recover": round(time.monotonic() - repaired, 1),
        }  # fmt: skip
    finally:
        await daemon.stop()
