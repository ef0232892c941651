"""Atomic file replacement: a reader sees the old bytes or the new bytes, never a mix, never an empty file.

Steps, in order (numbered again in the code):
  1. Skip the write if the file already holds exactly these bytes with this mode and owner.
  2. Create a temp file in the target's own directory (rename across filesystems fails with EXDEV), with
     O_CREAT|O_EXCL|O_NOFOLLOW so a planted file or symlink is never followed or reused.
  3. fchown (optional), then fchmod to the configured mode: the umask must not decide it. The file is created
     0600, so it is never looser than the target at any moment.
  4. Write everything, then fsync the file so its data is on disk before its name is.
  5. os.replace the temp file over the target (atomic on POSIX).
  6. fsync the directory so the rename itself survives a crash.
On any failure the temp file is removed and the target is untouched.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from edge_token.errors import SinkError

TEMP_PREFIX = "."
TEMP_SUFFIX = ".edge-token-tmp"


def temp_name(target: Path) -> str:
    """A fresh, unguessable temp name next to `target`; recognisable so a later start can clean it up."""
    return f"{TEMP_PREFIX}{target.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _unchanged(path: Path, data: bytes, mode: int, uid: int, gid: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data) or stat.S_IMODE(info.st_mode) != mode:
            return False
        if (uid >= 0 and info.st_uid != uid) or (gid >= 0 and info.st_gid != gid):
            return False
        return os.read(fd, len(data) + 1) == data
    finally:
        os.close(fd)


def describe_os_error(exc: OSError, path: Path) -> str:
    """A specific, actionable message for the errors operators actually hit."""
    hints = {
        errno.EACCES: "permission denied: give the daemon's user write access to the directory",
        errno.EPERM: "operation not permitted (owner/group change needs privileges)",
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


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o600,
    uid: int = -1,
    gid: int = -1,
    *,
    make_temp_name: Callable[[Path], str] = temp_name,
) -> bool:
    """Atomically replace `path` with `data`. Returns False if it already held them (nothing written).

    Raises SinkError naming the path and the cause; the previous file is then intact and no temp file is left.
    """
    # 1. unchanged bytes, mode and owner: nothing to do (no fsync, no inotify event for readers)
    if _unchanged(path, data, mode, uid, gid):
        return False
    directory = path.parent
    temp: Path | None = None
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode if os.path.lexists(path) else 0):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        # 2. exclusive, no-follow create in the same directory; a collision (or a planted file) gets a new name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for attempt in range(3):
            candidate = directory / make_temp_name(path)
            try:
                fd = os.open(candidate, flags, 0o600)
            except FileExistsError:
                if attempt == 2:
                    raise
                continue
            temp = candidate
            break
        try:
            # 3. owner first (chown may clear mode bits), then the exact mode regardless of umask
            if uid >= 0 or gid >= 0:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            # 4. all bytes, then fsync the data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # 5. the atomic switch
        assert temp is not None
        os.replace(temp, path)
        temp = None
        # 6. make the rename durable
        _fsync_directory(directory)
    except OSError as exc:
        raise SinkError(describe_os_error(exc, path)) from None
    finally:
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> int:
    """Delete temp files a killed predecessor left beside `path` (only ours: by exact name pattern)."""
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    prefix = f"{TEMP_PREFIX}{path.name}."
    for entry in entries:
        name = entry.name
        middle = name[len(prefix) : -len(TEMP_SUFFIX)]
        if name.startswith(prefix) and name.endswith(TEMP_SUFFIX) and len(middle) == 16:
            try:
                entry.unlink()
                removed += 1
            except OSError:
                continue
    return removed
