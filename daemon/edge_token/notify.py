"""Telling consumers that a sink changed: an `on_update` command and/or a signal to a PID from a pidfile.

The command runs without a shell, with a timeout, in a *minimal* environment (an allow-list plus the sink's
path and profile), so the daemon's own environment — which may hold a client secret — never reaches it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from typing import Any

from edge_token.config import SinkConfig

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME")


def hook_environment(sink: SinkConfig, profile: str, environ: Mapping[str, str]) -> dict[str, str]:
    """What an on_update command sees: a few harmless variables and where the new token is."""
    env = {name: environ[name] for name in PASSED_ENV if name in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(EDGE_TOKEN_PROFILE=profile, EDGE_TOKEN_SINK=sink.name)
    if sink.path is not None:
        env.update(EDGE_TOKEN_PATH=str(sink.path), EDGE_TOKEN_FORMAT=sink.format)
    return env


async def run_on_update(sink: SinkConfig, profile: str, environ: Mapping[str, str], log: Any) -> int | None:
    """Run the sink's on_update argv; returns its exit status (None if it could not run or timed out)."""
    argv = sink.on_update
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=hook_environment(sink, profile, environ),
            start_new_session=True,
        )
    except OSError as exc:
        log.error("hook.failed", sink=sink.name, command=argv[0], message=exc.strerror or type(exc).__name__)
        return None
    try:
        status = await asyncio.wait_for(process.wait(), sink.on_update_timeout)
    except TimeoutError:
        process.kill()
        await process.wait()  # reap it: no zombies, even as PID 1
        log.error("hook.timed_out", sink=sink.name, command=argv[0], timeout=sink.on_update_timeout)
        return None
    event = "hook.finished" if status == 0 else "hook.failed"
    (log.info if status == 0 else log.error)(event, sink=sink.name, command=argv[0], status=status)
    return status


def signal_pid_file(sink: SinkConfig, log: Any) -> bool:
    """Send the configured signal to the PID in the sink's pid_file; False (logged) if that fails."""
    assert sink.pid_file is not None and sink.signal is not None
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
