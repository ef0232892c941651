"""Sinks: where a verified token goes. One module per sink type, all behind the `Sink` protocol."""

from __future__ import annotations

from typing import Protocol

from edge_token.config import SinkConfig
from edge_token.token import Token


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


def build_sink(config: SinkConfig) -> Sink:
    """The sink implementation for one `[[profiles.X.sinks]]` table."""
    from edge_token.sinks.file import FileSink

    return FileSink(config)
