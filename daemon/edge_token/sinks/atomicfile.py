"""Atomic file replacement: a reader sees the old bytes or the new bytes, never a mix, never an empty file.

Steps, in order (numbered again in the code). Every step works relative to one open descriptor of the target's
directory (openat/renameat), so a directory swapped mid-write cannot redirect us:
  0. Trust the directory and the target: a directory writable by group or others without the sticky bit is
     refused (another user could rename a forged token over ours), and so is a target that exists but is not a
     regular file (FIFO, device, socket, directory, symlink): it is never opened, never replaced.
  1. Skip the write if the file already holds exactly these bytes with this mode and owner.
  2. Create a temp file in the target's own directory (rename across filesystems fails with EXDEV), with
     O_CREAT|O_EXCL|O_NOFOLLOW so a planted file or symlink is never followed or reused.
  3. fchown (optional), then fchmod to the configured mode: the umask must not decide it. The file is created
     0600, so it is never looser than the target at any moment.
  4. Write everything, then fsync the file so its data is on disk before its name is.
  5. os.replace the temp file over the target (atomic on POSIX).
  6. Check, through the still-open descriptor, that the name now leads to the inode we wrote (nobody renamed a
     file of theirs over it); then fsync the directory so the rename itself survives a crash.
On any failure the temp file is removed and the target is untouched.

Nothing here may block forever: every open uses O_NONBLOCK (a FIFO would otherwise wait for a writer), and the
sink runs these calls through `call_with_deadline`, so a hung filesystem costs a bounded wait, not the daemon.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edge_token.core.errors import SinkError

TEMP_PREFIX = "."
TEMP_SUFFIX = ".edge-token-tmp"
_NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
T = TypeVar("T")

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
}


def temp_name(target: Path) -> str:
    """A fresh, unguessable temp name next to `target`; recognisable so a later start can clean it up."""
    return f"{TEMP_PREFIX}{target.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def not_regular(path: Path, info: os.stat_result) -> SinkError:
    """The error for a sink path that exists but is not a regular file (we never open or replace those)."""
    kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
    return SinkError(
        f"cannot write {path}: the sink path is {kind}, not a regular file; edge-token never opens or replaces it. "
        "Remove it, or set the sink's path to a regular file (symlinks are not followed: use the real path)"
    )


def check_directory(directory: Path, info: os.stat_result) -> None:
    """Refuse a directory other users may rename files in: they could put a forged token at our path.

    Group/other-writable is fine only with the sticky bit (like /tmp), where only a file's owner may rename or
    remove it.
    """
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        who = "group and others" if mode & stat.S_IWGRP and mode & stat.S_IWOTH else (
            "group" if mode & stat.S_IWGRP else "others"
        )  # fmt: skip
        raise SinkError(
            f"cannot write into {directory}: it is writable by {who} (mode {mode:04o}) without the sticky bit, so "
            f"another user could replace the token with a forged one; chmod go-w {directory} (or chmod +t for a "
            "shared directory), or write the token to a directory only edge-token can write"
        )


def expected_owner(uid: int) -> int:
    """The owner a sink file of ours has: the configured one, else our effective uid."""
    return uid if uid >= 0 else os.geteuid()


def _unchanged(dir_fd: int, name: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    try:
        fd = os.open(name, _NOFOLLOW_READ, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data) or stat.S_IMODE(info.st_mode) != mode:
            return False
        # a same-bytes file planted by someone else is not "ours, unchanged": it gets replaced by one that is
        if info.st_uid != expected_owner(uid) or (gid >= 0 and info.st_gid != gid):
            return False
        return os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def describe_os_error(exc: OSError, path: Path, step: str = "", existing: os.stat_result | None = None) -> str:
    """A specific, actionable message for the errors operators actually hit.

    `step` says where it happened; `existing` is the file found at the path when the directory is sticky.
    """
    planted = existing is not None and existing.st_uid != os.geteuid()
    if exc.errno in (errno.EPERM, errno.EACCES) and step == "replace" and existing is not None and planted:
        return (
            f"cannot write {path}: it belongs to uid {existing.st_uid}, not to edge-token, and the sticky "
            "directory lets only its owner replace it; remove that file (it may be a planted token) or use a "
            "directory only edge-token can write"
        )
    if exc.errno == errno.EPERM and step == "chown":
        return f"cannot write {path}: changing the file's owner/group needs privileges (CAP_CHOWN); run as root or "\
            "remove owner/group from the sink"  # fmt: skip
    hints = {
        errno.EACCES: "permission denied: give the daemon's user write access to the directory",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "the filesystem is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file size limit exceeded",
        errno.ENOENT: "the directory does not exist: create it (systemd: RuntimeDirectory=)",
        errno.ENOTDIR: "a path component is not a directory",
        errno.EISDIR: "the sink path is a directory",
        errno.ELOOP: "refusing to follow a symlink",
        errno.EEXIST: "a file already exists at the temporary name",
    }
    hint = hints.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return f"cannot write {path}: {hint}"


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o600,
    uid: int = -1,
    gid: int = -1,
    *,
    make_temp_name: Callable[[Path], str] = temp_name,
    after_replace: Callable[[], None] | None = None,
) -> bool:
    """Atomically replace `path` with `data`. Returns False if it already held them (nothing written).

    Raises SinkError naming the path and the cause; the previous file is then intact and no temp file is left.
    `after_replace` runs between steps 5 and 6 (tests use it to race a rename against the ownership check).
    """
    directory, name = path.parent, path.name
    step, existing, directory_info = "directory", None, None
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SinkError(describe_os_error(exc, path)) from None
    temp: str | None = None
    try:
        # 0. a directory others may rename in, or a target that is not a regular file: refuse, touch nothing
        directory_info = os.fstat(dir_fd)
        check_directory(directory, directory_info)
        existing = _lstat(name, dir_fd)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise not_regular(path, existing)
        # 1. unchanged bytes, mode and owner: nothing to do (no fsync, no inotify event for readers)
        if existing is not None and _unchanged(dir_fd, name, data, mode, uid, gid):
            return False
        # 2. exclusive, no-follow create in the same directory; a collision (or a planted file) gets a new name
        step = "create"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        for attempt in range(3):
            candidate = make_temp_name(path)
            try:
                fd = os.open(candidate, flags, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                if attempt == 2:
                    raise
                continue
            temp = candidate
            break
        try:
            # 3. owner first (chown may clear mode bits), then the exact mode regardless of umask
            if uid >= 0 or gid >= 0:
                step = "chown"
                os.fchown(fd, uid, gid)
            step = "write"
            os.fchmod(fd, mode)
            # 4. all bytes, then fsync the data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            # 5. the atomic switch
            step = "replace"
            os.replace(candidate, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            temp = None
            if after_replace is not None:
                after_replace()
            # 6. the name must lead to the inode we wrote, then make the rename durable
            _check_ours(path, name, dir_fd, os.fstat(fd))
            step = "fsync"
            os.fsync(dir_fd)
        finally:
            os.close(fd)
    except OSError as exc:
        sticky = directory_info is not None and bool(directory_info.st_mode & stat.S_ISVTX)
        raise SinkError(describe_os_error(exc, path, step, existing if sticky else None)) from None
    finally:
        if temp is not None:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
        os.close(dir_fd)
    return True


def _check_ours(path: Path, name: str, dir_fd: int, written: os.stat_result) -> None:
    now = _lstat(name, dir_fd)
    if now is None or (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
        owner = f"uid {now.st_uid}" if now is not None else "nobody (it was removed)"
        raise SinkError(
            f"cannot write {path}: right after the rename the path holds a file owned by {owner}, not the one "
            "edge-token wrote; another user can rename files in that directory: fix its permissions "
            "(chmod go-w, or chmod +t) and check the file"
        )


def read_regular(path: Path, limit: int, uid: int = -1) -> bytes:
    """Up to `limit` bytes of `path`, only if it is a regular file owned by us (or the configured `uid`).

    Never blocks on a FIFO (O_NONBLOCK), never follows a symlink (O_NOFOLLOW); type and owner are checked on the
    open descriptor (fstat), so nothing can be swapped in between. Raises SinkError saying why it refused, or
    FileNotFoundError if there is no file.
    """
    fd = os.open(path, _NOFOLLOW_READ)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise not_regular(path, info)
        if info.st_uid != expected_owner(uid):
            raise SinkError(
                f"{path} is owned by uid {info.st_uid}, not by edge-token (uid {expected_owner(uid)}): ignored, it "
                "may be a planted token; it will be replaced by a verified one"
            )
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> int:
    """Delete temp files a killed predecessor left beside `path` (only ours: exact name pattern and owner)."""
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    prefix = f"{TEMP_PREFIX}{path.name}."
    me = os.geteuid()
    for entry in entries:
        name = entry.name
        middle = name[len(prefix) : -len(TEMP_SUFFIX)]
        if name.startswith(prefix) and name.endswith(TEMP_SUFFIX) and len(middle) == 16:
            try:
                info = entry.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_uid in (me, 0):
                    entry.unlink()
                    removed += 1
            except OSError:
                continue
    return removed


class BlockingCalls:
    """Runs blocking file calls in their own daemon threads, with a deadline, one at a time per owner.

    Why not `asyncio.to_thread`: a call stuck in the kernel (hung NFS/FUSE server, a FIFO) never returns, and
    `asyncio.run` waits for every default-executor thread at exit, so SIGTERM could not end the daemon. A daemon
    thread is abandoned instead: the caller gets a SinkError after `timeout` seconds and the process can still
    exit. While an abandoned call is still stuck, further calls fail at once instead of piling up threads.
    """

    def __init__(self, what: str, timeout: float) -> None:
        self.what, self.timeout = what, timeout
        self._stuck: threading.Thread | None = None

    async def call(self, function: Callable[[], T]) -> T:
        if self._stuck is not None and self._stuck.is_alive():
            raise SinkError(f"{self.what}: an earlier file operation is still stuck (hung filesystem?); not retried")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]  # None only when error is set

        def work() -> None:
            try:
                outcome: tuple[T | None, BaseException | None] = (function(), None)
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:
                pass  # the loop is gone: nobody waits for this any more

        thread = threading.Thread(target=work, name=f"edge-token file {self.what}", daemon=True)
        thread.start()
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            self._stuck = thread
            raise SinkError(
                f"{self.what}: a file operation did not finish within {self.timeout:g} s (hung filesystem?); "
                "the previous token is kept"
            ) from None
