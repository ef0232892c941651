"""What a sink holds and reports is what we verified: a store never keeps a forged "newer" token, an adopted file
swapped between read-back and write is written properly, a relative sink path is never resolved through a symlink,
and a sink a reload removed takes its metric series with it."""

from __future__ import annotations

import base64
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from conftest import FakeClock
from edge_token.app import exit_code, run_once
from edge_token.config import load_config
from edge_token.core.errors import SinkError
from edge_token.core.settings import Config, SinkConfig
from edge_token.core.token import Token
from edge_token.sinks.file import FileSink
from edge_token.sinks.kubernetes import EXPIRY_ANNOTATION
from fakestores import FakeKubernetes
from faultyauth import FaultyAuthServer
from harness import LoopWorld


async def test_a_forged_token_claiming_a_far_expiry_never_freezes_a_store(
    make_config: Callable[..., Config], k8s: FakeKubernetes, tmp_path: Path, clock: FakeClock, log: Any,
    auth: FaultyAuthServer,
) -> None:  # fmt: skip
    """A JWT-shaped value claiming exp far ahead (signed by a key the provider never had), with the matching
    expiry beside it: not "a newer token", because it does not verify; ours replaces it."""
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("sa-token-1")
    sinks = [{"type": "kubernetes_secret", "secret_name": "edge-token", "namespace": "apps", "api_url": k8s.url,
              "token_file": str(sa_token)}]  # fmt: skip
    config = make_config(sinks=sinks)
    far = 99_999_999_999
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    forged = auth.mint({"iss": auth.issuer, "aud": "x", "exp": far}, key=stranger)
    encoded = base64.b64encode(forged.encode()).decode()
    k8s.secrets[("apps", "edge-token")] = {
        "metadata": {"name": "edge-token", "namespace": "apps", "resourceVersion": "1",
                     "annotations": {EXPIRY_ANNOTATION: str(far)}},
        "data": {"token": encoded},
    }  # fmt: skip
    results = await run_once(config, clock, log, environ={})
    assert exit_code(results) == 0, [r.error for r in results]
    held = k8s.value("apps", "edge-token")
    assert held != forged and auth.token_requests == 1
    assert results[0].outcome is not None and results[0].outcome.token is not None
    assert held == results[0].outcome.token.jwt


def jwt_token() -> Token:
    return Token(jwt="eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDB9.c2ln", claims={"exp": 2e9}, received_at=0,
                 lifetime=1000)  # fmt: skip


@pytest.mark.parametrize("swap", ["a new file with a wider mode", "a symlink to a copy"])
async def test_an_adopted_file_swapped_before_the_write_is_written_properly(tmp_path: Path, swap: str) -> None:
    """The read-back is the write's unchanged check only while the file is the very one read: a file swapped in
    meanwhile (adoption may wait seconds for a JWKS) goes through the full atomic write."""
    directory = tmp_path / "sink"
    directory.mkdir(mode=0o700)
    target = directory / "t.jwt"
    sink = FileSink(SinkConfig(type="file", path=target, mode=0o600))
    token = jwt_token()
    assert await sink.write(token) is True
    assert await sink.read() == token.jwt  # adoption's read-back
    copy = tmp_path / "copy.jwt"
    shutil.copy(target, copy)
    target.unlink()
    if swap == "a symlink to a copy":
        target.symlink_to(copy)
        with pytest.raises(SinkError, match="symlink"):
            await sink.write(token)
        return
    copy.rename(target)
    target.chmod(0o644)
    assert await sink.write(token) is True
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_a_relative_sink_path_is_not_resolved_through_a_symlink(tmp_path: Path) -> None:
    """`path = "out/t.jwt"` with out/t.jwt a symlink: the sink is that path (whose write refuses the symlink), not
    the symlink's target somewhere else."""
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "t.jwt").symlink_to(tmp_path / "elsewhere" / "t.jwt")
    config = tmp_path / "config.toml"
    config.write_text(
        '[profiles.p]\nclient_id = "c"\nclient_secret_env = "S"\n[[profiles.p.sinks]]\npath = "out/t.jwt"\n'
    )
    config.chmod(0o600)
    (sink,) = load_config(config, environ={}).profiles["p"].sinks
    assert sink.path == tmp_path / "out" / "t.jwt"


def test_a_sink_removed_by_a_reload_takes_its_series_with_it(world: LoopWorld) -> None:
    """A failing sink fixed by a reload: its `edge_token_sink_healthy 0` series must go, or its alert never clears."""
    world.write("missing-dir/a.jwt")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    old = f"file:{world.dir / 'missing-dir' / 'a.jwt'}"
    assert daemon.metrics.profiles["main"].sinks[old].healthy == 0
    world.write("a.jwt")
    world.harness.on_loop(daemon.reload)
    world.harness.settle()
    sinks = daemon.metrics.profiles["main"].sinks
    assert old not in sinks and sinks[f"file:{world.dir / 'a.jwt'}"].healthy == 1
    body, _ = daemon.metrics.exposition("", "")
    assert b"missing-dir" not in body
    assert os.path.exists(world.dir / "a.jwt")


@pytest.mark.parametrize("exposure", ["mode 0644", "a hard link"])
async def test_a_token_others_could_read_is_not_adopted(
    make_config: Callable[..., Config], tmp_path: Path, clock: FakeClock, log: Any, auth: FaultyAuthServer,
    exposure: str,
) -> None:  # fmt: skip
    """A token found in a file wider than its configured mode (or with a second name elsewhere) may have leaked:
    `once` (and the daemon's start) requests a new one instead of adopting it, and writes it 0600."""
    config = make_config()
    assert exit_code(await run_once(config, clock, log, environ={})) == 0
    target = tmp_path / "token.jwt"
    first = target.read_text()
    if exposure == "mode 0644":
        target.chmod(0o644)
    else:
        os.link(target, tmp_path / "other-name.jwt")
    assert exit_code(await run_once(config, clock, log, environ={})) == 0
    assert auth.token_requests == 2, "the exposed token was adopted"
    assert target.read_text() != first and target.stat().st_mode & 0o777 == 0o600
