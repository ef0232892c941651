"""A bug is its own class: any exception in a cycle or a sink becomes a classified, counted, visible failure with
backoff, its traceback logged at a bounded rate; the profile keeps its next run and its last good token."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from conftest import CLIENT_ID, CLIENT_SECRET, FakeClock, profile_toml
from edge_token.config import load_config
from edge_token.core.policy import BACKOFF_BASE
from edge_token.core.token import Token
from edge_token.localauth import LocalAuthServer
from edge_token.renewer import Renewer
from harness import LoopDaemon


class ExplodingSink:
    """A sink with a bug: it raises something that is not a SinkError."""

    def __init__(self, name: str) -> None:
        self.name, self.config = name, None

    async def read(self) -> str | None:
        raise RuntimeError("read bug")

    async def write(self, token: Token) -> bool:
        raise KeyError("write bug")


def test_a_crashing_cycle_and_a_crashing_sink_are_classified_and_back_off() -> None:
    """The fleet step (or any part of a cycle) raising, and a sink raising: both counted, shown, backed off."""
    loop, clock, tmp = asyncio.new_event_loop(), FakeClock(), Path(tempfile.mkdtemp())
    auth = LocalAuthServer({CLIENT_ID: CLIENT_SECRET}, ttl=1000, now=clock.time)
    loop.run_until_complete(auth.start())
    harness = LoopDaemon(loop, clock)
    try:
        secret = tmp / "secret"
        secret.write_text(CLIENT_SECRET)
        config = tmp / "config.toml"
        config.write_text(
            '[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret, [{"path": str(tmp / "t.jwt")}])
        )
        with capture_logs() as logs:
            daemon = harness.start(load_config(config, environ={}), rng=random.Random(1))
            renewer: Renewer = daemon.profiles.renewers["main"]
            renewer.sinks.append(ExplodingSink("broken"))  # type: ignore[arg-type]
            renewer.pending_sinks.add("broken")

            async def broken_step(*_: Any) -> None:
                raise ZeroDivisionError("a bug in a cycle")

            good_step = daemon.profiles.supervisor._step
            daemon.profiles.supervisor._step = broken_step
            for _ in range(3):
                due = harness.scheduler.next_due()
                assert due is not None, "the profile lost its next run"
                clock.advance(due - clock.time())
                harness.fire_due()
            daemon.profiles.supervisor._step = good_step
            for _ in range(5):  # sink retries may come due before the renewal's backoff is over
                clock.advance(harness.scheduler.next_due() - clock.time())  # type: ignore[operator]
                harness.fire_due()
        series = daemon.metrics.profiles["main"]
        assert series.refresh.get("internal") == 3
        assert renewer.failures == 0 and renewer.current is not None  # the good step renewed again
        times = [when - at for job, when, at in harness.scheduler.scheduled if job == "profile:main"]
        assert all(delay >= BACKOFF_BASE * 0.05 for delay in times)
        status = daemon.profiles.statuses()[0]
        assert status.sinks["broken"] is not None and "KeyError" in status.sinks["broken"]
        assert status.sinks[f"file:{tmp / 't.jwt'}"] is None
        crashes = [e for e in logs if e["event"] == "internal_error"]
        assert len(crashes) == 3 and sum("traceback" in e for e in crashes) == 1, "tracebacks not rate-limited"
        assert "ZeroDivisionError" in crashes[0]["traceback"]
    finally:
        harness.stop()
        loop.run_until_complete(auth.stop())
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)
