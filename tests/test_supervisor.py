"""Stateful property test of the running daemon: under any interleaving of reloads (adding, removing, changing
profiles, also while a cycle is in flight), SIGUSR1, provider faults, sink failure and recovery and time passing,
every profile has exactly one next run (never in the past), each job runs once per due time, each new token fires
the rotation callback exactly once, and /status says of each sink exactly what the disk holds.

The daemon is the real one (real renewers, real HTTP to the bundled auth server on loopback, real files); only
time is injected: a fake clock and a scheduler that fires due jobs when the test says so.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import SOAK
from edge_token.config import load_config
from edge_token.core.health import readiness, summary
from edge_token.core.policy import MIN_RUN_GAP
from edge_token.core.token import Token
from edge_token.daemon import Daemon
from edge_token.provider.verify import decode_unverified
from edge_token.supervisor import job_id
from faultyauth import Fault
from harness import LoopWorld, break_or_heal, change_profiles, profiles_config, reload_rule

NAMES = ("p0", "p1", "p2")
SECRET = "stateful-secret-1f2e3d"
MAX_FIRES_PER_INSTANT = 20  # a busy loop would fire a job over and over at one instant; we stop it here


def fingerprint(jwt: str) -> str:
    return hashlib.sha256(jwt.encode()).hexdigest()[:12]


class DaemonMachine(RuleBasedStateMachine):
    """One real daemon per example; rules are the events an operator, a provider and a disk can cause."""

    def __init__(self) -> None:
        super().__init__()
        self.world = LoopWorld(1000, "edge-token-stateful-", {f"client-{n}": SECRET for n in NAMES}, SECRET)
        self.loop, self.clock, self.dir, self.auth = self.world.loop, self.world.clock, self.world.dir, self.world.auth
        self.secret, self.config, self.harness = self.world.secret, self.world.config, self.world.harness
        self.profiles: dict[str, dict[str, Any]] = {}  # name -> {"sinks": [dir names], "refresh_at": x}
        self.rotations: collections.Counter[tuple[str, str]] = collections.Counter()
        self.scheduler = self.harness.scheduler
        self.daemon: Daemon | None = None
        self.checked = 0  # scheduler.scheduled entries already checked
        self.seen: dict[Path, float] = {}  # sink path -> exp of the newest token it ever held

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)

    # ---- helpers -----------------------------------------------------------------------------------------
    def write_config(self) -> None:
        self.config.write_text(profiles_config(self.profiles, self.auth, self.secret, self.dir))
        self.config.chmod(0o600)

    def fire_due(self) -> None:
        fires = self.harness.fire_due(MAX_FIRES_PER_INSTANT)
        assert all(count == 1 for count in fires.values()), f"a job ran repeatedly at one instant: {fires}"

    # ---- rules -------------------------------------------------------------------------------------------
    @initialize(names=st.sets(st.sampled_from(NAMES), min_size=1), seed=st.integers(0, 2**32 - 1))
    def start(self, names: set[str], seed: int) -> None:
        self.profiles = {name: {"sinks": ["a"], "refresh_at": 0.8} for name in sorted(names)}
        for d in ("a", "b"):
            (self.dir / d).mkdir()
        self.write_config()
        self.daemon = self.harness.start(
            load_config(self.config, environ={}), rng=random.Random(seed), on_rotated=self.rotated
        )

    def rotated(self, name: str, token: Token) -> None:
        """The rotation callback: the announced token must already be in one of the profile's sinks on disk."""
        on_disk = {path.read_text() for d in ("a", "b") if (path := self.dir / d / f"{name}.jwt").exists()}
        assert token.jwt in on_disk, "a rotation was announced before any sink held the token"
        self.rotations.update([(name, token.fingerprint)])

    @rule(seconds=st.floats(0.01, 600))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.fire_due()

    @rule()
    def until_next_due(self) -> None:
        """Land exactly on the next due time (where a busy loop or a missed jitter would show)."""
        due = self.scheduler.next_due()
        if due is not None and due > self.clock.time():
            self.clock.advance(due - self.clock.time())
        self.fire_due()

    @rule(steps=st.integers(0, 30))
    def sigusr1(self, steps: int) -> None:
        assert self.daemon is not None
        self.harness.on_loop(self.daemon.profiles.renew_all)
        self.run(self.spin(steps))
        self.harness.settle()

    @reload_rule(NAMES, 30)
    def reload(self, name: str, change: str, in_flight: bool, steps: int) -> None:
        """SIGHUP after a config change; with `in_flight`, while a renewal cycle of every profile is running."""
        assert self.daemon is not None
        change_profiles(self.profiles, name, change, ("a", "b"))
        self.write_config()
        if in_flight:
            self.harness.on_loop(self.daemon.profiles.renew_all)
            self.run(self.spin(steps))
        self.harness.on_loop(self.daemon.reload)
        self.harness.settle()

    @rule(directory=st.sampled_from(["a", "b"]))
    def sink_breaks_or_heals(self, directory: str) -> None:
        """Take a sink directory away (writes fail) or bring it back (sinks recover, no new token)."""
        break_or_heal(self.dir / directory)

    @rule(fault=st.sampled_from(["503", "retry-after", "401", "garbage", "reset", "foreign"]), count=st.integers(1, 3))
    def provider_fails(self, fault: str, count: int) -> None:
        foreign = self.auth.mint(self.auth.claims_for("client-x", "https://api.sitecorecloud.io"))
        faults = {
            "503": Fault(503, b"down"),
            "retry-after": Fault(429, b"", headers={"Retry-After": "\u0661\u0662"}),
            "401": Fault(401, {"error": "access_denied"}),
            "garbage": Fault(200, b'{"access_token": 5, "expires_in": 1e999}'),
            "reset": Fault(reset=True),
            "foreign": Fault(200, access_token=foreign),
        }
        self.auth.token_faults.extend([faults[fault]] * count)

    @staticmethod
    async def spin(steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)

    # ---- invariants ----------------------------------------------------------------------------------------
    @precondition(lambda self: self.daemon is not None)
    @invariant()
    def exactly_one_next_run_never_in_the_past(self) -> None:
        assert self.daemon is not None
        if any(slot.task is not None for slot in self.daemon.profiles.supervisor.slots.values()):
            return  # only quiescent states are judged (rules settle before returning)
        jobs = {job for job in self.scheduler.jobs if job.startswith("profile:")}
        assert jobs == {job_id(name) for name in self.profiles}, "a profile without a next run, or a ghost"
        for job, when, at in self.scheduler.scheduled[self.checked :]:
            assert when >= at + MIN_RUN_GAP - 1e-9, f"{job} scheduled {at - when:.3f}s in the past"
        self.checked = len(self.scheduler.scheduled)

    @precondition(lambda self: self.daemon is not None)
    @invariant()
    def one_rotation_per_new_token_and_status_matches_the_disk(self) -> None:
        assert self.daemon is not None
        assert all(count == 1 for count in self.rotations.values()), f"a rotation fired twice: {self.rotations}"
        statuses = {status.profile: status for status in self.daemon.profiles.statuses()}
        # the fast /readyz (only suspects looked at) says exactly what the full readiness of every status says
        assert self.daemon.profiles.readiness() == readiness(list(statuses.values()))
        # ... and systemd's fast STATUS= line is the one built from every status
        profiles = self.daemon.profiles
        runs = [self.harness.scheduler.next_run(job_id(name)) for name in profiles.supervisor.slots]
        next_run = min((run for run in runs if run is not None), default=None)
        assert profiles.summary() == summary(list(statuses.values()), next_run)
        for name, spec in self.profiles.items():
            renewer = self.daemon.profiles.renewers[name]
            for directory in spec["sinks"]:
                if not (self.dir / directory).exists():
                    continue  # taken away since the last write: the daemon learns it at the next write
                path = self.dir / directory / f"{name}.jwt"
                on_disk = path.read_text() if path.exists() else None
                if on_disk is not None and renewer.current is not None and on_disk == renewer.current.jwt:
                    assert (name, fingerprint(on_disk)) in self.rotations, "a new token in a sink was never announced"
                sink = f"file:{path}"
                holds = renewer.current is not None and on_disk == renewer.current.jwt
                # never a false "ok" (an error may linger until the sink's retry writes it again)
                assert statuses[name].sinks[sink] is not None or holds, f"/status says {sink} ok, the disk disagrees"

    @precondition(lambda self: self.daemon is not None)
    @invariant()
    def no_sink_ever_goes_back_to_an_older_token(self) -> None:
        """A sink's token never expires earlier than one it held before (tokens of the same second are equals)."""
        for path in self.dir.glob("[ab]/*.jwt"):
            exp = float(decode_unverified(path.read_text())[1]["exp"])
            assert exp >= self.seen.get(path, 0.0), f"{path.name} went back to an older token"
            self.seen[path] = exp

    def teardown(self) -> None:
        assert self.world.close() == 0


DaemonMachine.TestCase.settings = settings(
    max_examples=300 if SOAK else 25,
    stateful_step_count=30 if SOAK else 20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDaemonInvariants = DaemonMachine.TestCase
