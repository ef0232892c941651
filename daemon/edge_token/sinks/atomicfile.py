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

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from edge_token.core.errors import SinkError
from edge_token.sinks.filecalls import BlockingCalls as BlockingCalls  # where the sinks run these calls
from edge_token.sinks.filecalls import given_up
from edge_token.sinks.tempfiles import TEMP_PREFIX as TEMP_PREFIX
from edge_token.sinks.tempfiles import TEMP_SUFFIX as TEMP_SUFFIX
from edge_token.sinks.tempfiles import remove_stale_temps as remove_stale_temps
from edge_token.sinks.tempfiles import temp_name as temp_name

_NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
}


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
        return as_written(os.fstat(fd), len(data), mode, uid, gid) and os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def as_written(info: os.stat_result, size: int, mode: int, uid: int, gid: int) -> bool:
    """Is this file, as far as its metadata tells, what `write_atomic` would leave: a regular file of `size` bytes
    with exactly `mode`, owned by us (or the configured owner and group)? Then only its bytes can differ."""
    if not stat.S_ISREG(info.st_mode) or info.st_size != size or stat.S_IMODE(info.st_mode) != mode:
        return False
    # a same-bytes file planted by someone else is not "ours, unchanged": it gets replaced by one that is
    return info.st_uid == expected_owner(uid) and (gid < 0 or info.st_gid == gid)


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
    known: int | None = None,
    seen: Callable[[int], None] | None = None,
    make_temp_name: Callable[[Path], str] = temp_name,
    after_replace: Callable[[], None] | None = None,
) -> bool:
    """Atomically replace `path` with `data`. Returns False if it already held them (nothing written).

    `known`: the `identity_key` the file had when it held other bytes than `data` (the sink's previous token, as this
    process left it). Found with that identity, the file cannot hold `data`: step 1's read is skipped (four
    system calls, each a hand-over of the interpreter lock between this worker and the event loop). A wrong
    `known` can only cause a write, never skip one. `seen` is given the identity key of the file that holds `data`
    on return (written, or found holding them), for the next call's `known`.

    Raises SinkError naming the path and the cause; the previous file is then intact and no temp file is left.
    Long because its steps are the module docstring's, numbered and in that order, to be read top to bottom:
    split up, the order (fsync before rename, the ownership check before the directory fsync) would be hidden.
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
        if existing is not None and identity_key(existing) != known and _unchanged(dir_fd, name, data, mode, uid, gid):
            if seen is not None:
                seen(identity_key(existing))
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
            # 5. the atomic switch, unless our caller gave up waiting (a hung fsync that came back late): the token
            # written meanwhile by a later call must not be replaced by this older one
            if given_up():
                raise SinkError(f"cannot write {path}: the write came back after its deadline; the file is left as is")
            step = "replace"
            os.replace(candidate, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            temp = None
            if after_replace is not None:
                after_replace()
            # 6. the name must lead to the inode we wrote, then make the rename durable
            written = _check_ours(path, name, dir_fd, os.fstat(fd))
            if seen is not None:
                seen(identity_key(written))
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


def _check_ours(path: Path, name: str, dir_fd: int, written: os.stat_result) -> os.stat_result:
    now = _lstat(name, dir_fd)
    if now is None or (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
        owner = f"uid {now.st_uid}" if now is not None else "nobody (it was removed)"
        raise SinkError(
            f"cannot write {path}: right after the rename the path holds a file owned by {owner}, not the one "
            "edge-token wrote; another user can rename files in that directory: fix its permissions "
            "(chmod go-w, or chmod +t) and check the file"
        )
    return now


def identity_key(info: os.stat_result) -> int:
    """`identity` in one small int (kept per sink between writes: 10,000 tuples of nine ints were 5 MiB). Two files
    may share a key; for `write_atomic`'s `known` that can only cause a write, never skip one."""
    return hash(identity(info))


def identity(info: os.stat_result) -> tuple[int, ...]:
    """What a file swapped, rewritten, chmod-ed, chown-ed or linked since would change (ctime covers the metadata)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode, info.st_uid,
            info.st_gid, info.st_nlink)  # fmt: skip


def read_regular(path: Path, limit: int, uid: int = -1) -> bytes:
    """Up to `limit` bytes of `path`, only if it is a regular file owned by us (or the configured `uid`).

    Never blocks on a FIFO (O_NONBLOCK), never follows a symlink (O_NOFOLLOW); type and owner are checked on the
    open descriptor (fstat), so nothing can be swapped in between. Raises SinkError saying why it refused, or
    FileNotFoundError if there is no file.
    """
    return read_back(path, limit, uid)[0]


def read_back(path: Path, limit: int, uid: int = -1) -> tuple[bytes, os.stat_result]:
    """`read_regular`, with the file's status as read through the same descriptor."""
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
        return b"".join(chunks), info
    finally:
        os.close(fd)
