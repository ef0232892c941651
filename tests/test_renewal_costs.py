"""What a renewal costs on the event loop, counted (never timed): scheduler passes and cross-thread wakeups per
rescheduling, scrubbing passes per log line. The benchmark (tests/bench) times a renewal; these tests keep the
counts from growing back, and check the properties the cheaper paths must keep.

- APScheduler wakes itself after every job added, through `call_soon_threadsafe` (a write to the loop's
  self-pipe) and a pass over the due jobs: per renewal. Rescheduling many profiles in one loop turn must cost one
  pass and no self-pipe write, and every job must still run exactly once when due.
- A renewal writes a new token over the file as the sink's last write left it: that file cannot hold the new
  token, so its bytes are not read first (four system calls, each handing the interpreter lock between a worker
  thread and the event loop; the strace of a steady 1,000-profile daemon showed 118 futex calls per renewal).
- A structlog line is scrubbed field by field by the redactor; it used to be scrubbed again, whole, by the CLI's
  scrubbing stream (40 % of a line's cost). It now bypasses that stream, so the redactor alone must leave nothing
  readable in the line, whatever the field values are (objects whose repr holds a secret, secret-bearing keys,
  nesting), in any encoding.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.core.scrub import Scrubber, ScrubbingStream
from edge_token.core.settings import SinkConfig
from edge_token.core.token import Token
from edge_token.observe import logs
from edge_token.observe.events import log_outcome
from edge_token.scheduler import Scheduler
from edge_token.sinks.file import FileSink
from leakscan import ENCODINGS, leaks


# ---- the scheduler ---------------------------------------------------------------------------------------------
class Counted:
    """Counts the calls of a bound method and calls it (a spy, not a stand-in)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.calls, self._original = 0, getattr(owner, name)
        setattr(owner, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._original(*args, **kwargs)


async def turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_rescheduling_many_profiles_in_one_turn_costs_one_pass_and_no_self_pipe_write() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler()
    scheduler.start()
    try:
        await turns()
        passes = Counted(scheduler._scheduler, "_process_jobs")
        threadsafe = Counted(loop, "call_soon_threadsafe")
        later = float(int(time.time()) + 3600)  # whole seconds: datetimes keep microseconds only
        for index in range(500):
            scheduler.at(f"renew:p{index}", later + index, lambda: None)
        await turns()
        assert (passes.calls, threadsafe.calls) == (1, 0)
        assert scheduler.next_run("renew:p499") == later + 499
    finally:
        scheduler.shutdown()


async def test_rescheduling_an_existing_job_builds_no_job_and_wakes_nothing_when_later_than_the_timer() -> None:
    """A profile reschedules itself after every renewal: that must move its one job (no new APScheduler Job, no
    signature inspection of the callable) and cost no pass over the due jobs when the new run is later than the
    run the armed timer is waiting for. A sooner run still gets its pass."""
    import apscheduler.job

    scheduler = Scheduler()
    scheduler.start()
    try:
        later = float(int(time.time()) + 3600)  # whole seconds: datetimes keep microseconds only
        scheduler.at("renew:first", later - 60, lambda: None)  # the armed timer waits for this one
        for index in range(200):
            scheduler.at(f"renew:p{index}", later + index, lambda: None)
        await turns()
        built = Counted(apscheduler.job, "check_callable_args")
        passes = Counted(scheduler._scheduler, "_process_jobs")
        for index in range(200):
            scheduler.at(f"renew:p{index}", later + 1000 + index, lambda: None)
        await turns()
        assert (built.calls, passes.calls) == (0, 0)
        assert [scheduler.next_run(f"renew:p{index}") for index in (0, 199)] == [later + 1000, later + 1199]
        scheduler.at("renew:p7", later - 120, lambda: None)  # sooner than the timer's run: one pass re-arms it
        await turns()
        assert passes.calls == 1
    finally:
        scheduler.shutdown()


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(st.one_of(st.none(), st.floats(-5.0, 5.0), st.floats(10.0, 1e6)), min_size=1, max_size=8),
    interval=st.none() | st.floats(0.5, 100.0),
    interval_due=st.booleans(),
    fire=st.integers(0, 7),
)
def test_a_pass_that_finds_nothing_else_due_answers_apschedulers_wait_without_its_pass(
    runs: list[float | None], interval: float | None, interval_due: bool, fire: int
) -> None:
    """A renewal's job fires alone (at 1,000 profiles of 20 s tokens, one every 16 ms): its pass runs it and, when
    nothing else is due, answers the wait until the store's next run itself, without APScheduler's pass over the
    stores (eight calls and two debug lines). Whatever the jobs (`at()` runs in the past, the future or parked,
    an `every()` job due or not), the wait is APScheduler's own answer, and its pass runs exactly when an
    `every()` job is due (ours, the `at()` jobs, run first)."""
    from apscheduler.schedulers.base import BaseScheduler

    async def scenario() -> None:
        scheduler = Scheduler()
        scheduler.start()
        inner, passes = scheduler._scheduler, []

        def counted_pass(self: Any) -> Any:
            passes.append(1)
            return BaseScheduler._process_jobs(self)

        try:
            now = time.time()
            for index, offset in enumerate(runs):
                scheduler.at(f"profile:p{index}", now + (offset if offset is not None else 1e6), lambda: None)
                if offset is None:
                    scheduler.cancel(f"profile:p{index}")
            if interval is not None:
                scheduler.every("jwks:u", interval, lambda: None)
                if interval_due:
                    inner.modify_job("jwks:u", next_run_time=datetime.now(UTC) - timedelta(seconds=1))
            await turns()  # the passes these changes asked for, before the one counted
            if runs[fire % len(runs)] is not None:
                scheduler.at(f"profile:p{fire % len(runs)}", now - 1, lambda: None)  # due now
            if interval is not None and interval_due:
                inner.modify_job("jwks:u", next_run_time=datetime.now(UTC) - timedelta(seconds=1))
            apschedulers: Any = type(inner).__mro__[1]  # AsyncIOScheduler: its pass is the one ours calls
            apschedulers._process_jobs = counted_pass
            try:
                wait = inner._process_jobs()
            finally:
                del apschedulers._process_jobs
            reference = BaseScheduler._process_jobs(inner)  # nothing is due any more: APScheduler's answer
            assert (wait is None) == (reference is None)
            if wait is not None and reference is not None:
                assert abs(wait - reference) < 0.05
            assert len(passes) == (1 if interval is not None and interval_due else 0)
        finally:
            scheduler.shutdown()

    asyncio.run(scenario())


async def test_adding_a_profiles_job_derives_no_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile's first scheduling adds its job: APScheduler checks the callable's signature, which it derived
    from `__call__` each time (half of the ~50 µs an add cost, 1,000 times in a fill); the job's callable states
    its signature instead. The job still runs."""
    import inspect

    derived = Counted(inspect, "_signature_from_function")
    scheduler = Scheduler()
    scheduler.start()
    try:
        runs: list[int] = []
        later = float(int(time.time()) + 3600)
        for index in range(100):
            scheduler.at(f"renew:p{index}", later + index, lambda: None)
        scheduler.at("renew:now", time.time() - 1, lambda: runs.append(1))
        for _ in range(500):
            if runs:
                break
            await asyncio.sleep(0.01)
        assert (derived.calls, runs) == (0, [1])
    finally:
        scheduler.shutdown()


JOB_FIELDS = ("args", "coalesce", "executor", "func_ref", "kwargs", "max_instances", "misfire_grace_time", "name")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=12, unique=True),
    offsets=st.lists(st.integers(min_value=-(10**6), max_value=10**8), min_size=12, max_size=12),
    started=st.booleans(),
)
def test_profiles_jobs_are_validated_once_and_equal_to_the_jobs_apscheduler_builds(
    ids: list[str], offsets: list[int], started: bool
) -> None:
    """A profile's first scheduling added its job through `add_job`, which validated every field of every job
    (`Job._modify`: ~1,000 bytecodes per profile of a fill). Now APScheduler validates the first `at()` job of the
    running scheduler, and each later one copies its shared fields: counted, the callable is checked once however
    many profiles there are; and every job, added before the start or after, holds what `add_job` itself would
    have given it (each field, its store, its next run) and runs at its time."""
    import apscheduler.job

    async def scenario() -> None:
        scheduler = Scheduler()
        reference = Scheduler()
        if started:
            scheduler.start()
            reference.start()
        checked = Counted(apscheduler.job, "check_callable_args")
        try:
            base = float(int(time.time()) + 3600)
            for job_id, offset in zip(ids, offsets, strict=False):
                scheduler.at(job_id, base + offset / 1000, lambda: None)
            assert checked.calls == (1 if started else len(ids))  # pending jobs: add_job's own (no defaults yet)
            if not started:
                scheduler.start()
                reference.start()
            for job_id, offset in zip(ids, offsets, strict=False):
                run = reference._runs[job_id] = type(scheduler._runs[job_id])(lambda: None)
                expected = reference._scheduler.add_job(
                    run, run.trigger, next_run_time=datetime.fromtimestamp(base + offset / 1000, UTC), id=job_id,
                    replace_existing=True,
                )  # fmt: skip
                job = scheduler._scheduler.get_job(job_id)
                assert [getattr(job, f) for f in JOB_FIELDS] == [getattr(expected, f) for f in JOB_FIELDS]
                assert (job.id, job.next_run_time, job._jobstore_alias) == (
                    expected.id, expected.next_run_time, expected._jobstore_alias,
                )  # fmt: skip
                assert job.func is scheduler._runs[job_id] and job.trigger is job.func.trigger
                assert scheduler.next_run(job_id) == reference.next_run(job_id)
            runs: list[str] = []
            scheduler.at(ids[-1], time.time() - 1, lambda: runs.append(ids[-1]))
            for _ in range(300):
                if runs:
                    break
                await asyncio.sleep(0.01)
            assert runs == [ids[-1]] and scheduler.next_run(ids[-1]) is None
        finally:
            apscheduler.job.check_callable_args = checked._original
            scheduler.shutdown()
            reference.shutdown()

    asyncio.run(scenario())


def bytecodes(action: Callable[[], Any]) -> int:
    """The bytecodes the interpreter runs for `action()` (every frame it enters), counted with an opcode trace."""
    count = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "opcode"
        return local

    def enter(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    sys.settrace(enter)
    try:
        action()
    finally:
        sys.settrace(None)
    return count


async def counted_renewal(others: int) -> int:
    """The bytecodes of one renewal's scheduling (its job moved to now, the scheduler's pass running it) beside
    `others` profiles' jobs; checks the job ran once and is parked after."""
    scheduler = Scheduler()
    scheduler.start()
    try:
        later, runs = float(int(time.time()) + 3600), []
        for index in range(others):
            scheduler.at(f"renew:p{index}", later + index % 600, lambda: None)
        scheduler.at("renew:me", later + 7200, lambda: runs.append(1))
        await turns()
        inner = scheduler._scheduler
        inner._stop_timer()  # no timer may run the pass counted below

        def renewal() -> None:
            scheduler.at("renew:me", time.time() - 1, lambda: runs.append(1))
            inner._process_jobs()

        counted = bytecodes(renewal)
        assert runs == [1] and scheduler.next_run("renew:me") is None
        return counted
    finally:
        scheduler.shutdown()


async def test_a_renewals_scheduling_costs_the_same_with_ten_thousand_profiles() -> None:
    """A renewal moves its profile's job and the scheduler runs it: APScheduler's memory store searched its order
    in Python (log2 of the jobs per search, four searches per renewal: ~1,300 bytecodes at 1,000 profiles, the
    largest single cost of a renewal's scheduling). Counted, the work is the same beside no other job and beside
    9,999, so the search cannot grow back; and the job still runs once, at its new time."""
    alone, crowded = await counted_renewal(0), await counted_renewal(9_999)
    assert crowded == alone, f"{crowded} bytecodes beside 9,999 jobs, {alone} alone"


class StoreOrder(RuleBasedStateMachine):
    """The job store the scheduler uses keeps APScheduler's memory store's contract: the same order (next run,
    then id; no next run last), the same due jobs and next run time, the same errors, whatever the sequence."""

    def __init__(self) -> None:
        super().__init__()
        from apscheduler.jobstores.memory import MemoryJobStore

        from edge_token.scheduler import _SortedJobStore

        self.ours, self.reference = _SortedJobStore(), MemoryJobStore()

    # ids anywhere in Unicode (the store sorts any str), times to the microsecond, in any zone
    ids = st.sampled_from([f"renew:p{index}" for index in range(8)] + ["jwks:a", "\U0010ffff" * 3, "\U0010ffff", "é"])
    whens = st.one_of(
        st.none(),
        st.builds(
            lambda second, micro, zone: datetime(2030, 1, 1, 0, 0, second, micro, tzinfo=UTC).astimezone(zone),
            st.integers(0, 40), st.sampled_from([0, 1, 999_999]), st.sampled_from([UTC, timezone(timedelta(hours=-8))]),
        ),
    )  # fmt: skip

    def both(self, method: str, *args: Any) -> None:
        answers = []
        for store in (self.ours, self.reference):
            try:
                answers.append(("ok", getattr(store, method)(*args)))
            except Exception as exc:
                answers.append((type(exc).__name__, str(exc)))
        assert answers[0] == answers[1], (method, args)

    @rule(job_id=ids, when=whens)
    def add(self, job_id: str, when: datetime | None) -> None:
        self.both("add_job", StoredJob(job_id, when))

    @rule(job_id=ids, when=whens)
    def update(self, job_id: str, when: datetime | None) -> None:
        self.both("update_job", StoredJob(job_id, when))

    @rule(job_id=ids, when=whens)
    def move_in_place(self, job_id: str, when: datetime | None) -> None:
        """As `move()` does: the stored job's time changed on the job itself, then `update_job`."""
        for store in (self.ours, self.reference):
            job = store.lookup_job(job_id)
            if job is not None:
                job.next_run_time = when
                store.update_job(job)

    @rule(job_id=ids)
    def remove(self, job_id: str) -> None:
        self.both("remove_job", job_id)

    @rule(when=whens)
    def due(self, when: datetime | None) -> None:
        now = when or datetime(2030, 1, 1, tzinfo=UTC)
        ours, reference = self.ours.get_due_jobs(now), self.reference.get_due_jobs(now)
        assert [job.id for job in ours] == [job.id for job in reference]

    @rule(job_id=ids)
    def due_at_its_time(self, job_id: str) -> None:
        """At exactly a stored job's time: that job is due, whatever its id sorts like."""
        job = self.reference.lookup_job(job_id)
        if job is not None and job.next_run_time is not None:
            self.due(job.next_run_time)

    @rule()
    def clear(self) -> None:
        self.both("remove_all_jobs")

    @invariant()
    def same_order(self) -> None:
        assert [job.id for job in self.ours.get_all_jobs()] == [job.id for job in self.reference.get_all_jobs()]
        assert self.ours.get_next_run_time() == self.reference.get_next_run_time()
        assert all(self.ours.lookup_job(job.id) is job for job in self.ours.get_all_jobs())


class StoredJob:
    """What a job store reads of a job: its id and next run time."""

    def __init__(self, job_id: str, next_run_time: datetime | None) -> None:
        self.id, self.next_run_time = job_id, next_run_time


TestStoreOrder = StoreOrder.TestCase
TestStoreOrder.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_importing_the_scheduler_scans_no_entry_points_and_interval_jobs_still_run() -> None:
    """APScheduler's import listed every installed distribution's entry points three times (~18 ms of every
    start); the scheduler module imports it without that scan (it names triggers and executors by instance), and
    its interval jobs still run."""
    child = """
import asyncio, importlib.metadata as metadata
scans = []
real = metadata.entry_points
metadata.entry_points = lambda **kw: scans.append(kw) or real(**kw)
from edge_token.scheduler import Scheduler
assert metadata.entry_points is not real, "the stdlib function was not put back"
async def main():
    runs, scheduler = [], Scheduler()
    scheduler.start()
    scheduler.every("tick", 0.01, lambda: runs.append(1))
    for _ in range(500):
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.01)
    scheduler.shutdown()
    return len(runs)
print(len(scans), asyncio.run(main()) >= 3)
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0", "True"], done.stderr[-2000:]


ops_st = st.lists(
    st.tuples(
        st.sampled_from(
            ["at_due", "at_later", "cancel", "turn", "due_then_later", "due_then_due", "due_then_gone", "due_then_anew"]
        ),
        st.integers(0, 4),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(ops=ops_st)
def test_every_job_runs_exactly_once_when_due_however_calls_interleave_with_loop_turns(
    ops: list[tuple[str, int]],
) -> None:
    """For any sequence of (re)schedulings, cancellations and loop turns over a few job ids, including jobs that
    reschedule themselves from inside their own run (`due_then_later`: its run sets the next one an hour away;
    `due_then_due`: its run asks to run once more at once; `due_then_gone`: its run cancels it; `due_then_anew`:
    its run cancels it and schedules it again an hour away): a job whose last scheduling was "due now" runs
    exactly as often as asked soon after (a coalesced wakeup is never lost, a run set during a run is never
    dropped), a cancelled or far-future one does not run, and `next_run` tells the truth throughout."""

    async def scenario() -> None:
        scheduler = Scheduler()
        scheduler.start()
        runs: dict[int, int] = {}
        expected: dict[int, float | None] = {}  # job -> its pending run time (None: none pending)
        due_since: dict[int, tuple[int, int]] = {}  # job -> (runs it had when last scheduled "due now", runs asked)
        later = float(int(time.time()) + 3600)  # whole seconds: datetimes keep microseconds only

        def job(index: int, then: str = "") -> Callable[[], None]:
            def run() -> None:
                runs[index] = runs.get(index, 0) + 1
                if then in ("gone", "anew"):
                    scheduler.cancel(f"j{index}")
                if then in ("later", "anew"):
                    scheduler.at(f"j{index}", later, job(index))
                elif then == "due":
                    scheduler.at(f"j{index}", time.time() - 1, job(index))

            return run

        try:
            for op, index in ops:
                if op == "at_due" or op.startswith("due_then_"):
                    then = op.removeprefix("due_then_").removeprefix("at_due")
                    scheduler.at(f"j{index}", time.time() - 1, job(index, then))
                    expected[index] = later if then in ("later", "anew") else None
                    due_since[index] = (runs.get(index, 0), 2 if then == "due" else 1)
                elif op == "at_later":
                    scheduler.at(f"j{index}", later, job(index))
                    expected[index] = later
                    due_since.pop(index, None)
                elif op == "cancel":
                    scheduler.cancel(f"j{index}")
                    expected[index] = None
                    due_since.pop(index, None)
                else:
                    await turns(1)
            deadline = time.monotonic() + 5
            while any(runs.get(i, 0) < n + asked for i, (n, asked) in due_since.items()):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.001)
            await turns()
            for index, (before, asked) in due_since.items():
                assert runs.get(index, 0) == before + asked, (index, runs, due_since)
            for index, when in expected.items():
                if when is not None:
                    assert scheduler.next_run(f"j{index}") == when, index
                else:
                    assert scheduler.next_run(f"j{index}") is None, index
        finally:
            scheduler.shutdown()
        await turns()

    asyncio.run(scenario())


# ---- log lines -------------------------------------------------------------------------------------------------
@contextmanager
def configured(scrubber: Scrubber, target: io.StringIO) -> Iterator[ScrubbingStream]:
    """logs.configure as the CLI sets it up: on a scrubbing stream over `target`, undone afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = ScrubbingStream(target, scrubber)
    try:
        logs.configure("json", "info", stream, logs.Redactor(scrubber))  # type: ignore[arg-type]
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()


def test_a_log_line_is_scrubbed_once_not_again_whole() -> None:
    scrubber = Scrubber()
    scrubber.register("hunter2-secret-value")
    target = io.StringIO()
    with configured(scrubber, target) as stream:
        passes = Counted(stream, "write")
        log: Any = structlog.get_logger("t").bind(profile="p")
        log.info("sink.written", sink="file:/run/p.jwt", fingerprint="0123456789abcdef")
        log.info("token.renewed", fingerprint="0123456789abcdef", expires_at=1.9e9, lifetime=86400.0)
    assert passes.calls == 0
    assert [json.loads(line)["event"] for line in target.getvalue().splitlines()] == ["sink.written", "token.renewed"]


def test_a_renewal_of_a_known_profile_scrubs_no_text_and_ten_thousand_profiles_stay_remembered() -> None:
    """What a steady renewal logs (its two outcome lines) is scrubbed from memory: the line's clock reading and
    the new token's fingerprint (texts made here, from nothing a secret can be in) are not scrubbed at all, and the
    names and sink paths of 10,000 profiles stay remembered (a memo dropped every 16,384 texts scrubbed each path
    again, ~35 µs, on every renewal of a large daemon). The lines still carry both values."""
    scrubber = Scrubber()
    scrubber.register("hunter2-secret-value")
    target = io.StringIO()
    profiles = [f"profile-{index}" for index in range(10_000)]

    def renewed(name: str, number: int) -> RenewalOutcome:
        token = Token(jwt=f"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDB9.c2ln{number:09d}", claims={"exp": 2e9},
                      received_at=1.9e9, lifetime=1000)  # fmt: skip
        sink = f"file:/run/edge-token/{name}.jwt"
        return RenewalOutcome(profile=name, result=Result.NEW_TOKEN, started_at=1.9e9, duration=0.01, token=token,
                              sinks_changed=(sink,), sinks_written=(sink,), state="fresh")  # fmt: skip

    with configured(scrubber, target):
        log: Any = structlog.get_logger("t")
        for number, name in enumerate(profiles):
            log_outcome(log.bind(profile=name), renewed(name, number))
        scrubs = Counted(scrubber, "_scrub_text")
        for number, name in enumerate(profiles):
            log_outcome(log.bind(profile=name), renewed(name, 10_000 + number))
    assert scrubs.calls == 0
    last = [json.loads(line) for line in target.getvalue().splitlines()[-2:]]
    assert [line["fingerprint"] for line in last] == [renewed(profiles[-1], 19_999).token.fingerprint] * 2  # type: ignore[union-attr]
    assert all(line["timestamp"].endswith("Z") for line in last)


class Reveals:
    """An object whose repr and str show a secret (an exception, a Path, a URL object built from one)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Reveals({self.text!r})"

    __str__ = __repr__


SECRET_CHARS = string.ascii_letters + string.digits + "-._~:/+%= \"\\&<>?#@!$'()*,;"
secrets_st = st.text(SECRET_CHARS, min_size=8, max_size=40).filter(lambda s: s.strip() == s)


def holders(echo: str) -> st.SearchStrategy[Any]:
    """Field values that carry `echo` somewhere: as text, inside an object's repr, a key, a nested container."""
    leaf = st.sampled_from([echo, f"said {echo} ok", Reveals(echo), 7, 2.5, None, True, "plain"])
    return st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.tuples(inner, inner)
            | st.dictionaries(st.sampled_from(["k", echo, f"x{echo}", "message"]), inner, max_size=3)
        ),
        max_leaves=6,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=secrets_st, encoding=st.sampled_from(sorted(ENCODINGS)), data=st.data())
def test_no_field_of_any_kind_carries_a_secret_into_the_line(secret: str, encoding: str, data: st.DataObject) -> None:
    scrubber = Scrubber()
    scrubber.register(secret)
    echo = ENCODINGS[encoding]("client", secret)
    fields = data.draw(st.dictionaries(st.sampled_from(["a", "detail", echo, "b"]), holders(echo), max_size=4))
    target = io.StringIO()
    with configured(scrubber, target):
        structlog.get_logger("t").warning("provider.said", **fields)
    line = target.getvalue()
    assert line.count("\n") == 1 and json.loads(line)["event"] == "provider.said"
    assert leaks(line, [secret]) == [], line


# ---- a renewal's file write ------------------------------------------------------------------------------------
def token_number(number: int) -> Token:
    """Distinct tokens of one length (a renewal's new token is the old one's size: the unchanged check reads)."""
    return Token(jwt=f"eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDB9.c2ln{number:06d}", claims={"exp": 2e9},
                 received_at=0, lifetime=1000)  # fmt: skip


_reads: list[list[str]] = []


def _count_reads(event: str, args: tuple[Any, ...]) -> None:
    if not _reads or event != "open" or args[0] != "t.jwt" or not isinstance(args[2], int):
        return
    if not args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):  # a read (the unchanged check), not the write
        _reads[0].append(args[0])


sys.addaudithook(_count_reads)
ACTIONS = ["renew", "again", "in_place", "chmod_back", "replaced_same", "other_wrote_next"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12))
def test_a_new_token_over_the_file_as_we_left_it_is_written_without_reading_it(
    tmp_path_factory: pytest.TempPathFactory, actions: list[str]
) -> None:
    """Whatever happens to the sink file between writes (nothing; rewritten in place with other bytes of the same
    size; chmod-ed and back; replaced by another file with our bytes; another writer put the next token there
    already): after each write the file holds exactly the token, `changed` is False only when it already did, and
    a new token over the file exactly as our last write left it costs no read of the old one."""
    directory = tmp_path_factory.mktemp("sink")
    directory.chmod(0o700)
    target = directory / "t.jwt"
    sink = FileSink(SinkConfig(type="file", path=target, mode=0o600))
    number, untouched = 0, False
    reads: list[str] = []
    _reads[:] = [reads]
    try:
        for action in ACTIONS[:1] + actions:
            if action in ("renew", "other_wrote_next"):
                number += 1
            token = token_number(number)
            before = target.read_bytes() if target.exists() else None
            if action == "in_place" and before is not None:
                target.write_bytes(before[::-1])  # same size, other bytes, same inode
            elif action == "chmod_back" and before is not None:
                target.chmod(0o640)
                target.chmod(0o600)
            elif action == "replaced_same" and before is not None:
                (directory / "other").write_bytes(before)
                (directory / "other").chmod(0o600)
                (directory / "other").rename(target)
            elif action == "other_wrote_next":
                (directory / "other").write_bytes(token.jwt.encode())
                (directory / "other").chmod(0o600)
                (directory / "other").rename(target)
            held_already = target.exists() and target.read_bytes() == token.jwt.encode()
            skip_expected = action == "renew" and untouched
            reads.clear()
            changed = asyncio.run(sink.write(token))
            assert target.read_bytes() == token.jwt.encode()
            assert changed or held_already, (action, "reported unchanged but did not hold the token")
            if skip_expected:
                assert reads == [], "a new token over the file as we left it read the old one"
            untouched = True
    finally:
        _reads.clear()


def test_an_outcomes_lines_go_out_in_one_write_and_another_threads_lines_are_not_held() -> None:
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    scrubber = Scrubber()
    token = token_number(1)
    outcome = RenewalOutcome(
        profile="p", result=Result.NEW_TOKEN, started_at=0.0, duration=0.1, token=token, requested=True,
        sinks_written=("file:/run/a.jwt", "file:/run/b.jwt"), sinks_changed=("file:/run/a.jwt", "file:/run/b.jwt"),
    )  # fmt: skip
    with configured(scrubber, Recorder()):
        log: Any = structlog.get_logger("edge_token")
        log_outcome(log.bind(profile=outcome.profile), outcome)
        assert len(writes) == 1 and [json.loads(line)["event"] for line in writes[0].splitlines()] == [
            "sink.written", "sink.written", "token.renewed"
        ]  # fmt: skip
        writes.clear()
        with logs.together():
            log.info("first")
            other = threading.Thread(target=lambda: log.info("from.another.thread"))
            other.start()
            other.join()
            assert [json.loads(text)["event"] for text in writes] == ["from.another.thread"]
            log.info("second")
        assert [json.loads(line)["event"] for line in writes[1].splitlines()] == ["first", "second"]


def test_on_the_event_loop_the_lines_of_one_turn_go_out_in_one_write_by_its_end() -> None:
    """Several renewals end in one turn of the event loop (a fill): their lines go out in one write as the turn
    ends, all of them, in order (each write hands the interpreter lock to a busy file worker); the next turn's
    lines in the next write; with no loop running a line is written at once; `logs.flush()` writes what a turn
    holds (before os._exit)."""
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    def events(text: str) -> list[str]:
        return [json.loads(line)["event"] for line in text.splitlines()]

    async def turns_of_lines(log: Any) -> None:
        for index in range(5):
            log_outcome(log.bind(profile=f"p{index}"), RenewalOutcome(
                profile=f"p{index}", result=Result.NEW_TOKEN, started_at=0.0, duration=0.1, token=token_number(index),
                requested=True, sinks_written=("file:/run/a.jwt",), sinks_changed=("file:/run/a.jwt",),
            ))  # fmt: skip
        assert writes == []  # held until the turn ends
        await asyncio.sleep(0)
        assert len(writes) == 1 and events(writes[0]) == ["sink.written", "token.renewed"] * 5
        log.info("next.turn")
        logs.flush()
        assert len(writes) == 2 and events(writes[1]) == ["next.turn"]
        log.info("last")
        await asyncio.sleep(0)
        assert events(writes[2]) == ["last"]

    with configured(Scrubber(), Recorder()):
        log: Any = structlog.get_logger("edge_token")
        log.info("no.loop")
        assert len(writes) == 1
        writes.clear()
        asyncio.run(turns_of_lines(log))


# ---- verification ----------------------------------------------------------------------------------------------
def test_verifying_a_token_builds_no_json_decoder_and_parses_each_part_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal verifies its token: the header and the payload are parsed once each, by the one strict decoder
    (`json.loads(cls=...)` built a decoder per document, and joserfc's `jwt.decode` parsed the payload a second
    time), and the result is the same Token."""
    import json.decoder

    from joserfc import jwt as jose_jwt
    from joserfc.jwk import KeySet, RSAKey

    from edge_token.core import strictjson
    from edge_token.provider.verify import Rules, verify_token

    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    keys = KeySet([key])
    now = float(int(time.time()))
    claims = {"iss": "https://auth/", "aud": "https://api", "exp": now + 3600, "iat": now, "azp": "cid"}
    jwt = jose_jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
    rules = Rules(issuer="https://auth/", audience="https://api", client_id="cid")

    async def key_set(_kid: str | None, _fresh: bool) -> KeySet:
        return keys

    built: list[type] = []
    parsed: list[type] = []
    original_init, original_decode = json.decoder.JSONDecoder.__init__, json.decoder.JSONDecoder.decode

    def init(self: json.decoder.JSONDecoder, **kwargs: Any) -> None:
        built.append(type(self))
        original_init(self, **kwargs)

    def decode(self: json.decoder.JSONDecoder, text: str, *rest: Any) -> Any:
        parsed.append(type(self))
        return original_decode(self, text, *rest)

    scanned: list[str] = []
    original_scan = strictjson._SCAN

    def scan(text: str, start: int) -> Any:
        scanned.append(text)
        return original_scan(text, start)

    monkeypatch.setattr(json.decoder.JSONDecoder, "__init__", init)
    monkeypatch.setattr(json.decoder.JSONDecoder, "decode", decode)
    monkeypatch.setattr(strictjson, "_SCAN", scan)  # the strict decoder's scanner, which `loads` calls directly
    token = asyncio.run(verify_token(jwt, key_set, rules, now, received_at=now))
    assert (token.claims, token.lifetime, token.kid) == (claims, 3600.0, "k1")
    assert built == []
    # header and payload, strictly, once each (joserfc reads the header itself too; never the payload)
    assert strictjson.StrictDecoder not in parsed and len(parsed) <= 1
    assert [json.loads(text) for text in scanned] == [{"alg": "RS256", "kid": "k1", "typ": "JWT"}, claims]


line_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["debug", "info", "warning", "warn", "error", "exception", "critical"]),
    fields=st.dictionaries(st.sampled_from(["profile", "sink", "token", "client_secret", "n", "x"]), line_values),
    with_exception=st.booleans(),
)
def test_our_lines_in_one_pass_are_the_chains_lines(method: str, fields: dict[str, Any], with_exception: bool) -> None:
    """Our own JSON lines run their processors in one call (`logs.one_pass`) rather than through structlog's loop
    over the chain, which foreign (stdlib) lines still use: for any fields, level and traceback, the line is the
    same, the secret-named fields redacted, the token never in it."""
    scrubber = Scrubber()
    scrubber.register("s3cr3t-value")
    shared, tail = logs._processors("json", io.StringIO(), logs.Redactor(scrubber))
    event: dict[str, Any] = {"event": "e", **fields, "token": "s3cr3t-value"}
    if with_exception:
        try:
            raise ValueError("while holding s3cr3t-value")
        except ValueError as exc:
            event["exc_info"] = exc
    chained: Any = dict(event)
    for processor in [*shared, *tail]:
        chained = processor(None, method, chained)
    alone = logs.one_pass(*tail)(None, method, dict(event))
    without_time = [{k: v for k, v in json.loads(text).items() if k != "timestamp"} for text in (chained, alone)]
    assert without_time[0] == without_time[1]
    assert "s3cr3t-value" not in alone
    assert without_time[1]["level"] == {"warn": "warning", "exception": "error"}.get(method, method)
