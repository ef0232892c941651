"""Reload is observable and economical: a refused config is counted, alertable and shown in /status while the old
one keeps running; a reload that changes only a profile's sinks makes no token request and writes each new sink
once."""

from __future__ import annotations

import random

from prometheus_client import generate_latest

from edge_token.config import load_config
from harness import LoopWorld
from promsample import sample


def test_a_refused_reload_is_counted_alertable_and_shown(world: LoopWorld) -> None:
    world.write("a.jwt")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    world.write("a.jwt", extra="\n[profiles.main]\nunknown_key = 1\n")
    world.clock.advance(10)
    world.harness.on_loop(daemon.reload)
    text = generate_latest(daemon.metrics.registry).decode()
    assert sample(text, "edge_token_config_last_reload_successful") == 0
    assert sample(text, "edge_token_config_reload_total", result="failure") == 1
    last = daemon.daemon_status()["last_reload"]
    assert last["ok"] is False and str(world.config) in last["error"] and last["at"] == world.clock.time()
    assert daemon.profiles.renewers["main"].current is not None, "the running profile was dropped"
    world.write("a.jwt")
    world.harness.on_loop(daemon.reload)
    text = generate_latest(daemon.metrics.registry).decode()
    assert sample(text, "edge_token_config_last_reload_successful") == 1
    assert sample(text, "edge_token_config_reload_total", result="success") == 1


def test_a_reload_that_changes_only_sinks_reuses_the_token_and_writes_each_sink_once(world: LoopWorld) -> None:
    world.write("a.jwt")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    token = (world.dir / "a.jwt").read_text()
    assert world.auth.token_requests == 1
    world.write("a.jwt", "b.jwt")
    world.harness.on_loop(daemon.reload)
    world.harness.settle()
    assert world.auth.token_requests == 1, "a sinks-only reload asked the provider for a new token"
    assert (world.dir / "b.jwt").read_text() == token
    sinks = daemon.metrics.profiles["main"].sinks
    assert sinks[f"file:{world.dir / 'b.jwt'}"].writes == {"success": 1.0}
    assert daemon.profiles.statuses()[0].ready
