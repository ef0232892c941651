"""The renewal path's per-renewal work, counted (never timed), and the properties its shorter forms must keep.

Issue 15's CPU goal is per renewal, against a floor that does only the request, the verification and the write. Each
test here counts one piece of the daemon's own work that a renewal no longer does (a frame, a validation, a parse of
nothing), and beside it a property proving the shorter form answers exactly as the longer one did:

- the scheduler runs a due `at()` job without APScheduler's executor round, event objects and `Job._modify`;
- the redactor looks at the keys of a line shape it has seen once (under the same secrets) no more;
- a log line goes from the bound logger to the renderer in one frame, and is rendered by json's C encoder alone;
- an answer without rate-limit headers is not parsed header by header.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from edge_token.core import ratelimit
from edge_token.core.scrub import Plain, Scrubber
from edge_token.core.strictnum import ascii_uint
from edge_token.observe import logs
from edge_token.scheduler import Scheduler


@contextmanager
def calls_into(*files: str) -> Iterator[list[str]]:
    """The Python functions called (by name) in source files ending with any of `files`, while the block runs."""
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.endswith(files):
            seen.append(frame.f_code.co_qualname)

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


# ---- the scheduler ---------------------------------------------------------------------------------------------
def test_a_due_job_runs_without_apschedulers_executor_round_events_or_job_validation() -> None:
    """A renewal's job ran through APScheduler's executor (an instance count under a lock, a list of run times),
    made an event object nobody listens to and re-validated every field of the job to set its next run: ~330
    bytecodes of the ~14,000 a renewal costs. Run directly, it still runs exactly once, and its next run is the
    one its own run asked for."""

    async def scenario() -> tuple[list[str], int, float | None, float]:
        scheduler = Scheduler()
        scheduler.start()
        runs = 0
        later = float(int(time.time()) + 3600)

        def job() -> None:
            nonlocal runs
            runs += 1
            scheduler.at("j", later, job)  # as a profile does (its cycle reschedules it)

        try:
            scheduler.at("j", time.time() + 3600, job)  # the job exists (a profile's second renewal on)
            for _ in range(3):
                await asyncio.sleep(0)
            scheduler.at("j", time.time() - 1, job)
            with calls_into("apscheduler/job.py", "apscheduler/executors/base.py", "apscheduler/events.py") as seen:
                for _ in range(5):
                    await asyncio.sleep(0)
            return seen, runs, scheduler.next_run("j"), later
        finally:
            scheduler.shutdown()

    seen, runs, next_run, later = asyncio.run(scenario())
    assert runs == 1
    assert next_run == later
    assert seen == [], f"APScheduler's per-run machinery ran: {seen}"


def test_a_due_job_that_raises_is_logged_at_error_and_runs_again_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    """The direct run keeps what APScheduler's executor did with a job that raises: an error line naming the job,
    the scheduler (and every other job) unaffected, the job run again at its next `at()`."""

    async def scenario() -> tuple[int, int]:
        scheduler = Scheduler()
        scheduler.start()
        runs = {"bad": 0, "good": 0}

        def bad() -> None:
            runs["bad"] += 1
            raise RuntimeError("boom")

        def good() -> None:
            runs["good"] += 1

        try:
            scheduler.at("bad", time.time() - 1, bad)
            scheduler.at("good", time.time() - 1, good)
            for _ in range(5):
                await asyncio.sleep(0)
            scheduler.at("bad", time.time() - 1, bad)
            for _ in range(5):
                await asyncio.sleep(0)
            return runs["bad"], runs["good"]
        finally:
            scheduler.shutdown()

    with caplog.at_level(logging.ERROR, logger="apscheduler"):
        bad_runs, good_runs = asyncio.run(scenario())
    assert (bad_runs, good_runs) == (2, 1)
    errors = [record for record in caplog.records if "raised an exception" in record.getMessage()]
    assert len(errors) == 2 and all(record.levelno == logging.ERROR and record.exc_info for record in errors)


def test_a_job_due_alone_runs_in_the_loop_turn_its_timer_fires() -> None:
    """The scheduler's timer called `wakeup`, which queued the pass for one more loop turn: every renewal due on its
    own (most, at 20 s tokens) paid a turn and a handle for nothing. The timer now runs the pass itself."""

    async def scenario() -> tuple[int, int]:
        scheduler = Scheduler()
        scheduler.start()
        ran = asyncio.get_running_loop().create_future()
        try:
            scheduler.at("j", time.time() + 3600, lambda: None)
            await asyncio.sleep(0.01)  # started and settled: the timer is armed for the far job
            scheduler.at("j", time.time() + 0.05, lambda: ran.set_result(None))  # sooner: the timer is re-armed
            await asyncio.sleep(0.01)
            with calls_into("edge_token/scheduler.py") as seen:
                await asyncio.wait_for(ran, 5)
            return seen.count("_CoalescingScheduler.wakeup"), seen.count("_CoalescingScheduler._wake")
        finally:
            scheduler.shutdown()

    wakeups, passes = asyncio.run(scenario())
    assert (wakeups, passes) == (0, 1)


@pytest.mark.parametrize("then", ["moved", "cancelled", "replaced"])
def test_a_job_an_earlier_run_of_the_same_pass_moved_or_removed_does_not_run_then(then: str) -> None:
    """Jobs a and b are due in one pass; a's run moves b an hour ahead, cancels it, or cancels it and schedules it
    again with another function an hour ahead. b must not run in that pass (a job runs once per due time, and only
    while scheduled), its next run is what a's run said, and when due again it runs the function it was given last
    (the pass must not write the job it had in hand back over the one a's run left)."""

    async def scenario() -> tuple[list[str], float | None, float]:
        scheduler, ran = Scheduler(), []
        later = float(int(time.time()) + 3600)

        def a() -> None:
            ran.append("a")
            if then != "moved":
                scheduler.cancel("b")
            if then != "cancelled":
                scheduler.at("b", later, lambda: ran.append("b-new"))

        scheduler.start()
        try:
            scheduler.at("a", time.time() - 2, a)
            scheduler.at("b", time.time() - 1, lambda: ran.append("b-old"))
            for _ in range(10):
                await asyncio.sleep(0)
            next_b = scheduler.next_run("b")
            if then != "cancelled":
                scheduler.at("b", time.time() - 1, lambda: ran.append("b-newest"))
                for _ in range(10):
                    await asyncio.sleep(0)
            return ran, next_b, later
        finally:
            scheduler.shutdown()

    ran, next_b, later = asyncio.run(scenario())
    assert ran == (["a"] if then == "cancelled" else ["a", "b-newest"])
    assert next_b == (None if then == "cancelled" else later)


# ---- the redactor ----------------------------------------------------------------------------------------------
def test_a_line_shape_seen_before_is_redacted_without_looking_at_its_keys_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every key of every line was asked "does it name a secret?" and scrubbed: two lines a renewal, five or six
    keys each. A line whose keys (in order) passed before, under the same secrets, is only looked at by value."""
    redactor = logs.Redactor(Scrubber())
    line = {"profile": "p1", "sink": "file:/run/t/p1.jwt", "fingerprint": Plain("0123abcd"), "event": "sink.written"}
    assert redactor(None, "info", dict(line)) == line
    asked: list[str] = []
    original = logs.names_secret

    def names_secret(key: str) -> bool:
        asked.append(key)
        return original(key)

    monkeypatch.setattr(logs, "names_secret", names_secret)
    for index in range(5):
        assert redactor(None, "info", {**line, "profile": f"p{index}"}) == {**line, "profile": f"p{index}"}
    assert asked == []


def test_a_secret_registered_by_another_thread_mid_line_never_shows_in_a_later_lines_key() -> None:
    """Thread A redacts a line of a new shape (its key spells a secret-to-be) when thread B registers that secret
    and logs. A's line was scrubbed under the old secrets: its shape must not be remembered as clean under the new
    ones, or every later line of that shape would skip its keys and show the secret. (Forced interleaving: a value
    whose repr parks thread A where a switch of the interpreter lock could.)"""
    secret, key = "s3cr3t-value-42", "note_s3cr3t-value-42"
    scrubber = Scrubber()
    redactor = logs.Redactor(scrubber)
    redactor(None, "info", {key: "x"})

    class Parked:
        entered, release = threading.Event(), threading.Event()

        def __repr__(self) -> str:
            self.entered.set()
            self.release.wait(5)
            return "v"

    value = Parked()
    racing = threading.Thread(target=redactor, args=(None, "info", {"slow": value, key: "x"}))
    racing.start()
    try:
        assert value.entered.wait(5)
        scrubber.register(secret)
        redactor(None, "info", {"event": "secret.read"})
    finally:
        value.release.set()
        racing.join(5)
    later = [redactor(None, "info", {"slow": n, key: "x"}) for n in range(3)]
    assert not [line for line in later if any(secret in k for k in line)], later


KEYS = ["profile", "sink", "event", "client_secret", "token", "hunter2-secret", "level"]
SECRETS = ["hunter2-secret", "p1-very-secret", "file:/run/t/p1.jwt", "sink.written"]
VALUES = st.one_of(
    st.sampled_from(["p1", "p1-very-secret", "file:/run/t/p1.jwt", "sink.written", "x hunter2-secret y", ""]),
    st.integers(-2, 2),
    st.floats(allow_nan=False),
    st.none(),
    st.booleans(),
    st.builds(Plain, st.sampled_from(["0123abcd", "p1-very-secret"])),
    st.lists(st.sampled_from(["p1", "hunter2-secret"]), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("line"), st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=5)),
            st.tuples(st.just("secret"), st.sampled_from(SECRETS)),
        ),
        max_size=12,
    )
)
def test_the_redactor_answers_as_one_that_has_seen_no_line(steps: list[tuple[str, Any]]) -> None:
    """Whatever lines come, in whatever order with secrets registered between them (some spelled like a key, so a
    shape that passed becomes one that must not): each line comes out exactly as a redactor that never saw a line
    before (so never skips a key) makes it."""
    scrubber = Scrubber()
    seasoned = logs.Redactor(scrubber)
    for kind, value in steps:
        if kind == "secret":
            scrubber.register(value)
            continue
        assert seasoned(None, "info", dict(value)) == logs.Redactor(scrubber)(None, "info", dict(value))


# ---- rendering and the bound logger ----------------------------------------------------------------------------
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and the infinities too: json.dumps writes NaN / Infinity, and so must we
    st.text(),
    st.builds(Plain, st.text(alphabet="0123456789abcdef")),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(st.text(), st.integers()), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(line=st.dictionaries(st.text(), JSON_VALUES, max_size=6))
def test_a_line_renders_as_json_dumps_renders_it(line: dict[str, Any]) -> None:
    """The renderer calls json's C encoder directly: the same text as `json.dumps` with the line's defaults for any
    keys and values (unicode escaped to ASCII, NaN and Infinity as json writes them, non-string keys)."""
    assert logs.render_json(None, "info", line) == json.dumps(line, default=lambda _value: logs.REDACTED)


def test_rendering_a_line_runs_no_python_frame_of_the_json_encoder() -> None:
    line = {"profile": "p1", "fingerprint": Plain("0123abcd"), "expires_at": 1.5e9, "event": "token.renewed"}
    with calls_into("json/encoder.py") as seen:
        text = logs.render_json(None, "info", line)
    assert json.loads(text) == line
    assert seen == []


@contextmanager
def configured(level: str = "info") -> Iterator[io.StringIO]:
    target = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("json", level, target, logs.Redactor(Scrubber()))
        yield target
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()


FIELD_VALUES = st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.none(), st.booleans())


@settings(max_examples=200, deadline=None)
@given(
    context=st.dictionaries(st.sampled_from(["profile", "sink", "a"]), FIELD_VALUES, max_size=2),
    fields=st.dictionaries(st.sampled_from(["sink", "fingerprint", "b", "profile", "level"]), FIELD_VALUES, max_size=3),
    method=st.sampled_from(["debug", "info", "warning", "error", "critical"]),
    event=st.one_of(st.none(), st.text(max_size=8)),
)
def test_the_one_frame_logger_writes_the_lines_structlogs_own_would(
    context: dict[str, Any], fields: dict[str, Any], method: str, event: str | None
) -> None:
    """The configured bound logger builds the line and runs the processors in one frame: for any bound context,
    fields (one named like a bound key, or `level`) and level, it writes what structlog's own filtering logger writes through the
    same processors, and nothing below the configured level."""
    with configured("info") as target:
        bound = structlog.get_logger().bind(**context)
        filtering: Any = structlog.make_filtering_bound_logger(logging.INFO)
        reference = filtering(bound._logger, processors=bound._processors, context=dict(context))
        lines = []
        for logger in (bound, reference):
            getattr(logger, method)(event, **fields)
            logs.flush()
            lines.append(
                [
                    {k: v for k, v in json.loads(text).items() if k != "timestamp"}
                    for text in target.getvalue().splitlines()
                ]
            )
            target.seek(0)
            target.truncate()
    assert lines[0] == lines[1]
    assert len(lines[0]) == (0 if method == "debug" else 1)


def test_a_line_goes_from_the_bound_logger_to_the_renderer_in_one_frame() -> None:
    with configured("info") as target:
        bound = structlog.get_logger().bind(profile="p1")
        with calls_into("structlog/_base.py") as seen:
            bound.info("sink.written", sink="file:/run/t/p1.jwt")
        logs.flush()
    assert json.loads(target.getvalue())["sink"] == "file:/run/t/p1.jwt"
    assert seen == [], f"structlog's generic steps ran: {seen}"


# ---- rate-limit headers ----------------------------------------------------------------------------------------
HEADER_NAMES = ["x-ratelimit-limit", "X-RateLimit-Remaining", "x-ratelimit-reset", "auth0-client-quota-limit", "Date"]
HEADER_VALUES = st.sampled_from(["10", "0", " 7 ", "1e3", "", "b=per_hour;q=10;r=0;t=60", "١٢", "9" * 13])


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUES, max_size=5))
def test_rate_limits_are_read_from_any_headers_as_each_header_alone_says(headers: dict[str, str]) -> None:
    """Whatever subset of the rate-limit headers an answer carries, in any case, each is read on its own (a bad one
    ignored), and an answer with none of them carries no rate limit."""
    proxy = CIMultiDictProxy(CIMultiDict(headers))
    now = 1_800_000_000.0
    parsed = ratelimit.parse(proxy, now)
    limit = ascii_uint(ratelimit._header(proxy, "x-ratelimit-limit"), 12)
    remaining = ascii_uint(ratelimit._header(proxy, "x-ratelimit-remaining"), 12)
    reset_at = ratelimit.parse_reset(ratelimit._header(proxy, "x-ratelimit-reset"), now)
    quotas = ratelimit.parse_quota(ratelimit._header(proxy, "Auth0-Client-Quota-Limit")) or ()
    if limit is None and remaining is None and reset_at is None and not quotas:
        assert parsed is None
    else:
        assert parsed == ratelimit.RateLimit(limit, remaining, reset_at, quotas)
    assert parsed is None or not math.isnan(parsed.reset_at or 0.0)


def test_an_answer_without_rate_limit_headers_is_not_parsed_header_by_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most token answers carry no rate-limit headers, and every renewal asked four parsers for nothing."""
    asked: list[str] = []
    monkeypatch.setattr(ratelimit, "_header", lambda headers, name: asked.append(name))
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", "Date": "Sun, 29 Nov 2026"}))
    assert ratelimit.parse(headers, 1_800_000_000.0) is None
    assert asked == []
