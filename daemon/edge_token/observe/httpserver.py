"""/metrics /healthz /readyz /status on the daemon's own event loop (aiohttp AppRunner + TCPSite).

No endpoint reveals a token. Bodies are JSON; /status passes the same redaction as the logs (statusbody.py).

The listener cannot be starved (README "Reliability"): local clients could otherwise hold hundreds of idle or
half-sent connections, exhaust the daemon's descriptors (renewals fail, /healthz hangs). So:
- at most `max_connections` at once (derived from RLIMIT_NOFILE, so the cap bites before the descriptors run
  out); a new connection beyond it evicts the oldest one that has no request in progress (an idle or half-sent
  one: a real client sends its request at once and is never idle for long), or is closed at once if every slot
  serves a request;
- a connection must complete its request headers within HEADER_TIMEOUT_SECONDS, a request (its response and
  the keep-alive pause after it) may last REQUEST_TIMEOUT_SECONDS until the next one starts, and aiohttp closes
  keep-alive connections idle for IDLE_TIMEOUT_SECONDS;
- accept() errors (EMFILE...) are logged at most once a minute, with the count of the ones not logged.
"""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from edge_token.config.trust import parse_listen
from edge_token.core.errors import ConfigError
from edge_token.core.health import ProfileStatus, readiness
from edge_token.observe.metrics import Metrics
from edge_token.observe.statusbody import StatusBody


class HealthSource:
    """What the HTTP server asks the daemon: callables, so the server holds no daemon state."""

    def __init__(
        self,
        statuses: Callable[[], list[ProfileStatus]],
        alive: Callable[[], bool],
        scrub: Callable[[Any], Any],
        daemon: Callable[[], dict[str, Any]] = dict,
        ready: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
        generation: Callable[[], object] | None = None,
    ) -> None:
        self.statuses, self.alive, self.scrub, self.daemon = statuses, alive, scrub, daemon
        self.readiness = ready or (lambda: readiness(self.statuses()))
        self.status_body = StatusBody(scrub, generation)  # `generation`: when the secret registry changed


def _json(body: Any, status: int = 200) -> web.Response:
    """A /healthz or /readyz answer on one line: without `indent`, json's C encoder writes it (Python's indenting
    encoder cost ~1,000 bytecodes per profile of a /readyz that lists 1,000 unready ones, at every probe of a fill)."""
    return web.Response(text=json.dumps(body, sort_keys=True) + "\n", status=status, content_type="application/json")


MAX_CONNECTIONS = 128
RESERVED_DESCRIPTORS = 256  # for renewals, sinks, hooks, the secret read: never handed to HTTP clients
HEADER_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 15.0
IDLE_TIMEOUT_SECONDS = 5.0
ACCEPT_ERROR_LOG_INTERVAL = 60.0
_ACCEPT_ERRORS = ("socket.accept() out of system resource", "Error on transport creation for incoming connection")


def connection_cap(limit: int | None = None) -> int:
    """How many HTTP connections we allow: MAX_CONNECTIONS, or less when the descriptor limit is low."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if limit is None else limit
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, (soft - RESERVED_DESCRIPTORS) // 2))


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's handler behind a deadline the client cannot extend by trickling bytes."""

    def __init__(self, limiter: ConnectionLimiter, handler: RequestHandler) -> None:
        self.limiter, self.handler = limiter, handler
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is being handled
        self.refused = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP listener only makes stream transports
        if not self.limiter.admit(self):
            self.refused = True
            self.transport.abort()
            return
        self.handler.connection_made(transport)
        self.arm(HEADER_TIMEOUT_SECONDS)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if not self.refused:
            self.handler.eof_received()
        return None  # None: let the transport close when the client half-closes, as aiohttp's handler does

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if not self.refused:
            self.limiter.release(self)
            self.handler.connection_lost(exc)

    def arm(self, seconds: float) -> None:
        """(Re)start the deadline: the connection is aborted unless a request starts before it."""
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self.limiter.timed_out += 1
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class ConnectionLimiter:
    """The protocol factory of the listener: caps connections, evicts idle ones, counts what it did."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.server: web.Server | None = None  # set once the runner is set up (the app needs our middleware first)
        self.active: dict[RequestHandler, _Connection] = {}  # oldest first
        self.accepted = self.refused = self.evicted = self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        if self.server is None:
            raise RuntimeError("ConnectionLimiter used before the runner was set up")
        return _Connection(self, self.server())

    def admit(self, connection: _Connection) -> bool:
        """Take a new connection, evicting the oldest idle one when full; False if every slot serves a request."""
        if len(self.active) >= self.max_connections:
            victim = next((c for c in self.active.values() if not c.busy), None)
            if victim is None:
                self.refused += 1
                return False
            del self.active[victim.handler]
            victim.abort()
            self.evicted += 1
        self.accepted += 1
        self.active[connection.handler] = connection
        return True

    def release(self, connection: _Connection) -> None:
        """Forget a closed connection (its slot is free again)."""
        if self.active.get(connection.handler) is connection:
            del self.active[connection.handler]

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A request has started (its headers are complete): it gets the request deadline and is not evictable."""
        connection = self.active.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.busy = True
        connection.arm(REQUEST_TIMEOUT_SECONDS)
        try:
            return await handler(request)
        finally:
            connection.busy = False


class GuardedRunner(web.AppRunner):
    """An AppRunner whose listener is our own (the ConnectionLimiter as protocol factory) instead of a TCPSite."""

    listener: asyncio.Server | None = None
    limiter: ConnectionLimiter | None = None

    @property
    def addresses(self) -> list[Any]:
        """The bound (host, port, ...) of each listening socket."""
        return [sock.getsockname() for sock in (self.listener.sockets if self.listener else ())]

    async def cleanup(self) -> None:
        """Stop accepting, then close the open connections and the app as AppRunner does."""
        if self.listener is not None:
            self.listener.close()  # stop accepting; existing connections are closed by the runner below
        await super().cleanup()
        self.listener = None


class AcceptErrorLog:
    """A loop exception handler that logs accept() failures at most once per interval (asyncio retries the
    accept every second and would log each time) and passes everything else to the previous handler."""

    def __init__(
        self, log: Any, previous: Any = None, clock: Callable[[], float] = time.monotonic,
        interval: float = ACCEPT_ERROR_LOG_INTERVAL,
    ) -> None:  # fmt: skip
        self.log, self.previous, self.clock, self.interval = log, previous, clock, interval
        self.suppressed = 0
        self._last = -float("inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") not in _ACCEPT_ERRORS:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = self.clock()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        exc = context.get("exception")
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(context.get("message"))
        self.log.warning("http.accept_failed", reason=reason, suppressed_since_last=self.suppressed)
        self._last, self.suppressed = now, 0


def build_app(metrics: Metrics, source: HealthSource, middlewares: tuple[Any, ...] = ()) -> web.Application:
    """The four read-only endpoints; none of them can reveal a token."""
    app = web.Application(middlewares=middlewares)

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        parts, headers = metrics.exposition_parts(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )
        if request.method == "HEAD":
            return web.Response(body=b"".join(parts), headers=headers)  # aiohttp sends a HEAD answer's headers only
        # the cached chunks go out as they are (no joined copy per scrape); Content-Length keeps keep-alive simple
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(part) for part in parts)
        await response.prepare(request)
        for part in parts:
            await response.write(part)
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        ok = source.alive()
        return _json({"alive": ok}, 200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready, details = source.readiness()
        return _json(source.scrub(details), 200 if ready else 503)

    async def status(request: web.Request) -> web.Response:
        body = source.status_body.render(source.statuses(), source.alive(), source.daemon())
        return web.Response(text=body, content_type="application/json")

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app


async def start_http(listen: str, metrics: Metrics, source: HealthSource) -> tuple[web.AppRunner, str]:
    """Bind and serve; returns the runner and the bound "host:port". A bind failure is a ConfigError."""
    host, port = parse_listen(listen, "[daemon] listen")
    loop = asyncio.get_running_loop()
    if not isinstance(loop.get_exception_handler(), AcceptErrorLog):
        loop.set_exception_handler(AcceptErrorLog(structlog.get_logger("edge_token"), loop.get_exception_handler()))
    limiter = ConnectionLimiter(connection_cap())
    runner = GuardedRunner(
        build_app(metrics, source, (limiter.middleware,)), access_log=None, handle_signals=False,
        keepalive_timeout=IDLE_TIMEOUT_SECONDS, shutdown_timeout=2.0,
    )  # fmt: skip
    await runner.setup()
    limiter.server = runner.server
    try:
        runner.listener = await loop.create_server(limiter, host, port, reuse_address=True, backlog=128)
    except OSError as exc:
        await runner.cleanup()
        hint = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"[daemon] listen = {listen!r}: cannot listen: {hint}") from None
    runner.limiter = limiter
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
    return runner, f"{shown}:{bound[1]}"
