"""`edge-token exec -- CMD ARGS…`: run an application as a child that always has a fresh token.

1. Obtain every profile's token first, exactly like `once` (fail fast with its sysexits code: the app never
   starts without a token).
2. Start CMD with the token paths (and, with --token-env, the token itself) in its environment, minus every
   variable that holds a client secret.
3. Keep renewing in the background (the daemon, without its own signal handling); after each rotation send the
   child a signal (--on-rotation signal) or restart it (--on-rotation restart), or nothing (the default).
4. Forward SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the child; as PID 1, reap orphans.
5. Exit with the child's status (128 + N if a signal N ended it).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence

import structlog

from edge_token import logs
from edge_token.app import exit_code, run_once
from edge_token.clock import SystemClock
from edge_token.config import Config, env_prefix
from edge_token.daemon import Daemon

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
RESTART_GRACE_SECONDS = 10.0


def child_environment(
    config: Config, environ: Mapping[str, str], token_env: bool, tokens: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's environment: ours without secret sources, plus where each profile's token is."""
    secret_vars = {p.secret.ref for p in config.profiles.values() if p.secret.kind == "env"}
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
        environ: Mapping[str, str], redactor: logs.Redactor,
    ) -> None:  # fmt: skip
        self.config, self.argv, self.on_rotation = config, list(argv), on_rotation
        self.rotation_signal = getattr(signal, f"SIG{rotation_signal}")
        self.token_env, self.environ, self.redactor = token_env, environ, redactor
        self.log = structlog.get_logger("edge_token")
        self.rotated = asyncio.Event()
        self.stopping = False
        self.child: asyncio.subprocess.Process | None = None
        self.daemon: Daemon | None = None
        self._initial: dict[str, str] = {}  # the tokens `once` obtained, until the daemon holds its own

    async def run(self) -> int:
        results = await run_once(
            self.config, SystemClock(), self.log, environ=self.environ, on_secret=self.redactor.add_secret
        )
        code = exit_code(results)
        if code:
            for result in results:
                if result.error is not None:
                    print(f"edge-token: profile {result.profile}: {result.error}", file=sys.stderr)
            return code
        self._initial = {r.profile: r.outcome.token.jwt for r in results if r.outcome and r.outcome.token}
        self.daemon = Daemon(
            self.config, environ=self.environ, redactor=self.redactor, handle_signals=False,
            on_rotated=lambda _profile, _token: self.rotated.set(),
        )  # fmt: skip
        daemon_task = asyncio.create_task(self.daemon.run())
        loop = asyncio.get_running_loop()
        for signum in FORWARDED:
            loop.add_signal_handler(signum, self._forward, signum)
        if self.daemon.reaper.active:
            loop.add_signal_handler(signal.SIGCHLD, self.daemon.reaper.reap)
        try:
            status = await self._supervise()
        finally:
            for signum in (*FORWARDED, signal.SIGCHLD):
                loop.remove_signal_handler(signum)
            self.daemon.stop()
            await daemon_task
        return status

    def _tokens(self) -> dict[str, str]:
        assert self.daemon is not None
        held = {name: r.current.jwt for name, r in self.daemon.renewers.items() if r.current is not None}
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
        return child

    async def _supervise(self) -> int:
        self.child = await self._start()
        while True:
            exited = asyncio.ensure_future(self.child.wait())
            rotated = asyncio.ensure_future(self.rotated.wait())
            await asyncio.wait({exited, rotated}, return_when=asyncio.FIRST_COMPLETED)
            rotated.cancel()
            if exited.done():
                status = exited.result()
                self.log.info("exec.exited", status=status)
                return 128 - status if status < 0 else status
            exited.cancel()
            self.rotated.clear()
            if self.on_rotation == "signal":
                self.child.send_signal(self.rotation_signal)
                self.log.info("exec.signalled", signal=self.rotation_signal.name)
            elif self.on_rotation == "restart" and not self.stopping:
                await self._stop_child()
                self.child = await self._start()

    async def _stop_child(self) -> None:
        assert self.child is not None
        self.child.terminate()
        try:
            await asyncio.wait_for(self.child.wait(), RESTART_GRACE_SECONDS)
        except TimeoutError:
            self.child.kill()
            await self.child.wait()

    def _forward(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(signum)


def main(config: Config, argv: Sequence[str], on_rotation: str, rotation_signal: str, token_env: bool) -> int:
    redactor = logs.configure(config.daemon.log_format, config.daemon.log_level)
    if token_env and on_rotation != "restart":
        structlog.get_logger("edge_token").warning(
            "exec.token_env_goes_stale", message="--token-env without --on-rotation restart: the child's copy "
            "of the token is not refreshed; read the token file instead",
        )  # fmt: skip
    wrapper = Wrapper(
        config, argv, on_rotation=on_rotation, rotation_signal=rotation_signal, token_env=token_env,
        environ=os.environ, redactor=redactor,
    )  # fmt: skip
    return asyncio.run(wrapper.run())
