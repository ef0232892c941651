"""A stateful differential of the fast /readyz (readiness index + Renewer.unready) against
`health.readiness` over every full status, and /status's per-profile `ready`, judged over real HTTP at every
quiescent state of a real daemon (bundled auth server on loopback, real files; time injected), under reloads that
add, remove and change profiles (also while cycles run), SIGUSR1, provider faults (some echoing the secret),
sinks failing and healing, and tokens expiring between cycles. One sink directory's name holds the client secret,
a quote and non-ASCII, so the /readyz body must scrub what it names. Also: /readyz and /healthz bodies hold no
secret and no issued token, and are one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Coroutine
from typing import Any

import aiohttp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import edge_token.core.health as health_module
from edge_token.config import load_config
from edge_token.core.health import readiness
from faultyauth import Fault
from harness import LoopWorld, break_or_heal, change_profiles, profiles_config, quiet, reload_rule
from leakscan import leaks

NAMES = ("p0", "p1", "p2")
LISTED = 2  # /readyz names this many here (100 in the product): with 3 profiles, some answers leave one unnamed
SECRET = "readyz-Secret-7f3a9c"
DIRS = ("a", f'odd-{SECRET}-"ü')  # the second sink directory names the secret (a config mistake, or a hostile one)
COUNTS = {
    "examples": 0,
    "checks": 0,
    "reloads": 0,
    "cycles_fired": 0,
    "unready_checks": 0,
    "profile_compares": 0,
    "odd_sink_named": 0,
    "unlisted": 0,
}


class ReadyzMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        COUNTS["examples"] += 1
        self.world = LoopWorld(300, "edge-token-readyz-", {f"client-{n}": SECRET for n in NAMES}, SECRET)
        self.loop, self.clock, self.dir, self.auth = self.world.loop, self.world.clock, self.world.dir, self.world.auth
        self.secret, self.config, self.harness = self.world.secret, self.world.config, self.world.harness
        self.scheduler = self.harness.scheduler
        self.profiles: dict[str, dict[str, Any]] = {}
        self.daemon: Any = None
        self.http: aiohttp.ClientSession | None = None
        self.listed, health_module.LISTED = health_module.LISTED, LISTED

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)

    def write_config(self) -> None:
        daemon = 'listen = "127.0.0.1:0"\nready_timeout_seconds = 3600'
        self.config.write_text(profiles_config(self.profiles, self.auth, self.secret, self.dir, daemon))
        self.config.chmod(0o600)

    def settle(self) -> None:
        self.run(quiet(self.daemon, 200))

    def fire_due(self) -> None:
        async def due() -> int:
            return self.scheduler.due()

        for _ in range(20):
            fired = self.run(due())
            COUNTS["cycles_fired"] += fired
            self.settle()
            if not fired:
                return

    @staticmethod
    async def spin(steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)

    @initialize(names=st.sets(st.sampled_from(NAMES), min_size=1), seed=st.integers(0, 2**32 - 1))
    def start(self, names: set[str], seed: int) -> None:
        for d in DIRS:
            (self.dir / d).mkdir()
        self.profiles = {n: {"sinks": ["a"], "refresh_at": 0.8} for n in sorted(names)}
        self.write_config()
        self.daemon = self.harness.start(load_config(self.config, environ={}), rng=random.Random(seed))

    @rule(seconds=st.sampled_from([0.5, 30.0, 120.0, 250.0, 299.0, 400.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.fire_due()

    @rule(seconds=st.sampled_from([1.0, 100.0, 301.0]))
    def time_passes_without_cycles(self, seconds: float) -> None:
        """Tokens expire between cycles: nothing runs."""
        self.clock.advance(seconds)

    @rule(steps=st.integers(0, 20))
    def sigusr1(self, steps: int) -> None:
        self.run(self._call(self.daemon.profiles.renew_all))
        self.run(self.spin(steps))
        self.settle()

    async def _call(self, func: Any) -> Any:
        return func()

    @reload_rule(NAMES, 20)
    def reload(self, name: str, change: str, in_flight: bool, steps: int) -> None:
        change_profiles(self.profiles, name, change, DIRS)
        self.write_config()
        if in_flight:
            self.run(self._call(self.daemon.profiles.renew_all))
            self.run(self.spin(steps))
        self.run(self._call(self.daemon.reload))
        COUNTS["reloads"] += 1
        self.settle()

    @rule(directory=st.sampled_from(DIRS))
    def sink_breaks_or_heals(self, directory: str) -> None:
        break_or_heal(self.dir / directory)

    @rule(
        fault=st.sampled_from(["503", "retry-after", "401", "echo", "foreign", "reset"]),
        count=st.integers(1, 3),
    )
    def provider_fails(self, fault: str, count: int) -> None:
        foreign = self.auth.mint(self.auth.claims_for("client-x", "https://api.sitecorecloud.io"))
        faults = {
            "503": Fault(503, {"error": "server_error", "error_description": f"busy {SECRET}"}),
            "retry-after": Fault(429, b"", headers={"Retry-After": "900"}),
            "401": Fault(401, {"error": "invalid_client", "error_description": SECRET}),
            "echo": Fault(400, echo=lambda raw, headers: {"error": raw.decode(errors="replace")}),
            "foreign": Fault(200, access_token=foreign),
            "reset": Fault(reset=True),
        }
        self.auth.token_faults.extend([faults[fault]] * count)

    # ---- the differential --------------------------------------------------------------------------------
    async def _get(self, path: str) -> tuple[int, str]:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://{self.daemon.http_address}{path}") as response:
            return response.status, await response.text()

    @precondition(lambda self: self.daemon is not None)
    @invariant()
    def readyz_says_what_every_status_says(self) -> None:
        COUNTS["checks"] += 1
        code, body = self.run(self._get("/readyz"))
        _, status_text = self.run(self._get("/status"))
        health_code, health = self.run(self._get("/healthz"))
        statuses = self.daemon.profiles.statuses()
        full_ready, full = readiness(statuses)
        if not full_ready:
            COUNTS["unready_checks"] += 1
        assert (code == 200) == full_ready, (code, full)
        assert json.loads(body) == self.daemon.redactor.scrub(full), (body, full)
        assert body.count("\n") == 1 and body.endswith("\n")
        assert health_code == 200 and json.loads(health) == {"alive": True} and health.count("\n") == 1
        # /status's per-profile `ready` (its own HTTP answer) agrees with /readyz: it names the first LISTED
        # unready profiles by name and counts the others
        status = json.loads(status_text)
        per_profile = status["profiles"]
        answer = json.loads(body)
        assert set(per_profile) == set(self.daemon.profiles.supervisor.slots)
        unready = sorted(name for name, entry in per_profile.items() if not entry["ready"])
        COUNTS["profile_compares"] += len(per_profile)
        assert sorted(answer["not_ready"]) == unready[:LISTED], (unready, body)
        assert answer.get("unlisted", 0) == max(0, len(unready) - LISTED) and answer.get("unlisted") != 0, body
        COUNTS["unlisted"] += "unlisted" in answer
        if "odd-" in body:
            COUNTS["odd_sink_named"] += 1
        wanted = [SECRET, *self.auth.issued]
        assert not leaks(body, wanted) and not leaks(health, wanted), body

    def teardown(self) -> None:
        health_module.LISTED = self.listed
        try:
            if self.http is not None:
                self.run(self.http.close())
        finally:
            self.world.close()


ReadyzMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("EDGE_TOKEN_READYZ_EXAMPLES", "40")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReadyzDifferential = ReadyzMachine.TestCase
