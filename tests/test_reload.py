"""Reload is observable and economical: a refused config is counted, alertable and shown in /status while the old
one keeps running; a reload that changes only a profile's sinks makes no token request and writes each new sink
once."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import generate_latest

import edge_token.daemon
from conftest import CLIENT_ID, profile_toml
from edge_token.config import load_config
from edge_token.core.errors import ConfigError
from faultyauth import Fault
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


DEEP = "\n[profiles.main.required_claims]\nx = " + "[" * 1000 + "]" * 1000 + "\n"


def test_a_config_nested_too_deep_is_a_config_error(world: LoopWorld) -> None:
    """Arrays nested a thousand deep (the parser recurses per level) are a config error naming the file (exit 78
    for run, once and check; RestartPreventExitStatus= stops on it), not an internal error (exit 70)."""
    world.write("a.jwt", extra=DEEP)
    with pytest.raises(ConfigError, match="nested hundreds of levels deep") as refused:
        load_config(world.config, environ={})
    assert str(world.config) in str(refused.value)


@pytest.mark.parametrize("fault", ["deep config", "a bug while reading it"])
def test_a_reload_that_cannot_read_the_config_keeps_the_running_one(
    world: LoopWorld, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Whatever goes wrong reading the new config (a config error, or a bug in reading it), SIGHUP's reload is
    refused like a bad config: logged, counted, shown in /status, the running profiles kept, and the next
    reload works (before, anything but a ConfigError escaped the signal's callback: no outcome, and systemd was
    left waiting for the READY=1 that ends a reload)."""
    world.write("a.jwt")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    if fault == "deep config":
        world.write("a.jwt", extra=DEEP)
    else:

        def broken(*_args: object) -> None:
            raise ValueError("a bug")

        monkeypatch.setattr(edge_token.daemon, "load_config", broken)
    world.harness.on_loop(daemon.reload)
    last = daemon.daemon_status()["last_reload"]
    assert last["ok"] is False and str(world.config) in last["error"]
    text = generate_latest(daemon.metrics.registry).decode()
    assert sample(text, "edge_token_config_reload_total", result="failure") == 1
    assert daemon.profiles.renewers["main"].current is not None, "the running profile was dropped"
    monkeypatch.undo()
    world.write("a.jwt")
    world.harness.on_loop(daemon.reload)
    assert daemon.daemon_status()["last_reload"]["ok"] is True


@pytest.mark.parametrize("removed_while", ["waiting for its turn", "its request is out"])
def test_a_removed_profiles_cycle_in_flight_writes_nothing(world: LoopWorld, removed_while: str) -> None:
    """A reload removes a profile whose cycle is in flight: from its next step on, that cycle requests no token
    and writes no sink (the file may belong to another profile of the new config; the operator took this one
    away). Removed while it waits for its turn behind the concurrency limit: no request at all. Removed while its
    request is out: the answer is not written anywhere. The profile that stays is not disturbed."""
    main, gone = world.dir / "a.jwt", world.dir / "gone.jwt"

    def write(*names: str) -> None:
        tables = {"main": main, "gone": gone}
        world.config.write_text(
            '[daemon]\nlisten = ""\nmax_concurrent_renewals = 1\n'
            + "".join(profile_toml(name, world.auth, world.secret, [{"path": str(tables[name])}]) for name in names)
        )

    write("main", "gone")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    held, requests = gone.read_text(), len(world.auth.request_times)
    audience = daemon.config.profiles["main"].audience
    supervisor = daemon.profiles.supervisor
    slow = Fault(status=200, access_token=world.auth.mint(world.auth.claims_for(CLIENT_ID, audience)), delay=0.3)
    world.auth.token_faults.append(slow)  # the next request is answered after 0.3 s
    if removed_while == "waiting for its turn":  # main's request holds the one slot; gone waits behind it
        world.harness.on_loop(lambda: supervisor.trigger("main", force=True))
        world.harness.run(asyncio.sleep(0.1))
        world.harness.on_loop(lambda: supervisor.trigger("gone", force=True))
    else:
        world.harness.on_loop(lambda: supervisor.trigger("gone", force=True))
        world.harness.run(asyncio.sleep(0.1))  # gone's request is at the server, held there
    assert len(world.auth.request_times) == requests + 1
    write("main")
    world.harness.on_loop(daemon.reload)
    world.harness.run(asyncio.sleep(0.4))
    world.harness.settle()
    assert gone.read_text() == held, "the removed profile's cycle wrote its sink"
    assert len(world.auth.request_times) == requests + 1, "the removed profile requested a token after removal"
    assert "gone" not in daemon.profiles.renewers and daemon.profiles.renewers["main"].current is not None
