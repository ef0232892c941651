"""Shared HTTP plumbing of the secret-store sinks: bounded, TLS-verified JSON calls that fail as SinkError."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from edge_token.core.errors import EdgeTokenError, SinkError
from edge_token.core.settings import DIRECT, Egress
from edge_token.net import egress
from edge_token.net.http import exchange
from edge_token.net.tls import regular_file

MAX_STORE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """A store's answer: status and the JSON body (None if it was not a JSON object)."""

    status: int
    body: dict[str, Any] | None


def tls_context(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Verification always on: the system CAs, or the configured CA bundle (e.g. the in-cluster ca.crt)."""
    if ca_file is None or not ca_file.exists():
        return True
    if not regular_file(ca_file):
        raise SinkError(f"CA bundle {ca_file} is not a regular file; point ca_file at a PEM file")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(f"cannot load CA bundle {ca_file}: {exc}") from None


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    headers: dict[str, str],
    timeout: float,
    tls: ssl.SSLContext | bool = True,
    body: Any = None,
    secrets: tuple[str, ...] = (),
    egress_settings: Egress = DIRECT,
    environ: Mapping[str, str] | None = None,
) -> Answer:
    """One JSON request; network trouble, timeouts and oversized answers become SinkError naming `what`.
    `egress_settings` may send it through a proxy (its `ca_file` is unused: `tls` decides the store's trust)."""
    try:
        via = egress.route(egress_settings, url, environ or {})
    except EdgeTokenError as exc:
        raise SinkError(f"{what}: {exc}") from None
    status, raw = await exchange(
        session, method, url, what=what, error=SinkError, limit=MAX_STORE_BYTES, timeout=timeout,
        headers=headers, body=body, tls=tls, secrets=secrets, via=via,
    )  # fmt: skip
    try:
        parsed = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        parsed = None
    return Answer(status, parsed if isinstance(parsed, dict) else None)
