"""What a start of `run` does before its profiles are ready, counted (never timed): the work that no request has
asked for yet must not run then (metric lines, scheduler look-ups for /readyz, verification rules built twice).
The benchmark (tests/bench, restart figure) times the start; these tests keep the counts from growing back.

A real daemon runs in this process against the bundled auth server on loopback, with real files, on a manual
scheduler that nothing fires: only the first cycles run (a fill, then a restart that adopts every token).
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import edge_token.app as app_module
import edge_token.core.health as health_module
import edge_token.observe.series as series_module
import edge_token.renewer as renewer_module
from conftest import FakeClock, profile_toml
from edge_token.config import load_config
from edge_token.core.health import readiness
from edge_token.core.outcome import Result
from edge_token.daemon import Daemon
from edge_token.localauth import LocalAuthServer
from edge_token.sinks import file as file_sink
from edge_token.sinks.tempfiles import StaleTemps
from harness import ManualScheduler

PROFILES = 40  # more than the default 16 renewals in flight


@pytest.fixture
def config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> Path:
    """PROFILES profiles whose file sinks share one directory (as the benchmark's fill and restart)."""
    sinks = tmp_path / "sinks"
    sinks.mkdir()
    text = '[daemon]\nlisten = ""\n'
    for i in range(PROFILES):
        text += profile_toml(f"p{i}", auth, secret_file, [{"path": str(sinks / f"p{i}.jwt")}])
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


class CountingScheduler(ManualScheduler):
    """The manual scheduler, counting the look-ups of a job's next run."""

    lookups = 0

    def next_run(self, job_id: str) -> float | None:
        self.lookups += 1
        return super().next_run(job_id)


def new_daemon(config: Path, clock: FakeClock) -> Daemon:
    """The real daemon on a scheduler that nothing fires (only first cycles run), no signals, no tick."""
    return Daemon(
        load_config(config, environ={}), clock=clock, environ={}, handle_signals=False,
        scheduler=CountingScheduler(clock.time), tick_seconds=3600,
    )  # fmt: skip


async def first_cycles(daemon: Daemon, monkeypatch: pytest.MonkeyPatch, while_starting: Any = None) -> None:
    """Run `daemon` as a new process would (nothing listed yet) until every profile's first cycle finished, then
    stop it. `while_starting(daemon)` is called once every profile is added, before any cycle ran."""
    monkeypatch.setattr(file_sink, "STALE_TEMPS", StaleTemps(), raising=False)
    task = asyncio.create_task(daemon.run())
    try:
        for _ in range(3000):
            slots = daemon.profiles.supervisor.slots.values()
            if while_starting is not None and len(slots) == PROFILES:
                while_starting(daemon)
                while_starting = None
            if len(slots) == PROFILES and all(s.renewer.last_outcome is not None and s.task is None for s in slots):
                break
            await asyncio.sleep(0.01 if while_starting is None else 0)
        else:
            raise AssertionError("the first cycles did not finish within 30 s")
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


def adopted_all(daemon: Daemon) -> bool:
    return all(
        r.last_outcome is not None and r.last_outcome.result is Result.ADOPTED
        for r in daemon.profiles.renewers.values()
    )


async def test_a_restart_renders_no_metric_line_before_the_first_scrape_which_shows_every_profile(
    config: Path, auth: LocalAuthServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fill, then restart with every token FRESH: neither renders a profile's metric lines while its profiles
    become ready (no scrape asked for them); the first scrape renders each profile once and shows it adopted, a
    second scrape renders none."""
    rendered: list[str] = []
    real = series_module.profile_lines

    def counted(series: Any) -> Any:
        rendered.append(series.name)
        return real(series)

    monkeypatch.setattr(series_module, "profile_lines", counted)
    await first_cycles(new_daemon(config, clock), monkeypatch)
    assert rendered == []
    daemon = new_daemon(config, clock)
    await first_cycles(daemon, monkeypatch)
    assert adopted_all(daemon) and auth.token_requests == PROFILES
    assert rendered == []

    body, _ = daemon.metrics.exposition("text/plain", "")
    assert sorted(rendered) == sorted(f"p{i}" for i in range(PROFILES))
    for i in range(PROFILES):
        assert f'edge_token_refresh_total{{profile="p{i}",result="adopted"}} 1.0\n'.encode() in body
        assert f'edge_token_token_state{{profile="p{i}",state="fresh"}} 1.0\n'.encode() in body
    assert daemon.metrics.exposition("text/plain", "")[0] == body
    assert len(rendered) == PROFILES


async def test_readiness_while_every_profile_starts_looks_up_no_scheduled_run(
    config: Path, auth: LocalAuthServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz and systemd's STATUS= line while all N profiles are still unready (the first probe of a start):
    the same answer as from every full status, without a look-up of each profile's next run in the scheduler
    (which /readyz does not show) and without a status snapshot of any profile; STATUS= looks up each next run
    once (it shows the earliest)."""
    daemon = new_daemon(config, clock)
    seen: dict[str, Any] = {}
    snapshots = Counter[str]()
    real_status = renewer_module.Renewer.status

    def status(renewer: Any, next_attempt_at: float | None) -> Any:
        snapshots[renewer.profile.name] += 1
        return real_status(renewer, next_attempt_at)

    monkeypatch.setattr(renewer_module.Renewer, "status", status)

    def probe(daemon: Daemon) -> None:
        scheduler = daemon.scheduler
        before = scheduler.lookups
        seen["ready"] = daemon.profiles.readiness()
        seen["readiness_lookups"] = scheduler.lookups - before
        seen["readiness_snapshots"] = sum(snapshots.values())
        before = scheduler.lookups
        daemon.profiles.summary()
        seen["summary_lookups"] = scheduler.lookups - before
        seen["full"] = readiness(daemon.profiles.statuses())

    await first_cycles(daemon, monkeypatch, while_starting=probe)
    ready, details = seen["ready"]
    assert not ready and len(details["not_ready"]) == PROFILES
    assert seen["ready"] == seen["full"]
    assert seen["readiness_lookups"] == 0
    assert seen["readiness_snapshots"] == 0  # each unready profile gave its entry without a full status
    assert seen["summary_lookups"] == PROFILES
    # no profile holds a token yet: none of their sinks is named failing (the probe's body is scrubbed: naming
    # every sink path cost ~45 ms at 1,000 profiles, before any work)
    assert all(entry["sinks_failing"] == [] for entry in details["not_ready"].values())


async def test_readyz_names_the_first_profiles_by_name_and_counts_the_rest(
    config: Path, auth: LocalAuthServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More unready profiles than /readyz names (here 7 of 40, as 100 of 10,000): the probe names the first by
    name, the same entries as from every full status, counts the others as `unlisted`, and builds an entry for the
    named ones only. Unbounded, a probe of 10,000 unready profiles was 0.5 MB of JSON and 155 ms of the event loop,
    every few seconds of their fill."""
    monkeypatch.setattr(health_module, "LISTED", 7)
    entries = Counter[str]()
    real_unready = renewer_module.Renewer.unready

    def unready(renewer: Any) -> Any:
        entries[renewer.profile.name] += 1
        return real_unready(renewer)

    monkeypatch.setattr(renewer_module.Renewer, "unready", unready)
    seen: dict[str, Any] = {}

    def probe(daemon: Daemon) -> None:
        seen["fast"], seen["entries"] = daemon.profiles.readiness(), sum(entries.values())
        seen["full"] = readiness(daemon.profiles.statuses())

    daemon = new_daemon(config, clock)
    await first_cycles(daemon, monkeypatch, while_starting=probe)
    ready, details = seen["fast"]
    assert not ready and sorted(details["not_ready"]) == sorted(f"p{i}" for i in range(PROFILES))[:7]
    assert details["unlisted"] == PROFILES - 7 and seen["entries"] == 7
    assert seen["fast"] == seen["full"]
    assert daemon.profiles.readiness() == (True, {"ready": True, "not_ready": {}})  # once all are, nothing to count


async def test_a_start_builds_each_profiles_verification_rules_once(
    config: Path, auth: LocalAuthServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a profile builds its verification rules once (its renewer's), not again for the sinks' check of
    another writer's token, which only secret stores make; fill and restart still verify every token."""
    calls: list[str] = []
    for module in (app_module, renewer_module):
        real = module.rules_for

        def counted(profile: Any, real: Any = real) -> Any:
            calls.append(profile.name)
            return real(profile)

        monkeypatch.setattr(module, "rules_for", counted)
    await first_cycles(new_daemon(config, clock), monkeypatch)
    assert sorted(calls) == sorted(f"p{i}" for i in range(PROFILES))
    calls.clear()
    daemon = new_daemon(config, clock)
    await first_cycles(daemon, monkeypatch)
    assert adopted_all(daemon) and auth.token_requests == PROFILES
    assert len(calls) == PROFILES


async def test_a_restarts_worker_trips_leave_no_reference_cycle_for_the_collector(
    config: Path, auth: LocalAuthServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restart over N FRESH sinks of one directory: the shared worker trips (dircalls.py) are freed as soon as they
    are answered, not left as reference cycles (batch -> job -> its function -> batch) holding their calls, futures
    and closures until the cyclic collector runs (about 55 objects per trip: collections the start paid for)."""
    await first_cycles(new_daemon(config, clock), monkeypatch)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds goes to gc.garbage instead of being freed
    try:
        daemon = new_daemon(config, clock)
        await first_cycles(daemon, monkeypatch)
        gc.collect()
        kinds = Counter(type(thing).__qualname__ for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert adopted_all(daemon) and auth.token_requests == PROFILES
    assert kinds["_Batch"] == kinds["_Job"] == kinds["Future"] == 0, kinds


def test_the_modules_run_imports_define_no_dataclass() -> None:
    """What `run` imports (edge_token.daemon and everything under it) defines none of our classes with the dataclass
    decorator, which writes and compiles five or six methods per class at every start: value classes are Records
    (core/record.py), mutable ones plain classes with __slots__. Four were left (the profile status, two metric
    series and the supervisor's slot), ~3 ms of every start."""
    census = (
        "import dataclasses, json, sys\n"
        "import edge_token.daemon\n"
        "ours = [m for n, m in list(sys.modules.items()) if n.split('.')[0] == 'edge_token']\n"
        "print(json.dumps([len(ours), sorted(f'{m.__name__}.{k}' for m in ours for k, v in vars(m).items()\n"
        "    if isinstance(v, type) and v.__module__ == m.__name__ and dataclasses.is_dataclass(v))]))\n"
    )
    done = subprocess.run([sys.executable, "-c", census], capture_output=True, text=True, timeout=60, check=True)
    modules, dataclasses = json.loads(done.stdout)
    assert modules > 40 and dataclasses == []
