"""The running profiles: one renewer per profile in the supervisor's slots, the JWKS refresh job each URL needs,
which profiles may be unready, consumer hooks after a write, and a reload's plan applied.

The daemon owns the process (phases, signals, systemd, the listener); this owns the profiles. Every outcome of a
cycle reaches `_observe` once: readiness, metrics, then the daemon's `after_cycle` (systemd STATUS=/READY=1).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from edge_token.app import Parts
from edge_token.core.clock import Clock
from edge_token.core.health import (
    ProfileStatus,
    ReadinessIndex,
    readiness,
    readyz_body,
    state_name,
    summary_line,
)
from edge_token.core.outcome import RenewalOutcome
from edge_token.core.policy import next_run_at
from edge_token.core.record import replace
from edge_token.core.settings import Config, ReloadPlan
from edge_token.core.token import Token
from edge_token.cycle import Cycle
from edge_token.observe.events import log_outcome
from edge_token.observe.hooks import run_on_update, secret_variables, signal_pid_file
from edge_token.observe.metrics import Metrics
from edge_token.renewer import Renewer
from edge_token.sinks import Sink
from edge_token.supervisor import JobScheduler, Supervisor, job_id

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


class Profiles:
    """Every selected profile of the running configuration, from added to removed."""

    def __init__(
        self,
        config: Config,
        *,
        only: list[str] | None,
        clock: Clock,
        scheduler: JobScheduler,
        spawn: Spawn,
        log: Any,
        metrics: Metrics,
        environ: Mapping[str, str],
        rng: random.Random,
        on_rotated: Callable[[str, Token], None] | None,
        after_cycle: Callable[[], None],
    ) -> None:
        self.config, self.only, self.clock, self.scheduler = config, only, clock, scheduler
        self.spawn, self.log, self.metrics, self.environ = spawn, log, metrics, environ
        self.after_cycle = after_cycle
        self.parts: Parts | None = None  # set by start(): the session exists only while the daemon runs
        self.roles: Callable[[], Mapping[str, str]] = dict  # fleet roles by profile (fleet mode sets this)
        self.removed: Callable[[str], object] = lambda name: None  # fleet mode: give up its leadership
        self.ready_index = ReadinessIndex()  # READY=1 and /readyz look only at the profiles that may be unready
        self.cycle = Cycle(clock, rng, config.daemon.max_concurrent_renewals)
        self._jwks_jobs: set[str] = set()  # JWKS URLs with a refresh job
        self.supervisor = Supervisor(
            scheduler, clock, spawn, self.cycle.step, log=log,
            next_run_at=next_run_at, sink_retry_in=self.cycle.sink_retry_in, poll_in=self.cycle.poll_in,
            observe=self._observe, on_rotated=on_rotated,
        )  # fmt: skip

    def start(self, parts: Parts) -> None:
        """Add every selected profile: its first cycle runs at once."""
        self.parts = parts
        for name in self.selected(self.config):
            self.add(name)

    def selected(self, config: Config) -> list[str]:
        """The profile names this daemon runs (`--profile` narrows them)."""
        return [name for name in config.profiles if not self.only or name in self.only]

    @property
    def renewers(self) -> dict[str, Renewer]:
        """Each profile's current renewer (a snapshot; the supervisor owns the slots)."""
        return {name: slot.renewer for name, slot in self.supervisor.slots.items()}

    def statuses(self, names: Iterable[str] | None = None, next_runs: bool = True) -> list[ProfileStatus]:
        """The status snapshot of every profile (or of `names`), for /status, /readyz and systemd. Without
        `next_runs`, `next_attempt_at` is None: readiness does not show it, and looking each job up in the
        scheduler was half the cost of a /readyz while a start's 1,000 profiles were all still unready."""
        roles = self.roles()
        slots = self.supervisor.slots
        chosen = slots if names is None else [n for n in names if n in slots]
        if next_runs:
            found = [slots[n].renewer.status(self.scheduler.next_run(job_id(n))) for n in chosen]
        else:
            found = [slots[n].renewer.status(None) for n in chosen]
        if not roles:  # outside fleet mode: no copy of every status just to set None again
            return found
        return [replace(status, fleet_role=roles.get(status.profile)) for status in found]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """/readyz without a status per profile: only the profiles that may be unready are looked at (those whose
        last cycle left them unready, and those whose token has expired since), so a probe of 1,000 ready profiles
        is a pass over 1,000 floats, not 1,000 status snapshots (which cost ~30 ms and ran every few seconds). Of
        those, the ones the answer names (`health.LISTED`) give their own entry (`Renewer.unready`), so the first
        probe of a start, which finds all of them unready, builds no snapshot either, and at most LISTED entries."""
        if self.roles():  # fleet mode: /readyz also lists every profile's fleet role
            return readiness(self.statuses(next_runs=False))
        slots = self.supervisor.slots
        if not slots:  # nothing kept fresh is not "every token is there" (READY=1 says the same: all_ready)
            return False, {"ready": False, "not_ready": {}}
        suspects = self.ready_index.suspects(self.clock.time())
        unready = sorted(name for name in suspects if name in slots and not slots[name].renewer.ready())
        # entries only for the profiles the answer names (time only makes a token older: these are still unready)
        return not unready, readyz_body(unready, lambda name: slots[name].renewer.unready())

    def all_ready(self) -> bool:
        """Every profile holds a valid token in every sink, now: none left unready by its last cycle (O(1), so a fill
        asks this after each cycle at no cost) and, once none is, no held token expired since its cycle (what /readyz
        looks at too). Asked only until READY=1 went out (observe/systemd.py)."""
        index = self.ready_index
        return bool(self.supervisor.slots) and not index.unready and not index.suspects(self.clock.time())

    def summary(self) -> str:
        """systemd's STATUS= line (health.summary over every status), without a status per profile: the state of
        each renewer, full statuses only for the profiles the readiness index suspects. Sent up to once a second
        during a fill, 1,000 full statuses were 9 % of the fill's event loop (issue 15, NOTIFY fill)."""
        slots = self.supervisor.slots
        fresh = sum(1 for s in slots.values() if state_name(s.renewer.state(), s.renewer.last_error) == "fresh")
        suspects = self.ready_index.suspects(self.clock.time())
        chosen = [n for n in slots if n in suspects]
        not_ready = [s.profile for s in self.statuses(chosen, next_runs=False) if not s.ready]
        jobs = [self.scheduler.next_run(job_id(name)) for name in slots]
        return summary_line(fresh, len(slots), not_ready, min((j for j in jobs if j is not None), default=None))

    def trigger(self, name: str, force: bool = False) -> None:
        """Start a cycle for the profile now, or right after the one in flight."""
        self.supervisor.trigger(name, force)

    def renew_all(self) -> None:
        """SIGUSR1: renew every profile now, FRESH or not."""
        self.log.info("daemon.renew_all", profiles=len(self.supervisor.slots))
        for name in list(self.supervisor.slots):
            self.supervisor.trigger(name, force=True)

    def apply(self, new: Config, plan: ReloadPlan) -> None:
        """Make the running profiles those of `new`, as `plan` (core.settings.plan_reload) says."""
        self.config = new
        if self.parts is not None:
            self.parts.config = new
        for name in plan.removed:
            self.remove(name)
        for name, inherit in plan.changed:
            self.ready_index.waiting(name)  # until the new renewer's first cycle says otherwise
            renewer = self._renewer(name)
            self.supervisor.replace(name, renewer, inherit=inherit)
            self.metrics.keep_sinks(name, {sink.name for sink in renewer.sinks})
        for name in plan.added:
            self.add(name)

    def add(self, name: str) -> None:
        """Start running a profile of the current configuration."""
        self.ready_index.waiting(name)
        self.supervisor.add(name, self._renewer(name))

    def remove(self, name: str) -> None:
        """Stop running a profile; its metrics series go too."""
        self.supervisor.remove(name)
        self.ready_index.forget(name)
        self.metrics.forget(name)
        self.removed(name)

    def _renewer(self, name: str) -> Renewer:
        if self.parts is None:
            raise RuntimeError("profiles are added only while the daemon runs")
        profile = self.config.profiles[name]
        cache = self.parts.jwks_for(profile)
        if cache.url not in self._jwks_jobs:  # one refresh job per JWKS URL, however many profiles share it
            self._jwks_jobs.add(cache.url)
            interval = self.config.daemon.jwks_refresh_seconds
            self.scheduler.every(
                f"jwks:{cache.url}", interval, lambda: self.spawn(cache.refresh()), jitter=0.05 * interval
            )
        return self.parts.renewer(profile, on_written=self._on_written)

    def _observe(self, renewer: Renewer, outcomes: list[RenewalOutcome], when: float | None) -> None:
        name, token_state = renewer.profile.name, renewer.state()
        slot = self.supervisor.slots.get(name)
        if slot is not None and slot.renewer is renewer:
            expires_at = renewer.current.expires_at if renewer.current is not None else None
            self.ready_index.update(name, renewer.ready(token_state), expires_at)
        state = state_name(token_state, renewer.last_error)
        for outcome in outcomes:
            log_outcome(renewer.log, outcome)
            self.metrics.observe(outcome, state, when)
        self.after_cycle()

    def _on_written(self, profile: str, sink: Sink, token: Token) -> None:
        config = sink.config
        if config.on_update:
            self.spawn(run_on_update(config, profile, self.environ, self.log, secret_variables(self.config)))
        if config.signal:
            signal_pid_file(config, self.log)
