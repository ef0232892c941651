"""Sinks: where a verified token goes. One module per sink type, all behind the `Sink` protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp

from edge_token.core.settings import KubernetesSecretOptions, SinkConfig, VaultKvOptions
from edge_token.core.token import Token


class Sink(Protocol):
    """A destination for verified tokens. Sinks are independent: one failing never blocks another."""

    name: str
    config: SinkConfig

    async def write(self, token: Token) -> bool:
        """Store the token; True if anything changed. Raises SinkError, leaving the previous value intact."""
        ...

    async def read(self) -> str | None:
        """The JWT the sink holds now (for adoption at start), or None. Never raises for a missing value."""
        ...


def build_sink(
    config: SinkConfig,
    session: aiohttp.ClientSession,
    on_secret: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
    log: Any = None,
    verify: Callable[[str], Awaitable[bool]] | None = None,
) -> Sink:
    """The sink implementation for one `[[profiles.X.sinks]]` table (store modules are imported only if used).
    `verify` (the profile's token verification) lets a secret store tell a newer token from a forged one."""
    if isinstance(config.store, KubernetesSecretOptions):
        from edge_token.sinks.kubernetes import KubernetesSecretSink

        return KubernetesSecretSink(config, config.store, session, on_secret, environ, verify=verify)
    if isinstance(config.store, VaultKvOptions):
        from edge_token.sinks.vault import VaultKvSink

        return VaultKvSink(config, config.store, session, on_secret, environ, verify=verify)
    from edge_token.sinks.file import FileSink

    return FileSink(config, log=log)
