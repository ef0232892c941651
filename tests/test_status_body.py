"""/status costs O(changed profiles) per request, not O(all): each profile's entry is scrubbed and rendered when its
status (or the secret registry) changes, and reused otherwise; the body still shows exactly what the whole-body
scrub showed, and never a secret or a token.

Counted, not timed: a counting wrapper around the real scrubber measures how many characters of text each request
hands it."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from edge_token.core.errors import TransientError
from edge_token.core.health import ProfileStatus
from edge_token.core.record import replace
from edge_token.core.scrub import JWT, Scrubber
from edge_token.observe.httpserver import HealthSource, build_app, start_http
from edge_token.observe.logs import Redactor
from edge_token.observe.metrics import Metrics
from leakscan import leaks

TOKEN_LIKE = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def characters(value: Any) -> int:
    """How much text a scrub call was handed: the length of every string in the structure (keys included)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(characters(k) + characters(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(characters(v) for v in value)
    return 0


class CountingScrub:
    """The real scrub, counting the characters it is handed."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor, self.characters = redactor, 0

    def __call__(self, value: Any) -> Any:
        self.characters += characters(value)
        return self.redactor.scrub(value)

    def taken(self) -> int:
        """Characters handed over since the last call."""
        count, self.characters = self.characters, 0
        return count


def profile(index: int, **changes: Any) -> ProfileStatus:
    base = ProfileStatus(
        profile=f"profile-{index:04d}", state="fresh", expires_at=1.9e9 + index, last_success_at=1.8e9 + index,
        next_attempt_at=1.85e9 + index, last_error=None, sinks={f"sink-{index}": None, "backup": None},
        kid="key-2026", fingerprint=f"{index * 7919:012x}",
    )  # fmt: skip
    return replace(base, **changes)


def reference(statuses: list[ProfileStatus], scrub: Callable[[Any], Any]) -> dict[str, Any]:
    """What the whole-body way showed for the profiles: every string of the body scrubbed by value."""
    return {scrub(s.profile): scrub(s.to_json()) for s in statuses}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_request_scrubs_only_what_changed_and_shows_what_the_whole_body_scrub_showed(
    http: aiohttp.ClientSession,
) -> None:
    """Over real HTTP: the first /status scrubs every profile; an unchanged one reuses them (only the small daemon
    part is scrubbed); changing 3 of 300 profiles scrubs about 3 profiles' worth; a new secret rescrubs all and
    is cut from the profile whose name it is."""
    secret = "status-secret-" + secrets.token_hex(8)  # process-wide registry: unique to this test
    statuses = [profile(i) for i in range(300)]
    redactor = Redactor()
    scrub = CountingScrub(redactor)
    source = HealthSource(lambda: list(statuses), lambda: True, scrub, lambda: {"config": "/etc/x.toml"})
    runner, address = await start_http("127.0.0.1:0", Metrics(CollectorRegistry()), source)
    url = f"http://{address}/status"

    async def get() -> dict[str, Any]:
        async with http.get(url) as response:
            assert response.status == 200 and response.content_type == "application/json"
            body: dict[str, Any] = json.loads(await response.text())
        assert body["profiles"] == reference(statuses, redactor.scrub)
        assert body["alive"] is True and body["daemon"] == {"config": "/etc/x.toml"}
        return body

    try:
        await get()
        everything = scrub.taken()
        one_profile = everything // len(statuses)
        assert everything > 300 * 50
        await get()
        assert scrub.taken() < 100, "an unchanged /status scrubbed the profiles again"
        for index in (7, 150, 299):
            statuses[index] = replace(statuses[index], next_attempt_at=2e9, last_error=TransientError("x"))
        await get()
        assert scrub.taken() <= 3 * 2 * one_profile + 100
        statuses[42] = replace(statuses[42], profile=f"profile-{secret}", kid=TOKEN_LIKE)
        await get()
        scrub.taken()
        redactor.add_secret(secret)
        body = await get()
        assert scrub.taken() >= everything, "a newly registered secret must be cut from entries scrubbed before it"
        text = json.dumps(body)
        assert secret not in text and TOKEN_LIKE not in text and leaks(text, [secret]) == []
    finally:
        await runner.cleanup()


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("touch"), st.integers(0, 30), st.floats(1e9, 3e9)),
        st.tuples(st.just("fail"), st.integers(0, 30), st.sampled_from(["sink unwritable", TOKEN_LIKE])),
        st.tuples(st.just("kid"), st.integers(0, 30), st.sampled_from(["k2", TOKEN_LIKE, "hvs.s3cret-kid-value"])),
        st.tuples(st.just("add"), st.integers(100, 130)),
        st.tuples(st.just("remove"), st.integers(0, 30)),
        st.tuples(st.just("secret"), st.sampled_from(["hvs.s3cret-kid-value", "profile-0003", "sink-5"])),
        st.tuples(st.just("serve")),
    ),
    max_size=25,
)


def step(statuses: dict[str, ProfileStatus], scrubber: Scrubber, action: tuple[Any, ...]) -> set[str]:
    """Apply one step; the names of the profiles it changed (every one when the registry changed)."""
    names = sorted(statuses)
    if action[0] == "secret":
        scrubber.register(action[1])
        return set(statuses)
    if action[0] == "add":
        added = profile(action[1])
        statuses[added.profile] = added
        return {added.profile}
    if action[0] == "serve" or not names:
        return set()
    name = names[action[1] % len(names)]
    if action[0] == "remove":
        del statuses[name]
        return set()
    old = statuses[name]
    statuses[name] = {
        "touch": lambda: replace(old, next_attempt_at=action[2]),
        "fail": lambda: replace(old, sinks={**old.sinks, "backup": action[2]}),
        "kid": lambda: replace(old, kid=action[2]),
    }[action[0]]()
    return {name}


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Response:
    """Call the /status handler as aiohttp would (it reads nothing of the request)."""
    return cast(web.Response, await handler(cast(web.Request, None)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_any_sequence_of_changes_shows_the_whole_body_scrub_and_rescrubs_only_the_changed(
    steps: list[tuple[Any, ...]],
) -> None:
    """For any sequence of status changes, additions, removals and newly registered secrets: every body equals the
    whole-body scrub, holds no registered secret or JWT, and each request rescrubs only the profiles that changed
    since the previous one."""
    scrubber = Scrubber()
    redactor = Redactor(scrubber)
    scrub = CountingScrub(redactor)
    statuses = {s.profile: s for s in (profile(i) for i in range(12))}
    source = HealthSource(lambda: list(statuses.values()), lambda: True, scrub, dict, generation=lambda: (
        scrubber.generation))  # fmt: skip
    handler = next(r.handler for r in build_app(Metrics(CollectorRegistry()), source).router.routes()
                   if r.resource is not None and r.resource.canonical == "/status")  # fmt: skip
    changed, registered = set(statuses), ["hvs.s3cret-kid-value", "profile-0003", "sink-5"]
    for action in [*steps, ("serve",)]:
        changed |= step(statuses, scrubber, action)
        if action[0] != "serve":
            continue
        text = asyncio.run(serve(handler)).text or ""
        body = json.loads(text)
        assert body["profiles"] == reference(list(statuses.values()), redactor.scrub)
        assert JWT.search(text) is None
        assert not [s for s in registered if s in scrubber and s in text]
        per_profile = max((characters(s.to_json()) + len(s.profile) for s in statuses.values()), default=0)
        assert scrub.taken() <= len(changed & set(statuses)) * per_profile
        changed = set()
