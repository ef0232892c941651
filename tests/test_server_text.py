"""A server's own bytes never reach a message, whatever the exchange fails on (found by an outside attack).

aiohttp's parser errors quote the line they refused; the failure text kept 80 characters of it. A token endpoint
(or a proxy, or anything on the path) answering with a malformed status line could so put up to ~30 characters of
its choice into `token.renewal_failed`: a secret echoed reversed, a new chunk on each retry, is beyond any
scrubber, and a proxy could echo the proxy password alone, which was registered only as `user:password` and as
the header value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from conftest import CLIENT_SECRET
from edge_token.core import scrub
from edge_token.core.clock import SystemClock
from edge_token.core.errors import EdgeTokenError
from edge_token.core.settings import Egress, SecretSource
from edge_token.net import egress
from edge_token.net.http import make_session
from edge_token.net.reasons import unreachable
from edge_token.observe import logs
from edge_token.provider.oauth import request_token

REVERSED = CLIENT_SECRET[::-1]
CHUNK = 12


async def test_no_part_of_a_malformed_status_line_reaches_the_message(make_config: Callable[..., Any]) -> None:
    """A provider answering a status line that holds the secret reversed, a new chunk per attempt: no chunk (and
    so no concatenation of them) appears in any logged message."""
    attempts = [0]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        start = attempts[0] * CHUNK
        attempts[0] += 1
        writer.write(f"HTTP/1.1 2{REVERSED[start : start + CHUNK]} OK\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = make_config(token_url=f"http://127.0.0.1:{port}/oauth/token")
    redactor = logs.Redactor()
    redactor.add_secret(CLIENT_SECRET)
    messages: list[str] = []
    try:
        async with make_session() as session:
            for _ in range(-(-len(REVERSED) // CHUNK)):
                try:
                    await request_token(session, config.profiles["main"], CLIENT_SECRET, SystemClock())
                except EdgeTokenError as exc:  # what token.renewal_failed logs as `message`, through the redactor
                    event = redactor(None, "warning", {"event": "token.renewal_failed", "message": str(exc)})
                    messages.append(str(event["message"]))
    finally:
        server.close()
    assert len(messages) == attempts[0] > 1
    for index, message in enumerate(messages):
        chunk = REVERSED[index * CHUNK : (index + 1) * CHUNK]
        assert "not valid HTTP" in message and chunk not in message, message


async def test_a_proxy_echoing_its_password_alone_does_not_reach_the_message() -> None:
    credentials = "edge:Pr0xy-Passw0rd-77"
    password = credentials.split(":", 1)[1]
    setting = Egress(proxy="http://127.0.0.1:9", proxy_auth=SecretSource("env", "PROXY_CREDENTIALS"))
    route = egress.route(setting, "https://auth.example.test/oauth/token", {"PROXY_CREDENTIALS": credentials})
    assert route.proxy_headers is not None
    header = route.proxy_headers["Proxy-Authorization"]

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 4{password} x\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    message = ""
    try:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(
                    "https://auth.example.test/oauth/token", proxy=f"http://127.0.0.1:{port}",
                    proxy_headers={"Proxy-Authorization": header},
                ):  # fmt: skip
                    pass
            except aiohttp.ClientError as exc:  # oauth.request_token's branch for it
                message = unreachable("the token endpoint", "https://auth.example.test/oauth/token", "token_url", exc)
    finally:
        server.close()
    assert message and password not in logs.Redactor()(None, "warning", {"message": message})["message"]
    assert password not in scrub.scrub_text(message)
