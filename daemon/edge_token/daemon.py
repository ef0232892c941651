"""`edge-token run`: the long-running daemon. Startup, main loop and shutdown in three plain phases.

Per profile, one self-rescheduling one-shot job run by the `Supervisor` (which owns every "what runs next"
decision and its invariants): adopt what the sinks hold (first cycle only), renew at the held token's jittered
renewal point (or on SIGUSR1), retry failed sinks on their own short timer. This module wires the parts, runs the
fleet step, reloads and talks to systemd. Signal handlers only set flags or schedule work.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from edge_token.app import Parts
from edge_token.config import load_config
from edge_token.config.trust import listen_exposure
from edge_token.core import health
from edge_token.core.clock import Clock, SystemClock
from edge_token.core.errors import ConfigError
from edge_token.core.health import ProfileStatus, readiness, state_name
from edge_token.core.outcome import RenewalOutcome
from edge_token.core.policy import backoff_delay, next_run_at
from edge_token.core.settings import Config, ProfileConfig
from edge_token.core.token import Token
from edge_token.net.http import make_session
from edge_token.observe import logs
from edge_token.observe.hooks import run_on_update, secret_variables, signal_pid_file
from edge_token.observe.httpserver import HealthSource, start_http
from edge_token.observe.metrics import Metrics
from edge_token.observe.systemd import Notifier
from edge_token.pid1 import OrphanReaper
from edge_token.renewer import Renewer
from edge_token.scheduler import Scheduler
from edge_token.sinks import Sink
from edge_token.supervisor import JobScheduler, Supervisor, job_id

if TYPE_CHECKING:
    from edge_token.fleet.coordinator import FleetStep
    from edge_token.fleet.etcd import Fleet

TICK_SECONDS = 5.0  # scheduler wake-up (suspend / clock jumps) and liveness tick
SHUTDOWN_GRACE_SECONDS = 10.0
SINK_RETRY_MAX_SECONDS = 30.0


class Daemon:
    """Keeps every profile's sinks holding a verified, unexpired token."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        profiles: list[str] | None = None,
        redactor: logs.Redactor | None = None,
        tick_seconds: float = TICK_SECONDS,
        rng: random.Random | None = None,
        handle_signals: bool = True,
        on_rotated: Callable[[str, Token], None] | None = None,
        scheduler: JobScheduler | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.environ = os.environ if environ is None else environ
        self.only = profiles
        self.redactor = redactor or logs.Redactor()
        self.log = structlog.get_logger("edge_token")
        self.notifier = Notifier(self.environ, self.log)
        watchdog = self.notifier.watchdog_interval
        self.tick_seconds = min(tick_seconds, watchdog) if watchdog else tick_seconds
        self.reaper = OrphanReaper()
        self.handle_signals = handle_signals
        self._status_sent_at = -float("inf")
        self.rng = rng or random.Random()
        self.scheduler: Any = scheduler or Scheduler()
        self.last_tick = self.clock.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_reload: dict[str, Any] | None = None  # when, whether it applied, why not (for /status)
        self._unready: set[str] = set()  # profiles without a valid token in every sink (READY=1 waits for none)
        self._expiries: dict[str, float] = {}  # profile -> when its token stops being usable (our clock)
        self._jwks_jobs: set[str] = set()  # JWKS URLs with a refresh job
        self._stop = asyncio.Event()
        self._parts: Parts | None = None
        self._semaphore = asyncio.Semaphore(config.daemon.max_concurrent_renewals)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.http_address: str | None = None
        self.fleet: Fleet | None = None  # only when [fleet] is configured (the module is imported only then)
        self.fleet_step: FleetStep | None = None
        self.metrics.counters(
            "edge_token_notify_dropped_total",
            "sd_notify messages dropped because systemd did not drain its queue.",
            lambda: {"": self.notifier.dropped},
        )
        self.supervisor = Supervisor(
            self.scheduler, self.clock, self.spawn, self._step, log=self.log,
            next_run_at=next_run_at, sink_retry_in=self._sink_retry_in, poll_in=self._poll_in,
            observe=self._observe, on_rotated=on_rotated,
        )  # fmt: skip

    # ---- phase 1: startup ------------------------------------------------------------------------------
    async def run(self, duration: float | None = None) -> int:
        """Run until SIGTERM/SIGINT (or `duration` seconds); returns the exit code."""
        loop = asyncio.get_running_loop()
        runner = await self._start_http()  # a bad listen address fails the start (exit 78) before any work
        if self.handle_signals:
            self._install_signals(loop)
        async with make_session(limit=max(16, self.config.daemon.max_concurrent_renewals)) as session:
            self._parts = Parts(
                self.config, session, self.clock, self.log, environ=self.environ, rng=self.rng,
                on_secret=self.redactor.add_secret, jwks_on_fetch=self.metrics.jwks_fetched,
            )  # fmt: skip
            if self.config.fleet is not None:
                from edge_token.fleet.coordinator import FleetStep
                from edge_token.fleet.etcd import Fleet

                self.fleet = Fleet(self.config.fleet, session, self.log)
                self.fleet_step = FleetStep(self.fleet, self.metrics, self.log)
                etcd = self.fleet.etcd
                self.metrics.counters(
                    "edge_token_etcd_authentications_total",
                    "Fleet mode: etcd re-authentications, and rejections.",
                    lambda: {"attempted": etcd.authentications, "rejected": etcd.auth_rejections},
                )
                keepalive = self.config.fleet.lease_ttl_seconds / 3
                self.scheduler.every("fleet:keepalive", keepalive, lambda: self.spawn(self._keepalive()))
            self.scheduler.start()
            for profile in self._selected(self.config):
                self._add(profile.name)
            ticker = asyncio.create_task(self._tick())
            ready_timer = loop.call_later(self.config.daemon.ready_timeout_seconds, self._ready_timeout)
            self.log.info("daemon.started", profiles=len(self.supervisor.slots), config=str(self.config.path))
            # ---- phase 2: main loop (everything happens in scheduled jobs) -----------------------------
            try:
                await asyncio.wait_for(self._stop.wait(), duration)
            except TimeoutError:
                pass
            # ---- phase 3: shutdown ----------------------------------------------------------------------
            self.log.info("daemon.stopping")
            self.notifier.stopping()
            self.supervisor.stop()
            ready_timer.cancel()
            ticker.cancel()
            self.scheduler.shutdown()
            await self._drain()
            if self.fleet is not None:
                await self.fleet.leave()
        if runner is not None:
            await runner.cleanup()
        if self.handle_signals:
            self._remove_signals(loop)
        self.log.info("daemon.stopped")
        return 0

    async def _start_http(self) -> web.AppRunner | None:
        listen = self.config.daemon.listen
        if not listen:
            return None
        source = HealthSource(self.statuses, self.alive, self.redactor.scrub, self.daemon_status, self.readiness)
        runner, self.http_address = await start_http(listen, self.metrics, source)
        limiter = getattr(runner, "limiter", None)
        if limiter is not None:
            self.metrics.counters(
                "edge_token_http_connections_total",
                "HTTP connections to the metrics/health listener by outcome.",
                lambda: {k: getattr(limiter, k) for k in ("accepted", "refused", "evicted", "timed_out")},
            )
        self.log.info("http.listening", address=self.http_address)
        if exposure := listen_exposure(listen):
            self.log.warning("http.exposed", address=self.http_address, message=exposure)
        return runner

    def statuses(self, names: Iterable[str] | None = None) -> list[ProfileStatus]:
        """The status snapshot of every profile (or of `names`), for /status, /readyz and systemd."""
        roles = self.fleet.roles if self.fleet is not None else {}
        slots = self.supervisor.slots
        chosen = slots if names is None else [n for n in names if n in slots]
        return [
            replace(slots[n].renewer.status(self.scheduler.next_run(job_id(n))), fleet_role=roles.get(n))
            for n in chosen
        ]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """/readyz without a status per profile: only the profiles that may be unready are looked at (those whose
        last cycle left them unready, and those whose token has expired since), so a probe of 1,000 ready profiles
        is a pass over 1,000 floats, not 1,000 status snapshots (which cost ~30 ms and ran every few seconds)."""
        now = self.clock.time()
        suspects = self._unready | {name for name, expiry in self._expiries.items() if now >= expiry}
        if self.fleet is not None:  # /readyz also lists every profile's fleet role
            return readiness(self.statuses())
        return readiness(self.statuses(sorted(suspects)))

    @property
    def renewers(self) -> dict[str, Renewer]:
        """Each profile's current renewer (a snapshot; the supervisor owns the slots)."""
        return {name: slot.renewer for name, slot in self.supervisor.slots.items()}

    async def _keepalive(self) -> None:
        if self.fleet is not None:
            await self.fleet.keepalive()

    def alive(self) -> bool:
        return health.alive(self.last_tick, self.clock.monotonic(), self.tick_seconds, self.scheduler.running)

    def _selected(self, config: Config) -> list[Any]:
        return [p for name, p in config.profiles.items() if not self.only or name in self.only]

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.renew_all)
        if self.reaper.active:
            loop.add_signal_handler(signal.SIGCHLD, self.reaper.reap)

    @staticmethod
    def _remove_signals(loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            loop.remove_signal_handler(signum)

    def stop(self) -> None:
        """Begin a graceful stop: no new work; in-flight writes get SHUTDOWN_GRACE_SECONDS to finish."""
        self._stop.set()

    def _interrupt(self) -> None:
        if self._stop.is_set():
            # second Ctrl-C: leave now. Atomic writes mean no sink is ever partial; a temp file a write may
            # leave behind is removed at the next start.
            os._exit(130)
        self.stop()

    async def _drain(self) -> None:
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine as a tracked task (shutdown waits for it)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _tick(self) -> None:
        """Every tick of monotonic time: let the scheduler compare due times with the wall clock, prove
        liveness to systemd's watchdog (only while healthy), reap orphans as PID 1."""
        while True:
            self.last_tick = self.clock.monotonic()
            self.scheduler.wakeup()
            if self.notifier.watchdog_interval and self.alive():
                self.notifier.watchdog()
            self.reaper.reap()
            self._report_to_systemd(throttle=False)
            await asyncio.sleep(self.tick_seconds)

    def _report_to_systemd(self, throttle: bool = True) -> None:
        """READY=1 as soon as every profile is ready; STATUS= kept current, at most once a second after cycles.

        Called after every cycle: readiness comes from `_unready`, kept per profile in O(1), so a fill of N
        profiles costs O(N) here, not O(N^2) (every profile's status after every profile's cycle)."""
        if not self.notifier.enabled:
            return
        now = self.clock.monotonic()
        becomes_ready = not self.notifier.ready_sent and not self._unready and bool(self.supervisor.slots)
        if throttle and not becomes_ready and now - self._status_sent_at < 1.0:
            return
        self._status_sent_at = now
        statuses = self.statuses()
        jobs = [self.scheduler.next_run(job_id(name)) for name in self.supervisor.slots]
        text = health.summary(statuses, min((j for j in jobs if j is not None), default=None))
        if becomes_ready:
            self.notifier.ready(text)
        else:
            self.notifier.status(text)

    def _ready_timeout(self) -> None:
        if self.notifier.enabled and not self.notifier.ready_sent:
            _, details = readiness(self.statuses())
            waiting = ", ".join(sorted(details["not_ready"]))
            self.notifier.ready(f"ready_timeout reached; still without a verified token: {waiting}")
            self.log.warning("daemon.ready_timeout", not_ready=sorted(details["not_ready"]))

    # ---- profiles --------------------------------------------------------------------------------------
    def _renewer(self, name: str) -> Renewer:
        if self._parts is None:
            raise RuntimeError("profiles are added only while the daemon runs")
        profile = self.config.profiles[name]
        cache = self._parts.jwks_for(profile)
        if cache.url not in self._jwks_jobs:  # one refresh job per JWKS URL, however many profiles share it
            self._jwks_jobs.add(cache.url)
            interval = self.config.daemon.jwks_refresh_seconds
            self.scheduler.every(
                f"jwks:{cache.url}", interval, lambda: self.spawn(cache.refresh()), jitter=0.05 * interval
            )
        return self._parts.renewer(profile, on_written=self._on_written)

    def _add(self, name: str) -> None:
        self._unready.add(name)
        self.supervisor.add(name, self._renewer(name))

    def _remove(self, name: str) -> None:
        self.supervisor.remove(name)
        self._unready.discard(name)
        self._expiries.pop(name, None)
        self.metrics.forget(name)

    def trigger(self, name: str, force: bool = False) -> None:
        """Start a cycle for the profile now, or right after the one in flight."""
        self.supervisor.trigger(name, force)

    def renew_all(self) -> None:
        """SIGUSR1: renew every profile now, FRESH or not."""
        self.log.info("daemon.renew_all", profiles=len(self.supervisor.slots))
        for name in list(self.supervisor.slots):
            self.supervisor.trigger(name, force=True)

    async def _step(self, renewer: Renewer, force: bool, outcomes: list[RenewalOutcome]) -> None:
        """One cycle's work; every renewer step returns an outcome and never raises."""
        async with self._semaphore:
            if renewer.last_outcome is None and renewer.current is None:
                adopted = await renewer.adopt()
                outcomes += [adopted] if adopted else []
            fleet = self.fleet_step
            role = await fleet.step(renewer, outcomes) if fleet is not None else None
            if role == "follower":
                pass  # the leader requests; we only read, verify and write what it publishes
            elif force or renewer.renewal_due(self.clock.time()):
                outcomes.append(await renewer.renew())
                if fleet is not None and role == "leader" and outcomes[-1].error is None:
                    await fleet.publish(renewer)
            elif renewer.pending_sinks:
                outcomes.append(await renewer.retry_sinks())

    def _observe(self, renewer: Renewer, outcomes: list[RenewalOutcome], when: float | None) -> None:
        name = renewer.profile.name
        if name in self.supervisor.slots and self.supervisor.slots[name].renewer is renewer:
            self._expiries[name] = renewer.current.expires_at if renewer.current is not None else -math.inf
            (self._unready.discard if renewer.ready() else self._unready.add)(name)
        state = state_name(renewer.state(), renewer.last_error)
        for outcome in outcomes:
            self.metrics.observe(outcome, state, when)
        self._report_to_systemd()

    def _sink_retry_in(self, renewer: Renewer) -> float | None:
        """Failed sinks are retried on their own short backoff, without a token request."""
        if not renewer.pending_sinks or renewer.current is None:
            return None
        return backoff_delay(max(1, renewer.sink_failures), self.rng, cap=SINK_RETRY_MAX_SECONDS)

    def _poll_in(self, name: str) -> float | None:
        return self.fleet_step.poll_in(name) if self.fleet_step is not None else None

    def _on_written(self, profile: str, sink: Sink, token: Token) -> None:
        config = sink.config
        if config.on_update:
            self.spawn(run_on_update(config, profile, self.environ, self.log, secret_variables(self.config)))
        if config.signal:
            signal_pid_file(config, self.log)

    # ---- reload ----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: apply a new config; an invalid one is rejected and the running one is kept."""
        self.notifier.reloading()
        try:
            new = load_config(self.config.path, self.environ)
        except ConfigError as exc:
            self.log.error("config.reload_failed", message=str(exc), action="keeping the running configuration")
            self.notifier.reloaded("reload failed, running the previous configuration: " + str(exc))
            self._reloaded(exc)
            return
        daemon_changed = new.daemon != self.config.daemon
        old = {p.name: p for p in self._selected(self.config)}
        fresh = {p.name: p for p in self._selected(new)}
        removed = sorted(old.keys() - fresh.keys())
        changed = sorted(name for name in old.keys() & fresh.keys() if old[name] != fresh[name])
        added = sorted(fresh.keys() - old.keys())
        self.config = new
        if self._parts is not None:
            self._parts.config = new
        for name in removed:
            self._remove(name)
        for name in changed:
            self._unready.add(name)  # until the new renewer's first cycle says otherwise
            self.supervisor.replace(name, self._renewer(name), inherit=same_provider(old[name], fresh[name]))
        for name in added:
            self._add(name)
        if daemon_changed:
            self.log.warning("config.daemon_changed", message="[daemon] changes take effect at the next restart")
        self.log.info("config.reloaded", added=added, removed=removed, changed=changed)
        self._reloaded(None)
        self.notifier.reloaded(f"reloaded: {len(added)} added, {len(removed)} removed, {len(changed)} changed")

    def _reloaded(self, error: ConfigError | None) -> None:
        """Make the reload visible beyond the log line: metrics (alertable) and /status."""
        self.last_reload = {
            "at": self.clock.time(),
            "ok": error is None,
            "error": None if error is None else str(error),
        }
        self.metrics.reloaded(error is None, self.clock.time())

    def daemon_status(self) -> dict[str, Any]:
        """The daemon-wide part of /status."""
        return {"config": str(self.config.path), "last_reload": self.last_reload}


async def run_daemon(
    config_path: Path, profiles: list[str] | None = None, duration: float | None = None, config: Config | None = None
) -> int:
    """Load the config (unless given), set up logging and run the daemon until stopped."""
    config = config or load_config(config_path)
    redactor = logs.configure(config.daemon.log_format, config.daemon.log_level)
    return await Daemon(config, profiles=profiles, redactor=redactor).run(duration)


def main(config: Config, profiles: list[str] | None = None) -> int:
    return asyncio.run(run_daemon(config.path, profiles, config=config))


def same_provider(old: ProfileConfig, new: ProfileConfig) -> bool:
    """True when only a profile's sinks changed, so the token it holds is still the one the new settings would
    get and verify: the reload then reuses it (no request) and writes each new sink once."""
    return replace(old, sinks=new.sinks) == new
