"""The only secret I/O: reading a `SecretSource` (file, environment, systemd credential, inline), checked and
registered with the scrubber before anyone can send it, and a cache that reads a file once per change."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from edge_token.core import scrub
from edge_token.core.errors import ConfigError, TransientError
from edge_token.core.settings import SecretSource

MAX_SECRET_BYTES = 64 * 1024  # a secret file larger than this is the wrong file (a key bundle, a log)

TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN})


def read_secret(source: SecretSource, environ: Mapping[str, str], what: str = "client secret") -> str:
    """Return the secret (surrounding whitespace stripped) or raise ConfigError saying where it failed.

    Running out of descriptors or memory (EMFILE, ENFILE, ENOMEM) is TransientError: retried, not "config".
    """
    if source.kind == "inline":
        value = source.ref
    elif source.kind == "env":
        if source.ref not in environ:
            raise ConfigError(f"{what}: environment variable {source.ref} is not set")
        value = environ[source.ref]
    else:
        path = Path(source.ref)
        if source.kind == "credential":
            directory = environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"{what}: credential {source.ref!r} needs $CREDENTIALS_DIRECTORY "
                    "(systemd LoadCredential=/LoadCredentialEncrypted=)"
                )
            path = Path(directory) / source.ref
        try:
            # O_NONBLOCK: a FIFO at the secret path must not block the event loop (it is refused just below)
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise ConfigError(f"{what}: {path} is not a regular file; point it at the secret file")
                value = handle.read(MAX_SECRET_BYTES + 1).decode("utf-8")
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRNOS:  # the process is short of descriptors/memory, not misconfigured
                raise TransientError(f"{what}: cannot read {path} now: {exc.strerror}; will retry") from None
            raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{what}: cannot read {path}: UnicodeDecodeError") from None
        if len(value) > MAX_SECRET_BYTES:
            raise ConfigError(f"{what}: {path} is larger than {MAX_SECRET_BYTES} bytes; is it the right file?")
        if world_readable_secret(path, info):
            raise ConfigError(
                f"{what}: {path} is readable by every local user (mode {stat.S_IMODE(info.st_mode):04o}, "
                f"and every directory above it is searchable); chmod o-r {path} (or use a systemd credential)"
            )
    value = value.strip()
    if not value:
        raise ConfigError(f"{what} from {source.describe()} is empty")
    scrub.register(value)  # before anyone can send it: an echo in any encoding is cut everywhere (scrub.py)
    return value


def world_readable_secret(path: Path, info: os.stat_result) -> bool:
    """True if any local user can read this secret file: o+r on it and o+x on every directory above it.

    A 0644 file in a 0700 directory (systemd's credentials directory, a private /etc subdirectory) is not
    exposed, so the file mode alone is not the question. Group-readable is allowed: handing a root-owned
    secret to the daemon's group (root:edge-token 0640) is the usual way to share it.
    """
    if not info.st_mode & stat.S_IROTH:
        return False
    for directory in Path(os.path.abspath(path)).resolve().parents:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class SecretCache:
    """Secret files read once per change, shared by every profile: a fill of N profiles that share one secret
    file reads (and permission-checks) it once, not N times, yet a rotated secret is picked up at the next attempt.

    "Changed" is the file's (device, inode, size, mtime, ctime): a replaced, rewritten, chmod-ed or chown-ed file
    is read again. After "credentials rejected" the caller asks for a fresh read regardless.

    Requests that start in the same turn of the event loop share one look at the file (a fill starts up to 16 at
    once): each `stat` on the loop hands the interpreter lock to whichever file worker wants it and waits to get it
    back. A look is then never older than the turn it was made in, shorter than the way from it to the request.
    """

    def __init__(self, environ: Mapping[str, str], read: Callable[..., str] | None = None) -> None:
        self._environ = environ
        self._read = read or read_secret  # the reader, injectable to count reads in tests
        self._cache: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {}
        self._looked: set[tuple[str, str]] = set()  # files looked at in this loop turn (emptied as it ends)
        self._paths: dict[tuple[str, str], str] = {}  # where each file is

    def read(self, source: SecretSource, fresh: bool = False) -> str:
        """The secret, from the cache unless the file changed (or `fresh`: after credentials were rejected)."""
        if source.kind not in ("file", "credential"):
            return self._read(source, self._environ)
        where = (source.kind, source.ref)
        if where in self._looked and not fresh:
            return self._cache[where][1]
        path = self._paths.get(where)
        if path is None:  # joined once per file (the environment is the daemon's, fixed for its life)
            directory = self._environ.get("CREDENTIALS_DIRECTORY", "") if source.kind == "credential" else ""
            path = self._paths[where] = os.path.join(directory, source.ref)
        try:
            info = os.stat(path)
        except OSError:
            return self._read(source, self._environ)  # raises the specific ConfigError
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = self._cache.get(where)
        if cached is not None and cached[0] == key and not fresh:
            value = cached[1]
        else:
            value = self._read(source, self._environ)
            self._cache[where] = (key, value)
        self._looked_at(where)
        return value

    def _looked_at(self, where: tuple[str, str]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a command without one): no turn to share the look with
            return
        if not self._looked:
            loop.call_soon(self._looked.clear)
        self._looked.add(where)
