"""The cheap paths of the log pipeline change no answer: the scrubber's length bound is sound, and a log line
that cannot be written never fails the work that logged it."""

from __future__ import annotations

import io
import json
import logging
import re
import string
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO
from unittest.mock import patch

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import python_calls
from edge_token.core import scrub
from edge_token.observe import logs
from leakscan import ENCODINGS

WORD_CHARS = string.ascii_letters + string.digits + "+/_-=.:%&\\;#x "
secrets_st = st.text(string.ascii_letters + string.digits + "-._~+/=%&", min_size=4, max_size=30).filter(
    lambda s: s.strip() == s
)


@settings(max_examples=400, deadline=None)
@given(word=st.text(WORD_CHARS, max_size=60))
def test_no_decoding_is_longer_than_the_bound(word: str) -> None:
    """Invariant behind the fast path: every decoding the fail-closed layer would look at (`_views`, two levels
    deep) is at most `longest_view(word)` characters long, so a word whose bound is below the shortest secret
    (or a JWT) cannot betray one and is not decoded at all."""
    bound = scrub.longest_view(word)
    assert all(len(view) <= bound for view in scrub._views(word)), word


def echo(secret: str, encoding: str, before: str, after: str) -> str:
    return f"{before} {ENCODINGS[encoding]('client-a', secret)} {after}"


@settings(max_examples=150, deadline=None)
@given(
    secrets=st.lists(secrets_st, min_size=0, max_size=3),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    before=st.text(string.printable, max_size=40),
    after=st.text(string.printable, max_size=40),
    echoed=st.booleans(),
)
def test_the_fast_path_changes_no_scrub(
    secrets: list[str], encoding: str, before: str, after: str, echoed: bool
) -> None:
    """For any registered secrets and any text (with or without a secret echoed in any encoding), the scrubber
    with the length bound gives exactly what it gives when every word is decoded."""
    text = echo(secrets[0], encoding, before, after) if echoed and secrets else before + after
    fast, full = scrub.Scrubber(), scrub.Scrubber()
    for secret in secrets:
        fast.register(secret)
        full.register(secret)
    expected_bound = 10**9
    with patch.object(scrub, "longest_view", lambda word: expected_bound), patch.object(scrub, "_DECODABLE", ANY):
        slow = full.scrub_text(text)
    assert fast.scrub_text(text) == slow


ANY = re.compile("")  # matches every text: `_views` decodes every view again, as before it had a gate
#: what base64-decoding a run of text gives (`_views` decodes each run at four offsets): mostly binary noise
noise = st.binary(max_size=64).map(lambda data: data.decode("utf-8", "replace"))


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(noise, st.text(WORD_CHARS + "\ufffd\x00\u00e9 ", max_size=60)))
def test_text_the_gate_stops_has_no_decoding(text: str) -> None:
    """The gate before a second level of decoding is sound: a text `_DECODABLE` does not match has no decoding at
    all (`_views` yields nothing), so not decoding it loses nothing. Most views of a base64 run are such noise."""
    if scrub._DECODABLE.search(text) is None:
        assert list(scrub._views(text)) == []


def test_a_first_scrub_of_a_path_decodes_each_view_of_it_at_most_once_more() -> None:
    """A fill scrubs each sink's name once (`file:/var/lib/.../p42.jwt`): one base64 run, four views of binary
    noise. It used to decode all four again and bound the text's decodings twice (6 `_views` and 2 `longest_view`
    calls a path, about 40 µs: the largest per-profile cost of a fill's event loop, issue 15). Now the gate
    leaves the noise alone and the bound is computed once, and the answers are the same (the two tests above)."""
    calls = {"_views": 0, "longest_view": 0}

    def counted(name: str) -> Any:
        real = getattr(scrub, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return patch.object(scrub, name, call)

    scrubber = scrub.Scrubber()
    scrubber.register("a-client-secret-value")
    paths = [f"file:/var/lib/edge-token/tokens/profile-{i}.jwt" for i in range(200)]
    with counted("_views"), counted("longest_view"):
        assert [scrubber.scrub_text(path) for path in paths] == paths
    assert calls["longest_view"] == len(paths)
    assert calls["_views"] <= 3.5 * len(paths), calls


@contextmanager
def configured(stream: TextIO) -> Iterator[logs.Redactor]:
    """logs.configure on `stream`, undone afterwards (structlog's defaults, the root logger's handlers)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        yield logs.configure("json", "info", stream)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()


class BrokenPipe(io.StringIO):
    """stderr after journald went away: every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_line_that_cannot_be_written_does_not_fail_the_caller() -> None:
    """A renewal that logs to a broken stderr (EPIPE) still completes: the line is lost, not the work."""
    with configured(BrokenPipe()):
        structlog.get_logger("t").info("token.renewed", fingerprint="abc")
        structlog.get_logger("t").error("sink.write_failed", message="x")


def test_each_line_is_one_write_of_one_complete_json_object() -> None:
    """Our lines reach the stream as whole lines, one write each (readers and journald never see half a line),
    redacted like before."""
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    with configured(Recorder()) as redactor:
        redactor.add_secret("hunter2-secret-value")
        log: Any = structlog.get_logger("t").bind(profile="p")
        log.info("token.renewed", fingerprint="0123456789ab", message="echo hunter2-secret-value")
        log.debug("not.shown")
    assert len(writes) == 1 and writes[0].endswith("\n") and writes[0].count("\n") == 1
    line = json.loads(writes[0])
    assert line["event"] == "token.renewed" and line["profile"] == "p" and line["level"] == "info"
    assert "hunter2-secret-value" not in writes[0]


async def test_an_info_line_costs_fourpython_calls() -> None:
    """Every renewal logs two info lines, each through code that is cold by the time the next renewal comes (about
    one every 20 ms at 1,000 profiles): each Python call a line makes costs microseconds, not nanoseconds. On the
    event loop, a renewal's second line is the bound logger's own `info`, the processors as one, the redactor and
    the writer, nothing else (it was eleven: structlog's level method and `_maybe_interpolate`,
    `_proxy_to_logger`, the time stamper's three functions, the scrubber's `known` property, the JSON renderer,
    and the writer's `_emit`)."""
    with configured(io.StringIO()):
        log: Any = structlog.get_logger("t").bind(profile="p")
        log.info("token.renewed", fingerprint="0123456789ab", expires_at=1.5, lifetime=20.0)  # this turn's first
        calls = python_calls(lambda: log.info("token.renewed", fingerprint="0123456789ab", expires_at=2.5, lifetime=20))
        logs.flush()
    assert [name.rsplit(".", 1)[-1] for name in calls] == ["info", "line", "__call__", "msg"], calls


@settings(max_examples=200, deadline=None)
@given(
    event=st.sampled_from(["plain", "with %s", "%(name)s named", "two %s %s", "100%% done"]),
    args=st.sampled_from([(), ("x",), ({"name": "n"},), ("a", "b"), ({},)]),
    fields=st.dictionaries(st.sampled_from(["profile", "sink", "n"]), st.integers() | st.text(max_size=5), max_size=3),
)
def test_an_info_line_is_the_line_structlogs_own_method_would_make(
    event: str, args: tuple[Any, ...], fields: dict[str, Any]
) -> None:
    """Our one-frame `info` interpolates arguments as structlog's level method does (a single mapping by name,
    otherwise positionally; no arguments: the event as it is) and makes the same line, or raises as it raises."""
    outcomes: list[object] = []
    for own in (True, False):
        stream = io.StringIO()
        with configured(stream):
            if not own:  # structlog's own level method and `_proxy_to_logger` on the same processors
                structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
            log: Any = structlog.get_logger("t")
            try:
                log.info(event, *args, **fields)
                outcomes.append({k: v for k, v in json.loads(stream.getvalue()).items() if k != "timestamp"})
            except (TypeError, KeyError, ValueError) as exc:
                outcomes.append(type(exc).__name__)
    assert outcomes[0] == outcomes[1]


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(st.sampled_from(["alpha-1", "bravo-2", "charlie-3", "delta-4", " alpha-1 ", "abc"]), max_size=30))
def test_registering_secrets_keeps_the_most_recently_used_whatever_the_order(calls: list[str]) -> None:
    """Every renewal registers its secret again (a no-op when it is the newest already); the registry still keeps
    exactly the `max_secrets` most recently used ones, as an LRU model of the same calls does (too short a value
    is never registered; surrounding blanks are not part of a secret)."""
    scrubber, model = scrub.Scrubber(max_secrets=3), OrderedDict[str, None]()
    for secret in calls:
        scrubber.register(secret)
        value = secret.strip()
        if len(value) >= scrub.MIN_SECRET:
            model[value] = None
            model.move_to_end(value)
            while len(model) > 3:
                model.popitem(last=False)
        assert {s for s in ("alpha-1", "bravo-2", "charlie-3", "delta-4") if s in scrubber} == set(model)


def test_a_secret_that_could_not_be_registered_is_never_taken_for_the_newest() -> None:
    """A value the scrubber cannot encode (a lone surrogate: an environment variable that is not UTF-8) fails its
    registration every time, so the reader never hands it out; the newest-secret shortcut must not turn the second
    attempt into a silent success with nothing cut (outside review: the second `read_secret` returned it)."""
    scrubber = scrub.Scrubber()
    secret = "abcdefghijklmnop\udcffqrstuvwxyz0123456789"
    for _attempt in range(2):
        with pytest.raises(UnicodeEncodeError):
            scrubber.register(secret)
    assert secret not in scrubber
