"""The file sink: the token in a local file, replaced atomically, in raw, json or env format."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_token.core.errors import SinkError
from edge_token.core.settings import SinkConfig
from edge_token.core.token import Token
from edge_token.sinks.atomicfile import BlockingCalls, read_regular, remove_stale_temps, write_atomic

MAX_READ_BYTES = 64 * 1024
#: a write or read-back that takes longer is abandoned (hung NFS/FUSE): well below the daemon's cycle budget
FILE_IO_TIMEOUT_SECONDS = 20.0
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


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

    def __init__(self, config: SinkConfig, timeout: float = FILE_IO_TIMEOUT_SECONDS, log: Any = None) -> None:
        if config.path is None:
            raise ValueError("a file sink needs a path")
        self.config = config
        self.name = config.name
        self.path: Path = config.path
        self._calls = BlockingCalls(self.name, timeout)
        if log is None:  # `once` passes its structlog-free logger (observe/plainlog.py); everyone else: structlog's
            import structlog

            log = structlog.get_logger("edge_token")
        self.log = log

    async def write(self, token: Token) -> bool:
        data = render(token, self.config.format, self.config.env_name)
        cfg = self.config
        return await self._calls.call(lambda: write_atomic(self.path, data, cfg.mode, cfg.uid, cfg.gid))

    async def read(self) -> str | None:
        try:
            return await self._calls.call(self._read)
        except SinkError as exc:
            self.log.warning("sink.read_refused", sink=self.name, reason=str(exc))
            return None

    def _read(self) -> str | None:
        remove_stale_temps(self.path)
        try:
            content = read_regular(self.path, MAX_READ_BYTES, self.config.uid).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return extract(content, self.config.format)
