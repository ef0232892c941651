"""sd_notify in a few lines of stdlib: READY, STATUS, WATCHDOG, RELOADING, STOPPING over $NOTIFY_SOCKET.

One datagram per message to a path socket, or to an abstract one when the name starts with `@` (leading NUL).
Failures are logged once and never stop the daemon; without $NOTIFY_SOCKET every call is a no-op. Sending never
blocks: the send is non-blocking, and when the receiver does not drain its queue (a stuck systemd, or anything else
holding $NOTIFY_SOCKET; Linux queues only net.unix.max_dgram_qlen datagrams) the message is dropped and counted in
`Notifier.dropped`. A blocking send would freeze the whole event loop (renewals, /healthz) until the queue drains.
The PyPI `sdnotify` package swallows errors and mangles non-latin-1 text (REFERENCE.md), so we do not use it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any


class Notifier:
    """Talks to systemd (or to whatever listens on $NOTIFY_SOCKET, e.g. a test)."""

    def __init__(self, environ: Mapping[str, str], log: Any) -> None:
        self._address = _address(environ.get("NOTIFY_SOCKET", ""))
        self._log = log
        self._warned = False
        #: messages dropped because the receiver's queue was full (exported as a metric by the daemon)
        self.dropped = 0
        self.watchdog_interval = watchdog_interval(environ)
        self.ready_sent = False
        self._status_sent_at = -float("inf")

    @property
    def enabled(self) -> bool:
        """True when systemd gave us a NOTIFY_SOCKET."""
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send one message (lines joined by newlines); False if there is no socket or sending failed."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(payload, self._address)
        except BlockingIOError:
            # EAGAIN: the receiver's queue is full. Drop this message (the next STATUS/WATCHDOG supersedes it)
            # rather than stall the loop; count it, and say so once.
            self.dropped += 1
            if not self._warned:
                self._log.warning("systemd.notify_dropped", message="notify socket queue full; message dropped")
                self._warned = True
            return False
        except OSError as exc:
            if not self._warned:  # once: a vanished socket must not flood the log every watchdog tick
                self._log.warning("systemd.notify_failed", message=exc.strerror or str(exc))
                self._warned = True
            return False
        return True

    def report(
        self, all_ready: Callable[[], bool], summary: Callable[[], str], now: float, throttle: bool = True
    ) -> None:
        """READY=1 once `all_ready()`; otherwise STATUS=, at most once a second when `throttle`d (after each cycle),
        always from the daemon's tick. `all_ready` is asked only until READY=1 went out, `summary` built only when
        something is sent."""
        if not self.enabled:
            return
        becomes_ready = not self.ready_sent and all_ready()
        if throttle and not becomes_ready and now - self._status_sent_at < 1.0:
            return
        self._status_sent_at = now
        (self.ready if becomes_ready else self.status)(summary())

    def ready(self, status: str) -> None:
        """READY=1 with a status line, once."""
        if not self.ready_sent:
            self.ready_sent = self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`."""
        self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """WATCHDOG=1: we are alive (sent only while healthy)."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """RELOADING=1 at SIGHUP, as Type=notify-reload expects; nothing before the first READY=1 (systemd is still
        waiting for the start: the READY=1 that ends a reload would tell it the service is up)."""
        if not self.ready_sent:
            return
        # RELOADING=1 must carry MONOTONIC_USEC (systemd >= 253 checks it; older ones ignore it)
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def reloaded(self, status: str) -> None:
        """READY=1 after a reload, with what it did; before the first READY=1 only the STATUS= line."""
        if not self.ready_sent:
            self.status(status)
            return
        self.send("READY=1", f"STATUS={_one_line(status)}")

    def stopping(self) -> None:
        """STOPPING=1 at the start of shutdown."""
        self.send("STOPPING=1", "STATUS=stopping")


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # systemd only ever sets absolute paths or abstract names


def _one_line(text: str) -> str:
    """A STATUS= value: one line, at most 400 characters, ending in "..." where it was cut."""
    line = " ".join(text.split())
    return line if len(line) <= 400 else line[:397] + "..."


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when the watchdog is not ours."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
