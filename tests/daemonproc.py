"""Test helpers: the real daemon as a child process, its JSON log as events, and an independent token check."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from joserfc import jwt
from joserfc.jwk import KeySet

from conftest import CLIENT_ID
from edge_token.localauth import LocalAuthServer

Event = dict[str, Any]


class DaemonProcess:
    """`python -m edge_token run -c CONFIG` with its stderr parsed into a list of log events.

    Every started instance is in `LIVE` until it has exited: conftest's autouse fixture kills whatever a test
    left running (a failed assertion must not orphan a daemon that then loads the machine for the next tests)."""

    LIVE: ClassVar[set[DaemonProcess]] = set()

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.config, self.args, self.env = config, args, env or {}
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._changed = asyncio.Condition()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> DaemonProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_token", "run", "-c", str(self.config), *self.args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        DaemonProcess.LIVE.add(self)
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                event = {"event": "non-json", "text": text}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        await self.process.wait()  # EOF: the process is gone; let waiters see its exit status
        async with self._changed:
            self._changed.notify_all()

    def count(self, name: str, **fields: Any) -> int:
        return sum(1 for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in fields.items()))

    async def wait_for(self, name: str, count: int = 1, timeout: float = 20.0, **fields: Any) -> Event:
        """Wait until the `count`-th event `name` (matching `fields`) has been logged; return it."""

        def found() -> bool:
            return self.count(name, **fields) >= count or (
                self.process is not None and self.process.returncode is not None
            )

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(found), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"no {count}x {name} {fields} within {timeout}s; log:\n" + "\n".join(self.raw[-30:])
                ) from None
        matches = [e for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]
        assert len(matches) >= count, f"daemon exited ({self.returncode}) before {count}x {name}:\n" + "\n".join(
            self.raw[-30:]
        )
        return matches[count - 1]

    def send(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    async def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit by itself; its exit status."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


def reference_check(token: str, auth: LocalAuthServer, client_id: str = CLIENT_ID) -> str | None:
    """An independent verification (joserfc + explicit claim checks): None if good, else what is wrong."""
    if token.count(".") != 2:
        return f"not a JWS ({len(token)} bytes)"
    try:
        claims = jwt.decode(token, KeySet.import_key_set(auth.jwks()), algorithms=["RS256"]).claims
    except Exception as exc:
        return f"signature: {type(exc).__name__}"
    if claims.get("exp", 0) <= time.time():
        return "expired"
    if claims.get("iss") != auth.issuer or claims.get("aud") != "https://api.sitecorecloud.io":
        return "issuer/audience"
    if claims.get("azp") != client_id:
        return "client"
    return None


class Reader:
    """Reads a token file in a tight loop (like a consumer would) and checks every read independently."""

    def __init__(self, path: Path, auth: LocalAuthServer, check: Callable[[str, LocalAuthServer], str | None]) -> None:
        self.path, self.auth, self.check = path, auth, check
        self.reads = 0
        self.bad: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while True:
            try:
                token = self.path.read_text()
            except FileNotFoundError:
                token = ""
            if token:  # a missing file before the first write is not a bad read
                self.reads += 1
                problem = self.check(token, self.auth)
                if problem:
                    self.bad.append(problem)
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
