"""Telling consumers that a sink changed: an `on_update` command and/or a signal to a PID from a pidfile.

The command runs without a shell, with a timeout, in a *minimal* environment (an allow-list plus the sink's
path and profile), so the daemon's own environment — which may hold a client secret — never reaches it. It runs
in its own session; on timeout (or shutdown) the whole process group is killed, not just the direct child, so a
hook's `sleep &` or pipeline cannot outlive it.

`secret_variables` is the one place that knows which environment variables hold secrets: exec children and
hooks get none of them, whatever sink or store names them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from typing import Any

from edge_token.core.record import Record, fields
from edge_token.core.settings import Config, SecretSource, SinkConfig, env_prefix

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")
# the per-profile overrides that can carry a secret or point at one (config.SECRET_KEYS, upper-cased)
SECRET_OVERRIDES = ("CLIENT_SECRET", "CLIENT_SECRET_FILE", "CLIENT_SECRET_ENV", "CLIENT_SECRET_CREDENTIAL")


def secret_variables(config: Config) -> frozenset[str]:
    """Every environment variable the config reads a secret from: each `SecretSource` of kind env anywhere in the
    config (client secrets, Vault tokens, store and etcd credentials, and whatever source is added later: found
    by walking the config, not by listing sink types), plus the per-profile secret override variables."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretSource):
            if value.kind == "env":
                names.add(value.ref)
        elif isinstance(value, Record):
            for name in fields(value):
                walk(getattr(value, name))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)

    walk(config)
    for profile in config.profiles:
        names.update(env_prefix(profile) + suffix for suffix in SECRET_OVERRIDES)
    return frozenset(names)


def hook_environment(
    sink: SinkConfig, profile: str, environ: Mapping[str, str], exclude: frozenset[str] = frozenset()
) -> dict[str, str]:
    """What an on_update command sees: a few harmless variables (never one in `exclude`) and where the token is."""
    env = {name: environ[name] for name in PASSED_ENV if name in environ and name not in exclude}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(EDGE_TOKEN_PROFILE=profile, EDGE_TOKEN_SINK=sink.name)
    if sink.path is not None:
        env.update(EDGE_TOKEN_PATH=str(sink.path), EDGE_TOKEN_FORMAT=sink.format)
    return env


async def run_on_update(
    sink: SinkConfig, profile: str, environ: Mapping[str, str], log: Any, exclude: frozenset[str] = frozenset()
) -> int | None:
    """Run the sink's on_update argv; returns its exit status (None if it could not run or timed out).

    `exclude`: `secret_variables(config)`, so even an allow-listed name that a secret source uses is withheld.
    """
    argv = sink.on_update
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=hook_environment(sink, profile, environ, exclude),
            start_new_session=True,  # its own process group (pgid == pid): killable as a whole
        )
    except OSError as exc:
        log.error("hook.failed", sink=sink.name, command=argv[0], message=exc.strerror or type(exc).__name__)
        return None
    try:
        status = await asyncio.wait_for(process.wait(), sink.on_update_timeout)
    except TimeoutError:
        await _kill_group(process)
        log.error("hook.timed_out", sink=sink.name, command=argv[0], timeout=sink.on_update_timeout)
        return None
    except asyncio.CancelledError:  # the daemon is shutting down: leave no hook behind
        await _kill_group(process)
        raise
    event = "hook.finished" if status == 0 else "hook.failed"
    (log.info if status == 0 else log.error)(event, sink=sink.name, command=argv[0], status=status)
    return status


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the hook's whole process group (its children too), then reap the hook: no zombies, even as PID 1."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is already gone
    await process.wait()


def signal_pid_file(sink: SinkConfig, log: Any) -> bool:
    """Send the configured signal to the PID in the sink's pid_file; False (logged) if that fails."""
    if sink.pid_file is None or sink.signal is None:
        return False  # nothing to signal (config allows both or neither)
    try:
        text = sink.pid_file.read_text(encoding="ascii").strip()
        pid = int(text)
        if pid <= 1:
            raise ValueError(text)
        os.kill(pid, getattr(signal, f"SIG{sink.signal}"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.error("consumer.signal_failed", sink=sink.name, pid_file=str(sink.pid_file), message=str(exc)[:200])
        return False
    log.info("consumer.signalled", sink=sink.name, pid=pid, signal=sink.signal)
    return True
