"""Provider quota is spent only on tokens that can be used, and counted as sent: with no JWKS ever loaded no token is
requested (each would be thrown away unverified, one per retry, forever), and a request stopped by our own config
(an unreadable CA bundle) before anything left the process is not counted as a request."""

from __future__ import annotations

import os
import random

from edge_token.config import load_config
from egressparts import make_ca
from faultyauth import Fault
from harness import LoopWorld


def test_no_token_is_requested_while_no_jwks_was_ever_loaded(world: LoopWorld) -> None:
    world.auth.jwks_faults.extend(Fault(500, b"down") for _ in range(1000))
    world.write("a.jwt")
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    for _ in range(5):
        world.clock.advance(400)  # past any backoff
        world.harness.on_loop(daemon.profiles.renew_all)
        world.harness.settle()
    assert world.auth.token_requests == 0, "tokens were requested that could not be verified"
    assert daemon.profiles.statuses()[0].last_error is not None
    world.auth.jwks_faults.clear()
    world.clock.advance(400)
    world.harness.on_loop(daemon.profiles.renew_all)
    world.harness.settle()
    assert world.auth.token_requests == 1 and daemon.profiles.readiness()[0]


def test_a_request_our_config_stopped_is_not_counted_as_sent(world: LoopWorld) -> None:
    ca = make_ca(world.dir)
    world.write("a.jwt")
    text = world.config.read_text().replace(
        "[[profiles.main.sinks]]", f'ca_file = "{ca.ca_file}"\n[[profiles.main.sinks]]'
    )
    world.config.write_text(text)
    daemon = world.harness.start(load_config(world.config, environ={}), rng=random.Random(1))
    assert world.auth.token_requests == 1
    ca.ca_file.unlink()
    os.mkfifo(ca.ca_file)  # the bundle becomes a FIFO: refused before any connection is made
    for _ in range(3):
        world.clock.advance(400)
        world.harness.on_loop(daemon.profiles.renew_all)
        world.harness.settle()
    assert daemon.profiles.statuses()[0].last_error is not None
    assert world.auth.token_requests == 1
    assert daemon.metrics.profiles["main"].requests == world.auth.token_requests
