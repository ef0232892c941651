"""Short file calls of the sinks of one directory go to the worker threads a few at a time, in shared trips.

A restart over N FRESH sinks makes two short file calls per sink: the read-back, and (after verification) the
check that the file is still the one read. Each trip to a worker thread costs the event loop a future, a deadline,
a thread wake-up and a self-pipe wake-up, and the worker's system calls compete with the loop for the interpreter
lock: at 1,000 sinks the trips cost more than the calls. The sinks of one directory share one `BatchedCalls` (per
event loop): the calls they make while a trip is out (the renewals in flight reach the same step together) go
together in the next trip, up to MAX_BATCH calls, with one deadline and one wake-up of the loop. One trip is out
at a time while trips are quick; once the last one has been out SLOW_TRIP seconds (a slow, not hung, filesystem),
the next goes beside it, up to MAX_TRIPS: slow calls still run side by side.

Nothing here may wedge the daemon or widen a failure: a batch stuck past its deadline (a hung filesystem) is written
off like any worker call; the calls it finished keep their answers, the one stuck and those not started get a
SinkError; the stuck call's file is blocked as if that call had been alone (`BlockingCalls.written_off`), and while
the trip stays stuck the directory's calls go one by one through each sink's own `BlockingCalls` (so a hung file
costs only its own sink, as without batches).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from edge_token.core.errors import SinkError
from edge_token.sinks.filecalls import WORKERS, BlockingCalls, ThreadRefused, Workers, _Job, refused

T = TypeVar("T")

#: calls per trip at most, and trips of one directory in flight at most: a slow (not hung) filesystem, one round
#: trip per call, still runs a directory's calls side by side (an attack with 0.5 s per open: 48 sinks in one trip
#: of 64 took 24 s, and with more sinks healthy ones were written off as hung)
MAX_BATCH = 8
MAX_TRIPS = 16
SLOW_TRIP = 0.02  # a trip out longer than this (seconds) is slow: the next one goes beside it


class _Batch:
    """The calls of one trip, in order, and what the worker made of them so far."""

    __slots__ = ("calls", "done", "expired", "job", "loop", "sent", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: list[tuple[Callable[[], Any], asyncio.Future[Any], BlockingCalls]] = []
        # (result, exception) of each finished call, appended by the worker (list.append is atomic)
        self.done: list[tuple[Any, BaseException | None]] = []
        self.expired = False  # set on the loop at the deadline: the worker starts no further call
        self.job: _Job | None = None  # set when handed to a worker
        self.timer: asyncio.TimerHandle | None = None
        self.sent = 0.0  # loop time when handed to a worker


class BatchedCalls:
    """One directory's short blocking file calls on one event loop, coalesced into worker trips (see the module
    docstring).

    One trip per directory is in flight while trips are quick (up to MAX_TRIPS while they are slow), of at most
    MAX_BATCH calls; calls made meanwhile wait and go together in the next one (a "group commit": the busier the
    event loop, the fuller each trip). A batch's deadline runs from its
    first call, so no call waits longer than `timeout` in all, the trip in flight before its own included.
    """

    def __init__(self, what: str, timeout: float, workers: Workers | None = None) -> None:
        self.what, self.timeout = what, timeout
        self._workers = workers or WORKERS
        self._waiting: deque[_Batch] = deque()  # not handed to a worker yet, oldest first
        self._flight: set[_Batch] = set()  # the trips in flight
        self._recheck: asyncio.TimerHandle | None = None  # the next look at whether the trips out are slow
        self._stuck: _Job | None = None
        self.trips = 0  # worker trips made (counted by tests)

    @property
    def stuck(self) -> bool:
        """A trip of this directory is still stuck past its deadline."""
        return self._stuck is not None and self._stuck.is_alive()

    async def call(self, function: Callable[[], T], owner: BlockingCalls) -> T:
        """`function()` on a worker thread, in one trip with the other calls of this directory made meanwhile: its
        result or its exception, or SinkError after the deadline. `owner` is the calling sink's own
        `BlockingCalls`: it runs the call alone while its own earlier call, or a trip of this directory, is stuck."""
        if owner.stuck or self.stuck:
            return await owner.call(function)
        loop = asyncio.get_running_loop()
        batch = self._waiting[-1] if self._waiting else None
        if batch is None or len(batch.calls) >= MAX_BATCH:
            batch = _Batch(loop)
            batch.timer = loop.call_later(self.timeout, self._expire, batch)
            self._waiting.append(batch)
            loop.call_soon(self._submit)  # at the end of this loop turn: the calls made in it go together
        future: asyncio.Future[T] = loop.create_future()
        batch.calls.append((function, future, owner))
        return await future

    def _submit(self) -> None:
        """(On the loop.) Hand the oldest waiting batch to a worker when no trip is out, or when the last one sent
        has been out for SLOW_TRIP seconds (a slow filesystem: then trips go in parallel, up to MAX_TRIPS). A
        return, a deadline or that wait submits the next."""
        while self._waiting and len(self._flight) < MAX_TRIPS:
            loop = self._waiting[0].loop
            wait = max((batch.sent for batch in self._flight), default=-SLOW_TRIP) + SLOW_TRIP - loop.time()
            if wait > 0:  # the trips out are quick so far: the waiting calls go in the next one
                if self._recheck is None:
                    self._recheck = loop.call_later(wait, self._rechecked)
                return
            batch = self._waiting.popleft()
            self._flight.add(batch)
            batch.sent = loop.time()
            batch.job = _Job(functools.partial(self._run, batch))
            self.trips += 1
            try:
                self._workers.submit(batch.job)
            except ThreadRefused as exc:  # dropped, never run: its calls fail now, not at their deadline
                self._flight.discard(batch)
                batch.job = None
                self._fail(batch, exc)

    def _rechecked(self) -> None:
        self._recheck = None
        self._submit()

    def _run(self, batch: _Batch) -> None:
        """(In a worker.) Every call of the batch in turn, then one wake-up of the loop for all of them."""
        for function, _future, _owner in batch.calls:
            if batch.expired:
                break
            try:
                outcome: tuple[Any, BaseException | None] = (function(), None)
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
                outcome = (None, exc)
            batch.done.append(outcome)
        try:
            batch.loop.call_soon_threadsafe(self._returned, batch)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for this any more

    def _returned(self, batch: _Batch) -> None:
        """(On the loop.) The trip is back: answer its calls, send the next batch (after the turn its answers
        start, so the calls they lead to join it)."""
        if batch.timer is not None:
            batch.timer.cancel()
        batch.job = None  # it holds the batch (its function is `_run` of it): no cycle left for the collector
        self._answer(batch)
        if batch in self._flight:
            self._flight.discard(batch)
            if self._waiting:
                batch.loop.call_soon(self._submit)

    def _answer(self, batch: _Batch) -> None:
        """Hand each finished call's outcome to its caller."""
        for (_function, future, _owner), (result, error) in zip(batch.calls, list(batch.done), strict=False):
            if future.done():
                continue  # its caller was cancelled, or the deadline answered it already
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _expire(self, batch: _Batch) -> None:
        """(On the loop, at the deadline of the batch's first call.) Write the trip off: finished calls keep their
        answers, the rest fail. If it is stuck in the kernel, so is the directory: the batches waiting behind it
        fail now, and the next calls go through each sink's own `BlockingCalls`."""
        batch.expired = True
        if batch in self._waiting:
            self._waiting.remove(batch)
        job = batch.job
        if job is not None:
            self._workers.write_off(job)
            if job.is_alive():
                self._stuck = job
                running = len(batch.done)  # the call stuck in the kernel: its file is blocked too, as when alone
                if running < len(batch.calls):
                    batch.calls[running][2].written_off(job)
        batch.job = None  # (see `_returned`); a stuck one is kept in `_stuck`
        self._answer(batch)
        self._fail(batch)
        if batch in self._flight:
            self._flight.discard(batch)
            if self.stuck:
                while self._waiting:
                    self._fail(self._waiting.popleft())
            elif self._waiting:
                batch.loop.call_soon(self._submit)

    def _fail(self, batch: _Batch, refusal: ThreadRefused | None = None) -> None:
        """Every call of `batch` without an answer fails: the trip it was in, or waited for, is written off, or
        (`refusal`) no worker thread could start for it."""
        if batch.timer is not None:
            batch.timer.cancel()
        batch.expired = True
        for _function, future, owner in batch.calls:
            if not future.done():
                future.set_exception(
                    refused(owner.what, refusal)
                    if refusal is not None
                    else SinkError(
                        f"{owner.what}: a file operation did not finish within {self.timeout:g} s (hung "
                        "filesystem?); the previous token is kept"
                    )
                )
