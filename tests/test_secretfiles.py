"""Secret files are read once per change, shared by every profile, and a rotated secret is still picked up."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

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


async def test_requests_starting_in_one_loop_turn_share_one_look_at_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill starts up to 16 requests in one turn of the event loop: they share one `stat` of the secret file
    (each stat on the loop hands the interpreter lock to a busy file worker and waits for it back); the next turn
    looks again, so a file replaced in between is read before the next request, however soon."""
    secret = tmp_path / "secret"
    secret.write_text("first-secret-value\n")
    secret.chmod(0o600)
    reader, stats = CountingReader(), []
    real_stat = os.stat

    def counted_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted_stat)
    source, cache = SecretSource("file", str(secret)), SecretCache({}, read=reader)
    assert {cache.read(source) for _ in range(16)} == {"first-secret-value"}
    assert (len(stats), len(reader.reads)) == (1, 1)
    await asyncio.sleep(0)  # the next turn
    replacement = tmp_path / "secret.new"
    replacement.write_text("second-secret-value\n")
    replacement.chmod(0o600)
    os.replace(replacement, secret)
    assert cache.read(source) == "second-secret-value"
    assert (len(stats), len(reader.reads)) == (2, 2)
    assert cache.read(source, fresh=True) == "second-secret-value" and len(reader.reads) == 3  # after a rejection


def test_environment_secrets_are_not_cached(tmp_path: Path) -> None:
    cache = SecretCache({"X_SECRET": "from-env-1"})
    assert cache.read(SecretSource("env", "X_SECRET")) == "from-env-1"


@pytest.mark.slow
async def test_after_a_rotation_no_request_sends_the_old_secret(live_auth: Any, tmp_path: Path) -> None:
    """The provider revokes the old secret as the file gets the new one (Auth0's "rotate secret"), right after
    a routine renewal of every profile; then "renew now" (SIGUSR1). No profile sharing the file may send the old
    secret after the replacement: each rejection would cost that profile its next 15 minutes (outside attack on a
    once-a-second file check: 20 of 20 profiles rejected)."""
    from conftest import CLIENT_ID, CLIENT_SECRET, profile_toml
    from daemonproc import DaemonProcess

    secret = tmp_path / "secret"
    secret.write_text(CLIENT_SECRET)
    secret.chmod(0o600)
    names = [f"p{index}" for index in range(20)]
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlisten = ""\n' + "".join(
        profile_toml(name, live_auth, secret, [{"path": str(tmp_path / f"{name}.jwt")}]) for name in names
    ))  # fmt: skip
    daemon = await DaemonProcess(config).start()
    try:
        for name in names:
            await daemon.wait_for("token.renewed", profile=name)
        daemon.send(signal.SIGUSR1)  # a routine renewal of every profile: the file is looked at by each
        await daemon.wait_for("token.renewed", count=2 * len(names))
        rotated = "rotated-" + uuid.uuid4().hex
        live_auth.clients[CLIENT_ID] = rotated  # revoked at once
        staged = tmp_path / "secret.new"
        staged.write_text(rotated)
        staged.chmod(0o600)
        os.replace(staged, secret)
        daemon.send(signal.SIGUSR1)
        await daemon.wait_for("token.renewed", count=3 * len(names))
        assert daemon.count("token.renewal_failed") == 0
    finally:
        await daemon.stop()
