"""One directory's short file calls in shared worker trips: each call gets its own answer, a hung call costs its
trip-mates one error at most, and nothing piles up threads."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_token.core.errors import SinkError
from edge_token.sinks.dircalls import MAX_BATCH, BatchedCalls
from edge_token.sinks.filecalls import BlockingCalls, Workers
from pools import pool_threads, run_with_pool, threads_leave

LIMIT = 3
DEADLINE = 0.5  # the directory's deadline: a hung trip is written off after this (healthy trips take microseconds)


@dataclass(frozen=True)
class Plan:
    """Per healthy owner (a sink of the directory), the calls it makes in turn; and how many owners' first call
    hangs (a file stuck in a dead filesystem)."""

    healthy: list[list[int | str]]  # ints are returned, strings raised (as ValueError)
    hung: int


plans = st.builds(
    Plan,
    healthy=st.lists(st.lists(st.one_of(st.integers(0, 99), st.sampled_from(["e1", "e2"])), max_size=5), max_size=8),
    hung=st.integers(0, 2),
)


def returns(value: int) -> int:
    return value


def raises(message: str) -> int:
    raise ValueError(message)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans)
def test_every_call_gets_its_own_answer_and_a_hang_costs_its_trip_mates_one_error(plan: Plan) -> None:
    """Invariant, for any mix of sinks in one directory: every call returns its own value or raises its own
    exception, except that a call sharing a trip with a hung call (or waiting behind it) fails once with a
    SinkError naming its own sink; while that trip is stuck the directory's calls go one by one through each sink's
    own calls (no second error), and the hung call's file refuses further calls, from any sink object; live worker
    threads never exceed the limit plus the hung calls; without a hang,
    the calls the sinks make together go in one trip per round (counted); and once the filesystem recovers, every
    sink's calls work again, batched."""
    run_with_pool("test-dircalls", LIMIT, functools.partial(exercise, plan))


async def exercise(plan: Plan, workers: Workers, release: threading.Event, name: str) -> None:
    batched = BatchedCalls("file:/d", DEADLINE, workers)
    healthy = [BlockingCalls(f"file:/d/h{i}.jwt", 10.0, workers) for i in range(len(plan.healthy))]
    hung = [BlockingCalls(f"file:/d/s{i}.jwt", DEADLINE, workers) for i in range(plan.hung)]
    errors: Counter[str] = Counter()

    async def healthy_owner(calls: BlockingCalls, script: list[int | str]) -> None:
        for item in script:
            call = functools.partial(returns, item) if isinstance(item, int) else functools.partial(raises, item)
            try:
                result = await batched.call(call, calls)
            except SinkError as exc:
                assert plan.hung and "did not finish within" in str(exc) and calls.what in str(exc)
                errors[calls.what] += 1
            except ValueError as exc:
                assert str(exc) == item
            else:
                assert result == item

    async def hung_owner(calls: BlockingCalls) -> None:
        started = threading.Event()

        def hang() -> int:
            started.set()
            release.wait()
            return 0

        try:
            await batched.call(hang, calls)
        except SinkError as exc:
            assert "did not finish within" in str(exc) and calls.what in str(exc)
        else:
            raise AssertionError("a hung call returned")
        assert pool_threads(name) <= LIMIT + plan.hung
        # its file stays blocked while that call hangs: also for a reload's new sink object for the same file
        again = BlockingCalls(calls.what, DEADLINE, workers)
        try:
            result = await batched.call(lambda: 0, again)
        except SinkError as exc:
            assert ("still stuck" in str(exc) and started.is_set()) or "did not finish within" in str(exc)
        else:
            assert result == 0 and not started.is_set(), "a call went ahead while its file's call hangs"

    await asyncio.gather(
        *(healthy_owner(c, s) for c, s in zip(healthy, plan.healthy, strict=True)), *(hung_owner(c) for c in hung)
    )
    assert all(count <= 1 for count in errors.values()), errors
    assert pool_threads(name) <= LIMIT + plan.hung
    if not plan.hung:
        assert batched.trips <= max((len(script) for script in plan.healthy), default=0)
    release.set()  # the filesystem recovers: the hung calls return, their workers rejoin or leave
    owners = healthy + hung
    for _ in range(400):
        if not batched.stuck and not any(calls.stuck for calls in owners):
            break
        await asyncio.sleep(0.01)  # a written-off call is on its way out
    else:
        raise AssertionError("the directory never recovered")
    before = batched.trips
    assert await asyncio.gather(*(batched.call(functools.partial(returns, 7), calls) for calls in owners)) == [7] * len(
        owners
    )
    assert batched.trips - before <= -(-len(owners) // MAX_BATCH)  # batched again (trips of MAX_BATCH at most)
    await threads_leave(name, LIMIT)


@pytest.mark.parametrize("sinks", [48, 200])
async def test_a_slow_filesystem_fails_no_healthy_call_and_runs_them_side_by_side(sinks: int) -> None:
    """A slow, not hung, filesystem (each call 1/20 of the deadline, as 1 s calls against the daemon's 20 s: an
    NFS mount over a slow link), with every sink of one directory asking at once as a restart's adoptions do: every
    call succeeds, and the calls run side by side (outside attack: in one trip of 64, 48 such calls took 24 s of
    the daemon's deadline and, with more sinks, healthy ones were written off as hung)."""
    deadline, call = 1.0, 0.05
    workers = Workers(limit=16, name=f"slow-fs-{sinks}")
    batched = BatchedCalls("file:/slow", deadline, workers)
    owners = [BlockingCalls(f"file:/slow/{i}.jwt", deadline, workers) for i in range(sinks)]

    def slow_read() -> str:
        time.sleep(call)  # one slow round trip (releases the interpreter lock, as I/O does)
        return "token"

    started = time.monotonic()
    results = await asyncio.gather(*(batched.call(slow_read, owner) for owner in owners), return_exceptions=True)
    took = time.monotonic() - started
    assert [r for r in results if r != "token"] == []
    assert took < sinks * call / 4, f"{sinks} calls of {call} s took {took:.1f} s: not side by side"


def refuse_threads(self: threading.Thread) -> None:
    """Thread.start as the kernel answers at RLIMIT_NPROC or a container's pids limit."""
    raise RuntimeError("can't start new thread")


def test_a_hung_trip_is_written_off_even_when_its_replacement_thread_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A directory's trip hangs with a call queued behind it, and at the trip's deadline the system refuses the
    replacement worker: every caller still gets its answer at the deadline (before, the refusal escaped the
    deadline's callback and the trip's callers waited forever, even after the filesystem recovered), and once
    threads can start again the directory's calls work."""

    async def exercise(workers: Workers, release: threading.Event, name: str) -> None:
        batched = BatchedCalls("dir:/x", DEADLINE, workers)
        owners = [BlockingCalls(f"file:/x/{i}", DEADLINE, workers) for i in range(2)]
        other = BlockingCalls("file:/y/c", 30.0, workers)
        started = threading.Event()

        def hang() -> str:
            started.set()
            release.wait()
            return "late"

        trip = [
            asyncio.ensure_future(batched.call(hang, owners[0])),
            asyncio.ensure_future(batched.call(str, owners[1])),
        ]
        while not started.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(other.call(lambda: "c"))  # the only worker is stuck: it waits in the queue
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse_threads)
            answers = await asyncio.wait_for(asyncio.gather(*trip, return_exceptions=True), DEADLINE * 6)
        assert all(isinstance(a, SinkError) and "did not finish within" in str(a) for a in answers), answers
        release.set()
        assert await asyncio.wait_for(queued, 5.0) == "c"
        assert await batched.call(lambda: 4, owners[1]) == 4
        await threads_leave(name, 1)

    run_with_pool("test-dir-refused-replacement", 1, exercise)


def test_a_trip_whose_thread_is_refused_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No worker is free and the system refuses the thread a directory's trip needs: its calls fail at once with
    a sink error naming the limit (not after the whole deadline as if the filesystem hung), and run fine once
    threads can start."""

    async def exercise(workers: Workers, release: threading.Event, name: str) -> None:
        batched = BatchedCalls("dir:/z", 30.0, workers)
        owner = BlockingCalls("file:/z/a", 30.0, workers)
        ran: list[int] = []
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse_threads)
            began = time.monotonic()
            with pytest.raises(SinkError, match="no worker thread could start"):
                await asyncio.wait_for(batched.call(functools.partial(ran.append, 1), owner), 5.0)
            assert time.monotonic() - began < 2.0
        assert await batched.call(lambda: 5, owner) == 5
        await asyncio.sleep(0.05)
        assert ran == [], "the refused trip ran after its callers were told it failed"
        await threads_leave(name, 1)

    run_with_pool("test-dir-refused-trip", 1, exercise)
