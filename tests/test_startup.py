"""A start that fails half way closes what it had opened: the listener, the signal handlers, the session, tasks."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from conftest import profile_toml
from edge_token.config import load_config
from edge_token.core.errors import ConfigError
from edge_token.daemon import Daemon
from edge_token.localauth import LocalAuthServer
from egressparts import free_port, make_ca


async def test_a_start_that_fails_half_way_closes_what_it_opened(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """The fleet's CA bundle vanishes between loading the config and starting: the start fails with the key named
    (exit 78 from the CLI), after the listener, the signal handlers and the HTTP session were already set up.
    Each of them must be undone: the port is free again, no handler of ours is left on the loop, no task runs."""
    ca = make_ca(tmp_path)
    port = free_port()
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nlog_format = "json"\nlisten = "127.0.0.1:{port}"\n'
        f'[fleet]\netcd_endpoints = ["http://127.0.0.1:1"]\nca_file = "{ca.ca_file}"\n'
        + profile_toml("main", auth, secret_file, [{"path": str(tmp_path / "t.jwt")}])
    )
    path.chmod(0o600)
    config = load_config(path, environ={})
    ca.ca_file.unlink()
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    with pytest.raises(ConfigError, match="ca_file"):
        await Daemon(config, environ={}, handle_signals=True).run()
    with socket.socket() as probe:  # a listener still open would make this bind fail (EADDRINUSE)
        probe.bind(("127.0.0.1", port))
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        assert not loop.remove_signal_handler(signum), signal.Signals(signum).name
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
