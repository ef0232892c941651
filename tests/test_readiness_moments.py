"""/readyz and systemd's READY=1 say the same about the same moment, on a real daemon (real HTTP to the bundled auth
server on loopback, real files, a real notify socket; only time is injected). Found by an outside review: READY=1
went out while a profile held a token that had expired since its last cycle, and a reload that took away the one
profile `--profile` named left /readyz at 200 with nothing kept fresh.

README: READY=1 "once every profile holds a verified token written to every sink", /readyz 200 "only when every
profile holds an unexpired verified token written to every sink", /status `ready` the same per profile.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import profile_toml
from edge_token.config import load_config
from edge_token.core.health import readiness
from faultyauth import Fault
from harness import LoopWorld, quiet

SECRET = "moments-secret-8d1c"


class World:
    """A real daemon on a private loop with a notify socket and an HTTP listener; `close()` undoes it all."""

    def __init__(self, ttl: float) -> None:
        self.world = LoopWorld(ttl, "edge-token-moments-", {"client-p0": SECRET}, SECRET)
        self.loop, self.clock, self.dir, self.auth = self.world.loop, self.world.clock, self.world.dir, self.world.auth
        self.secret, self.harness = self.world.secret, self.world.harness
        self.notify_path = str(self.dir / "notify")
        self.receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.receiver.bind(self.notify_path)
        self.receiver.setblocking(False)
        self.scheduler = self.harness.scheduler
        self.daemon: Any = None

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def write(self, profiles: dict[str, str]) -> Path:
        config = self.dir / "config.toml"
        text = '[daemon]\nlisten = "127.0.0.1:0"\nready_timeout_seconds = 3600\n'
        for name, client in profiles.items():
            text += profile_toml(
                name, self.auth, self.secret, [{"path": str(self.dir / f"{name}.jwt")}], client_id=client
            )
        config.write_text(text)
        config.chmod(0o600)
        return config

    def start(self, profiles: dict[str, str], only: list[str] | None = None) -> Any:
        config = self.write(profiles)
        self.daemon = self.harness.start(
            load_config(config, environ={}), {"NOTIFY_SOCKET": self.notify_path}, profiles=only, rng=random.Random(7)
        )
        self.settle()
        return self.daemon

    def settle(self) -> None:
        self.run(quiet(self.daemon, 200, pause=0.001))

    def fire(self, job: str) -> None:
        async def call() -> None:
            _, func = self.scheduler.jobs.pop(job)
            func()

        self.run(call())
        self.settle()

    def get(self, path: str) -> tuple[int, Any]:
        async def fetch() -> tuple[int, Any]:
            async with aiohttp.ClientSession() as http, http.get(f"http://{self.daemon.http_address}{path}") as r:
                text = await r.text()
                return r.status, json.loads(text) if path != "/status" else text

        return self.run(fetch())  # type: ignore[no-any-return]

    def messages(self) -> list[str]:
        found = []
        while True:
            try:
                found.append(self.receiver.recv(4096).decode())
            except BlockingIOError:
                return found

    def close(self) -> None:
        try:
            self.world.close()
        finally:
            self.receiver.close()


@pytest.fixture
def world() -> Iterator[World]:
    built = World(ttl=100.0)
    yield built
    built.close()


def test_ready_1_is_not_sent_while_a_profile_holds_an_expired_token(world: World) -> None:
    """p0 gets a token, then the provider answers its renewal with a long Retry-After, so its next cycle comes after
    the token expired; p1's credentials are refused until the operator fixes them. When p1 finally gets its token,
    READY=1 must not go out while p0 holds only an expired token: /readyz says 503 (p0 expired) at that moment.

    `Profiles.all_ready()` (what READY=1 is sent on) looks only at the readiness index's `unready` set, not at the
    tokens that expired since their last cycle (which `suspects()`, used by /readyz and STATUS=, does)."""
    daemon = world.start({"p0": "client-p0", "p1": "client-p1"})  # client-p1 unknown: credentials rejected
    assert not daemon.profiles.all_ready()
    assert not any("READY=1" in m for m in world.messages())
    # p0's renewal at its due time: 429 with an hour's Retry-After (longer than what is left of its 100 s token)
    world.auth.token_faults.append(Fault(429, {"error": "too_many_requests"}, headers={"Retry-After": "3600"}))
    due = world.scheduler.next_run("profile:p0")
    assert due is not None
    world.clock.advance(due - world.clock.time())
    world.fire("profile:p0")
    assert world.auth.token_faults == type(world.auth.token_faults)()  # p0 got the 429
    world.clock.advance(60)  # p0's token (100 s) has now expired; its next attempt is an hour away
    assert world.scheduler.next_run("profile:p0") > world.clock.time() + 1000  # type: ignore[operator]
    # the operator fixes p1's credentials; its next attempt (rejected backoff) comes
    world.auth.clients["client-p1"] = SECRET
    world.clock.advance(world.scheduler.next_run("profile:p1") - world.clock.time())  # type: ignore[operator]
    world.fire("profile:p1")
    world.messages()  # READY=1 (if any) went out in that cycle's after_cycle
    code, body = world.get("/readyz")
    statuses = {s.profile: s for s in daemon.profiles.statuses()}
    assert code == 503 and "p0" in body["not_ready"], body  # /readyz and /status: p0 is not ready ...
    assert not statuses["p0"].ready and statuses["p1"].ready
    assert not readiness(list(statuses.values()))[0]
    # ... and READY=1 must say the same: not sent (all_ready is what READY=1 is sent on)
    assert daemon.profiles.all_ready() == daemon.profiles.readiness()[0], "READY=1 and /readyz disagree"


def test_ready_1_message_checked_on_the_socket(world: World) -> None:
    """The same scenario, judged on the notify socket itself: no READY=1 while /readyz answers 503."""
    world.start({"p0": "client-p0", "p1": "client-p1"})
    world.auth.token_faults.append(Fault(429, {"error": "too_many_requests"}, headers={"Retry-After": "3600"}))
    world.clock.advance(world.scheduler.next_run("profile:p0") - world.clock.time())  # type: ignore[operator]
    world.fire("profile:p0")
    world.clock.advance(60)
    world.auth.clients["client-p1"] = SECRET
    world.clock.advance(world.scheduler.next_run("profile:p1") - world.clock.time())  # type: ignore[operator]
    world.messages()
    world.fire("profile:p1")
    sent = world.messages()
    code, body = world.get("/readyz")
    assert code == 503, body
    assert not [m for m in sent if m.startswith("READY=1")], f"READY=1 sent while /readyz says {body}: {sent}"


def test_a_reload_may_not_take_away_a_profile_the_daemon_was_started_for(world: World) -> None:
    """`run --profile p0`, then a config where p0 is renamed: the reload is refused like an invalid file (a start
    naming an unknown profile exits 78), p0 keeps running and ready, and /readyz and READY=1's test agree."""
    daemon = world.start({"p0": "client-p0"}, only=["p0"])
    assert world.get("/readyz")[0] == 200
    world.write({"p0-new": "client-p0"})

    async def reload() -> None:
        daemon.reload()

    world.run(reload())
    world.settle()
    assert list(daemon.profiles.supervisor.slots) == ["p0"]
    assert daemon.last_reload["ok"] is False and "no profile 'p0'" in daemon.last_reload["error"]
    code, body = world.get("/readyz")
    assert code == 200 and (code == 200) == daemon.profiles.all_ready(), body


def test_with_no_profile_running_nothing_is_ready(world: World) -> None:
    """Whatever leaves a daemon keeping no token fresh, /readyz is 503, as READY=1's test says (readiness over
    zero profiles is not "every token is there")."""
    daemon = world.start({"p0": "client-p0"})

    async def remove() -> None:
        daemon.profiles.remove("p0")

    world.run(remove())
    code, body = world.get("/readyz")
    assert code == 503 and body == {"ready": False, "not_ready": {}}
    assert not daemon.profiles.all_ready()
