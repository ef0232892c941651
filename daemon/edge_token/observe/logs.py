"""structlog setup: JSON lines off a TTY, console on one, and the one redaction processor.

Every line passes `Redactor`, which removes (a) values under secret-looking keys at any depth, and passes every
other string through the process's scrubber (`scrub.py`): JWT-shaped strings and every secret the daemon has
read or sent, in any encoding (raw, percent-encoded, base64, JSON-escaped...), so a provider or store echoing
our request in an error message cannot leak it either. Tracebacks are rendered without
frame locals (structlog's default dict tracebacks would print a local `secret`; REFERENCE.md).

Long because every renewal logs two lines through code that is cold by the next renewal, so each generic structlog
step on a line's way (its level method, the processor loop, the time stamper, the renderer) is replaced here by a
written-out one, each saying beside it what it replaces; tests/test_log_costs.py holds them to structlog's lines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

from edge_token.core import scrub as scrubbing
from edge_token.observe import journal
from edge_token.observe.linewriter import LineWriter

REDACTED = scrubbing.REDACTED
SECRET_KEY = re.compile(r"(secret|password|passwd|authorization|access_token|^token$|^jwt$|credential_value)", re.I)
JWT_SHAPE = scrubbing.JWT
MAX_CLEAN_KEY_SETS = 256  # line shapes remembered as clean (ours are a few dozen; a wild caller's stop here)


@functools.lru_cache(maxsize=4096)
def names_secret(key: str) -> bool:
    """Does this field name say its value is a secret? (Asked for every field of every line: remembered.)"""
    return SECRET_KEY.search(key) is not None


class Redactor:
    """The structlog processor that keeps secrets and tokens out of every log line."""

    def __init__(self, scrubber: scrubbing.Scrubber | None = None) -> None:
        self._scrubber = scrubber or scrubbing.SECRETS
        #: (a registry state, the key tuples of lines whose keys all pass as they are under it: no secret-named key,
        #: none changed by scrubbing). The state is the scrubber's memo, replaced when a secret is registered (held
        #: here, its id cannot be reused). A daemon logs a few dozen shapes of line; for those, only the values are
        #: looked at. The pair is swapped whole, so a line scrubbed under an older state files its shape there
        self._clean: tuple[Mapping[str, str] | None, set[tuple[str, ...]]] = (None, set())

    def add_secret(self, value: str) -> None:
        """Scrub this value, in every encoding, from every future line and message (process-wide)."""
        self._scrubber.register(value)

    def redact(self, value: Any, key: str = "") -> Any:
        """A log field: the whole value if its key names a secret, else every string in it scrubbed (keys
        included), and anything that is not JSON's own kind of value turned into its scrubbed `repr` (what the
        renderers would print for it). So the rendered line holds nothing unscrubbed, and goes to the stream
        without a second, whole-line pass (`configure`)."""
        if key and names_secret(key):
            return REDACTED
        if isinstance(value, str):
            return self._scrubber.scrub_text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return {self._scrubber.scrub_text(str(k)): self.redact(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        return self._scrubber.scrub_text(repr(value))

    def scrub(self, value: Any) -> Any:
        """A response body (/status, /readyz): every string scrubbed by value. No key-name rule here: a profile
        or sink named `kubernetes_secret:...` is a name, and would otherwise vanish from /status."""
        return self._scrubber.scrub(value)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # most keys and values were scrubbed before under this registry: looked up in its memo without a call;
        # numbers, booleans, None and Plain text pass as they are (unless their key names a secret), without a call
        known, scrub, redact = self._scrubber.known, self._scrubber.scrub_text, self.redact
        under, shapes = self._clean
        if under is not known:  # a secret was registered since: what was clean may not be
            self._clean = (known, shapes := set())  # one swap: a thread never files a shape under another state
        keys = tuple(event_dict)
        if keys in shapes:  # a line with these keys came before: none names a secret or scrubs to another
            for key, value in event_dict.items():
                kind = type(value)
                if kind is str:
                    clean = known.get(value) or scrub(value)
                    if clean is not value:
                        event_dict[key] = clean  # an existing key: the dict's size, and so its iteration, stay
                elif kind not in _PLAIN:
                    event_dict[key] = redact(value, key)
            return event_dict
        line = {}
        for key, value in event_dict.items():
            kind = type(value)
            if kind is str and not names_secret(key):
                value = known.get(value) or scrub(value)
            elif kind not in _PLAIN or names_secret(key):
                value = redact(value, key)
            line[known.get(key) or scrub(key)] = value
        if len(shapes) < MAX_CLEAN_KEY_SETS and tuple(line) == keys and not any(map(names_secret, keys)):
            shapes.add(keys)  # into the set of the registry state this line was scrubbed under, swapped out or not
        return line


#: exactly these types (a subclass may have its own repr), and `Plain` text (a token's fingerprint: hex digits this
#: process made, which `scrub_text` hands back unread; passed here without the two calls that took to say so)
_PLAIN = frozenset({int, float, bool, type(None), scrubbing.Plain})


MAX_SHOWN_TIME = 253402300800  # 10000-01-01: beyond it datetime cannot show a time (a wild number stays a number)


def iso_times(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console lines show `*_at` times as ISO 8601 UTC (`expires_at=2026-11-28T21:40:31Z`), not epoch seconds a
    person has to convert; JSON lines keep the numbers, which machines compare and subtract."""
    for key, value in event_dict.items():
        if not key.endswith("_at") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if 0 <= value < MAX_SHOWN_TIME:
            precision = "seconds" if value == int(value) else "milliseconds"
            event_dict[key] = datetime.fromtimestamp(value, UTC).isoformat(timespec=precision).replace("+00:00", "Z")
    return event_dict


def configure(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None, redactor: Redactor | None = None
) -> Redactor:
    """Configure structlog and stdlib logging (aiohttp, APScheduler) to one redacted pipeline on `stream`."""
    import structlog  # here, not at the top: `once` uses Redactor without structlog (observe/plainlog.py)

    stream = stream or sys.stderr
    redactor = redactor or Redactor()
    shared, tail = _processors(log_format, stream, redactor)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # our own lines go straight from the same processors to the stream: through stdlib logging each line cost two
    # LogRecords, a caller lookup walking the stack and the handler's lock, about a third of a line's cost. And past
    # the CLI's scrubbing stream: the redactor has scrubbed every key and value of the line (`Redactor.redact`), and
    # scrubbing the rendered line again cost 40 % of a line
    global _WRITER
    writer = _WRITER = LineWriter(stream.underlying if isinstance(stream, scrubbing.ScrubbingStream) else stream)
    number = logging.getLevelName(level.upper())
    filtering = structlog.make_filtering_bound_logger(number)
    structlog.configure(
        processors=[one_pass(*tail)] if len(tail) == 4 else [*shared, *tail],
        logger_factory=lambda *_args: writer,
        wrapper_class=_one_frame(filtering, number <= logging.INFO) if len(tail) == 4 else filtering,
        cache_logger_on_first_use=False,
    )
    return redactor


def _one_frame(filtering: type, logs_info: bool) -> type:
    """structlog's filtering bound logger (levels below the configured one cost a `return None`) whose last two
    steps are one frame: `_proxy_to_logger` builds the line and runs the chain itself, as `_process_event`
    would, for a chain whose last processor renders a string (ours, `one_pass`). Custom wrapper classes are
    structlog's way to do this (its `_process_event` docs); it spared a line ~45 bytecodes and a call. `info`, the
    level of every renewal's lines, is that frame itself when the level lets it through: structlog's method, its
    `_maybe_interpolate` and `_proxy_to_logger` were three calls a line."""
    import structlog

    class OneFrameLogger(filtering):  # type: ignore[misc]
        def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
            line: Any = {**self._context, **event_kw}
            if event is not None:
                line["event"] = event
            try:
                for processor in self._processors:
                    line = processor(self._logger, method_name, line)
            except structlog.DropEvent:
                return None
            return getattr(self._logger, method_name)(line)

        if logs_info:  # else structlog's `return None`

            def info(self, event: str | None = None, *args: Any, **event_kw: Any) -> Any:
                line: Any = {**self._context, **event_kw}
                if event is not None:  # with arguments, %-interpolated as structlog does (one mapping: by name)
                    one = len(args) == 1 and isinstance(args[0], Mapping) and args[0]
                    line["event"] = (event % args[0] if one else event % args) if args else event
                try:
                    for processor in self._processors:
                        line = processor(self._logger, "info", line)
                except structlog.DropEvent:
                    return None
                return self._logger.info(line)

    return OneFrameLogger


def _processors(log_format: str, stream: TextIO, redactor: Redactor) -> tuple[list[Any], list[Any]]:
    """(what every line gets first: context, level, time; what renders it: tracebacks as data, the redactor, the
    JSON or console renderer, with journald's priority prefix when `stream` is the journal)."""
    import structlog

    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    # no merge_contextvars: nothing binds context variables, and it walked them per line
    shared: list[Any] = [structlog.stdlib.add_log_level]
    # the time is stamped after the redactor: a clock reading holds no secret, and scrubbing a new one per line
    # cost more than the rest of the line's values (and filled the scrubber's memo with texts that never repeat)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    exceptions = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    renderer: Any = (
        render_json
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    if journal.is_journal_stream(stream):  # systemd: give journald each line's priority (`journalctl -p err`)
        renderer = journal.prefixed(renderer)
    # tracebacks become data before the redactor in both formats: an exception message can quote a server's
    # answer, and a renderer that formats exc_info itself would print it unredacted
    tail = (
        [exceptions, redactor, stamp, renderer]
        if as_json
        else [structlog.processors.format_exc_info, iso_times, redactor, stamp, renderer]
    )
    return shared, tail


def _shown_redacted(_value: Any) -> str:
    return REDACTED


#: one encoder for every line: structlog's JSONRenderer calls `json.dumps` with an option, which builds a new
#: encoder per line. Nothing reaches it that JSON cannot hold (the redactor turned every other value into its
#: scrubbed repr); were anything to, it is shown as redacted, never as its repr.
_ENCODE = json.JSONEncoder(default=_shown_redacted).encode
#: ...and that encoder's C core, called directly: `encode` and `iterencode` are Python frames around it (about 85
#: bytecodes a line) that pick it on every call. Without the circular-reference check: the redactor builds every
#: container of a line anew, from the values it walked (a cycle would never get past it).
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None where json has no C accelerator: `_ENCODE` then
_CHUNKS = (  # markers (None: no cycle check), default, string encoder, indent, separators, sort, skip keys, NaN
    _C_ENCODER(None, _shown_redacted, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    if _C_ENCODER is not None
    else None
)


def render_json(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
    """The JSON renderer: structlog's, with `json.dumps`' defaults (ASCII, `", "` and `": "`)."""
    if _CHUNKS is not None and type(event_dict) is dict:
        return "".join(_CHUNKS(event_dict, 0))
    return _ENCODE(event_dict)


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}  # structlog's add_log_level: other methods are levels


def one_pass(exceptions: Any, redactor: Redactor, stamp: Any, renderer: Any) -> Any:
    """Our own lines' processors as one (JSON format): structlog's `add_log_level`, tracebacks as data (only when
    the line carries `exc_info`), the redactor, the time stamp, the renderer. structlog runs a chain processor by
    processor, a call and a turn of its loop each; as one they cost a fifth less of a line (bytecodes counted).
    Lines from other libraries (stdlib logging) still go through the chain itself (`configure`)."""

    def line(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        event_dict["level"] = _LEVEL_NAMES.get(method, method)
        if "exc_info" in event_dict:
            event_dict = exceptions(logger, method, event_dict)
        event_dict = redactor(logger, method, event_dict)
        # `stamp` (structlog's TimeStamper(fmt="iso", utc=True)) written out: three calls a line fewer
        event_dict["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if chunks is not None and type(event_dict) is dict:  # `render_json`'s own first step, without its call
            return "".join(chunks(event_dict, 0))
        return renderer(logger, method, event_dict)

    chunks = _CHUNKS if renderer is render_json else None

    return line


_WRITER: LineWriter | None = None  # the configured one (`configure`); None: `once`, tests, nothing configured


@atexit.register
def flush() -> None:
    """Write what the configured writer holds (at interpreter exit, and before leaving with `os._exit`)."""
    if _WRITER is not None:
        _WRITER.flush()


def together() -> contextlib.AbstractContextManager[None]:
    """`LineWriter.together` of the configured writer; a no-op when structlog is not configured here."""
    return _WRITER.together() if _WRITER is not None else contextlib.nullcontext()


def batched() -> bool:
    """Do this thread's lines go out together already? On a running event loop the configured writer writes a
    turn's lines in one write as the turn ends (`LineWriter._emit`), so `together()` would only add its cost (a
    generator context per renewal); with no writer configured it is a no-op anyway."""
    return _WRITER is None or asyncio._get_running_loop() is not None
