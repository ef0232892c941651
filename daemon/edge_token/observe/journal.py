"""journald priorities for the log lines edge-token writes to stderr.

Under systemd, stderr is usually a stream to journald, which files every line at PRIORITY 6 (info) unless it
starts with a syslog prefix `<N>` (`SyslogLevelPrefix=yes`, the default): without one `journalctl -p err` shows
none of the daemon's errors. systemd tells a process its stderr/stdout is such a stream with
`JOURNAL_STREAM=<device>:<inode>`; the prefix is added only when the stream we write to is that very file, so a
terminal, a pipe or a file redirected by the operator never sees `<3>` noise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TextIO

# syslog(3) priorities by log level name (structlog's method names and stdlib level names, lower-cased).
PRIORITIES = {
    "critical": 2,
    "fatal": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True if `stream` is the journald stream systemd announced in $JOURNAL_STREAM."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or a StringIO without a descriptor
        return False
    return info.st_dev == int(device) and info.st_ino == int(inode)


def prefix(level: str) -> str:
    """The `<N>` prefix for a level name; unknown levels are info."""
    return f"<{PRIORITIES.get(level.lower(), 6)}>"


def prefixed(renderer: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a structlog renderer so each rendered line starts with its journald priority.

    The level is read before rendering (the renderer may consume the event dict). JSON lines are single lines;
    a multi-line console rendering gets the prefix on its first line only.
    """

    def render(logger: Any, method: str, event_dict: Any) -> Any:
        level = str(event_dict.get("level", method))
        return prefix(level) + renderer(logger, method, event_dict)

    return render


def stream_prefix(level: str, stream: TextIO) -> str:
    """The `<N>` prefix for a plain line written to `stream`, or "" when it is not the journal."""
    return prefix(level) if is_journal_stream(stream) else ""
