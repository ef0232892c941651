"""Real etcd for the fleet tests: members on loopback, a look at its leases and keys through the JSON gateway, and
a proxy that can hold one profile's requests (a slow etcd, on demand). Needs Debian's etcd-server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def serve_posts(handle: Any) -> tuple[web.AppRunner, str]:
    """An aiohttp server on a free loopback port answering every POST with `handle`: (its runner, its URL)."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class EtcdCluster:
    """Real etcd members on loopback (three for the fleet tests, one where a cluster adds nothing)."""

    def __init__(self, directory: Path, members: int = 3) -> None:
        self.directory = directory
        ports = free_ports(2 * members)
        self.client, self.peer = ports[:members], ports[members:]
        self.names = [f"n{i}" for i in range(members)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * members

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.client]

    def start(self, index: int, state: str = "new") -> None:
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer, strict=True))
        self.processes[index] = subprocess.Popen(
            ["etcd", "--name", self.names[index], "--data-dir", str(self.directory / self.names[index]),
             "--listen-client-urls", self.endpoints[index], "--advertise-client-urls", self.endpoints[index],
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer[index]}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[index]}",
             "--initial-cluster", initial, "--initial-cluster-state", state,
             "--initial-cluster-token", "edge-token-test"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self, index: int, kill: bool = False) -> None:
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            process.wait(15)
        self.processes[index] = None

    async def healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                for endpoint in self.endpoints:
                    try:
                        async with http.get(endpoint + "/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                            if json.loads(await r.text()).get("health") == "true":
                                return
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        pass
                await asyncio.sleep(0.2)
        raise AssertionError("etcd cluster did not become healthy")

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON gateway call to the last member (the first may be killed by a test)."""
        async with aiohttp.ClientSession() as http, http.post(self.endpoints[-1] + path, json=body) as r:
            assert r.status == 200, (path, r.status, await r.text())
            answer: dict[str, Any] = await r.json()
            return answer

    async def put(self, key: str, value: str) -> None:
        await self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    async def leases(self) -> set[str]:
        """The ids of every lease etcd holds alive now."""
        return {lease["ID"] for lease in (await self.call("/v3/lease/leases", {})).get("leases") or []}

    async def revoke(self, lease: str) -> None:
        await self.call("/v3/lease/revoke", {"ID": lease})

    async def leaders(self, prefix: str = "/edge-token/") -> dict[str, str]:
        """{profile: lease id} of every `<prefix><profile>/leader` key."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        kvs = (await self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})).get("kvs") or []
        found = {base64.b64decode(kv["key"]).decode(): kv.get("lease", "0") for kv in kvs}
        return {key[len(prefix) :].split("/")[0]: lease for key, lease in found.items() if key.endswith("/leader")}


@asynccontextmanager
async def running_etcd(directory: Path, members: int = 3) -> AsyncIterator[EtcdCluster]:
    """A healthy cluster for the test's duration, every member stopped afterwards whatever happened."""
    if shutil.which("etcd") is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed (apt-get install etcd-server)")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    cluster = EtcdCluster(directory, members)
    try:
        for index in range(members):
            cluster.start(index)
        await cluster.healthy()
        yield cluster
    finally:
        for index in range(members):
            cluster.stop(index)


def _keys(value: Any) -> list[str]:
    """Every etcd key named in a gateway request body (top level, compares, txn operations)."""
    if isinstance(value, dict):
        found = [base64.b64decode(value["key"]).decode()] if isinstance(value.get("key"), str) else []
        return found + [key for item in value.values() for key in _keys(item)]
    if isinstance(value, list):
        return [key for item in value for key in _keys(item)]
    return []


class HoldingProxy:
    """An HTTP proxy in front of one etcd endpoint that holds, while `hold` is set, every request naming a key of
    `profile` (a slow etcd for that profile only); it records the keys of every request it forwarded."""

    def __init__(self, upstream: str, profile: str) -> None:
        self.upstream, self.marker = upstream, f"/{profile}/"
        self.hold = False
        self.released = asyncio.Event()
        self.held: list[list[str]] = []  # keys of the requests waiting now
        self.forwarded: list[list[str]] = []  # keys of the requests answered, in order
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def ours(self, keys: list[str]) -> bool:
        return any(self.marker in key for key in keys)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        keys = _keys(json.loads(body or b"{}"))
        if self.hold and self.ours(keys):
            self.held.append(keys)
            await self._notify()
            await self.released.wait()
            self.held.remove(keys)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._session.post(self.upstream + request.path, data=body, headers=headers) as answer:
            status, text = answer.status, await answer.read()
        self.forwarded.append(keys)
        await self._notify()
        return web.Response(status=status, body=text, content_type="application/json")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Any, timeout: float = 20) -> None:
        """Wait (event-driven) until `predicate()` holds."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def release(self) -> None:
        self.hold = False
        self.released.set()

    async def start(self) -> str:
        self._session = aiohttp.ClientSession()
        self._runner, url = await serve_posts(self.handle)
        return url

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
