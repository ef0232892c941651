"""Usage errors and --help pass the process scrubber like every other line: a token pasted into the wrong place of
argv (a CI job's `--timeout $TOKEN`, a stray word) is not echoed back onto a terminal or into a CI log. Property:
for any argv argparse refuses or answers (help), with a JWT anywhere in it, nothing `main` prints holds the JWT,
and the usage error itself is still printed (exit 2)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cliproc import edge_token
from edge_token import cli, cliparser


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_from(kid: str, claims: bytes, signature: bytes) -> str:
    header = json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode()
    return f"{_segment(header)}.{_segment(claims)}.{_segment(signature)}"


JWTS = st.builds(
    jwt_from,
    st.text("abcdef0123456789", min_size=1, max_size=16),
    st.binary(min_size=8, max_size=64),
    st.binary(min_size=32, max_size=64),
)
COMMANDS = ["once", "run", "exec", "check", "inspect", "demo", "local-auth", "nosuch", "", "-h"]
WORDS = [
    "-c", "--config", "--profile", "--timeout", "--on-rotation", "--signal", "--as", "--online", "--verify",
    "--token-env", "--port", "--ttl", "--dir", "--", "-x", "--bogus", "a.toml", "5", "nan",
]  # fmt: skip
JOINED = ["--timeout=", "--config=", "--profile=", "--on-rotation=", "--as=", "--port=", "-c", "--bogus="]


def refused_or_help(argv: list[str]) -> bool:
    """argparse exits on argv (a usage error, or --help/--version) rather than returning a command to run."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cliparser.build(argv).parse_args(argv)
    except SystemExit:
        return True
    return False


def printed_by_main(argv: list[str]) -> tuple[int, str]:
    """`cli.main(argv)` in this process: its exit code and everything it printed (both streams)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code: int | str | None = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    return (code if isinstance(code, int) else 0 if code is None else 1), out.getvalue()


def assert_no_token(token: str, text: str) -> None:
    header, claims, signature = token.split(".")
    for part in (token, f"{header}.{claims}", claims, signature):
        assert part not in text, text


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(COMMANDS),
    st.lists(st.sampled_from(WORDS), max_size=5),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(["", *JOINED]),
    JWTS,
)
def test_a_token_in_a_refused_argv_is_never_echoed(
    command: str, words: list[str], where: int, prefix: str, token: str
) -> None:
    """Whatever argparse says about an argv holding a JWT (unrecognized, invalid value or choice, missing
    argument, help), it says it through the scrubber: the JWT is cut, the message stays."""
    argv = [command, *words]
    argv.insert(min(where, len(argv)), prefix + token)
    if not refused_or_help(argv):
        return  # a command argparse accepts would run: not this property's business
    assert cli.plain(argv) is None  # so `main` hands it to argparse too (test_cli_plain proves the two agree)
    code, printed = printed_by_main(argv)
    assert code in (0, 2), (argv, code, printed)
    assert_no_token(token, printed)
    assert printed.strip(), argv  # the usage error (or the help) is still there
    if code == 2:
        assert "error:" in printed, printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["once", "-c", "/nonexistent.toml", "--timeout", "TOKEN"], "argument --timeout: invalid float value:"),
        (["once", "-c", "/nonexistent.toml", "TOKEN"], "unrecognized arguments:"),
        (["exec", "--on-rotation", "TOKEN", "--", "true"], "argument --on-rotation: invalid choice:"),
    ],
)
async def test_the_reported_argv_shapes_in_a_real_process(argv: list[str], message: str) -> None:
    """The outside tester's three argv shapes, in the real command: exit 2 with the usage error, no token."""
    token = jwt_from("k1", b'{"sub":"client-a","exp":4102444800}', b"s" * 40)
    code, out, err = await edge_token(*[token if word == "TOKEN" else word for word in argv])
    assert code == 2, err
    assert message in err and "[REDACTED]" in err, err
    assert_no_token(token, out + err)
