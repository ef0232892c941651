"""File sinks trust only what they should: never a non-regular file, never a directory others may rename in,
never a token another user planted, never a call that blocks forever."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import profile_toml
from daemonproc import DaemonProcess, reference_check
from edge_token.core.errors import SinkError
from edge_token.core.settings import SinkConfig
from edge_token.localauth import LocalAuthServer
from edge_token.sinks.atomicfile import BlockingCalls, read_regular, write_atomic
from edge_token.sinks.file import FileSink
from unprivileged import as_user

NOBODY = 65534


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a command as the unprivileged `nobody` user (the tests themselves run as root)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_chr(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers


def make_blk(path: Path) -> None:
    os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # a loop device's numbers


def make_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def make_dir(path: Path) -> None:
    path.mkdir()


KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (make_fifo, "a FIFO"),
    "chr": (make_chr, "a character device"),
    "blk": (make_blk, "a block device"),
    "socket": (make_socket, "a socket"),
    "dir": (make_dir, "a directory"),
}


def run_bounded(function: Callable[[], object], seconds: float = 5.0) -> BaseException | object:
    """Run `function` in a thread; fail the test (not hang it) if it does not return within `seconds`."""
    result: list[BaseException | object] = []

    def target() -> None:
        try:
            result.append(function())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function} blocked for more than {seconds} s"
    return result[0]


@pytest.mark.parametrize("via_symlink", [False, True], ids=["direct", "symlink"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_sink_path_that_is_not_a_regular_file_is_refused_and_kept(
    tmp_path: Path, kind: str, via_symlink: bool
) -> None:
    """Invariant: for every non-regular file type at the sink path (or a symlink to one), the write and the
    read-back return at once with a SinkError naming the path and the fix, and the object is neither opened
    blocking nor replaced."""
    make, label = KINDS[kind]
    target = tmp_path / "t.jwt"
    real = tmp_path / "real-object" if via_symlink else target
    make(real)
    if via_symlink:
        target.symlink_to(real)
    before = os.lstat(target)
    error = run_bounded(lambda: write_atomic(target, b"token"))
    assert isinstance(error, SinkError), error
    assert str(target) in str(error) and ("a symlink" if via_symlink else label) in str(error)
    assert "Remove it" in str(error)
    after = os.lstat(target)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"t.jwt", real.name})  # no temp left
    refused = run_bounded(lambda: read_regular(target, 1024))
    assert isinstance(refused, SinkError | OSError), refused  # ELOOP for a symlink: never followed


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o2777, 0o770], ids=oct)
def test_a_directory_others_may_rename_in_is_refused(tmp_path: Path, mode: int) -> None:
    """Group/other-writable without the sticky bit: refused with the directory and the fix named; nothing written.
    With the sticky bit (or private) the same write succeeds."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(SinkError) as caught:
        write_atomic(directory / "t.jwt", b"token")
    assert str(directory) in str(caught.value) and "sticky" in str(caught.value) and "chmod go-w" in str(caught.value)
    assert list(directory.iterdir()) == []
    directory.chmod(mode | stat.S_ISVTX)
    assert write_atomic(directory / "t.jwt", b"token")
    directory.chmod(0o755)
    assert write_atomic(directory / "t.jwt", b"token2")


def sticky_dir(public_dir: Path) -> Path:
    directory = public_dir / "sticky"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory


async def test_a_token_planted_by_another_user_is_not_adopted(public_dir: Path) -> None:
    """A real unprivileged user plants a file at the sink path in a sticky directory: read-back ignores it with a
    specific log line naming the owner; our own file is read back."""
    directory = sticky_dir(public_dir)
    target = directory / "t.jwt"
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJmb3JnZWQifQ.c2ln"
    planted = as_nobody(sys.executable, "-c", f"open({str(target)!r}, 'w').write({forged!r})")
    assert planted.returncode == 0, planted.stderr
    assert target.stat().st_uid == NOBODY
    sink = FileSink(SinkConfig(type="file", path=target))
    with capture_logs() as logs:
        assert await sink.read() is None
    assert [(e["event"], "uid 65534" in e["reason"]) for e in logs] == [("sink.read_refused", True)]
    target.unlink()
    write_atomic(target, forged.encode())
    assert await sink.read() == forged


def test_a_planted_file_in_a_sticky_directory_gets_the_right_hint(public_dir: Path) -> None:
    """A non-root daemon cannot replace another user's file in a sticky directory: the error says so (not the
    old "owner/group change needs privileges"), and the planted file is untouched."""
    directory = sticky_dir(public_dir)
    target = directory / "t.jwt"
    assert as_nobody(sys.executable, "-c", f"open({str(target)!r}, 'w').write('forged')").returncode == 0
    code = (
        "import sys; from pathlib import Path; from edge_token.sinks.atomicfile import write_atomic\n"
        "from edge_token.core.errors import SinkError\n"
        "try:\n    write_atomic(Path(sys.argv[1]), b'ours')\nexcept SinkError as e:\n    print(e); sys.exit(3)\n"
    )
    daemon_user = pwd.getpwnam("daemon")
    result = subprocess.run(
        as_user(daemon_user.pw_uid, daemon_user.pw_gid, sys.executable, "-c", code, str(target)),
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "belongs to uid 65534" in result.stdout and "sticky" in result.stdout, result.stdout
    assert "needs privileges" not in result.stdout
    assert target.read_text() == "forged"
    assert [p.name for p in directory.iterdir()] == ["t.jwt"]  # no temp left


def test_a_file_renamed_over_ours_right_after_the_write_is_detected(public_dir: Path) -> None:
    """Interleaving: the directory turns writable between the check and the rename, and a real unprivileged user
    renames a forged file over the token right after our rename. The write fails (the sink is not reported
    written) with an error naming the intruder's uid."""
    directory = public_dir / "d"
    directory.mkdir(mode=0o755)
    target = directory / "t.jwt"

    def intrude() -> None:
        directory.chmod(0o777)
        forged = directory / "forged"
        script = f"open({str(forged)!r}, 'w').write('forged'); import os; os.rename({str(forged)!r}, {str(target)!r})"
        assert as_nobody(sys.executable, "-c", script).returncode == 0

    with pytest.raises(SinkError, match="owned by uid 65534, not the one edge-token wrote"):
        write_atomic(target, b"ours", after_replace=intrude)
    assert target.read_text() == "forged" and target.stat().st_uid == NOBODY


async def test_a_stuck_file_call_is_abandoned_after_its_deadline() -> None:
    """A call blocked in the kernel (a read on a pipe nobody writes) returns a SinkError after the deadline;
    while it is still stuck, the next call fails at once instead of starting another thread."""
    reader, writer = os.pipe()
    calls = BlockingCalls("file:/x", timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(SinkError, match="did not finish within 0.3 s"):
            await calls.call(lambda: os.read(reader, 1))
        assert time.monotonic() - started < 2.0
        threads = threading.active_count()
        with pytest.raises(SinkError, match="still stuck"):
            await calls.call(lambda: b"")
        assert threading.active_count() == threads
    finally:
        os.write(writer, b"x")  # release the stuck thread
        os.close(writer)
    for _ in range(100):  # once the stuck call has returned, calls work again
        try:
            assert await calls.call(lambda: 42) == 42
            break
        except SinkError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("calls never worked again after the stuck one returned")
    os.close(reader)


# ---- the real daemon -----------------------------------------------------------------------------------------


def two_sink_config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, blocked: Path) -> Path:
    config = tmp_path / "config.toml"
    sinks = [{"path": str(blocked)}, {"path": str(tmp_path / "good.jwt")}]
    config.write_text('[daemon]\nlog_format = "json"\nlisten = ""\n' + profile_toml("main", auth, secret_file, sinks))
    return config


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_daemon_with_a_fifo_sink_keeps_working_and_stops_on_sigterm(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    """A FIFO behind a symlink at one sink path: the other sink gets a verified token, the FIFO sink reports a
    specific error, the FIFO is still a FIFO, and SIGTERM ends the process within the grace period."""
    (tmp_path / "pipe").mkdir()
    os.mkfifo(tmp_path / "pipe" / "fifo")
    blocked = tmp_path / "t.jwt"
    blocked.symlink_to(tmp_path / "pipe" / "fifo")
    daemon = await DaemonProcess(two_sink_config(tmp_path, auth, secret_file, blocked)).start()
    daemons.append(daemon)
    failed = await daemon.wait_for("sink.write_failed", timeout=15.0)
    assert "is a symlink" in str(failed) and str(blocked) in str(failed)
    await daemon.wait_for("token.renewed", timeout=15.0)
    assert reference_check((tmp_path / "good.jwt").read_text(), auth) is None
    assert stat.S_ISLNK(os.lstat(blocked).st_mode) and stat.S_ISFIFO(os.stat(blocked).st_mode)
    started = time.monotonic()
    assert await daemon.stop(timeout=20.0) == 0
    assert time.monotonic() - started < 5.0


STUCK_FSYNC = """
import os, sys
# fault injection: the disk hangs (like a dead NFS server) - fsync blocks forever in a real read(2)
_never, _keep = os.pipe()
os.fsync = lambda fd: os.read(_never, 1)
from edge_token.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_sigterm_ends_the_daemon_within_the_grace_period_with_a_stuck_worker(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """Every fsync hangs for ever (a dead filesystem): the write is in flight and stuck in the kernel when SIGTERM
    arrives, and the process still exits within the shutdown grace period (10 s) plus a margin."""
    config = two_sink_config(tmp_path, auth, secret_file, tmp_path / "t.jwt")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STUCK_FSYNC, str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15.0
        while not list(tmp_path.glob(".*.edge-token-tmp")):  # the temp file exists: the write is in flight
            assert process.returncode is None and time.monotonic() < deadline, "no write started"
            await asyncio.sleep(0.05)
        assert not list(tmp_path.glob("*.jwt")), "a write finished although fsync hangs"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.wait_for(process.wait(), 25.0)
        elapsed = time.monotonic() - started
        assert code == 0 and elapsed < 13.0, (code, elapsed)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_a_fifo_as_the_client_secret_file_blocks_nothing(
    tmp_path: Path, auth: LocalAuthServer, daemons: list[DaemonProcess]
) -> None:
    """The secret is read on the event loop: a FIFO there (nobody writing) is refused as a config error naming the
    path, and the daemon still stops on SIGTERM at once (before: the loop blocked in open() for ever)."""
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    config = tmp_path / "config.toml"
    sinks = [{"path": str(tmp_path / "t.jwt")}]
    config.write_text('[daemon]\nlog_format = "json"\nlisten = ""\n' + profile_toml("main", auth, fifo, sinks))
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    failed = await daemon.wait_for("token.renewal_failed", timeout=15.0)
    assert failed["error"] == "config" and "is not a regular file" in failed["message"], failed
    started = time.monotonic()
    assert await daemon.stop(timeout=15.0) == 0
    assert time.monotonic() - started < 5.0
