"""The file sink: the token in a local file, replaced atomically, in raw, json or env format."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from edge_token.core.errors import SinkError
from edge_token.core.settings import SinkConfig
from edge_token.core.token import Token
from edge_token.sinks.atomicfile import as_written, check_directory, identity, read_back, write_atomic
from edge_token.sinks.dircalls import BatchedCalls
from edge_token.sinks.filecalls import BlockingCalls
from edge_token.sinks.tempfiles import StaleTemps, split_path

MAX_READ_BYTES = 64 * 1024
#: a write or read-back that takes longer is abandoned (hung NFS/FUSE): well below the daemon's cycle budget
FILE_IO_TIMEOUT_SECONDS = 20.0
T = TypeVar("T")
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
#: stale temp files are looked for once per directory per process (at each sink's first read-back, i.e. start)
STALE_TEMPS = StaleTemps()
#: per event loop, per (directory, deadline): the read-backs and unchanged checks of its sinks, in shared worker
#: trips (dircalls.py); a loop's entries go with it (tests run many loops, a process one)
_DIRECTORY_CALLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, float], BatchedCalls]] = (
    weakref.WeakKeyDictionary()
)


def directory_calls(directory: Path, timeout: float) -> BatchedCalls:
    """The `BatchedCalls` the sinks in `directory` share on this event loop (one per directory: its failure domain,
    a filesystem)."""
    per_loop = _DIRECTORY_CALLS.setdefault(asyncio.get_running_loop(), {})
    key = (os.fspath(directory), timeout)
    calls = per_loop.get(key)
    if calls is None:
        calls = per_loop[key] = BatchedCalls(f"file:{directory}", timeout)
    return calls


def render(token: Token, fmt: str, env_name: str = "EDGE_TOKEN") -> bytes:
    """The file's bytes for a format. `raw` has no trailing newline so `$(cat file)` and `read()` agree."""
    if fmt == "raw":
        return token.jwt.encode()
    if fmt == "env":
        return f"{env_name}={token.jwt}\n".encode()
    document = {
        "access_token": token.jwt,
        "token_type": token.token_type,
        "expires_at": datetime.fromtimestamp(token.exp, UTC).isoformat(timespec="seconds"),
        "expires_at_unix": int(token.exp),
        "scope": token.scope,
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def extract(content: str, fmt: str) -> str | None:
    """The JWT inside a file of the given format, or None if it holds none."""
    if fmt == "json":
        try:
            value = json.loads(content).get("access_token")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    if fmt == "env":
        _, _, content = content.partition("=")
    content = content.strip()
    return content if _JWT.fullmatch(content) else None


class FileSink:
    """Writes the token to `config.path` with the atomic recipe of `atomicfile`; every file call is bounded in time.

    Read-back (adoption at start) takes only a regular file owned by us or the configured owner; anything else is
    ignored with a `sink.read_refused` log line and later replaced by a verified token (or refused at write time
    if it is not a regular file).
    """

    def __init__(
        self,
        config: SinkConfig,
        timeout: float = FILE_IO_TIMEOUT_SECONDS,
        log: Any = None,
        stale_temps: StaleTemps | None = None,
    ) -> None:
        if config.path is None:
            raise ValueError("a file sink needs a path")
        self.config = config
        self.name = config.name
        self.path: Path = config.path
        self._directory = config.path.parent  # asked on every read-back and unchanged check: one Path, not one each
        self._split = split_path(self.path)  # (directory, name) as text, for the stale-temp bookkeeping of each write
        self._calls = BlockingCalls(self.name, timeout)
        self._timeout = timeout
        self._directory_calls: tuple[asyncio.AbstractEventLoop, BatchedCalls] | None = None  # (loop, its calls)
        self._stale_temps = stale_temps or STALE_TEMPS
        # what the read-back found, if the file was as a write would leave it, and that file's identity
        self._held: tuple[bytes, tuple[int, ...]] | None = None
        # the token we last left in the file (its fingerprint), and the file's identity key then (identity_key)
        self._last: tuple[str, int] | None = None
        if log is None:  # `once` passes its structlog-free logger (observe/plainlog.py); everyone else: structlog's
            import structlog

            log = structlog.get_logger("edge_token")
        self.log = log

    async def write(self, token: Token) -> bool:
        """Write the token in the sink's format (atomically, bounded in time); False if the file already held it."""
        data = render(token, self.config.format, self.config.env_name)
        held, self._held = self._held, None
        last, self._last = self._last, None
        if held is not None and held[0] == data and await self._batched(lambda: self._still(held[1])):
            # the adopted token, read back from this very file (same inode, unchanged since, still ours with the
            # right mode, alone in an untouchable directory): the read was the unchanged check, no second read
            self._last = (token.fingerprint, hash(held[1]))
            return False
        cfg = self.config
        # a token other than the one we last left there: if the file is as we left it, it cannot hold this one
        known = last[1] if last is not None and last[0] != token.fingerprint else None
        seen: list[int] = []
        changed = await self._calls.call(
            lambda: write_atomic(self.path, data, cfg.mode, cfg.uid, cfg.gid, known=known, seen=seen.append)
        )
        self._last = (token.fingerprint, seen[-1]) if seen else None
        self._stale_temps.written(self.path, self._split)
        return changed

    async def read(self) -> str | None:
        """The JWT the file holds (for adoption at start), or None: no file, not ours, unreadable, no JWT."""
        self._held = None
        if self._stale_temps.absent(self.path):
            return None  # the directory's listing at start saw no file here: nothing to read back
        try:
            content, self._held = await self._batched(self._read)
        except SinkError as exc:
            self.log.warning("sink.read_refused", sink=self.name, reason=str(exc))
            return None
        return extract(content, self.config.format) if content is not None else None

    async def _batched(self, function: Callable[[], T]) -> T:
        """A short file call (read-back, unchanged check) in a worker trip shared with this directory's other sinks;
        alone, through this sink's own calls, while one of them or the directory's trip is stuck (dircalls.py)."""
        loop, known = asyncio.get_running_loop(), self._directory_calls
        if known is None or known[0] is not loop:
            known = self._directory_calls = (loop, directory_calls(self._directory, self._timeout))
        return await known[1].call(function, self._calls)

    def _read(self) -> tuple[str | None, tuple[bytes, tuple[int, ...]] | None]:
        """(the file's text, its bytes and identity if it is exactly as `write_atomic` would leave it); in a worker."""
        self._stale_temps.remove(self.path)
        cfg = self.config
        try:
            data, info = read_back(self.path, MAX_READ_BYTES, cfg.uid)
            content = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None, None
        wider = stat.S_IMODE(info.st_mode) & 0o077 & ~cfg.mode
        if wider or info.st_nlink != 1:
            # a token others could read (a wider mode than configured, a second name elsewhere) may have leaked:
            # it is not adopted, a new one is requested and written over it
            why = f"mode {stat.S_IMODE(info.st_mode):04o}, wider than {cfg.mode:04o}" if wider else "it has hard links"
            raise SinkError(f"{self.path}: {why}: not adopted (treated as leaked); a new token replaces it")
        return content, (data, identity(info)) if self._as_written(data, info) else None

    def _still(self, read: tuple[int, ...]) -> bool:
        """Is the file at our path still the one the read-back saw? Anything swapped in meanwhile (a symlink, another
        user's file, a chmod, a hard link) fails this and goes through the full atomic write, which refuses or
        replaces it (the read-back may be seconds old: adoption verifies against a JWKS first)."""
        try:
            info = os.lstat(self.path)
            check_directory(self._directory, os.stat(self._directory))
        except (OSError, SinkError):
            return False
        return identity(info) == read

    def _as_written(self, data: bytes, info: os.stat_result) -> bool:
        """Would `write_atomic` of `data` find nothing to do (its steps 0 and 1)? A directory others may rename in
        is refused there, so it must not pass here either."""
        cfg = self.config
        if not as_written(info, len(data), cfg.mode, cfg.uid, cfg.gid) or info.st_nlink != 1:
            return False  # a hard link elsewhere is a second name others may read or write through
        try:
            check_directory(self._directory, os.stat(self._directory))
        except (OSError, SinkError):
            return False
        return True
