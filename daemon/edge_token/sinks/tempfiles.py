"""Stale temp files a killed predecessor left beside the sinks: found with one listing per directory per process.

A SIGKILL (or a power cut) between the atomic write's create and rename leaves `.NAME.<16 chars>.edge-token-tmp`
beside the sink; the next start removes those of its own sinks (exact name pattern, owned by us or root). The
directory listing that finds them also tells which sink files exist, so a fill skips reading back what is not
there.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

TEMP_PREFIX = "."
TEMP_SUFFIX = ".edge-token-tmp"


def temp_name(target: Path) -> str:
    """A fresh, unguessable temp name next to `target`; recognisable so a later start can clean it up."""
    # os.urandom is what secrets.token_hex(8) reads, without its three Python calls around it (one per token written)
    return f"{TEMP_PREFIX}{target.name}.{os.urandom(8).hex()}{TEMP_SUFFIX}"


def remove_stale_temps(path: Path) -> int:
    """Delete temp files a killed predecessor left beside `path` (only ours: exact name pattern and owner)."""
    return StaleTemps().remove(path)


class StaleTemps:
    """Finds the temp files a killed predecessor left, with one listing per directory per process, not per sink.

    Every file sink removes its own stale temps when it is first read back; listing the directory for each of N
    sinks sharing it made a fill or restart of N profiles O(N^2) (1,000,000 entries looked at for 1,000). The
    first sink of a directory lists it and files every temp name by the sink file it belongs to; each sink then
    takes its own. A listing that fails (no directory yet, no permission) is not remembered: there is nothing to
    remove, and the next sink tries again. Thread-safe: sinks read back in worker threads.

    The same listing tells which sink files exist: for `LISTING_FRESH_SECONDS` after it was taken, a sink whose
    file it did not see (the fill of a new deployment) skips its read-back and the trip to a worker thread that
    costs (`absent`). A file someone else creates in that window is then not adopted: one token request, no more.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, fresh_for: float | None = None) -> None:
        self._lock = threading.Lock()  # never held across I/O: `absent` takes it on the event loop
        self._found: dict[str, _Listing | threading.Event] = {}  # directory -> its listing, or one in progress
        self._monotonic = monotonic
        self._fresh_for = LISTING_FRESH_SECONDS if fresh_for is None else fresh_for

    def remove(self, path: Path) -> int:
        """Delete the stale temps of the sink at `path`; returns how many were removed. Runs in a worker thread:
        it may wait for another worker's listing of the same directory (bounded by the callers' deadlines)."""
        directory, target = split_path(path)
        listing = self._listing(directory)
        if listing is None:
            return 0
        with self._lock:
            names = listing.temps.pop(target, [])
        removed = 0
        me = os.geteuid()
        for name in names:
            entry = os.path.join(directory, name)
            try:
                info = os.lstat(entry)
                if stat.S_ISREG(info.st_mode) and info.st_uid in (me, 0):
                    os.unlink(entry)
                    removed += 1
            except OSError:
                continue
        return removed

    def _listing(self, directory: str) -> _Listing | None:
        """The directory's one listing: made here if nobody made or started it, else awaited; None if it failed."""
        with self._lock:
            found = self._found.get(directory)
            if found is None:
                found = self._found[directory] = threading.Event()
                mine = True
            else:
                mine = False
        if isinstance(found, _Listing):
            return found
        if not mine:
            found.wait()  # another worker is listing it
            with self._lock:
                done = self._found.get(directory)
            return done if isinstance(done, _Listing) else None
        try:
            listing: _Listing | None = _list(directory, self._monotonic())
        except OSError:
            listing = None
        with self._lock:
            if listing is None:
                del self._found[directory]  # not remembered: the next sink tries again
            else:
                self._found[directory] = listing
        found.set()
        return listing

    def absent(self, path: Path) -> bool:
        """True when a recent listing of the directory saw no file at `path` and no temp of it to remove: reading
        it back would find nothing. False when unsure (no listing yet, or an old one). Does no I/O."""
        directory, name = split_path(path)
        with self._lock:
            listing = self._found.get(directory)
            if not isinstance(listing, _Listing):
                return False
            if self._monotonic() - listing.taken_at > self._fresh_for:
                listing.names = set()  # no longer trusted: free it (10,000 names for 10,000 sinks)
                return False
            return name not in listing.names and name not in listing.temps

    def written(self, path: Path, split: tuple[str, str] | None = None) -> None:
        """We wrote the sink at `path`: a later read-back of it (a reloaded profile's) must not be skipped. `split`:
        `split_path(path)`, kept by a caller that writes the same path again and again (a sink, once per renewal)."""
        directory, name = split or split_path(path)
        with self._lock:
            listing = self._found.get(directory)
            if isinstance(listing, _Listing):
                listing.names.add(name)


LISTING_FRESH_SECONDS = 60.0


def split_path(path: Path) -> tuple[str, str]:
    """(directory, name) of a sink path, as text: `os.fspath(path.parent)` built a new Path and formatted it, on
    every renewal. A Path has no trailing slash, so the two agree, but for a bare name (`.` there, empty here)."""
    directory, name = os.path.split(os.fspath(path))
    return directory or ".", name


class _Listing:
    """One directory as it was listed: every name in it, and the stale temp names filed by their sink file."""

    __slots__ = ("names", "taken_at", "temps")

    def __init__(self, taken_at: float, names: set[str], temps: dict[str, list[str]]) -> None:
        self.taken_at, self.names, self.temps = taken_at, names, temps


def _list(directory: str, now: float) -> _Listing:
    """List `directory` once: its names, and the temp names (`temp_name`'s pattern:
    .<target>.<16 characters>.edge-token-tmp) by target."""
    names = set(os.listdir(directory))
    temps: dict[str, list[str]] = {}
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
            continue
        inner = name[len(TEMP_PREFIX) : -len(TEMP_SUFFIX)]
        if len(inner) > 17 and inner[-17] == ".":  # <target>.<16 characters>
            temps.setdefault(inner[:-17], []).append(name)
    return _Listing(now, names, temps)
