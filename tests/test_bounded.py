"""Bounded requests, whatever the bytes: a generated hostile provider against the real daemon.

Property: for any sequence of token-endpoint answers (any status, Retry-After written any way, bodies of every
shape: Unicode digits, huge integers and floats, wrong types, truncated, nested, oversized), the daemon
- never schedules a run sooner than MIN_RUN_GAP from now (so nothing can spin),
- sends at most one request per due job, with consecutive failed attempts at least the policy's backoff base
  apart and after a success none before the token's renewal window,
- classifies every failure (a bounded `kind`, never "internal": network bytes are never a bug), counts every
  request in `edge_token_token_requests_total`, and shows the last error in /status,
- never loses the last good token from its sink;
and `once` ends every such exchange with a sysexits code, never an exception.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CLIENT_ID, SOAK
from edge_token.app import exit_code, run_once
from edge_token.config import load_config
from edge_token.core.errors import ProtocolError, VerificationError
from edge_token.core.policy import MIN_RUN_GAP, parse_retry_after
from edge_token.provider.oauth import parse_token_answer
from edge_token.provider.verify import Rules, check_claims
from faultyauth import Fault, FaultyAuthServer
from harness import LoopWorld

TTL = 1000.0
KINDS = {"transient", "rejected", "protocol", "invalid_token", "jwks"}
EXITS = {0, 65, 69, 76, 77}
VALID = "<a genuine token>"

# every way a number can be written that Python's int()/float()/isdigit() treat generously
digits = st.one_of(
    st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=6),
    st.sampled_from(["\u00b2", "\u0661\u0662", "\uff11\uff10", "1" * 4000, "-5", "+5", "5.5", " 7 ", "1e3", "0x10"]),
)
numbers: st.SearchStrategy[Any] = st.one_of(
    st.integers(-(10**400), 10**400), st.floats(allow_nan=False), st.just(10**400), st.just(1e308), digits
)
retry_after = st.one_of(
    digits, st.integers(0, 10**12).map(str), st.just("Wed, 21 Oct 2015 07:28:00 GMT"),
    st.just("Fri, 31 Dec 9999 23:59:59 GMT"), st.just("Mon, 01 Jan 0001 00:00:00 GMT"),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\x7f"), max_size=80),
)  # fmt: skip
json_body = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.one_of(st.just(VALID), st.text(max_size=40), numbers, st.none()),
        "expires_in": numbers,
        "token_type": st.sampled_from(["Bearer", "bearer", "mac", "", 5]),
        "scope": st.one_of(st.text(max_size=10), numbers),
        "error": st.sampled_from(["invalid_client", "slow_down", "temporarily_unavailable", "x" * 300, 7]),
        "error_description": st.text(max_size=50),
    },
)
raw_body = st.one_of(
    st.binary(max_size=200), st.just(b"[" * 5000 + b"]" * 5000), st.just(b"{" * 64 + b"}"),
    st.just(b'{"access_token": "a", "access_token": "b"}'), st.just(b"x" * 70_000), st.just(b"<html>hi</html>"),
)  # fmt: skip
answer = st.builds(
    lambda status, headers, body, form: (status, headers, body, form),
    st.sampled_from([200, 200, 200, 201, 204, 301, 302, 400, 401, 403, 404, 418, 429, 500, 502, 503, 599]),
    st.one_of(st.fixed_dictionaries({"Retry-After": retry_after}), st.just({})),
    st.one_of(json_body, raw_body),
    st.booleans(),
)


def fault(auth: FaultyAuthServer, spec: tuple[int, dict[str, str], Any, bool]) -> Fault:
    """Turn a generated answer into what the auth server sends (VALID becomes a real token for our client)."""
    status, headers, body, form = spec
    headers = {k: v.encode("utf-8", "replace").decode("latin-1") for k, v in headers.items()}  # HTTP is bytes
    if isinstance(body, dict):
        body = {
            k: (auth.mint(auth.claims_for(CLIENT_ID, auth.audiences[0])) if v == VALID else v) for k, v in body.items()
        }
        if form:
            text = "&".join(f"{k}={v}" for k, v in body.items())
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            return Fault(status, text.encode("utf-8", "replace"), headers)
        return Fault(status, json.dumps(body).encode(), headers)
    return Fault(status, body, headers)


class Scenario(LoopWorld):
    """One profile, one sink, a good first token; then every request gets the next generated answer."""

    def __init__(self) -> None:
        super().__init__(ttl=TTL, prefix="edge-token-bounded-")
        self.sink = self.dir / "token.jwt"
        self.write("token.jwt")


@settings(
    max_examples=400 if SOAK else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answers=st.lists(answer, min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_requests_stay_within_the_backoff_policy_whatever_the_provider_answers(
    answers: list[tuple[int, dict[str, str], Any, bool]], seed: int
) -> None:
    """Drive the daemon through the renewal window and beyond against the generated answers; count."""
    s = Scenario()
    try:
        daemon = s.harness.start(load_config(s.config, environ={}), rng=random.Random(seed))
        renewer = daemon.profiles.renewers["main"]
        first = renewer.current
        assert first is not None and s.auth.token_requests == 1
        s.auth.token_faults.extend(fault(s.auth, spec) for spec in answers)
        for _ in range(len(answers) + 3):  # walk from due time to due time, past the first token's expiry
            due = s.harness.scheduler.next_due()
            assert due is not None, "the profile lost its next run"
            s.clock.advance(max(0.0, due - s.clock.time()))
            fires = s.harness.fire_due()
            assert all(n == 1 for n in fires.values()), f"a job ran repeatedly at one instant: {fires}"
        for job, when, at in s.harness.scheduler.scheduled:
            assert when >= at + MIN_RUN_GAP - 1e-9, f"{job} scheduled in the past"
        times = s.auth.request_times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 1.0 - 1e-6 for gap in gaps), f"requests closer than the 1 s backoff base: {gaps}"
        assert len(times) <= 1 + len(s.harness.scheduler.fired)
        series = daemon.metrics.profiles["main"]
        assert series.requests == s.auth.token_requests - 0, "a request was not counted"
        assert set(series.refresh) <= KINDS | {"success", "adopted", "sink"}, series.refresh
        status = daemon.profiles.statuses()[0]
        if renewer.last_error is not None:
            assert renewer.last_error.kind in KINDS and status.last_error is renewer.last_error
        held = s.sink.read_text()
        assert renewer.current is not None and held == renewer.current.jwt, "the sink lost the last good token"
    finally:
        s.close()


@settings(max_examples=200 if SOAK else 30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers=st.lists(answer, min_size=1, max_size=4))
def test_once_ends_every_exchange_with_a_sysexits_code(answers: list[tuple[int, dict[str, str], Any, bool]]) -> None:
    """`once` against the generated answers: an exit code from the documented set, never an exception."""
    s = Scenario()
    try:
        s.auth.token_faults.extend(fault(s.auth, spec) for spec in answers)

        async def fake_sleep(seconds: float) -> None:
            s.clock.advance(seconds)

        config = load_config(s.config, environ={})
        results = s.loop.run_until_complete(
            run_once(config, s.clock, _log(), environ={}, timeout=5.0, sleep=fake_sleep)
        )
        assert exit_code(results) in EXITS
        assert s.auth.token_requests <= len(answers) + 1
    finally:
        s.close()


def _log() -> Any:
    import structlog

    return structlog.get_logger("test")


@settings(max_examples=5000 if SOAK else 1000, deadline=None)
@given(value=st.one_of(digits, retry_after))
def test_retry_after_parsing_never_raises_and_is_bounded(value: str) -> None:
    """Any Retry-After text: None or a finite delay of at least 0 s, never an exception."""
    delay = parse_retry_after(value, 1_800_000_000.0)
    assert delay is None or (0.0 <= delay <= 10**9)


@settings(max_examples=5000 if SOAK else 1000, deadline=None)
@given(expires_in=numbers, form=st.booleans())
def test_expires_in_is_accepted_only_as_a_plausible_number(expires_in: Any, form: bool) -> None:
    """Any expires_in: a positive number of at most ten years, or a ProtocolError; nothing else escapes."""
    raw = (
        f"access_token=x&expires_in={expires_in}".encode()
        if form
        else json.dumps({"access_token": "x", "expires_in": expires_in}).encode()
    )
    kind = "application/x-www-form-urlencoded" if form else "application/json"
    try:
        answer = parse_token_answer(raw, kind, 0.0)
    except ProtocolError:
        return
    assert answer.expires_in is not None and 0 < answer.expires_in <= 10 * 365 * 86400


@settings(max_examples=5000 if SOAK else 1000, deadline=None)
@given(claims=st.fixed_dictionaries({}, optional={"exp": numbers, "iat": numbers, "nbf": numbers}))
def test_numeric_dates_of_any_size_are_verification_errors(claims: dict[str, Any]) -> None:
    """Claims with any numbers (10**400, 1e308, strings): accepted or a VerificationError, never another error."""
    rules = Rules(issuer="i", audience="a", client_id="c")
    try:
        check_claims({"iss": "i", "aud": "a", "azp": "c", **claims}, rules, 1_800_000_000.0)
    except VerificationError:
        pass


def requests_in(minutes: float, headers: dict[str, str], seed: int, status: int) -> int:
    """Token requests over `minutes` of fake time against a provider that always fails with these headers."""
    s = Scenario()
    try:
        s.auth.token_faults.extend([Fault(status, b"no", dict(headers))] * 5000)
        s.harness.start(load_config(s.config, environ={}), rng=random.Random(seed))
        end = s.clock.time() + minutes * 60
        for _ in range(5000):
            due = s.harness.scheduler.next_due()
            if due is None or due > end:
                break
            s.clock.advance(max(0.0, due - s.clock.time()))
            s.harness.fire_due()
        return s.auth.token_requests
    finally:
        s.close()


HINTS = st.one_of(
    st.fixed_dictionaries({"Retry-After": st.sampled_from(["0", "1", "Mon, 01 Jan 1990 00:00:00 GMT", "2", "\u0661"])}),
    st.fixed_dictionaries({"x-ratelimit-reset": st.sampled_from(["0", "1", "1800000000", "99"])}),
    st.just({"Auth0-Client-Quota-Limit": "b=per_hour;q=10;r=0;t=0"}),
)


@settings(max_examples=60 if SOAK else 8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=HINTS, status=st.sampled_from([429, 503]), seed=st.integers(0, 2**32 - 1))
def test_a_server_hint_can_slow_us_down_never_speed_us_up(headers: dict[str, str], status: int, seed: int) -> None:
    """Retry-After 0, a date or a rate-limit reset already past, an exhausted quota bucket resetting "now": the
    same failing provider gets no more requests with the hint than without it (before: one per second, forever)."""
    hinted = requests_in(30, headers, seed, status)
    plain = requests_in(30, {}, seed, status)
    assert hinted <= plain, f"{hinted} requests with {headers}, {plain} without"
