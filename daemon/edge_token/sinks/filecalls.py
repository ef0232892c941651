"""Blocking file calls off the event loop: a few long-lived worker threads, a deadline per call, hung calls
written off (a dead NFS server costs a bounded wait and one thread, never the daemon)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from edge_token.core.errors import SinkError

T = TypeVar("T")


class _Job:
    """One blocking call handed to the worker threads."""

    __slots__ = ("abandoned", "finished", "function", "started")

    def __init__(self, function: Callable[[], None]) -> None:
        self.function = function
        self.started = self.finished = self.abandoned = False

    def is_alive(self) -> bool:
        """True while the call runs (a written-off call that is still stuck in the kernel)."""
        return self.started and not self.finished


class ThreadRefused(RuntimeError):
    """The system refused the worker thread a file call needed (RLIMIT_NPROC, a container's pids limit, memory);
    the call was dropped, never run."""


class Workers:
    """A few long-lived daemon threads that run blocking file calls for every sink of the process.

    Why not a thread per call: `Thread.start()` blocks the event loop until the new thread runs, and on a busy
    machine that wait cost more than the file call itself (about half of a 1,000-profile fill). Why not
    `asyncio.to_thread`: its executor's threads are joined at exit, so a call stuck in the kernel would keep
    SIGTERM from ending the daemon; these are daemon threads, abandoned at exit. Idle workers block in the C
    `SimpleQueue.get` (no CPU). Why not a `threading.Condition`: its `notify()` under the lock woke a worker
    straight into that lock, still held by the event loop; the loop paid ~80 us of hand-overs per call (a
    third of a fill's sink writes, on the loop). The counts below sit under a plain lock held for a few
    statements, and `put` runs after it is released. A worker whose call was written off (stuck past its
    deadline) no longer counts: another may start in its place, so a hung filesystem costs threads only for the
    calls stuck in it, which `BlockingCalls` bounds to one per sink.
    """

    def __init__(self, limit: int = 16, name: str = "edge-token file calls") -> None:
        self.limit, self.name = limit, name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._queued = 0  # jobs put and not yet taken by a worker (written-off ones included: a worker drops them)
        self._idle = 0  # workers that will take a job without being started: in get(), or on their way to it
        self._workers = 0  # live workers that are not written off

    def submit(self, job: _Job) -> None:
        """Queue `job` for the first free worker (started if none is free and the limit allows)."""
        with self._lock:
            self._queued += 1
            start = self._wanted()
        self._jobs.put(job)
        if start:
            self._start(job)

    def _wanted(self) -> bool:
        """(With the lock held) True when a new worker must start for the queued jobs, claimed here; False when
        every queued job has an idle worker coming or the limit is reached (then a job waits for the first worker
        to be free; its caller's deadline bounds that wait)."""
        if self._idle >= self._queued or self._workers >= self.limit:
            return False
        self._workers += 1
        self._idle += 1
        return True

    def _start(self, job: _Job | None = None) -> None:
        """Start the worker `_wanted` claimed. If the system refuses a thread (RLIMIT_NPROC, a container's pids
        limit, memory), the claim is taken back: no job may wait for a worker that will never come (the next free
        one takes it, or its caller's deadline ends the wait). `job`, the call that asked for the thread, is then
        dropped and ThreadRefused raised, unless a worker took it meanwhile (it runs, and its caller gets its
        answer). Without `job` (a replacement for a written-off worker) nothing is raised."""
        try:
            threading.Thread(target=self._work, name=self.name, daemon=True).start()
        except RuntimeError as exc:
            with self._lock:
                self._workers -= 1
                self._idle -= 1
                dropped = job is not None and not job.started
                if dropped and job is not None:
                    job.finished = True
            if dropped:
                raise ThreadRefused(str(exc)) from None

    def write_off(self, job: _Job) -> None:
        """The caller gave up on `job`: dropped if it has not started (the worker that takes it skips it); else its
        worker no longer counts, and one takes its place if jobs are waiting."""
        with self._lock:
            if not job.started:
                job.finished = True
                return
            if job.finished:
                return
            job.abandoned = True
            self._workers -= 1
            start = self._wanted()
        if start:
            self._start()  # never raises: a deadline's callback calls this

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with self._lock:
                self._queued -= 1
                if job.finished:  # written off before it started: nothing to run
                    continue
                self._idle -= 1
                job.started = True
            _running.job = job
            job.function()
            _running.job = None
            with self._lock:
                job.finished = True
                if job.abandoned:  # written off while stuck: rejoin only if nobody took our place
                    if self._workers >= self.limit:
                        return
                    self._workers += 1
                self._idle += 1


#: the process's file workers (shared by every sink, like the descriptors they use)
WORKERS = Workers()
_running = threading.local()  # in a worker: the job it runs
#: the owners (`what`: a sink's type and path) whose last call is written off: per owner, not per object, so a
#: reload's new sink for the same file waits for the old one's stuck call like the old sink would
_STUCK: dict[str, _Job] = {}


def refused(what: str, exc: ThreadRefused) -> SinkError:
    """The error of a call dropped because no worker thread could start."""
    return SinkError(
        f"{what}: no worker thread could start for the file call ({exc}: the process or container is at its thread "
        "or memory limit; raise LimitNPROC=/TasksMax= or pids.max); the previous token is kept"
    )


def given_up() -> bool:
    """In a worker: was the call it runs written off (its caller stopped waiting)? A write checks this before its
    rename: landing now, after the deadline, could put an older token over the one written meanwhile."""
    job: _Job | None = getattr(_running, "job", None)
    return job is not None and job.abandoned


class BlockingCalls:
    """Runs blocking file calls on the worker threads, with a deadline, one at a time per owner.

    A call stuck in the kernel (hung NFS/FUSE server, a FIFO) never returns: the caller gets a SinkError after
    `timeout` seconds, the worker is written off (a daemon thread: the process can still exit), and while that
    call is still stuck, further calls of the same owner (any object with the same `what`: a reload's new sink
    for the same file too) fail at once instead of piling up threads.
    """

    def __init__(self, what: str, timeout: float, workers: Workers | None = None) -> None:
        self.what, self.timeout = what, timeout
        self._workers = workers or WORKERS

    @property
    def stuck(self) -> bool:
        """An earlier call of this owner is still stuck past its deadline (its next calls are refused at once)."""
        stuck = _STUCK.get(self.what)
        return stuck is not None and stuck.is_alive()

    def written_off(self, job: _Job) -> None:
        """A call of this owner that ran in a shared trip (sinks/dircalls.py) is stuck past its deadline: like its
        own stuck call, it blocks this owner's next calls while it stays stuck."""
        _STUCK[self.what] = job

    def _refuse_if_stuck(self) -> None:
        stuck = _STUCK.get(self.what)
        if stuck is not None and stuck.is_alive():
            raise SinkError(f"{self.what}: an earlier file operation is still stuck (hung filesystem?); not retried")
        _STUCK.pop(self.what, None)

    async def call(self, function: Callable[[], T]) -> T:
        """`function()` on a worker thread: its result or its exception, or SinkError after the deadline."""
        self._refuse_if_stuck()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]  # None only when error is set

        def work() -> None:
            try:
                outcome: tuple[T | None, BaseException | None] = (function(), None)
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:
                pass  # the loop is gone: nobody waits for this any more

        expired = TimeoutError()  # this very instance: the deadline, not a TimeoutError the call raised

        def expire() -> None:
            if not future.done():
                future.set_exception(expired)

        job = _Job(work)
        try:
            self._workers.submit(job)
        except ThreadRefused as exc:
            raise refused(self.what, exc) from None
        deadline = loop.call_later(self.timeout, expire)  # not wait_for(shield()): two tasks' worth per call
        try:
            return await future
        except TimeoutError as exc:
            if exc is not expired:
                raise
            self._workers.write_off(job)
            _STUCK[self.what] = job
            raise SinkError(
                f"{self.what}: a file operation did not finish within {self.timeout:g} s (hung filesystem?); "
                "the previous token is kept"
            ) from None
        finally:
            deadline.cancel()
