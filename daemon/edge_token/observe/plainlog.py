"""JSON log lines for the short commands (`once`), without structlog.

`once` runs as a container's init step or a cron job: it starts, writes a few lines and exits, and importing
structlog (~10 ms) was a fifth of what it costs beyond the libraries it really needs (issue 15). This logger
writes the very lines `logs.configure` gives in JSON format — the same keys in the same order (the call's
fields, then `event`, `level`, `timestamp` in ISO 8601 UTC), the same `Redactor` (secret-named fields dropped,
every string scrubbed of secrets and JWTs in any encoding), the journald `<N>` prefix under systemd — and routes
stdlib logging (aiohttp, asyncio) through the same pipeline, so no line escapes unscrubbed or in another shape.
An exception's traceback is rendered by structlog's own transformer (imported only then, without frame locals),
so even a bug's line has the daemon's shape. The console format (a person at a terminal) keeps using structlog.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

from edge_token.observe import journal
from edge_token.observe.logs import Redactor

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
METHOD_LEVEL = {"warn": "warning", "exception": "error", "fatal": "critical"}  # structlog's map_method_name


class LineSink:
    """Renders event dicts as JSON lines on a stream; shared by every bound logger and the stdlib handler."""

    def __init__(self, stream: TextIO, redactor: Redactor, level: str = "info") -> None:
        self.stream, self.redactor = stream, redactor
        self.min_level = LEVELS[level.lower()]
        self.journal = journal.is_journal_stream(stream)

    def emit(self, method: str, event_dict: dict[str, Any]) -> None:
        """Write one event as a JSON line: level and timestamp added, traceback rendered, every field redacted."""
        level = METHOD_LEVEL.get(method, method)
        event_dict["level"] = level
        exception = _exception(event_dict.pop("exc_info", None))
        if exception is not None:
            event_dict["exception"] = exception
        # stamped last, as the daemon's lines are (logs.one_pass): the same keys in the same order
        event_dict["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line = json.dumps(self.redactor(None, method, event_dict), default=repr)
        if self.journal:
            line = journal.prefix(level) + line
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream or EPIPE loses the line, never the caller's work
            pass


class PlainLogger:
    """The subset of structlog's bound logger the renewal code uses: `bind` and the level methods."""

    def __init__(self, sink: LineSink, context: dict[str, Any] | None = None) -> None:
        self._sink, self._context = sink, context or {}

    def bind(self, **fields: Any) -> PlainLogger:
        """A logger whose lines also carry `fields` (before each call's own)."""
        return PlainLogger(self._sink, {**self._context, **fields})

    def _log(self, method: str, event: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if LEVELS[METHOD_LEVEL.get(method, method)] < self._sink.min_level:
            return
        if method == "exception":
            fields.setdefault("exc_info", True)
        self._sink.emit(method, {**self._context, **fields, "event": event % args if args else event})

    def debug(self, event: str, *args: Any, **fields: Any) -> None:
        """A debug line (dropped below the configured level, like every level)."""
        self._log("debug", event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:
        """An info line."""
        self._log("info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:
        """A warning line."""
        self._log("warning", event, args, fields)

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        """An error line."""
        self._log("error", event, args, fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> None:
        """An error line with the current exception's traceback (structlog's dict form)."""
        self._log("exception", event, args, fields)

    def critical(self, event: str, *args: Any, **fields: Any) -> None:
        """A critical line."""
        self._log("critical", event, args, fields)

    warn = warning


class _StdlibHandler(logging.Handler):
    """Lines from libraries (aiohttp, asyncio) in the same shape as structlog's ProcessorFormatter gives them."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {"event": record.getMessage()}
            if record.exc_info:
                event["exc_info"] = record.exc_info
            self.sink.emit(record.levelname.lower(), event)
        except Exception:  # a logging failure must never end the command (stdlib handlers behave the same)
            self.handleError(record)


def configure(level: str = "info", stream: TextIO | None = None, redactor: Redactor | None = None) -> PlainLogger:
    """JSON lines on `stream` (stderr by default) for our logger and stdlib logging; returns the root logger."""
    import sys

    sink = LineSink(stream or sys.stderr, redactor or Redactor(), level)
    root = logging.getLogger()
    root.handlers[:] = [_StdlibHandler(sink)]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return PlainLogger(sink)


def _exception(exc_info: Any) -> Any:
    """structlog's dict form of a traceback (the daemon's shape), without frame locals (REFERENCE.md)."""
    import sys

    if not exc_info:
        return None
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if exc_info[0] is None:
        return None
    from structlog.tracebacks import ExceptionDictTransformer

    return ExceptionDictTransformer(show_locals=False)(exc_info)
