"""Shared HTTP plumbing of the secret-store sinks: bounded, TLS-verified, strictly parsed JSON calls that fail as
SinkError."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from edge_token.core import strictjson
from edge_token.core.errors import ConfigError, EdgeTokenError, SinkError
from edge_token.core.settings import DIRECT, Egress
from edge_token.net import egress
from edge_token.net.http import exchange
from edge_token.net.tls import client_context

MAX_STORE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """A store's answer: status and the JSON body (None if it was not one unambiguous JSON object: `defect` then
    says why, for the sink's error message)."""

    status: int
    body: dict[str, Any] | None
    defect: str | None = None


def trust(ca_file: Path | None, what: str) -> ssl.SSLContext | bool:
    """The store's TLS verification from the one builder (net/tls.py: the system CAs, or only `ca_file`'s; FIFO-safe,
    bounded, cached per file version). A bad file is this sink's error (the other sinks still get the token)."""
    try:
        return client_context("", ca_file)
    except ConfigError as exc:
        raise SinkError(f"{what}: {exc}") from None


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    headers: dict[str, str],
    timeout: float,
    ca_file: Path | None = None,
    body: Any = None,
    secrets: tuple[str, ...] = (),
    egress_settings: Egress = DIRECT,
    environ: Mapping[str, str] | None = None,
) -> Answer:
    """One JSON request; network trouble, timeouts, oversized answers and a bad `ca_file` become SinkError naming
    `what`. `egress_settings` may send it through a proxy (its `ca_file` is unused: `ca_file` decides the store's
    trust). The body is parsed by the one strict parser (core/strictjson.py): a duplicate member, NaN or an
    over-deep document is no body at all, never one of its readings."""
    tls = trust(ca_file, what)
    try:
        via = egress.route(egress_settings, url, environ or {})
    except EdgeTokenError as exc:
        raise SinkError(f"{what}: {exc}") from None
    status, raw = await exchange(
        session, method, url, what=what, error=SinkError, limit=MAX_STORE_BYTES, timeout=timeout,
        headers=headers, body=body, tls=tls, secrets=secrets, via=via,
    )  # fmt: skip
    try:
        parsed = strictjson.loads(raw) if raw else None
    except ValueError as exc:  # strictjson.JsonDefect: names the defect, never quotes the body
        return Answer(status, None, f"not acceptable JSON: {exc}")
    if isinstance(parsed, dict):
        return Answer(status, parsed)
    return Answer(status, None, "an empty body" if parsed is None else f"{strictjson.kind(parsed)}, not a JSON object")
