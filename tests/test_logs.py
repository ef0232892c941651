"""The one redaction processor: secrets by key, by known value and JWT-shaped strings never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from edge_token.observe import logs

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_json_lines_are_redacted_at_any_depth() -> None:
    """Secret-named keys, registered secret values and JWTs are replaced, nested or not."""
    stream = io.StringIO()
    redactor = logs.configure("json", "info", stream)
    redactor.add_secret("hunter2-secret")
    log = structlog.get_logger("t")
    log.info(
        "token.renewed",
        client_secret="abc",
        nested={"authorization": "Bearer x", "list": [JWT, "ok"]},
        message="server said hunter2-secret and " + JWT,
        token_url="https://example/oauth/token",
    )
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "token.renewed"
    assert line["client_secret"] == logs.REDACTED
    assert line["nested"] == {"authorization": logs.REDACTED, "list": [logs.REDACTED, "ok"]}
    assert "hunter2-secret" not in stream.getvalue() and JWT not in stream.getvalue()
    assert line["token_url"] == "https://example/oauth/token"


def test_stdlib_logging_and_tracebacks_go_through_the_same_pipeline() -> None:
    """aiohttp/APScheduler lines are JSON and redacted; tracebacks carry no frame locals."""
    stream = io.StringIO()
    redactor = logs.configure("json", "info", stream)
    redactor.add_secret("local-secret-value")
    logging.getLogger("aiohttp.client").warning("saw %s", JWT)

    def fail(client_secret: str) -> None:
        raise RuntimeError("boom")

    try:
        fail("local-secret-value")
    except RuntimeError:
        structlog.get_logger("t").exception("job.failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == f"saw {logs.REDACTED}"
    assert lines[1]["event"] == "job.failed" and "boom" in json.dumps(lines[1]["exception"])
    assert "local-secret-value" not in stream.getvalue()
