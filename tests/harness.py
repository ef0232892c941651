"""A scheduler that runs jobs only when a test says so: a small real implementation of the daemon's scheduler
interface (`at`, `every`, `cancel`, `next_run`, `start`, `shutdown`, `wakeup`, `running`) driven by a fake clock.

`due(now)` pops and runs every one-shot job whose time has come (interval jobs are recorded but never fire:
tests drive JWKS refreshes explicitly). It also records every time a job was *scheduled* at, and when, so tests
can assert that no run was ever scheduled in the past.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import rule


@dataclass
class ManualScheduler:
    now: Callable[[], float]
    jobs: dict[str, tuple[float, Callable[[], Any]]] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)
    scheduled: list[tuple[str, float, float]] = field(default_factory=list)  # (job, when, now at scheduling)
    fired: list[tuple[str, float]] = field(default_factory=list)  # (job, now when it ran)
    running: bool = False

    def start(self) -> None:
        self.running = True

    def shutdown(self) -> None:
        self.running = False

    def wakeup(self) -> None:
        pass

    def at(self, job_id: str, when: float, func: Callable[[], Any]) -> None:
        self.scheduled.append((job_id, when, self.now()))
        self.jobs[job_id] = (when, func)

    def every(self, job_id: str, seconds: float, func: Callable[[], Any], jitter: float = 0.0) -> None:
        self.intervals[job_id] = seconds

    def cancel(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def next_run(self, job_id: str) -> float | None:
        job = self.jobs.get(job_id)
        return job[0] if job is not None else None

    def next_due(self) -> float | None:
        return min((when for when, _ in self.jobs.values()), default=None)

    def due(self) -> int:
        """Run every one-shot job due at now(); returns how many ran."""
        now = self.now()
        ready = sorted((when, job_id) for job_id, (when, _) in self.jobs.items() if when <= now)
        for _, job_id in ready:
            _, func = self.jobs.pop(job_id)
            self.fired.append((job_id, now))
            func()
        return len(ready)


class LoopDaemon:
    """A real Daemon on a private event loop, driven step by step: a fake clock, a ManualScheduler, no signals.

    For synchronous property tests (Hypothesis): `start()`, then `on_loop(func)` for what signal handlers and
    scheduler jobs would do, `fire_due()` to run what is due now, `settle()` to let cycles finish, `stop()`.
    """

    def __init__(self, loop: Any, clock: Any) -> None:
        self.loop, self.clock = loop, clock
        self.scheduler = ManualScheduler(clock.time)
        self.daemon: Any = None
        self.task: Any = None

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def start(self, config: Any, environ: dict[str, str] | None = None, **kwargs: Any) -> Any:
        import asyncio

        from edge_token.daemon import Daemon

        self.daemon = Daemon(
            config, clock=self.clock, environ=environ or {}, tick_seconds=3600, handle_signals=False,
            scheduler=self.scheduler, **kwargs,
        )  # fmt: skip
        self.task = self.loop.create_task(self.daemon.run())
        self.run(asyncio.sleep(0.01))
        self.settle()
        return self.daemon

    def on_loop(self, func: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return func()  # signal handlers and scheduler jobs run on the event loop

        return self.run(call())

    def settle(self) -> None:
        """Let every cycle (and any rerun it starts) finish."""
        self.run(quiet(self.daemon))

    def fire_due(self, max_fires: int = 20) -> dict[str, int]:
        """Fire every due job at the current instant, as often as they come due at it (bounded); job -> fires."""
        fires: dict[str, int] = {}
        for _ in range(max_fires):
            before = len(self.scheduler.fired)
            if not self.on_loop(self.scheduler.due):
                break
            for job, _ in self.scheduler.fired[before:]:
                fires[job] = fires.get(job, 0) + 1
            self.settle()
        return fires

    def stop(self) -> int:
        import asyncio

        if self.daemon is None:
            return 0
        self.daemon.stop()
        return int(self.run(asyncio.wait_for(self.task, 15)))


class LoopWorld:
    """A private event loop, a fake clock, the bundled auth server on it, a secret file and a config path, and a
    LoopDaemon to run the real daemon: the scaffold of the step-by-step daemon tests. `close()` undoes it all."""

    def __init__(
        self,
        ttl: float = 1000.0,
        prefix: str = "edge-token-world-",
        clients: dict[str, str] | None = None,
        secret: str | None = None,
    ) -> None:
        """`clients` (id -> secret) the auth server knows (default: conftest's one client); `secret` the secret file
        holds (default: that client's)."""
        import asyncio
        import tempfile
        from pathlib import Path

        from conftest import CLIENT_ID, CLIENT_SECRET, FakeClock
        from faultyauth import FaultyAuthServer

        self.loop, self.clock = asyncio.new_event_loop(), FakeClock()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.auth = FaultyAuthServer(clients or {CLIENT_ID: CLIENT_SECRET}, ttl=ttl, now=self.clock.time)
        self.loop.run_until_complete(self.auth.start())
        self.secret = self.dir / "secret"
        self.secret.write_text(secret or CLIENT_SECRET)
        self.secret.chmod(0o600)
        self.config = self.dir / "config.toml"
        self.harness = LoopDaemon(self.loop, self.clock)

    def write(self, *sinks: str, extra: str = "") -> None:
        """A one-profile config ("main") with file sinks named relative to the world's directory."""
        from conftest import profile_toml

        paths = [{"path": str(self.dir / name)} for name in sinks]
        self.config.write_text('[daemon]\nlisten = ""\n' + profile_toml("main", self.auth, self.secret, paths) + extra)

    def close(self) -> int:
        """Stop the daemon (if one runs) and the auth server, close the loop, remove the directory; the daemon's exit
        code (0 if none ran)."""
        import shutil

        try:
            code = self.harness.stop()
            self.loop.run_until_complete(self.auth.stop())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)
        return code


async def quiet(daemon: Any, rounds: int = 100, pause: float = 0.0) -> None:
    """Wait until no cycle of `daemon` runs, however many reruns the finished ones start (at most `rounds`)."""
    import asyncio

    for _ in range(rounds):
        await daemon.profiles.supervisor.idle()
        await asyncio.sleep(pause)
        if all(slot.task is None for slot in daemon.profiles.supervisor.slots.values()):
            return
    raise AssertionError("cycles keep starting on their own")


def profiles_config(
    profiles: dict[str, dict[str, Any]], auth: Any, secret: Any, directory: Any, daemon: str = 'listen = ""'
) -> str:
    """A config of `profiles` (name -> {"sinks": [directory names], "refresh_at": x}), client `client-NAME` each,
    every sink `DIRECTORY/DIR/NAME.jwt`."""
    from conftest import profile_toml

    text = f"[daemon]\n{daemon}\n"
    for name, spec in profiles.items():
        sinks = [{"path": str(directory / d / f"{name}.jwt")} for d in spec["sinks"]]
        text += profile_toml(name, auth, secret, sinks, client_id=f"client-{name}", refresh_at=spec["refresh_at"])
    return text


CHANGES = ("add", "remove", "sinks", "settings")  # what `change_profiles` can do to a profile


def reload_rule(names: tuple[str, ...], max_steps: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The stateful machines' reload rule: `change_profiles` on one of `names`, optionally with cycles in flight,
    then up to `max_steps` loop steps."""
    return rule(
        name=st.sampled_from(names),
        change=st.sampled_from(CHANGES),
        in_flight=st.booleans(),
        steps=st.integers(0, max_steps),
    )


def change_profiles(profiles: dict[str, dict[str, Any]], name: str, change: str, dirs: tuple[str, str]) -> None:
    """A reload's edit of `profiles_config`'s profiles: "add" `name` (one sink, in dirs[0]), "remove" it (never the
    last one), move its "sinks" through [a] -> [a, b] -> [b] -> [a], or toggle its "settings" (refresh_at)."""
    a, b = dirs
    if change == "add":
        profiles.setdefault(name, {"sinks": [a], "refresh_at": 0.8})
    elif change == "remove":
        if len(profiles) > 1:
            profiles.pop(name, None)
    elif name in profiles and change == "sinks":
        sinks = profiles[name]["sinks"]
        profiles[name]["sinks"] = [a, b] if sinks == [a] else [b] if len(sinks) == 2 else [a]
    elif name in profiles:
        profiles[name]["refresh_at"] = 0.7 if profiles[name]["refresh_at"] == 0.8 else 0.8


def break_or_heal(path: Any) -> None:
    """Take a sink directory away (writes fail) or bring it back (sinks recover)."""
    away = path.with_name(path.name + ".away")
    if path.exists():
        path.rename(away)
    elif away.exists():
        away.rename(path)
