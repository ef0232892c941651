"""Secret files are read once per change and looked at once a second, shared by every profile, and a rotated
secret is still picked up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_token.core.settings import SecretSource
from edge_token.secrets import RECHECK_SECONDS, SecretCache, read_secret


class CountingReader:
    """The real secret reader, counting how often a file is actually read."""

    def __init__(self) -> None:
        self.reads: list[int] = []

    def __call__(self, source: SecretSource, environ: Mapping[str, str], what: str = "client secret") -> str:
        self.reads.append(1)
        return read_secret(source, environ, what)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_thousand_profiles_cost_one_read_and_one_look_per_second_and_rotation_heals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("first-secret-value\n")
    secret.chmod(0o600)
    reader, clock, stats = CountingReader(), Clock(), []
    real_stat = os.stat

    def counted_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted_stat)
    source, cache = SecretSource("file", str(secret)), SecretCache({}, read=reader, monotonic=clock)
    assert {cache.read(source) for _ in range(1000)} == {"first-secret-value"}
    assert (len(reader.reads), len(stats)) == (1, 1)  # one read, one look: 1,000 renewals within a second
    replacement = tmp_path / "secret.new"  # rotated the usual way: a new file renamed over the old one
    replacement.write_text("second-secret-value\n")
    replacement.chmod(0o600)
    os.replace(replacement, secret)
    clock.now += RECHECK_SECONDS
    assert cache.read(source) == "second-secret-value" and len(reader.reads) == 2
    assert cache.read(source, fresh=True) == "second-secret-value" and len(reader.reads) == 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(st.floats(0, 2.5), st.sampled_from(["rotate", "fresh", "back"])), max_size=40))
def test_a_cached_secret_is_never_older_than_the_recheck_interval(tmp_path: Path, ops: list[float | str]) -> None:
    """Whatever the reads, rotations and clock steps (backwards too): a read returns the file's current secret,
    or one replaced less than RECHECK_SECONDS ago; a fresh read (after "credentials rejected") always the current
    one; the file is read again only when it changed or a fresh read asks."""
    secret = tmp_path / f"secret-{uuid.uuid4().hex}"
    secret.write_text("secret-0000")
    secret.chmod(0o600)
    reader, clock = CountingReader(), Clock()
    source, cache = SecretSource("file", str(secret)), SecretCache({}, read=reader, monotonic=clock)
    version, allowed_reads = 0, 0
    ended: dict[str, float] = {}  # a secret replaced by a rotation -> when
    for op in ops:
        if op == "rotate":
            ended[f"secret-{version:04d}"] = clock.now
            version += 1
            staged = secret.with_suffix(".new")
            staged.write_text(f"secret-{version:04d}")
            staged.chmod(0o600)
            os.replace(staged, secret)
            allowed_reads += 1
        elif op == "back":
            clock.now -= 5  # monotonic time does not go back; a clock that did must not freeze the cache
        elif op == "fresh":
            assert cache.read(source, fresh=True) == f"secret-{version:04d}"
            allowed_reads += 1
        else:
            assert isinstance(op, float)
            clock.now += op
            got = cache.read(source)
            assert got == f"secret-{version:04d}" or 0 <= clock.now - ended[got] < RECHECK_SECONDS, (got, version)
    assert len(reader.reads) <= allowed_reads + 1


def test_environment_secrets_are_not_cached(tmp_path: Path) -> None:
    cache = SecretCache({"X_SECRET": "from-env-1"})
    assert cache.read(SecretSource("env", "X_SECRET")) == "from-env-1"
