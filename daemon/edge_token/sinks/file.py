"""The file sink: the token in a local file, replaced atomically, in raw, json or env format."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

from edge_token.atomicfile import remove_stale_temps, write_atomic
from edge_token.config import SinkConfig
from edge_token.token import Token

MAX_READ_BYTES = 64 * 1024
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
    """Writes the token to `config.path` with the atomic recipe of `atomicfile`."""

    def __init__(self, config: SinkConfig) -> None:
        assert config.path is not None
        self.config = config
        self.name = config.name
        self.path: Path = config.path

    async def write(self, token: Token) -> bool:
        data = render(token, self.config.format, self.config.env_name)
        cfg = self.config
        return await asyncio.to_thread(write_atomic, self.path, data, cfg.mode, cfg.uid, cfg.gid)

    async def read(self) -> str | None:
        return await asyncio.to_thread(self._read)

    def _read(self) -> str | None:
        remove_stale_temps(self.path)
        try:
            with self.path.open("r", encoding="utf-8") as handle:
                content = handle.read(MAX_READ_BYTES)
        except (OSError, UnicodeDecodeError):
            return None
        return extract(content, self.config.format)
