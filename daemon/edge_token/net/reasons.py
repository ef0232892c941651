"""Network failures in an operator's words: what went wrong, without aiohttp's internals.

aiohttp's own texts read "Cannot connect to host h:p ssl:default [Connect call failed ...]": "ssl" for an http://
URL, a Python call name, no hint what to change. `describe` names the cause (refused, no DNS name, untrusted
certificate, handshake, reset...) and `unreachable` adds the URL and the config key an operator should check.
Nothing here quotes a response, not even the status line a parser refused; the URL and reasons pass the process
scrubber.
"""

from __future__ import annotations

import errno
import ssl

import aiohttp

from edge_token.core import scrub

_ERRNO = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that port)",
    errno.ECONNRESET: "the connection was reset",
    errno.ENETUNREACH: "the network is unreachable from here",
    errno.EHOSTUNREACH: "the host is unreachable from here",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EADDRNOTAVAIL: "no route to that address",
}


def _tls_reason(error: BaseException) -> str:
    verify = getattr(error, "verify_message", None)
    reason = verify or getattr(error, "reason", None) or getattr(error, "strerror", None) or type(error).__name__
    return str(reason)[:120]


def describe(exc: BaseException) -> str:
    """The cause of a failed HTTP exchange, in a few words (no library internals)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the host name {exc.host} does not resolve (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate of {exc.host} is not trusted ({_tls_reason(exc.certificate_error)})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"the TLS handshake with {exc.host} failed ({_tls_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = _ERRNO.get(exc.os_error.errno or 0) or exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port}: {cause}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off before its end"
    if isinstance(exc, aiohttp.ClientResponseError):
        # not aiohttp's message: it quotes the offending line, the server's own bytes (an echo of our request,
        # reversed or chunked over retries, is beyond any scrubber)
        return "the answer is not valid HTTP"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({_tls_reason(exc)})"
    if isinstance(exc, OSError):
        return _ERRNO.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    return type(exc).__name__


def unreachable(what: str, url: str, key: str, exc: BaseException) -> str:
    """`<what> <url> is unreachable: <cause>; check <key> ...`, scrubbed."""
    tls = isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError)
    check = f"check {key}" + (" and the CA certificates (TLS is always verified)" if tls else " and the network")
    return scrub.scrub_text(f"{what} {url} is unreachable: {describe(exc)}; {check}")
