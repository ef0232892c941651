"""The only module that imports APScheduler: one-shot wall-clock jobs that survive suspend and clock jumps.

APScheduler 3 computes due times on the wall clock but waits with `loop.call_later` (monotonic time, which stops
during system suspend). So a renewal due during a 10-hour suspend would fire ~10 hours late. The daemon calls
`wakeup()` every few seconds of monotonic time (REFERENCE.md, tested): overdue jobs then run within one tick.
Job defaults: `misfire_grace_time=None` (a late job still runs; the default of 1 s silently drops it),
`coalesce=True`, `max_instances=1`; all datetimes are timezone-aware UTC.

Jobs run through APScheduler's DebugExecutor: called directly, on the event loop, when due. Our jobs only start
tasks, so they are quick; and there is no task per firing for shutdown to cancel (the asyncio executor logged a
CancelledError traceback at error level for every job queued at the moment of a graceful stop).

APScheduler wakes itself after every job added, changed or removed, each time through `call_soon_threadsafe`: a
write to the loop's self-pipe and one pass over the due jobs per renewal. Every call here is made on the event
loop, so `_CoalescingScheduler` turns the wakeups of one loop turn into one pass, queued without the pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.debug import DebugExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

Job = Callable[[], Any]


class _CoalescingScheduler(AsyncIOScheduler):  # type: ignore[misc]  # APScheduler ships no type hints
    """AsyncIOScheduler whose wakeups, asked for on its own loop, cost one pass per loop turn (module docstring)."""

    _wake_queued = False

    def start(self, paused: bool = False) -> None:
        self._wake_queued = False  # a pass queued on a loop that closed before running it is not pending here
        super().start(paused)

    def wakeup(self) -> None:
        loop = self._eventloop
        if loop is None or self._wake_queued:
            return
        self._wake_queued = True
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:  # another thread (none of ours does this): APScheduler's own thread-safe way
            here = False
        (loop.call_soon if here else loop.call_soon_threadsafe)(self._wake)

    def _wake(self) -> None:
        self._wake_queued = False
        if self._eventloop is not None and self.running:  # not after shutdown
            self._stop_timer()
            self._start_timer(self._process_jobs())


class Scheduler:
    """A thin, typed face on AsyncIOScheduler with the defaults this daemon needs."""

    def __init__(self) -> None:
        self._scheduler = _CoalescingScheduler(
            timezone=UTC,
            executors={"default": DebugExecutor()},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self) -> None:
        """Start the APScheduler on the running event loop."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop without waiting: shutdown drains the daemon's own tasks."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        """True between start and shutdown (the exec wrapper waits for it)."""
        return bool(self._scheduler.running)

    def at(self, job_id: str, when: float, func: Job) -> None:
        """Run `func` once at epoch time `when` (now if past), replacing any job with the same id."""
        run_date = datetime.fromtimestamp(when, UTC)
        self._scheduler.add_job(func, "date", run_date=run_date, id=job_id, replace_existing=True)

    def every(self, job_id: str, seconds: float, func: Job, jitter: float = 0.0) -> None:
        """Run `func` every `seconds` (APScheduler's jitter only delays; keep it small)."""
        self._scheduler.add_job(
            func, "interval", seconds=seconds, jitter=jitter or None, id=job_id, replace_existing=True
        )

    def cancel(self, job_id: str) -> None:
        """Remove the job if it exists."""
        try:
            self._scheduler.remove_job(job_id)
        except JobLookupError:
            pass

    def next_run(self, job_id: str) -> float | None:
        """Epoch time of the job's next run, or None if it is not scheduled."""
        job = self._scheduler.get_job(job_id)
        when = getattr(job, "next_run_time", None) if job is not None else None
        return when.timestamp() if when is not None else None

    def wakeup(self) -> None:
        """Re-evaluate due jobs against the wall clock now (after suspend or a clock jump)."""
        if self._scheduler.running:
            self._scheduler.wakeup()
