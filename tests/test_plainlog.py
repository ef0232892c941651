"""The structlog-free log lines of `once` (observe/plainlog.py) are the daemon's lines: same keys, order, levels,
exceptions and redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_token.observe import logs, plainlog

SECRET = "hunter2-plainlog-5f1e"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


KEYS = st.sampled_from(["profile", "sink", "message", "reason", "client_secret", "token", "access_token",
                        "authorization", "expires_at", "nested", "url", "count"])  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([SECRET, JWT, f"server said {SECRET}!", f"Bearer {JWT}", "ok"])
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=8
)
METHODS = st.sampled_from(["debug", "info", "warning", "error", "exception", "critical"])


def _without_time(text: str) -> list[list[tuple[str, Any]]]:
    """Each line's fields in order, the timestamp's value blanked (it differs; its place in the line must not: a
    reader that takes fields by position sees `once` and `run` lines alike)."""
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        assert line["timestamp"].endswith("Z")
        line["timestamp"] = "T"
    return [list(line.items()) for line in lines]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    level=st.sampled_from(["debug", "info", "warning"]),
    method=METHODS,
    event=st.sampled_from(["token.renewed", "sink.write_failed", "internal_error"]),
    bound=st.dictionaries(KEYS, VALUES, max_size=2),
    fields=st.dictionaries(KEYS, VALUES, max_size=4),
    stdlib=st.sampled_from([None, "aiohttp.client", "asyncio"]),
    failing=st.booleans(),
)
def test_plain_lines_are_the_structlog_lines(
    restore_logging: None, level: str, method: str, event: str, bound: dict[str, Any], fields: dict[str, Any],
    stdlib: str | None, failing: bool,
) -> None:  # fmt: skip
    """For any fields (secret-named keys, registered secrets and JWTs at any depth, nesting, numbers), any level
    and method, with or without an exception, and for stdlib logging records: the structlog-free line is exactly
    the line `logs.configure("json")` writes, field for field in the same order, timestamp aside (and both hold no secret or JWT)."""
    rendered: list[str] = []
    for make in ("structlog", "plain"):
        stream = io.StringIO()
        redactor = logs.Redactor()
        redactor.add_secret(SECRET)
        if make == "structlog":
            logs.configure("json", level, stream, redactor)
            log: Any = structlog.get_logger("edge_token")
        else:
            log = plainlog.configure(level, stream, redactor)
        try:
            if failing:
                raise ValueError(f"boom {SECRET}")
        except ValueError:
            if stdlib is None:
                getattr(log.bind(**bound), method)(event, **fields)
            else:
                logging.getLogger(stdlib).log(logging.ERROR, "lib said %s", fields, exc_info=failing)
        else:
            if stdlib is None:
                getattr(log.bind(**bound), method)(event, **fields)
            else:
                logging.getLogger(stdlib).warning("lib said %s", fields)
        rendered.append(stream.getvalue())
    assert _without_time(rendered[1]) == _without_time(rendered[0])
    assert SECRET not in rendered[1] and JWT not in rendered[1]
