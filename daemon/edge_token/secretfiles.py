"""Reading client secrets: once per change of the file, shared by every profile that names it."""

from __future__ import annotations

import os
from collections.abc import Mapping

from edge_token.config import SecretSource


class SecretCache:
    """Secret files read once per change, shared by every profile: a fill of N profiles that share one secret
    file reads (and permission-checks) it once, not N times, yet a rotated secret is picked up at the next attempt.

    "Changed" is the file's (device, inode, size, mtime, ctime): a replaced, rewritten, chmod-ed or chown-ed file
    is read again. After "credentials rejected" the caller asks for a fresh read regardless.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._cache: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {}

    def read(self, source: SecretSource, fresh: bool = False) -> str:
        if source.kind not in ("file", "credential"):
            return source.read(self._environ)
        directory = self._environ.get("CREDENTIALS_DIRECTORY", "") if source.kind == "credential" else ""
        try:
            info = os.stat(os.path.join(directory, source.ref))
        except OSError:
            return source.read(self._environ)  # raises the specific ConfigError
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = self._cache.get((source.kind, source.ref))
        if cached is not None and cached[0] == key and not fresh:
            return cached[1]
        value = source.read(self._environ)
        self._cache[(source.kind, source.ref)] = (key, value)
        return value
