"""The only module that imports APScheduler: one-shot wall-clock jobs that survive suspend and clock jumps.

APScheduler 3 computes due times on the wall clock but waits with `loop.call_later` (monotonic time, which stops
during system suspend). So a renewal due during a 10-hour suspend would fire ~10 hours late. The daemon calls
`wakeup()` every few seconds of monotonic time (REFERENCE.md, tested): overdue jobs then run within one tick.
Job defaults: `misfire_grace_time=None` (a late job still runs; the default of 1 s silently drops it),
`coalesce=True`, `max_instances=1`; all datetimes are timezone-aware UTC.

Jobs are called directly (as by APScheduler's DebugExecutor: `_DirectExecutor`), on the event loop, when due. Our
jobs only start tasks, so they are quick; and there is no task per firing for shutdown to cancel (the asyncio
executor logged a CancelledError traceback at error level for every job queued at the moment of a graceful stop).

APScheduler wakes itself after every job added, changed or removed, each time through `call_soon_threadsafe`: a
write to the loop's self-pipe and one pass over the due jobs per renewal. Every call here is made on the event
loop, so `_CoalescingScheduler` turns the wakeups of one loop turn into one pass, queued without the pipe.

A profile reschedules itself after every renewal. `add_job` built a Job, a trigger and a signature inspection of
the callable each time (~45 µs); so each `at()` job id keeps one APScheduler job for its life, whose trigger never
fires on its own (`_Pinned`): `at()` moves its next run (~10 µs), and after a run it is parked in the far future
until the next `at()`. A move wakes the scheduler only when the new run is sooner than its armed timer: after a
renewal the next one is minutes away, and the pass it used to cost found nothing due.

Two of APScheduler's extension points are ours, for the cost of a renewal (bytecodes counted per renewal, 100
profiles: the scheduler's share was 2,000 of the daemon's 18,000, the floor's whole renewal 9,000): the job store
(`_SortedJobStore`: the memory store, its order searched in C) and the executor (`_DirectExecutor`: the debug
executor without the events nobody listens to).

Long because it is the one module that knows APScheduler's internals: the import, the trigger, the store, the
executor and the wake-ups are one contract with one library version range (pyproject.toml), read in one place.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def _import_without_plugin_scan() -> None:
    """Import APScheduler's scheduler module without its plugin scan: at import it lists the entry points of every
    installed distribution three times (importlib.metadata reads each one's metadata: ~18 ms of every start, a
    fifth of what `run` imports beyond aiohttp and joserfc). This module names every trigger, executor and job
    store by instance, never by plugin alias, so the scan found nothing we use. The stdlib function is swapped
    only for the length of that one import (a thread asking for entry points at that instant would find none: the
    daemon imports this module before it starts any thread)."""
    import importlib.metadata as metadata

    scan = metadata.entry_points
    metadata.entry_points = lambda **_selection: metadata.EntryPoints(())  # type: ignore[assignment]
    try:
        import apscheduler.schedulers.base  # noqa: F401
    finally:
        metadata.entry_points = scan


_import_without_plugin_scan()

from apscheduler.executors.base import BaseExecutor  # noqa: E402
from apscheduler.job import Job as _Job  # noqa: E402
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError  # noqa: E402
from apscheduler.jobstores.memory import MemoryJobStore  # noqa: E402
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: E402
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED, TIMEOUT_MAX  # noqa: E402
from apscheduler.triggers.base import BaseTrigger  # noqa: E402
from apscheduler.triggers.interval import IntervalTrigger  # noqa: E402

Job = Callable[[], Any]
PARKED = datetime(9999, 12, 31, tzinfo=UTC)  # a run no clock reaches: "no next run" without removing the job


class _Pinned(BaseTrigger):  # type: ignore[misc]
    """The trigger of an `at()` job: it never fires on its own. APScheduler asks it for the next run right after
    each run (and once before, to bound coalesced runs): that is the run `at()` set while the job's function ran,
    if it did, else PARKED (the job stays, so the next `at()` only moves it)."""

    __slots__ = ("running", "then")

    def __init__(self) -> None:
        self.running = False
        self.then: datetime | None = None

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        then, self.then = self.then, None
        return then or PARKED


class _Run:
    """An `at()` job's callable, stable for the job's life (APScheduler inspects a new callable's signature):
    calls the function the latest `at()` gave, marking the run so an `at()` inside it lands after it."""

    __slots__ = ("cancelled", "func", "trigger")
    #: what `inspect.signature` answers at once: APScheduler checks a new job's callable against its arguments,
    #: and deriving the signature of `__call__` was half the cost of adding a profile's job (~20 µs of ~50)
    __signature__ = inspect.Signature()

    def __init__(self, func: Job) -> None:
        self.func, self.trigger, self.cancelled = func, _Pinned(), False

    def __call__(self) -> None:
        self.trigger.running = True
        try:
            self.func()
        finally:
            self.trigger.running = False


def _stamp(when: datetime | None) -> float:
    """A job's place in time, as the store orders it: its next run in epoch seconds, or after all (no next run)."""
    return math.inf if when is None else when.timestamp()


class _SortedJobStore(MemoryJobStore):  # type: ignore[misc]
    """APScheduler's memory store, with its order (next run, then id) kept in a second list of `(time, id)` keys
    that `bisect` searches in C. The store's own binary search runs in Python and each renewal made four of them
    (moved by `at()`, run, parked, moved again): 940 bytecodes per renewal at 100 profiles, more at 1,000 (each
    search is log2 of the jobs), half the scheduler's share of a renewal. Times are stamped with
    `datetime.timestamp` (C) instead of `calendar.timegm`; the store compares only its own stamps."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: list[tuple[float, str]] = []  # beside `self._jobs`, index for index

    def _get_job_index(self, timestamp: float | None, job_id: str) -> int:
        return bisect.bisect_left(self._keys, (math.inf if timestamp is None else timestamp, job_id))

    def _insert(self, job: Any, stamp: float) -> None:
        index = self._get_job_index(stamp, job.id)
        self._jobs.insert(index, (job, stamp))
        self._keys.insert(index, (stamp, job.id))
        self._jobs_index[job.id] = (job, stamp)

    def get_due_jobs(self, now: datetime) -> list[Any]:
        # every job at or before `now`, whatever its id: `(t,)` sorts before every `(t, id)`, so the search stops
        # at the first key of the next representable time after now
        end = bisect.bisect_left(self._keys, (math.nextafter(now.timestamp(), math.inf),))
        return [job for job, _ in self._jobs[:end]]

    def add_job(self, job: Any) -> None:
        if job.id in self._jobs_index:
            raise ConflictingIdError(job.id)
        self._insert(job, _stamp(job.next_run_time))

    def update_job(self, job: Any) -> None:
        # twice per renewal (parked after its run, moved to its next): `_stamp`, `_get_job_index` and `_insert`
        # written out, three calls fewer each time
        job_id, when = job.id, job.next_run_time
        old = self._jobs_index.get(job_id)
        if old is None:
            raise JobLookupError(job_id)
        stamp, keys = math.inf if when is None else when.timestamp(), self._keys
        index = bisect.bisect_left(keys, (old[1], job_id))
        entry = self._jobs_index[job_id] = (job, stamp)
        if stamp == old[1]:
            self._jobs[index] = entry
            return
        del self._jobs[index], keys[index]
        index = bisect.bisect_left(keys, (stamp, job_id))
        self._jobs.insert(index, entry)
        keys.insert(index, (stamp, job_id))

    def remove_job(self, job_id: str) -> None:
        old = self._jobs_index.pop(job_id, None)
        if old is None:
            raise JobLookupError(job_id)
        index = self._get_job_index(old[1], job_id)
        del self._jobs[index], self._keys[index]

    def remove_all_jobs(self) -> None:
        super().remove_all_jobs()
        self._keys = []


class _DirectExecutor(BaseExecutor):  # type: ignore[misc]
    """APScheduler's debug executor (the job's function called at once, on the loop) without its bookkeeping: it
    made two events per run (nobody listens to scheduler events here) and looked its logger up by name each time.
    A job that raises is logged as APScheduler logs it, at error level, and the next run is still scheduled."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        for _ in run_times:  # one: every job coalesces
            try:
                job.func(*job.args, **job.kwargs)
            except BaseException:  # as APScheduler's run_job: whatever a job raises ends at this log line
                self._logger.exception('Job "%s" raised an exception', job)
        self._run_job_success(job.id, ())


class _CoalescingScheduler(AsyncIOScheduler):  # type: ignore[misc]  # APScheduler ships no type hints
    """AsyncIOScheduler whose wakeups, asked for on its own loop, cost one pass per loop turn (module docstring)."""

    _wake_queued = False
    _quiet = False  # inside `move`: it decides itself whether to wake
    _due = math.inf  # loop time (monotonic) the armed timer runs the next pass at (inf: none armed)

    def start(self, paused: bool = False) -> None:
        self._wake_queued = False  # a pass queued on a loop that closed before running it is not pending here
        super().start(paused)

    def _start_timer(self, wait_seconds: float | None) -> None:
        # AsyncIOScheduler's timer, armed with the pass itself: its `wakeup` (ours, below) would queue the pass for
        # one more loop turn, and a renewal due alone (most are, at 20 s tokens) paid that turn every time
        self._stop_timer()
        if wait_seconds is not None:
            self._timeout = self._eventloop.call_later(wait_seconds, self._wake)
        self._due = math.inf if wait_seconds is None else self._eventloop.time() + wait_seconds

    def _stop_timer(self) -> None:
        super()._stop_timer()
        self._due = math.inf

    def move(self, job_id: str, run_date: datetime) -> None:
        """Set an existing job's next run (JobLookupError if there is none). A pass is queued only when the run is
        sooner than the armed timer's: a later one is found by the pass that timer starts. Running, the job is
        moved in its store directly: `modify_job` validated every field APScheduler has (a third of a renewal's
        scheduling) for the one that changes, an aware UTC datetime, and made an event nobody listens to."""
        store, job = self._jobstores.get("default") if self.state != STATE_STOPPED else None, None
        if store is not None:
            with self._jobstores_lock:
                job = store.lookup_job(job_id)
                if job is not None:
                    job.next_run_time = run_date
                    store.update_job(job)
        if job is None:  # a pending job (not started yet), or none: APScheduler's own way, and its JobLookupError
            self._quiet = True
            try:
                self.modify_job(job_id, next_run_time=run_date)
            finally:
                self._quiet = False
        # in seconds from now on both sides: the timer waits on the monotonic clock, the run is a wall-clock time,
        # and the two part ways when the wall clock jumps (a suspend, an NTP step)
        loop = self._eventloop
        if loop is None or run_date.timestamp() - time.time() < self._due - loop.time():
            self.wakeup()

    #: the fields every `at()` job shares, as APScheduler validated them for the first (`add_at`)
    _shared: tuple[tuple[str, Any], ...] | None = None
    _SHARED = ("args", "coalesce", "executor", "func_ref", "kwargs", "max_instances", "misfire_grace_time", "name")

    def add_at(self, job_id: str, run: _Run, run_date: datetime) -> None:
        """`add_job(run, run.trigger, next_run_time=run_date, id=job_id, replace_existing=True)`, its fields validated
        once. `at()` jobs differ only in id, callable, trigger and next run, always of the same kinds (a string, a
        `_Run`, its `_Pinned`, an aware UTC datetime); the rest (the job defaults, the name and reference APScheduler
        derives from the `_Run` class) are the first job's. So the first job added to the running scheduler is
        built by `add_job`, and each later one is a copy of its shared fields with those four set, added by
        APScheduler's own `_real_add_job`: `Job._modify` checked every field of every job, a profile's first
        scheduling (~1,000 bytecodes of the ~21,000 each profile of a fill costs). Before the start, jobs are
        pending and lack the defaults the start gives them: those are `add_job`'s own."""
        with self._jobstores_lock:
            if self._shared is None or self.state == STATE_STOPPED:
                job = self.add_job(run, run.trigger, next_run_time=run_date, id=job_id, replace_existing=True)
                if self.state != STATE_STOPPED:
                    self._shared = tuple((name, getattr(job, name)) for name in self._SHARED)
                return
            job = _Job.__new__(_Job)
            for name, value in self._shared:
                setattr(job, name, value)
            job._scheduler, job._jobstore_alias, job.kwargs = self, None, {}
            job.id, job.func, job.trigger, job.next_run_time = job_id, run, run.trigger, run_date
            self._real_add_job(job, "default", True)

    def _process_jobs(self) -> float | None:
        """APScheduler's pass, the due `at()` jobs run first, as it would run them (`_DirectExecutor`) but without
        the machinery none of them needs: a list of run times of one, an executor's instance count for a call
        that has returned before the next starts, an event nobody listens to, `Job._modify` validating the one
        field that changes (its next run: the `_Pinned` trigger's answer, an aware UTC datetime or PARKED).
        APScheduler's own pass then runs what else is due (`every()` jobs) and arms the timer. A due `at()` job
        moved to now or earlier by its own run runs in that pass, where it would have run one pass later."""
        store = self._jobstores.get("default") if self.state == STATE_RUNNING else None
        if store is not None:
            now = datetime.now(self.timezone)
            with self._jobstores_lock:
                for job in store.get_due_jobs(now):
                    run, when = job.func, job.next_run_time
                    if type(run) is not _Run or store.lookup_job(job.id) is not job or when is None or when > now:
                        continue  # not ours; or an earlier run of this pass removed, replaced or moved it
                    try:
                        run()
                    except BaseException:  # as `_DirectExecutor`: logged at error level, the job stays scheduled
                        self._executors["default"]._logger.exception('Job "%s" raised an exception', job)
                    job.next_run_time = run.trigger.get_next_fire_time(job.next_run_time, now)
                    if store.lookup_job(job.id) is job:  # else its own run removed or replaced it: gone, as asked
                        store.update_job(job)
                # nothing else due (the store's first run is later than now): APScheduler's pass would only find
                # the next run and answer its wait, with eight calls and two debug lines (most renewals, alone)
                keys = store._keys
                first = keys[0][0] if keys else math.inf
                if first > now.timestamp() and len(self._jobstores) == 1:
                    return None if first == math.inf else min(max(first - time.time(), 0.0), TIMEOUT_MAX)
        wait: float | None = super()._process_jobs()
        return wait

    def _dispatch_event(self, event: Any) -> None:
        if self._listeners:  # none here: no listener list copied under a lock per event
            super()._dispatch_event(event)

    def wakeup(self) -> None:
        loop = self._eventloop
        if loop is None or self._wake_queued or self._quiet:
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
            executors={"default": _DirectExecutor()},
            jobstores={"default": _SortedJobStore()},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._runs: dict[str, _Run] = {}  # the `at()` jobs, by id

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
        """Run `func` once at epoch time `when` (now if past), replacing any run set for `job_id` before."""
        run_date = datetime.fromtimestamp(when, UTC)
        run = self._runs.get(job_id)
        if run is not None:
            run.func, run.cancelled = func, False
            if run.trigger.running:  # called from the job's own run: APScheduler sets the next run as it ends
                run.trigger.then = run_date
            try:
                self._scheduler.move(job_id, run_date)
                return
            except JobLookupError:  # removed behind our back (another `every` or `cancel` path): add it again
                pass
        run = self._runs[job_id] = _Run(func)
        self._scheduler.add_at(job_id, run, run_date)

    def every(self, job_id: str, seconds: float, func: Job, jitter: float = 0.0) -> None:
        """Run `func` every `seconds` (APScheduler's jitter only delays; keep it small)."""
        self._runs.pop(job_id, None)
        trigger = IntervalTrigger(seconds=seconds, jitter=jitter or None, timezone=UTC)
        self._scheduler.add_job(func, trigger, id=job_id, replace_existing=True)

    def cancel(self, job_id: str) -> None:
        """Remove the job if it exists. From inside the job's own run it is parked instead and removed after that
        run's pass (APScheduler writes the running job back when its run ends, over a removal or a replacement by
        id), unless an `at()` wants it again before then."""
        run = self._runs.get(job_id)
        if run is not None and run.trigger.running:
            run.trigger.then, run.cancelled = None, True
            asyncio.get_running_loop().call_soon(self._drop, job_id, run)
            return
        self._runs.pop(job_id, None)
        try:
            self._scheduler.remove_job(job_id)
        except JobLookupError:
            pass

    def _drop(self, job_id: str, run: _Run) -> None:
        if self._runs.get(job_id) is run and run.cancelled:
            self.cancel(job_id)

    def next_run(self, job_id: str) -> float | None:
        """Epoch time of the job's next run, or None if it is not scheduled."""
        job = self._scheduler.get_job(job_id)
        when = getattr(job, "next_run_time", None) if job is not None else None
        return when.timestamp() if when is not None and when < PARKED else None

    def wakeup(self) -> None:
        """Re-evaluate due jobs against the wall clock now (after suspend or a clock jump)."""
        if self._scheduler.running:
            self._scheduler.wakeup()
