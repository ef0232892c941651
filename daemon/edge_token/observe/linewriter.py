"""The last step of structlog's pipeline (observe/logs.py): rendered lines written to the stream whole, a loop
turn's lines in one write."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import TextIO


class LineWriter:
    """structlog's last step: rendered lines written to the stream whole (however threads interleave). A stream
    that fails (closed, or EPIPE after journald restarted) loses the line, never the work of the caller: a renewal
    must not fail because its log line could not be written (stdlib logging's handlers behave the same).

    On the event loop, the lines of one loop turn go out in one write as the turn ends (`call_soon`): each write
    hands the interpreter lock to whichever file worker wants it and waits to get it back, and a fill ends several
    renewals per turn. Elsewhere (no running loop, another thread) a line is written at once. Inside `together()`,
    the lines the same thread logs are held to its end. `flush()` writes what a turn holds (before `os._exit`;
    at interpreter exit it is done anyway)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._held: list[str] | None = None  # lines of a `together()` block, and the thread that opened it
        self._holder = 0
        self._turn: list[str] | None = None  # lines of this loop turn, and the loop's thread
        self._turn_thread = 0

    def msg(self, line: str) -> None:
        """Write one rendered line (every level's method is this one: the level is already in the line)."""
        held, turn = self._held, self._turn
        if held is not None and self._holder == threading.get_ident():
            held.append(line)
        elif turn is not None and self._turn_thread == threading.get_ident():
            turn.append(line + "\n")  # `_emit`'s first case, without its call (a renewal's second line)
        else:
            self._emit(line + "\n")

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = log = msg

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """One write for the lines logged in this block by this thread (a step's lines: one system call, not
        one per line, each of which hands the interpreter lock to a waiting file worker)."""
        if self._held is not None:  # nested, or another thread's block: lines go out as usual
            yield
            return
        self._held, self._holder = [], threading.get_ident()
        try:
            yield
        finally:
            lines, self._held = self._held, None
            if lines:
                self._emit("".join(line + "\n" for line in lines))

    def _emit(self, text: str) -> None:
        """`text` into this loop turn's write, or written now when there is no loop on this thread."""
        if self._turn is not None and self._turn_thread == threading.get_ident():
            self._turn.append(text)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(text)
            return
        if self._turn is not None:  # another loop's turn (a thread running its own loop): keep the order
            self.flush()
        self._turn, self._turn_thread = [text], threading.get_ident()
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines the current loop turn holds."""
        lines, self._turn = self._turn, None
        if lines:
            self._write("".join(lines))

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # ValueError: the stream is closed
            pass
