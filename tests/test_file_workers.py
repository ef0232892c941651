"""The worker threads that run every blocking file call: bounded, never lost, never wedged by a hung filesystem."""

from __future__ import annotations

import asyncio
import errno
import functools
import threading
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_token.core.errors import SinkError
from edge_token.sinks.filecalls import BlockingCalls, Workers
from pools import pool_threads, run_with_pool, threads_leave

LIMIT = 3
STUCK_TIMEOUT = 0.15  # a call blocked "in the kernel" (here: on an Event) is written off after this
HEALTHY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Plan:
    """Per owner, the calls it makes in turn: a value to return, an exception to raise, or a call that blocks."""

    healthy: list[list[int | str]]  # ints are returned, strings raised (as ValueError; ETIMEDOUT as TimeoutError)
    stuck: list[int]  # per hung owner: how many calls it makes after its first one hangs


plans = st.builds(
    Plan,
    healthy=st.lists(
        st.lists(st.one_of(st.integers(0, 99), st.sampled_from(["e1", "e2", "ETIMEDOUT"])), max_size=6), max_size=6
    ),
    stuck=st.lists(st.integers(0, 2), max_size=5),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans)
def test_healthy_calls_always_finish_whatever_hangs_beside_them(plan: Plan) -> None:
    """Invariant, for any mix of owners: every call of a healthy owner returns its own value or raises its own
    exception (a TimeoutError of its own too: never taken for a missed deadline), even while other owners' calls hang on the same few workers (a hung call is written off after
    its deadline and another worker takes its place); a hung owner's next calls fail at once, without a thread;
    live worker threads never exceed the limit plus the calls still hung; and once the filesystem recovers,
    every owner's calls work again on no more than `limit` threads."""
    run_with_pool("test-workers", LIMIT, functools.partial(exercise, plan))


async def exercise(plan: Plan, workers: Workers, release: threading.Event, name: str) -> None:
    healthy = [BlockingCalls(f"file:/h{i}", HEALTHY_TIMEOUT, workers) for i in range(len(plan.healthy))]
    hung = [BlockingCalls(f"file:/s{i}", STUCK_TIMEOUT, workers) for i in range(len(plan.stuck))]

    def returns(value: int) -> int:
        return value

    def raises(message: str) -> int:
        if message == "ETIMEDOUT":  # a soft NFS mount's answer: the call's own error, not a missed deadline
            raise TimeoutError(errno.ETIMEDOUT, message)
        raise ValueError(message)

    async def healthy_owner(calls: BlockingCalls, script: list[int | str]) -> None:
        for item in script:
            if isinstance(item, int):
                assert await calls.call(functools.partial(returns, item)) == item
            else:
                try:
                    await calls.call(functools.partial(raises, item))
                except ValueError as exc:
                    assert str(exc) == item
                except TimeoutError as exc:
                    assert exc.errno == errno.ETIMEDOUT, f"the call's own error became {exc!r}"
                else:
                    raise AssertionError("the call's exception was lost")

    async def hung_owner(calls: BlockingCalls, more: int) -> None:
        started = threading.Event()

        def hang() -> None:
            started.set()
            release.wait()

        try:
            await calls.call(hang)
        except SinkError as exc:
            assert "did not finish within" in str(exc)
        else:
            raise AssertionError("a hung call returned")
        assert pool_threads(name) <= LIMIT + len(plan.stuck)
        for _ in range(more):
            before = pool_threads(name)
            try:
                result = await calls.call(lambda: 0)
            except SinkError as exc:
                assert "still stuck" in str(exc) and started.is_set()
                assert pool_threads(name) <= before  # refused without a thread
            else:
                # only a call that never started (it waited for a worker past its deadline and was dropped)
                # leaves its owner free to go on
                assert result == 0 and not started.is_set(), "a call went ahead while its owner's call hangs"

    await asyncio.gather(
        *(healthy_owner(c, s) for c, s in zip(healthy, plan.healthy, strict=True)),
        *(hung_owner(c, m) for c, m in zip(hung, plan.stuck, strict=True)),
    )
    assert pool_threads(name) <= LIMIT + len(plan.stuck)
    release.set()  # the filesystem recovers: the hung calls return, their workers rejoin or leave
    for calls in hung:
        for _ in range(200):
            try:
                assert await calls.call(lambda: 7) == 7
                break
            except SinkError:  # its old call is still on its way out
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("an owner whose call hung never recovered")
    for calls in healthy:
        assert await calls.call(lambda: 8) == 8
    await threads_leave(name, LIMIT)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 3), extra=st.integers(0, 2), queued=st.integers(1, 6))
def test_a_call_that_times_out_in_the_queue_never_runs_and_costs_no_worker(limit: int, extra: int, queued: int) -> None:
    """Invariant: a call still waiting for a worker when its deadline passes is dropped: its function never runs
    (not even once a worker frees up, when it would race the caller's retry), and it strands no worker: once the
    blocked calls return, every later call runs, on no more than `limit` threads."""

    async def exercise(workers: Workers, release: threading.Event, name: str) -> None:
        ran: list[int] = []
        blocking = [BlockingCalls(f"file:/b{i}", HEALTHY_TIMEOUT, workers) for i in range(limit + extra)]
        waiting = [BlockingCalls(f"file:/q{i}", STUCK_TIMEOUT, workers) for i in range(queued)]
        busy = [asyncio.ensure_future(calls.call(release.wait)) for calls in blocking]
        for _ in range(200):  # every worker the limit allows is taken before anything queues behind them
            if pool_threads(name) >= limit:
                break
            await asyncio.sleep(0.01)
        for i, calls in enumerate(waiting):  # nothing is free: each waits in the queue past its deadline
            try:
                await calls.call(functools.partial(ran.append, i))
            except SinkError as exc:
                assert "did not finish within" in str(exc)
            else:
                raise AssertionError("a call ran while every worker was blocked")
        release.set()
        assert all(await asyncio.gather(*busy))
        for calls in waiting + blocking:
            assert await calls.call(lambda: 5) == 5
        await asyncio.sleep(0.05)  # a dropped call still queued would have been taken by now
        assert ran == [], f"dropped calls ran: {ran}"
        await threads_leave(name, limit)

    run_with_pool("test-queued", limit, exercise)


def refuse_threads(self: threading.Thread) -> None:
    """Thread.start as the kernel answers at RLIMIT_NPROC or a container's pids limit."""
    raise RuntimeError("can't start new thread")


def test_a_thread_the_system_refuses_leaves_no_phantom_worker_and_no_job_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the system refuses a new worker thread (RLIMIT_NPROC, memory), the call that needed it fails at once
    with a sink error naming the limit, its function never runs later behind its caller's back (a worker free
    later would have written an old token over a newer one), and the pool does not count a worker that never
    started: the next call runs as soon as a thread can start again."""

    async def exercise(workers: Workers, release: threading.Event, name: str) -> None:
        ran: list[str] = []
        calls = BlockingCalls("file:/refused", HEALTHY_TIMEOUT, workers)
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse_threads)
            with pytest.raises(SinkError, match="no worker thread could start"):
                await calls.call(functools.partial(ran.append, "refused"))
        assert await asyncio.wait_for(calls.call(lambda: 9), 5.0) == 9, "a phantom worker kept the call waiting"
        await asyncio.sleep(0.05)
        assert ran == [], "the refused call ran after its caller was told it failed"
        await threads_leave(name, 1)

    run_with_pool("test-refused", 1, exercise)


def test_a_refused_replacement_for_a_hung_call_still_writes_the_call_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call hangs past its deadline while another owner's call waits for the only worker, and the system
    refuses the replacement thread at that moment: the hung call's caller still gets the deadline's sink error
    (not the refusal), its owner's next calls are refused at once while it stays stuck (no thread each), and the
    waiting call runs once a thread can start again, without waiting out its own deadline."""

    async def exercise(workers: Workers, release: threading.Event, name: str) -> None:
        hung = BlockingCalls("file:/nfs/token", STUCK_TIMEOUT, workers)
        other = BlockingCalls("file:/tmp/other", HEALTHY_TIMEOUT, workers)
        started = threading.Event()

        def hang() -> None:
            started.set()
            release.wait()

        first = asyncio.ensure_future(hung.call(hang))
        while not started.is_set():
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(other.call(lambda: 1))  # the only worker is stuck: it waits in the queue
        await asyncio.sleep(0.01)
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse_threads)
            with pytest.raises(SinkError, match="did not finish within"):
                await first
            for _ in range(3):
                with pytest.raises(SinkError, match="still stuck"):
                    await hung.call(hang)
        assert hung.stuck and pool_threads(name) <= 1
        # threads may start again: the next call of any owner brings a worker, which takes the waiting call too
        assert await BlockingCalls("file:/tmp/third", HEALTHY_TIMEOUT, workers).call(lambda: 3) == 3
        assert await asyncio.wait_for(waiting, 5.0) == 1
        release.set()
        await threads_leave(name, 1)

    run_with_pool("test-refused-replacement", 1, exercise)


def test_a_call_a_free_worker_took_is_not_reported_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread a call asked for is refused, but a worker freed up meanwhile and took the call: the call runs
    once and its caller gets its answer (told it failed, it would retry a write that landed)."""

    async def exercise(workers: Workers, release: threading.Event, name: str) -> None:
        ran: list[str] = []
        busy = asyncio.ensure_future(BlockingCalls("file:/a", HEALTHY_TIMEOUT, workers).call(release.wait))
        while pool_threads(name) < 1:
            await asyncio.sleep(0.01)

        def free_a_worker_then_refuse(self: threading.Thread) -> None:
            release.set()  # the busy worker finishes and takes the queued call while the thread is being refused
            for _ in range(500):
                if ran:
                    break
                time.sleep(0.01)
            raise RuntimeError("can't start new thread")

        def write() -> str:
            ran.append("written")
            return "done"

        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", free_a_worker_then_refuse)
            result = await BlockingCalls("file:/b", HEALTHY_TIMEOUT, workers).call(write)
        assert result == "done" and ran == ["written"]
        assert await busy
        await threads_leave(name, 2)

    run_with_pool("test-refused-taken", 2, exercise)
