"""The benchmark's floors: the least code that does the same work with the same libraries, as a child process.

    python floor.py once  TOKEN_URL JWKS_URL ISSUER AUDIENCE CLIENT_ID SECRET_FILE OUT
    python floor.py fill  TOKEN_URL JWKS_URL ISSUER AUDIENCE CLIENT_ID SECRET_FILE OUT_DIR COUNT
    python floor.py pace  TOKEN_URL JWKS_URL ISSUER AUDIENCE CLIENT_ID SECRET_FILE OUT_DIR COUNT TTL
    python floor.py serve BODY_FILE CONTENT_TYPE     # a bare aiohttp server answering every GET with the file
    python floor.py idle                             # the daemon's libraries imported + an idle aiohttp server

`once`, `fill` and `pace` do what edge-token does per token and nothing more: a client-credentials POST (16 at a time
for `fill` and `pace`, over one session), one JWKS fetch, joserfc signature verification plus the iss/aud/exp claim check,
and an atomic write (O_EXCL temp in the target's directory, fchmod 0600, write, fsync, rename, fsync of the
directory) in a worker thread. `fill` prints "done" and its CPU seconds when every token is on disk; `pace`
renews COUNT tokens of TTL seconds on the daemon's schedule until killed (the floor of CPU over lifetimes), and
with EDGE_TOKEN_BENCH_FLOOR_RECEIPTS set writes "file time" lines to that file, when each token arrived, as
SIGTERM stops it (the floor of freshness: how late the least code renews when the machine is busy); the
servers print their port.
Only the standard library is imported at the top, so each floor pays for exactly the libraries it uses.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

CONCURRENCY = 16  # edge-token's default max_concurrent_renewals


def write_atomic(path: Path, data: bytes) -> None:
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def fetch(args: list[str], outs: list[Path], ttl: float | None = None) -> None:
    """Request, verify and write one token per path in `outs`, CONCURRENCY requests at a time. With `ttl` (pace):
    what a daemon must do per renewal, and nothing else, on the daemon's schedule: each token again at a uniform
    75-80 % of its lifetime, until killed ("started" is printed once running; the benchmark reads this process's
    CPU and counts its requests)."""
    import aiohttp
    from joserfc import jwt
    from joserfc.jwk import KeySet

    token_url, jwks_url, issuer, audience, client_id, secret_file = args[:6]
    secret = Path(secret_file).read_text().strip()
    body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "audience": audience}
    claims_rules = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer}, aud={"essential": True, "value": audience}, exp={"essential": True}
    )
    gate = asyncio.Semaphore(CONCURRENCY)
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()
    points_file = os.environ.get("EDGE_TOKEN_BENCH_FLOOR_RECEIPTS") if ttl is not None else None
    received: list[tuple[str, float]] | None = [] if points_file else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.get(jwks_url) as response:
            keys = KeySet.import_key_set(await response.json())

        async def one(out: Path) -> None:
            async with gate:
                async with session.post(token_url, json=body) as response:
                    token = (await response.json())["access_token"]
                arrived = loop.time()  # the next renewal counts from here, as the daemon's from its receipt
                if received is not None:
                    received.append((out.name, time.time()))
                claims_rules.validate(jwt.decode(token, keys, algorithms=["RS256"]).claims)
                await asyncio.to_thread(write_atomic, out, token.encode())
            if ttl is not None:
                loop.call_at(arrived + ttl * random.uniform(0.75, 0.80), start, out)

        def start(out: Path) -> None:
            task = loop.create_task(one(out))
            running.add(task)
            task.add_done_callback(running.discard)

        if ttl is None:
            await asyncio.gather(*(one(out) for out in outs))
            return
        for out in outs:
            start(out)
        print("started", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()  # until killed
        if points_file and received is not None:
            Path(points_file).write_text("".join(f"{name} {at!r}\n" for name, at in received))


async def serve(body: bytes | None, content_type: str) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body or b"ok\n", headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()  # until killed


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "once":
        asyncio.run(fetch(args, [Path(args[6])]))
    elif command == "fill":
        out_dir, count = Path(args[6]), int(args[7])
        asyncio.run(fetch(args, [out_dir / f"p{i}.jwt" for i in range(count)]))
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread's CPU, start-up included
        print("done", usage.ru_utime + usage.ru_stime, flush=True)
    elif command == "pace":
        out_dir, count, ttl = Path(args[6]), int(args[7]), float(args[8])
        asyncio.run(fetch(args, [out_dir / f"p{i}.jwt" for i in range(count)], ttl))
    elif command == "serve":
        asyncio.run(serve(Path(args[0]).read_bytes(), args[1]))
    elif command == "idle":
        # what the daemon imports (its own code aside): the floor for its idle memory
        import apscheduler.schedulers.asyncio
        import joserfc.jwt
        import prometheus_client
        import structlog

        loaded: list[Any] = [apscheduler.schedulers.asyncio, joserfc.jwt, prometheus_client, structlog]
        assert loaded
        asyncio.run(serve(None, "text/plain"))
    else:
        raise SystemExit(f"unknown floor {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
