"""`edge-token run`: the composition root of the long-running daemon, in three plain phases (startup, main loop,
shutdown over one exit stack).

It owns the process: the listener, signals (handlers only set flags or schedule work), the tick (scheduler wake-up,
watchdog, orphan reaping), systemd notifications, the fleet client and reloads. The profiles are `profiles.py`'s:
per profile one self-rescheduling job run by the `Supervisor` (the only owner of "what runs next"), doing what
`cycle.py` says: adopt what the sinks hold, renew at the held token's jittered renewal point (or on SIGUSR1),
retry failed sinks on their own short timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from edge_token.app import Parts
from edge_token.config import check_selected, load_config
from edge_token.config.trust import listen_exposure
from edge_token.core import health
from edge_token.core.clock import Clock, SystemClock
from edge_token.core.errors import ConfigError, EdgeTokenError, InternalError
from edge_token.core.settings import Config, FleetConfig, plan_reload
from edge_token.core.token import Token
from edge_token.net.http import make_session
from edge_token.observe import logs
from edge_token.observe.httpserver import HealthSource, start_http
from edge_token.observe.metrics import Metrics
from edge_token.observe.systemd import Notifier
from edge_token.pid1 import OrphanReaper, release_held_signals
from edge_token.profiles import Profiles
from edge_token.scheduler import Scheduler
from edge_token.supervisor import JobScheduler

if TYPE_CHECKING:
    from edge_token.fleet.membership import Fleet

TICK_SECONDS = 5.0  # scheduler wake-up (suspend / clock jumps) and liveness tick
SHUTDOWN_GRACE_SECONDS = 10.0


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
        self.rng = rng or random.Random()
        self.scheduler: Any = scheduler or Scheduler()
        self.last_tick = self.clock.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_reload: dict[str, Any] | None = None  # when, whether it applied, why not (for /status)
        self._stop = asyncio.Event()
        self.metrics = Metrics()  # its registry is built at the first scrape (observe/registry.py)
        self.http_address: str | None = None
        self.fleet: Fleet | None = None  # only when [fleet] is configured (the module is imported only then)
        self.metrics.counters(
            "edge_token_notify_dropped_total",
            "sd_notify messages dropped because systemd did not drain its queue.",
            lambda: {"": self.notifier.dropped},
        )
        self.profiles: Profiles = Profiles(
            config, only=profiles, clock=self.clock, scheduler=self.scheduler, spawn=self.spawn, log=self.log,
            metrics=self.metrics, environ=self.environ, rng=self.rng, on_rotated=on_rotated,
            after_cycle=self._report_to_systemd if self.notifier.enabled else lambda: None,  # no systemd: nothing to do
        )  # fmt: skip

    # ---- the three phases ---------------------------------------------------------------------------------
    async def run(self, duration: float | None = None) -> int:
        """Run until SIGTERM/SIGINT (or `duration` seconds); returns the exit code.

        Startup pushes the undoing of each thing it starts onto one exit stack, so shutdown is that stack
        unwinding in reverse order: a startup that fails half way (a TLS file gone, a port taken) closes what it
        had opened — listener, signal handlers, session, scheduler — instead of leaking it."""
        async with contextlib.AsyncExitStack() as stack:
            await self._startup(stack)
            await self._main_loop(duration)
        self.log.info("daemon.stopped")
        return 0

    async def _startup(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        runner = await self._start_http()  # a bad listen address fails the start (exit 78) before any work
        if runner is not None:
            stack.push_async_callback(runner.cleanup)
        if self.handle_signals:
            self._install_signals(loop)
            stack.callback(self._remove_signals, loop)
        session = await stack.enter_async_context(
            make_session(limit=max(16, self.config.daemon.max_concurrent_renewals))
        )
        parts = Parts(
            self.config, session, self.clock, self.log, environ=self.environ, rng=self.rng,
            on_secret=self.redactor.add_secret, jwks_on_fetch=self.metrics.jwks_fetched,
        )  # fmt: skip
        if self.config.fleet is not None:
            self._start_fleet(self.config.fleet, session, stack)
        stack.push_async_callback(self._drain)  # runs after the scheduler stopped: in-flight cycles finish
        self.scheduler.start()
        stack.callback(self.scheduler.shutdown)
        ticker = asyncio.create_task(self._tick())
        stack.callback(ticker.cancel)
        stack.callback(loop.call_later(self.config.daemon.ready_timeout_seconds, self._ready_timeout).cancel)
        stack.callback(self.profiles.supervisor.stop)
        self.profiles.start(parts)
        stack.callback(self._stopping)  # the first thing shutdown does
        self.log.info("daemon.started", profiles=len(self.profiles.supervisor.slots), config=str(self.config.path))
        release_held_signals()  # a SIGHUP/SIGUSR1 held since the first instruction is handled now (pid1.py)

    async def _main_loop(self, duration: float | None) -> None:
        """Everything happens in scheduled jobs and signal handlers; this only waits for the stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), duration)
        except TimeoutError:
            pass

    def _stopping(self) -> None:
        self.log.info("daemon.stopping")
        self.notifier.stopping()

    def _start_fleet(self, fleet_config: FleetConfig, session: Any, stack: contextlib.AsyncExitStack) -> None:
        from edge_token.fleet.coordinator import FleetStep  # imported only when [fleet] is configured
        from edge_token.fleet.membership import Fleet

        self.fleet = fleet = Fleet(fleet_config, session, self.log)
        etcd, slots = fleet.etcd, self.profiles.supervisor.slots
        stack.push_async_callback(self.fleet.leave)  # before the session closes
        self.profiles.cycle.fleet = FleetStep(fleet, self.metrics, self.log, configured=slots.__contains__)
        self.profiles.roles = lambda: fleet.roles
        self.profiles.removed = lambda name: self.spawn(fleet.forget(name))  # give up its leadership now
        self.metrics.counters(
            "edge_token_etcd_authentications_total",
            "Fleet mode: etcd re-authentications, and rejections.",
            lambda: {"attempted": etcd.authentications, "rejected": etcd.auth_rejections},
        )
        keepalive = fleet_config.lease_ttl_seconds / 3
        self.scheduler.every("fleet:keepalive", keepalive, lambda: self.spawn(fleet.keepalive()))

    async def _start_http(self) -> web.AppRunner | None:
        listen = self.config.daemon.listen
        if not listen:
            return None
        statuses, ready = self.profiles.statuses, self.profiles.readiness
        source = HealthSource(statuses, self.alive, self.redactor.scrub, self.daemon_status, ready)
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

    def alive(self) -> bool:
        """/healthz and the watchdog: the tick ran recently and the scheduler runs."""
        return health.alive(self.last_tick, self.clock.monotonic(), self.tick_seconds, self.scheduler.running)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        handlers: dict[int, Callable[[], object]] = {signal.SIGTERM: self.stop, signal.SIGINT: self._interrupt}
        handlers |= {signal.SIGHUP: self.reload, signal.SIGUSR1: self.profiles.renew_all}
        if self.reaper.active:
            handlers[signal.SIGCHLD] = self.reaper.reap
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)

    @staticmethod
    def _remove_signals(loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            loop.remove_signal_handler(signum)

    def stop(self) -> None:
        """Begin a graceful stop: no new work; in-flight writes get SHUTDOWN_GRACE_SECONDS to finish."""
        self._stop.set()

    def _interrupt(self) -> None:
        if self._stop.is_set():
            # second Ctrl-C: leave now (writes are atomic; a temp file left behind goes at the next start)
            logs.flush()
            os._exit(130)
        self.stop()

    async def _drain(self) -> None:
        pending = [task for task in self._tasks if not task.done()]
        late = (await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_SECONDS))[1] if pending else set()
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
        """READY=1 as soon as every profile is ready; STATUS= kept current (after cycles at most once a second).
        Readiness comes from the index (O(1) while a profile is unready): a fill of N costs O(N) here, not O(N^2)."""
        self.notifier.report(self.profiles.all_ready, self.profiles.summary, self.clock.monotonic(), throttle)

    def _ready_timeout(self) -> None:
        if self.notifier.enabled and not self.notifier.ready_sent:
            unready = health.readiness(self.profiles.statuses())[1]
            self.notifier.ready(f"ready_timeout reached; {health.waiting(unready)}")
            self.log.warning("daemon.ready_timeout", not_ready=health.waiting(unready))

    # ---- reload ----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: apply a new config; one that is invalid or lacks a --profile profile is rejected, the old kept."""
        self.notifier.reloading()
        try:
            new = check_selected(load_config(self.config.path, self.environ), self.only)
        except Exception as exc:  # a ConfigError, or a bug in reading one: either way the running config is kept
            why = f"internal error while reading {self.config.path} ({type(exc).__name__}); please report it"
            error = exc if isinstance(exc, ConfigError) else InternalError(why)
            self.log.error("config.reload_failed", message=str(error), action="keeping the running configuration")
            self.notifier.reloaded("reload failed, running the previous configuration: " + str(error))
            self._reloaded(error)
            return
        plan = plan_reload(self.config, new, self.only)
        self.config = new
        self.profiles.apply(new, plan)
        if plan.daemon_changed:
            self.log.warning("config.daemon_changed", message="[daemon] changes take effect at the next restart")
        changed = [name for name, _ in plan.changed]
        self.log.info("config.reloaded", added=list(plan.added), removed=list(plan.removed), changed=changed)
        self._reloaded(None)
        summary = f"reloaded: {len(plan.added)} added, {len(plan.removed)} removed, {len(changed)} changed"
        self.notifier.reloaded(summary)

    def _reloaded(self, error: EdgeTokenError | None) -> None:
        """Make the reload visible beyond the log line: metrics (alertable) and /status."""
        self.last_reload = {"at": self.clock.time(), "ok": error is None, "error": error and str(error)}
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
    """`edge-token run`: the daemon until SIGTERM; its exit code."""
    return asyncio.run(run_daemon(config.path, profiles, config=config))
