"""A write that comes back after its deadline never lands (found by an outside attack).

A token's write hung in fsync and was written off after its deadline; a reload built a new sink for the same
file, which wrote the newer token; the filesystem came back and the abandoned call renamed the older, soon expired
token over it, silently (the daemon believed the newer one was there and reported the sink healthy). Now the
stuck-call guard belongs to the file (a reload's new sink for it waits like the old one), and a written-off call
never renames.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_token.core.errors import SinkError
from edge_token.core.settings import SinkConfig
from edge_token.core.token import Token
from edge_token.sinks.file import FileSink

DEADLINE = 0.3


def token_number(number: int) -> Token:
    return Token(jwt=f"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDB9.c2ln{number:04d}", claims={"exp": 2e9},
                 received_at=float(number), lifetime=1000)  # fmt: skip


class HungFsync:
    """The filesystem under one path hangs in fsync until released (the kernel call of a hung NFS server)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.hanging, self.release = directory, threading.Event(), threading.Event()
        self.entered = threading.Event()
        self._fsync = os.fsync

    def fsync(self, fd: int) -> None:
        if self.hanging.is_set() and os.readlink(f"/proc/self/fd/{fd}").startswith(str(self.directory)):
            self.entered.set()
            self.release.wait()
        self._fsync(fd)


@pytest.fixture
def hung(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HungFsync]:
    filesystem = HungFsync(tmp_path / "sinks")
    monkeypatch.setattr(os, "fsync", filesystem.fsync)
    try:
        yield filesystem
    finally:
        filesystem.release.set()


@pytest.mark.parametrize("reload", [False, True], ids=["same sink", "a reload's new sink"])
async def test_a_write_that_comes_back_after_its_deadline_never_lands(
    tmp_path: Path, hung: HungFsync, reload: bool
) -> None:
    (tmp_path / "sinks").mkdir(mode=0o700)
    target = tmp_path / "sinks" / "t.jwt"
    config = SinkConfig(type="file", path=target, mode=0o600)
    sink = FileSink(config, timeout=DEADLINE)
    assert await sink.write(token_number(0))
    hung.hanging.set()
    with pytest.raises(SinkError, match="did not finish within"):
        await sink.write(token_number(1))  # the older token: its write hangs, then is written off
    hung.hanging.clear()
    writer = FileSink(config, timeout=DEADLINE) if reload else sink
    with pytest.raises(SinkError, match="still stuck"):
        await writer.write(token_number(2))  # nothing lands on a file whose last write may still rename
    hung.release.set()  # the filesystem comes back: the abandoned write returns from fsync
    for _ in range(200):
        try:
            assert await writer.write(token_number(2))
            break
        except SinkError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the sink never worked again")
    await asyncio.sleep(0.2)  # time for a late rename, were there one
    assert target.read_text() == token_number(2).jwt
    assert [p.name for p in target.parent.iterdir()] == ["t.jwt"]  # the abandoned temp file is gone
