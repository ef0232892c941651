"""A process that cannot make itself non-dumpable says so: under a seccomp policy that answers
prctl(PR_SET_DUMPABLE) with EPERM (as a container runtime's or a unit's syscall filter may), `run`, `once` and
`exec` log `hardening.dumpable` naming the errno and what it exposes, and `check` fails on it (exit 78).

The policy is real: a small C helper, built here with the system's C compiler, installs the filter and execs the
command (the test is skipped, saying why, where no compiler or no seccomp is available)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cliproc import edge_token
from conftest import profile_toml
from edge_token.localauth import LocalAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]

NOPRCTL_C = r"""
/* Run a program under a seccomp filter that answers prctl(PR_SET_DUMPABLE, ...) with EPERM; everything else,
   other prctl options included, is allowed. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_SET_DUMPABLE, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof(filter) / sizeof(filter[0]), filter};
    if (argc < 2) return 2;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("seccomp"); return 3;
    }
    execvp(argv[1], argv + 1); perror("exec"); return 127;
}
"""

PROBE = """
import json
from edge_token.hardening import is_dumpable, make_non_dumpable
print(json.dumps([make_non_dumpable(), is_dumpable()]))
"""


@pytest.fixture(scope="module")
def noprctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """argv prefix that runs a command under the prctl-denying filter; skips where it cannot be built or used."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc) to build the seccomp helper that makes prctl(PR_SET_DUMPABLE) fail")
    where = tmp_path_factory.mktemp("seccomp")
    (where / "noprctl.c").write_text(NOPRCTL_C)
    built = subprocess.run(
        [compiler, "-O", "-o", str(where / "noprctl"), str(where / "noprctl.c")], capture_output=True, timeout=120
    )
    if built.returncode != 0:
        pytest.skip(f"the seccomp helper does not build here: {built.stderr.decode(errors='replace')[-300:]}")
    works = subprocess.run([str(where / "noprctl"), "true"], capture_output=True, timeout=30)
    if works.returncode != 0:
        pytest.skip(f"seccomp filters cannot be installed here: {works.stderr.decode(errors='replace')[-300:]}")
    yield [str(where / "noprctl"), sys.executable]


def config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[daemon]\nlog_format = "json"\nlisten = ""\n'
        + profile_toml("main", auth, secret_file, [{"path": str(tmp_path / "t.jwt")}])
    )
    path.chmod(0o600)
    return path


def dumpable_warnings(stderr: str) -> list[dict[str, object]]:
    """The `hardening.dumpable` events among the JSON log lines (other lines are not JSON: skipped)."""
    events = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "hardening.dumpable":
                events.append(event)
    return events


def assert_one_loud_warning(stderr: str) -> None:
    warnings = dumpable_warnings(stderr)
    assert len(warnings) == 1, stderr
    assert warnings[0]["level"] == "warning"
    message = str(warnings[0]["message"])
    assert "the process stays dumpable: prctl(PR_SET_DUMPABLE) failed: EPERM" in message, message
    assert "other processes of this user can read its memory and environment" in message, message


def test_the_failure_names_the_errno_and_the_process_stays_dumpable(noprctl: list[str]) -> None:
    """Under the filter make_non_dumpable reports `EPERM` (not a bare False) and the process is indeed dumpable;
    without it, it reports nothing and the process is not."""
    for prefix, expected in ((noprctl, True), ([sys.executable], False)):
        done = subprocess.run([*prefix, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
        failure, dumpable = json.loads(done.stdout)
        assert dumpable is expected
        if expected:
            assert failure == "prctl(PR_SET_DUMPABLE) failed: EPERM (Operation not permitted)"
        else:
            assert failure is None


async def test_once_and_exec_warn_and_still_work(
    noprctl: list[str], tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`once` and `exec` under the filter do their work (exit 0) and log one `hardening.dumpable` warning; the
    same commands without the filter log none (the warning is about the filter, not always there)."""
    path = config(tmp_path, auth, secret_file)
    code, _, err = await edge_token("once", "-c", str(path), argv0=noprctl)
    assert code == 0, err
    assert_one_loud_warning(err)
    code, _, err = await edge_token("exec", "-c", str(path), "--", "/bin/true", argv0=noprctl)
    assert code == 0, err
    assert_one_loud_warning(err)
    for argv in (["once", "-c", str(path)], ["exec", "-c", str(path), "--", "/bin/true"]):
        code, _, err = await edge_token(*argv)
        assert code == 0 and dumpable_warnings(err) == [], err


async def test_check_fails_on_it(noprctl: list[str], tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> None:
    """`check` under the filter reports the problem on one line and exits 78; without the filter the same config
    passes."""
    path = config(tmp_path, auth, secret_file)
    code, _, err = await edge_token("check", "-c", str(path), argv0=noprctl)
    assert code == 78, err
    assert "edge-token: hardening.dumpable: the process stays dumpable: prctl(PR_SET_DUMPABLE) failed: EPERM" in err
    code, _, err = await edge_token("check", "-c", str(path))
    assert code == 0, err


async def test_run_warns_at_start(noprctl: list[str], tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> None:
    """The daemon under the filter starts (it is not refused) and its log says, once, that it stays dumpable."""
    path = config(tmp_path, auth, secret_file)
    daemon = await asyncio.create_subprocess_exec(
        *noprctl, "-m", "edge_token", "run", "-c", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert daemon.stderr is not None
        while not any('"token.renewed"' in line for line in lines):  # running its cycle, long after the start
            line = await asyncio.wait_for(daemon.stderr.readline(), 30)
            assert line, "\n".join(lines)
            lines.append(line.decode())
    finally:
        if daemon.returncode is None:
            daemon.kill()
        await daemon.wait()
    assert_one_loud_warning("".join(lines))
