"""Secret files are read once per change, shared by every profile, and a rotated secret is still picked up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edge_token.core.settings import SecretSource
from edge_token.secrets import SecretCache, read_secret


class CountingReader:
    """The real secret reader, counting how often a file is actually read."""

    def __init__(self) -> None:
        self.reads: list[int] = []

    def __call__(self, source: SecretSource, environ: Mapping[str, str], what: str = "client secret") -> str:
        self.reads.append(1)
        return read_secret(source, environ, what)


def test_one_read_per_change_for_a_thousand_profiles_and_rotation_heals(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("first-secret-value\n")
    secret.chmod(0o600)
    reader = CountingReader()
    source, cache = SecretSource("file", str(secret)), SecretCache({}, read=reader)
    assert {cache.read(source) for _ in range(1000)} == {"first-secret-value"}
    assert len(reader.reads) == 1
    replacement = tmp_path / "secret.new"  # rotated the usual way: a new file renamed over the old one
    replacement.write_text("second-secret-value\n")
    replacement.chmod(0o600)
    os.replace(replacement, secret)
    assert cache.read(source) == "second-secret-value" and len(reader.reads) == 2
    assert cache.read(source, fresh=True) == "second-secret-value" and len(reader.reads) == 3


def test_environment_secrets_are_not_cached(tmp_path: Path) -> None:
    cache = SecretCache({"X_SECRET": "from-env-1"})
    assert cache.read(SecretSource("env", "X_SECRET")) == "from-env-1"
