"""Process-wide signal duties: the signals held during start-up, and (as a container's PID 1) reaping orphans.

**Held signals.** `run` handles SIGHUP and SIGUSR1 and `exec` also SIGUSR2, but only once their event loop is
up, about half a second of imports after the process starts; until then the kernel's default action for those
signals is to *terminate* (a `systemctl reload` or a config-management tool racing a restart killed the
daemon). So `__main__` blocks them with its first instruction (written out there, as it runs before any
import; `HELD_SIGNALS` is their union) and `release_held_signals` unblocks them once the handlers are
installed: a signal that came in between stays pending and is delivered to its handler then, so an early reload
is carried out, not lost. The signal mask is inherited by threads and by child processes (fork and exec keep
it), so the release must happen before any hook or wrapped command starts, on the thread that starts them (the
loop's).

**Orphans.** As PID 1 we reap orphaned grandchildren so they do not pile up as zombies. We inherit every
orphan (e.g. a background process an `on_update` hook left behind). asyncio reaps the children it started
itself (one `waitpid(pid)` per child), so we must not reap those: we only touch zombies whose parent is us,
found in /proc, and

- reap at once those that are not group leaders (pid != pgid): everything we start ourselves runs in a new
  session (start_new_session=True), so it *is* a group leader, and anything else is an orphan;
- reap a group-leader zombie only when it is still there one round later — by then asyncio would have reaped
  it if it were ours (double-forked daemons lead their own group too).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

HELD_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2})  # every signal __main__ may hold


def release_held_signals() -> None:
    """Unblock the signals `__main__` held during start-up (call it once their handlers are installed): a
    pending one is delivered now, to its handler. A no-op where nothing was held (tests, library use)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


class OrphanReaper:
    """Call `reap()` on SIGCHLD and on every tick; it is a no-op unless this process is PID 1."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._deferred: set[int] = set()
        self.reaped = 0

    @property
    def active(self) -> bool:
        """True when we are PID 1 (a container's init): only then are orphans ours to reap."""
        return os.getpid() == 1

    def reap(self) -> int:
        """Collect every exited orphan without blocking (hooks' grandchildren would stay zombies)."""
        if not self.active:
            return 0
        me, count, still = os.getpid(), 0, set()
        for pid in self._zombie_children(me):
            try:
                leader = os.getpgid(pid) == pid
            except OSError:
                continue
            if leader and pid not in self._deferred:
                still.add(pid)
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    count += 1
            except ChildProcessError:
                continue  # asyncio got there first
        self._deferred = still
        self.reaped += count
        return count

    def _zombie_children(self, parent: int) -> list[int]:
        zombies = []
        try:
            entries = [entry for entry in os.listdir(self._proc) if entry.isdigit()]
        except OSError:
            return []
        for entry in entries:
            try:
                stat = (self._proc / entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()  # the command name may contain spaces and parentheses
            if len(fields) > 1 and fields[0] == "Z" and fields[1] == str(parent):
                zombies.append(int(entry))
        return zombies
