"""Reload is observable and economical: a refused config is counted, alertable and shown in /status while the old
one keeps running; a reload that changes only a profile's sinks makes no token request and writes each new sink
once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from prometheus_client import generate_latest

import edge_token.daemon
from conftest import CLIENT_ID, profile_toml
from edge_token.config import load_config
from edge_token.core.errors import ConfigError
from edge_token.core.token import Token
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


def write_profiles(world: LoopWorld, tables: dict[str, list[Path]]) -> None:
    world.config.write_text(
        '[daemon]\nlisten = ""\n'
        + "".join(
            profile_toml(name, world.auth, world.secret, [{"path": str(p)} for p in paths])
            for name, paths in tables.items()
        )
    )


def test_a_profile_removed_while_one_sink_is_written_writes_no_other(
    world: LoopWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload lands while the first of a profile's sinks is being written (a slow fsync, a Kubernetes or Vault
    PUT) and takes the profile away, giving its second sink to another profile: the removed profile writes none of
    its later sinks (found by an outside review: the check ran once, before the loop)."""
    a, g1, g2 = world.dir / "a.jwt", world.dir / "g1.jwt", world.dir / "g2.jwt"
    write_profiles(world, {"main": [a], "gone": [g1, g2]})
    rotated: list[str] = []
    daemon = world.harness.start(
        load_config(world.config, environ={}),
        rng=random.Random(1),
        on_rotated=lambda name, _t: rotated.append(name),
    )
    supervisor = daemon.profiles.supervisor
    gone = supervisor.slots["gone"].renewer
    gate = asyncio.Event()
    first = gone.sinks[0]
    real_write = first.write

    async def slow_write(token: Token) -> bool:  # a slow first sink: the write is out when the reload comes
        await gate.wait()
        return bool(await real_write(token))

    monkeypatch.setattr(first, "write", slow_write)
    held_g2 = g2.read_text()
    world.harness.on_loop(lambda: supervisor.trigger("gone", force=True))
    world.harness.run(asyncio.sleep(0.2))  # gone has its new token, its write of g1 is out
    assert gone.current is not None and gone.current.jwt != held_g2
    new_gone_token = gone.current.jwt
    write_profiles(world, {"main": [a, g2]})  # gone removed; g2 now belongs to main
    world.harness.on_loop(daemon.reload)
    world.harness.settle()
    main = supervisor.slots["main"].renewer
    assert g2.read_text() == main.current.jwt  # main wrote its new sink
    assert gone.retired
    world.harness.on_loop(gate.set)
    world.harness.run(asyncio.sleep(0.3))
    assert g2.read_text() != new_gone_token, "removed profile's cycle wrote g2 (now main's) after its removal"


def test_a_changed_profiles_old_cycle_writes_no_sink_the_reload_gave_away(world: LoopWorld) -> None:
    """A reload moves a sink from a profile whose request is out to another profile: the changed profile's old
    cycle writes none of its old sinks (its renewer is retired like a removed one), so the sink holds the token of
    the profile that owns it now, as /status says."""
    a, g1, g2 = world.dir / "a.jwt", world.dir / "g1.jwt", world.dir / "g2.jwt"
    write_profiles(world, {"main": [a], "moved": [g1, g2]})
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    supervisor = daemon.profiles.supervisor
    audience = daemon.config.profiles["moved"].audience
    slow_token = world.auth.mint(world.auth.claims_for(CLIENT_ID, audience))
    world.auth.token_faults.append(Fault(status=200, access_token=slow_token, delay=0.3))
    world.harness.on_loop(lambda: supervisor.trigger("moved", force=True))
    world.harness.run(asyncio.sleep(0.1))  # moved's request is out
    write_profiles(world, {"main": [a, g2], "moved": [g1]})  # g2 moves from `moved` to `main` (both: sinks-only change)
    world.harness.on_loop(daemon.reload)
    world.harness.run(asyncio.sleep(0.5))
    world.harness.settle()
    main = supervisor.slots["main"].renewer
    assert g2.read_text() == main.current.jwt, "main's sink g2 holds another profile's token; /status says ok"


@pytest.mark.parametrize("removed_while", ["waiting for its turn", "its request is out"])
def test_a_profile_removed_and_added_back_renews_and_writes(world: LoopWorld, removed_while: str) -> None:
    """Two quick reloads remove and re-add `gone` (same sinks) while its cycle is in flight: the new renewer is not
    retired, gets one next run, and its sinks hold its token; the retired one writes nothing."""
    a, g = world.dir / "a.jwt", world.dir / "g.jwt"
    world.config.write_text(
        '[daemon]\nlisten = ""\nmax_concurrent_renewals = 1\n'
        + "".join(profile_toml(n, world.auth, world.secret, [{"path": str(p)}]) for n, p in (("main", a), ("gone", g)))
    )
    full = world.config.read_text()
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    supervisor = daemon.profiles.supervisor
    old = supervisor.slots["gone"].renewer
    audience = daemon.config.profiles["main"].audience
    slow = world.auth.mint(world.auth.claims_for(CLIENT_ID, audience))
    world.auth.token_faults.append(Fault(status=200, access_token=slow, delay=0.3))
    if removed_while == "waiting for its turn":
        world.harness.on_loop(lambda: supervisor.trigger("main", force=True))
        world.harness.run(asyncio.sleep(0.1))
        world.harness.on_loop(lambda: supervisor.trigger("gone", force=True))
    else:
        world.harness.on_loop(lambda: supervisor.trigger("gone", force=True))
        world.harness.run(asyncio.sleep(0.1))
    world.config.write_text(
        '[daemon]\nlisten = ""\nmax_concurrent_renewals = 1\n'
        + profile_toml("main", world.auth, world.secret, [{"path": str(a)}])
    )
    world.harness.on_loop(daemon.reload)
    world.config.write_text(full)
    world.harness.on_loop(daemon.reload)
    world.harness.run(asyncio.sleep(0.5))
    world.harness.settle()
    new = supervisor.slots["gone"].renewer
    assert new is not old and old.retired and not new.retired
    assert new.current is not None and g.read_text() == new.current.jwt and new.ready()
    assert g.read_text() != slow or removed_while == "waiting for its turn"
    assert daemon.scheduler.next_run("profile:gone") is not None
    assert all(s.ready for s in daemon.profiles.statuses())


def test_a_profile_removed_while_its_renewal_fetches_keys_requests_no_token(world: LoopWorld) -> None:
    """A renewal waits for a JWKS refresh before its request, and a reload removes the profile meanwhile: no token
    is requested (the README's promise; the check before the renewal alone missed this window)."""
    a, g = world.dir / "a.jwt", world.dir / "g.jwt"
    write_profiles(world, {"main": [a], "gone": [g]})
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    supervisor = daemon.profiles.supervisor
    held = g.read_text()
    world.clock.advance(4000)  # the JWKS set is due for refresh (and the token for renewal)
    world.auth.jwks_faults.append(Fault(status=200, access_token="normal", delay=0.3))  # a slow JWKS answer
    requests = len(world.auth.request_times)
    world.harness.on_loop(lambda: supervisor.trigger("gone", force=True))
    world.harness.run(asyncio.sleep(0.1))  # gone's renew() waits on the JWKS fetch; no token request yet
    assert len(world.auth.request_times) == requests
    write_profiles(world, {"main": [a]})
    world.harness.on_loop(daemon.reload)
    assert "gone" not in supervisor.slots
    world.harness.run(asyncio.sleep(0.6))
    world.harness.settle()
    assert g.read_text() == held
    assert len(world.auth.request_times) == requests, "the removed profile requested a token after its removal"
