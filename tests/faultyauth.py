"""The bundled auth server with fault injection: a provider that misbehaves on purpose, for tests only.

`FaultyAuthServer` is `edge_token.localauth.LocalAuthServer` (same constructor, same real endpoints) plus:
- `token_faults` / `jwks_faults`: queued `Fault`s, each answering one request in order: any status, body or
  headers, a delay, a reset connection, a trickled (slowloris) or endless chunked body, a body echoing what the
  client sent, or (`access_token=`) a normal answer carrying a token the test made. Token-endpoint faults come
  after the server's rate limit and quotas, as a provider's backend errors do.
- `token_chaos` / `jwks_chaos`: consulted when no fault is queued (soak tests): a `Fault`, or None for a normal
  answer.
- what tests search afterwards: `issued` (every token handed out, for leak scans), `request_times` (`now()` of
  every token request) and `good_issue_times` (`now()` of every genuine token).

The product server stays small: it exposes its steps (`_issue` -> `_authenticate`, `_new_token`, `_grant`;
`_jwks`) and this subclass wraps them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiohttp import web

from edge_token.localauth import LocalAuthServer


@dataclass
class Fault:
    """One injected answer. `body` may be bytes (sent as is) or JSON-able; `delay` happens before answering."""

    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    access_token: str | None = None  # with status 200: a normal answer carrying this token instead
    reset: bool = False  # drop the connection without answering
    trickle: float = 0.0  # seconds between body bytes (a slowloris answer)
    chunks: int = 0  # send `body` this many times as chunked transfer encoding (an endless body)
    #: (raw request body, request headers) -> the JSON error body: a provider that echoes what it was sent
    echo: Callable[[bytes, Mapping[str, str]], Any] | None = None


async def fault_response(fault: Fault, request: web.Request) -> web.StreamResponse | str:
    """The answer `fault` makes, after its delay; or its `access_token`, for a normal answer carrying it."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.reset and request.transport is not None:
        request.transport.abort()
        return web.Response(status=500)  # never sent: the connection is gone
    if fault.access_token is not None:
        return fault.access_token
    if fault.echo is not None:
        body = fault.echo(await request.read(), request.headers)
        return web.json_response(body, status=fault.status, headers=fault.headers)
    if fault.chunks:
        stream = web.StreamResponse(status=fault.status, headers=fault.headers)
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for _ in range(fault.chunks):
            await stream.write(fault.body if isinstance(fault.body, bytes) else b" ")
        return stream
    if fault.trickle:
        stream = web.StreamResponse(status=fault.status, headers=fault.headers)
        await stream.prepare(request)
        for byte in fault.body if isinstance(fault.body, bytes) else b"{}":
            await stream.write(bytes([byte]))
            await asyncio.sleep(fault.trickle)
        return stream
    if isinstance(fault.body, bytes):
        return web.Response(status=fault.status, body=fault.body, headers=fault.headers)
    return web.json_response(fault.body, status=fault.status, headers=fault.headers)


Chaos = Callable[[], Fault | None]


class FaultyAuthServer(LocalAuthServer):
    """`LocalAuthServer` that answers with queued or random faults and records what it handed out.

    The per-server queues and records are cached properties, so the subclass adds state without restating (and
    drifting from) the product server's constructor.
    """

    token_chaos: Chaos | None = None
    jwks_chaos: Chaos | None = None

    @cached_property
    def token_faults(self) -> deque[Fault]:
        """Answers for the next token requests, first in first out (after the rate limit and quotas)."""
        return deque()

    @cached_property
    def jwks_faults(self) -> deque[Fault]:
        """Answers for the next JWKS fetches, first in first out."""
        return deque()

    @cached_property
    def issued(self) -> list[str]:
        """Every token handed out, genuine or a fault's (tests search outputs for leaks)."""
        return []

    @cached_property
    def request_times(self) -> list[float]:
        """`now()` of every token request, answered or refused (Retry-After and backoff tests)."""
        return []

    @cached_property
    def good_issue_times(self) -> list[float]:
        """`now()` of every genuine token handed out."""
        return []

    @staticmethod
    def _next_fault(queue: deque[Fault], chaos: Chaos | None) -> Fault | None:
        return queue.popleft() if queue else chaos() if chaos else None

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.request_times.append(self.now())
        return await super()._token(request)

    async def _issue(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault(self.token_faults, self.token_chaos)
        if fault is None:
            return await super()._issue(request)
        answer = await fault_response(fault, request)
        if not isinstance(answer, str):
            return answer
        granted = await self._authenticate(request)  # a test's token still goes only to a valid client
        if isinstance(granted, web.Response):
            return granted
        self.issued.append(answer)
        return self._grant(answer)

    def _new_token(self, client_id: str, audience: str) -> str:
        token = super()._new_token(client_id, audience)
        self.issued.append(token)
        self.good_issue_times.append(self.now())
        return token

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault(self.jwks_faults, self.jwks_chaos)
        if fault is None:
            return await super()._jwks(request)
        self.jwks_requests += 1
        answer = await fault_response(fault, request)
        return web.json_response(self.jwks()) if isinstance(answer, str) else answer  # access_token=: a normal one
