"""`edge-token exec -- CMD ARGS…`: run an application as a child that always has a fresh token.

1. Obtain every profile's token first, exactly like `once` (fail fast with its sysexits code: the app never
   starts without a token).
2. Start the daemon part (HTTP listener, fleet, scheduler) and wait until it runs: if it cannot start (e.g. the
   listen address is taken) exit with its code before the child ever starts.
3. Start CMD with the token paths (and, with --token-env, the token itself) in its environment, minus every
   variable any secret source of the config names (`notify.secret_variables`).
4. Keep renewing in the background (the daemon, without its own signal handling); after each rotation send the
   child a signal (--on-rotation signal) or restart it (--on-rotation restart), or nothing (the default).
5. Forward SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the child; as PID 1, reap orphans.
6. Exit with the child's status (128 + N if a signal N ended it).

SIGTERM/SIGINT are handled from the first instruction on, in every phase: as PID 1 the kernel drops signals
that have no handler, so without one `docker stop` would wait for its SIGKILL. Before the child runs, a stop
signal N ends the wrapper with 128 + N; during a restart it prevents the new child from starting.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from edge_token.app import exit_code, run_once
from edge_token.core.clock import SystemClock
from edge_token.core.errors import EdgeTokenError, InternalError
from edge_token.core.settings import Config, env_prefix
from edge_token.daemon import Daemon
from edge_token.observe import logs
from edge_token.observe.hooks import secret_variables
from edge_token.pid1 import release_held_signals

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESTART_GRACE_SECONDS = 10.0
START_POLL_SECONDS = 0.01  # only while the daemon part starts (well under a second)


class Stopped(Exception):
    """A stop signal arrived before the child ran: exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum, self.exit_code = signum, 128 + signum


def child_environment(
    config: Config, environ: Mapping[str, str], token_env: bool, tokens: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's environment: ours without any variable a secret source names, plus where each token is."""
    secret_vars = secret_variables(config)
    env = {
        name: value
        for name, value in environ.items()
        if name not in secret_vars and name != "CREDENTIALS_DIRECTORY" and not re.search(r"_CLIENT_SECRET", name)
    }
    for profile in config.profiles.values():
        key = env_prefix(profile.name).removeprefix("EDGE_TOKEN_").rstrip("_")
        path = next((sink.path for sink in profile.sinks if sink.path is not None), None)
        names = [f"_{key}"] + ([""] if len(config.profiles) == 1 else [])  # a lone profile also gets short names
        for suffix in names:
            if path is not None:
                env[f"EDGE_TOKEN_PATH{suffix}"] = str(path)
            if token_env and tokens and profile.name in tokens:
                env[f"EDGE_TOKEN{suffix}"] = tokens[profile.name]
    return env


class Wrapper:
    """The process wrapper: one child, a background daemon, signal forwarding."""

    def __init__(
        self, config: Config, argv: Sequence[str], *, on_rotation: str, rotation_signal: str, token_env: bool,
        environ: Mapping[str, str], redactor: logs.Redactor, timeout: float = 60.0,
    ) -> None:  # fmt: skip
        self.config, self.argv, self.on_rotation = config, list(argv), on_rotation
        self.timeout = timeout  # seconds of retries to obtain the first tokens (`exec --timeout`, like `once`)
        self.rotation_signal = getattr(signal, f"SIG{rotation_signal}")
        self.token_env, self.environ, self.redactor = token_env, environ, redactor
        self.log = structlog.get_logger("edge_token")
        self.rotated = asyncio.Event()
        self.stop_signal: int | None = None  # SIGTERM/SIGINT received: no new child may start
        self._stop_requested = asyncio.Event()
        self.child: asyncio.subprocess.Process | None = None
        self.daemon: Daemon | None = None
        self._initial: dict[str, str] = {}  # the tokens `once` obtained, until the daemon holds its own

    @property
    def stopping(self) -> bool:
        """True once SIGTERM/SIGINT arrived: no more rotations or restarts."""
        return self.stop_signal is not None

    async def run(self) -> int:
        """The four phases of `exec`; the child's exit status (or 128+signal)."""
        loop = asyncio.get_running_loop()
        for signum in FORWARDED:
            loop.add_signal_handler(signum, self._forward, signum)
        release_held_signals()  # held since the first instruction (pid1.py); the child must not inherit the mask
        daemon_task: asyncio.Task[int] | None = None
        try:
            code = await self._obtain_tokens()
            if code:
                return code
            self.daemon = Daemon(
                self.config, environ=self.environ, redactor=self.redactor, handle_signals=False,
                on_rotated=lambda _profile, _token: self.rotated.set(),
            )  # fmt: skip
            daemon_task = asyncio.create_task(self.daemon.run())
            await self._daemon_started(daemon_task)
            if self.daemon.reaper.active:
                loop.add_signal_handler(signal.SIGCHLD, self.daemon.reaper.reap)
            return await self._supervise()
        except Stopped as stopped:
            self.log.info("exec.stopped_before_child", signal=signal.Signals(stopped.signum).name)
            return stopped.exit_code
        except EdgeTokenError as exc:  # the daemon part could not start: the child never ran
            print(f"edge-token: {exc}", file=sys.stderr)
            return exc.exit_code
        finally:
            for signum in (*FORWARDED, signal.SIGCHLD):
                loop.remove_signal_handler(signum)
            if self.daemon is not None and daemon_task is not None:
                self.daemon.stop()
                await asyncio.gather(daemon_task, return_exceptions=True)

    async def _until_stopped(self, work: asyncio.Future[Any]) -> None:
        """Wait for `work`, unless a stop signal comes first: then cancel it and raise Stopped."""
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        if self.stop_signal is not None:
            raise Stopped(self.stop_signal)

    async def _obtain_tokens(self) -> int:
        """Phase 1: every profile's token, like `once`; a stop signal interrupts it."""
        once = asyncio.ensure_future(
            run_once(self.config, SystemClock(), self.log, environ=self.environ, on_secret=self.redactor.add_secret,
                     timeout=self.timeout)
        )  # fmt: skip
        await self._until_stopped(once)
        results = once.result()
        code = exit_code(results)
        if code:
            for result in results:
                if result.error is not None:
                    print(f"edge-token: profile {result.profile}: {result.error}", file=sys.stderr)
            return code
        self._initial = {r.profile: r.outcome.token.jwt for r in results if r.outcome and r.outcome.token}
        return 0

    async def _daemon_started(self, task: asyncio.Task[int]) -> None:
        """Phase 2: return once the daemon part runs its main loop; re-raise its start failure (ConfigError for a
        taken listen address, ...) so we exit with its code before any child exists.

        `Daemon.run` starts its scheduler synchronously just before it enters the main loop, so a running
        scheduler means startup is over. (Polled for the few milliseconds of startup; a `started` event on the
        Daemon would make this a plain wait.)
        """
        daemon = self._daemon()
        while not daemon.scheduler.running:
            await self._until_stopped(asyncio.ensure_future(asyncio.wait({task}, timeout=START_POLL_SECONDS)))
            if task.done():
                task.result()  # raises the start failure
                raise EdgeTokenError("the daemon part stopped before it started")

    def _tokens(self) -> dict[str, str]:
        renewers = self._daemon().profiles.renewers
        held = {name: r.current.jwt for name, r in renewers.items() if r.current is not None}
        return {**self._initial, **held}

    async def _start(self) -> asyncio.subprocess.Process:
        env = child_environment(self.config, self.environ, self.token_env, self._tokens() if self.token_env else None)
        try:
            # a new session: the child is a process-group leader, so the PID 1 reaper leaves it to asyncio
            child = await asyncio.create_subprocess_exec(*self.argv, env=env, start_new_session=True)
        except OSError as exc:
            print(f"edge-token: cannot start {self.argv[0]}: {exc.strerror}", file=sys.stderr)
            raise SystemExit(127 if isinstance(exc, FileNotFoundError) else 126) from None
        self.log.info("exec.started", command=self.argv[0], pid=child.pid)
        if self.stop_signal is not None:  # the signal came while the child was being created: it must see it
            child.send_signal(self.stop_signal)
        return child

    async def _supervise(self) -> int:
        """Phase 3: the child runs; its exit ends us with its status."""
        if self.stop_signal is not None:
            raise Stopped(self.stop_signal)
        self.child = await self._start()
        while True:
            exited = asyncio.ensure_future(self.child.wait())
            rotated = asyncio.ensure_future(self.rotated.wait())
            stop = asyncio.ensure_future(self._stop_requested.wait())
            await asyncio.wait({exited, rotated, stop}, return_when=asyncio.FIRST_COMPLETED)
            rotated.cancel()
            stop.cancel()
            if exited.done():
                status = exited.result()
                self.log.info("exec.exited", status=status)
                return 128 - status if status < 0 else status
            exited.cancel()
            if self.stop_signal is not None:
                return await self._stop_on_signal(self.stop_signal)
            self.rotated.clear()
            if self.on_rotation == "signal":
                self.child.send_signal(self.rotation_signal)
                self.log.info("exec.signalled", signal=self.rotation_signal.name)
            elif self.on_rotation == "restart" and not self.stopping:
                status = await self._stop_child()
                if self.stop_signal is not None:  # stopped while the old child was going: start no new one
                    self.log.info("exec.exited", status=status)
                    return 128 + self.stop_signal
                self.child = await self._start()

    async def _stop_on_signal(self, signum: int) -> int:
        """SIGTERM/SIGINT (already forwarded): no more renewals or rotations; the child gets RESTART_GRACE_SECONDS to
        exit, then SIGKILL. A child that ignores the signal must not keep us (and our renewals) alive forever."""
        child = self._child()
        if self.daemon is not None:
            self.daemon.stop()
        try:
            status = await asyncio.wait_for(child.wait(), RESTART_GRACE_SECONDS)
        except TimeoutError:
            child.kill()
            await child.wait()
            self.log.warning("exec.child_killed", grace=RESTART_GRACE_SECONDS, message="the child ignored the signal")
            return 128 + signum
        self.log.info("exec.exited", status=status)
        return 128 - status if status < 0 else status

    async def _stop_child(self) -> int:
        child = self._child()
        child.terminate()
        try:
            return await asyncio.wait_for(child.wait(), RESTART_GRACE_SECONDS)
        except TimeoutError:
            child.kill()
            return await child.wait()

    def _daemon(self) -> Daemon:
        if self.daemon is None:  # phase order: the daemon part exists from phase 1 on
            raise InternalError.wrap(RuntimeError("no daemon part"), "running exec")
        return self.daemon

    def _child(self) -> asyncio.subprocess.Process:
        if self.child is None:  # phase order: the child exists from phase 3 on
            raise InternalError.wrap(RuntimeError("no child"), "running exec")
        return self.child

    def _forward(self, signum: int) -> None:
        if signum in STOP_SIGNALS and self.stop_signal is None:
            self.stop_signal = signum
            self._stop_requested.set()
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(signum)


def main(
    config: Config,
    argv: Sequence[str],
    on_rotation: str,
    rotation_signal: str,
    token_env: bool,
    timeout: float = 60.0,
    *,
    dumpable: str | None = None,
) -> int:
    """`edge-token exec`: run ARGV with fresh tokens; its exit code. `dumpable`: why the process could not make
    itself non-dumpable (hardening.py), logged first: the child runs as our uid and could read our memory."""
    redactor = logs.configure(config.daemon.log_format, config.daemon.log_level)
    if dumpable:
        from edge_token.hardening import dumpable_warning

        structlog.get_logger("edge_token").warning("hardening.dumpable", message=dumpable_warning(dumpable))
    if token_env and on_rotation != "restart":
        structlog.get_logger("edge_token").warning(
            "exec.token_env_goes_stale", message="--token-env without --on-rotation restart: the child's copy "
            "of the token is not refreshed; read the token file instead",
        )  # fmt: skip
    wrapper = Wrapper(
        config, argv, on_rotation=on_rotation, rotation_signal=rotation_signal, token_env=token_env,
        environ=os.environ, redactor=redactor, timeout=timeout,
    )  # fmt: skip
    return asyncio.run(wrapper.run())
