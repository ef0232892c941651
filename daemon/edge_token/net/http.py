"""HTTP plumbing every client shares: one bounded exchange, bounded body reads, safe server text.

One bounded HTTP exchange, with every network failure turned into the caller's error class.

Shared by the JWKS cache and the secret-store sinks: a timeout, a refused or reset connection, or an answer over
the size cap becomes `error(message)` naming `what` — never an aiohttp exception and never a response body.
(The token request in `oauth` classifies its failures itself: it must also tell TLS trouble apart.)
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import aiohttp

from edge_token import __version__
from edge_token.core import scrub
from edge_token.core.errors import EdgeTokenError, ProtocolError
from edge_token.net import egress
from edge_token.net.reasons import describe

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def make_session(limit: int = 32) -> aiohttp.ClientSession:
    """The one HTTP client session of the process: connection reuse, no proxy env surprises, TLS verified."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"User-Agent": f"edge-token/{__version__}"},
        timeout=aiohttp.ClientTimeout(total=60),
        trust_env=False,
    )


async def read_limited(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """Read at most `limit` bytes of a body (aiohttp has no client-side cap); ProtocolError beyond it."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise ProtocolError(f"{what} is {declared} bytes, more than the {limit} byte limit")
    if declared is not None and "Content-Encoding" not in response.headers:
        return await response.read()  # the parser stops at the declared length (not so for a decompressed body)
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"{what} exceeded the {limit} byte limit; refusing to read more")
        chunks.append(chunk)
    return b"".join(chunks)


def sanitize(text: object, secrets: tuple[str, ...] = (), limit: int = 200) -> str:
    """Make server-supplied text safe to show: every known secret in any encoding and every JWT scrubbed (see
    scrub.py; `secrets` are registered there too), then printable ASCII, bounded. Scrub before the final cut
    (a cut first could leave a secret's prefix behind), but only as far as anything we keep could reach: a
    64 KiB error body is not worth scrubbing whole."""
    for secret in secrets:
        scrub.register(secret)
    value = _UNPRINTABLE.sub("?", scrub.scrub_text(str(text)[: limit + scrub.reach()]))
    return value if len(value) <= limit else value[:limit] + "..."


async def exchange(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    error: type[EdgeTokenError],
    limit: int,
    timeout: float,
    headers: dict[str, str] | None = None,
    body: Any = None,
    tls: ssl.SSLContext | bool = True,
    secrets: tuple[str, ...] = (),
    via: egress.Route | None = None,
    key: str = "",
    rejected: type[EdgeTokenError] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one request without redirects; `error` on network trouble, timeout or oversize.

    `secrets` are the credentials this request carries: they are registered with the process scrubber before
    anything is sent, so an echo of them (in any encoding) is cut from every message and log line. `via` sends the
    request through its proxy (egress.py); a proxy failure names the proxy, as `error` (a 407 as `rejected`, if
    given). `key` is the config key holding `url`, named in the message of a network failure."""
    for secret in secrets:
        scrub.register(secret)
    try:
        async with session.request(
            method, url, headers=headers, json=body, ssl=tls, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            proxy=via.proxy if via else None, proxy_headers=via.proxy_headers if via else None,
        ) as response:  # fmt: skip
            return response.status, await read_limited(response, limit, what)
    except egress.PROXY_ERRORS as exc:
        raise egress.proxy_failure(exc, via or egress.Route(None, None, True), what, error, rejected) from None
    except ProtocolError as exc:
        raise error(f"{what}: {exc}") from None
    except TimeoutError:
        raise error(f"{what} did not answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:  # the cause in words (neterrors), and the config key to check if given
        hint = f"; check {key}" if key else ""
        raise error(f"{what} unreachable ({sanitize(url, secrets)}): {describe(exc)}{hint}") from None
