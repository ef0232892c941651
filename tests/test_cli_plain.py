"""`cli.plain` reads the plain argv of `once` and `run` without argparse (issue 15: ~3 ms of a cold `once`), from
the option table argparse is built from (cli.PLAIN). Properties: whatever argv it takes, argparse takes too and
reads to the same values; whatever it leaves (help, abbreviations, attached values, stray words, bad numbers),
argparse answers; and it does take the argv units, containers and cron jobs write. Both refuse a --timeout that is
not a finite number of seconds, 0 or more (NaN retried forever: every deadline comparison with it is false)."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_token import cli, cliparser

COMMANDS = ["once", "run", "exec", "check", "inspect", "demo", "nosuch", "", "-h", "--version"]
FLAGS = ["-c", "--config", "--profile", "--timeout"]
ODD = [
    "-h", "--help", "--version", "--conf", "--co", "--prof", "--time", "--timeou", "--", "-", "-cfile", "-c=file",
    "--config=", "--config=a.toml", "--config==", "--profile=a=b", "--timeout=5", "--timeout=-1", "--timeout=x",
    "--timeout=", "--=x", "=", "--bogus", "-x", "--on-rotation", "--online",
]  # fmt: skip
VALUES = ["a", "", "5", "-5", "-0.5", "1e3", "nan", "inf", " 7 ", "1_0", "x y", "-x", "once", "a=b", "--", "0x10"]
WORDS = st.one_of(st.sampled_from(FLAGS + ODD + VALUES), st.text(max_size=8))


def argparse_reads(argv: list[str]) -> dict[str, Any] | None:
    """What argparse (every command built, as for --help) makes of argv; None if it exits (help, usage error)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return vars(cliparser.build(argv).parse_args(argv))
    except SystemExit:
        return None


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal values, NaN included (a --timeout of nan is a float that equals nothing)."""
    return repr(sorted(a.items())) == repr(sorted(b.items()))


@settings(max_examples=600)
@given(st.sampled_from(COMMANDS), st.lists(WORDS, max_size=6))
def test_what_plain_reads_argparse_reads_alike(command: str, words: list[str]) -> None:
    """For any argv: `plain` declines it (None), or argparse accepts it and reads the same values."""
    argv = [command, *words]
    ours = cli.plain(argv)
    if ours is None:
        return
    theirs = argparse_reads(argv)
    assert theirs is not None, argv
    assert same(vars(ours), theirs), (argv, vars(ours), theirs)


def _unsigned(value: str) -> bool:
    return not value.startswith("-")  # a value starting with "-" is left to argparse (it may be an option)


NUMBERS = st.one_of(
    st.sampled_from(["5", "0.5", "30", "1e3", "0", " 7 ", "1_0"]),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
)
TEXTS = st.one_of(st.sampled_from(["a.toml", "/etc/edge-token/config.toml", "main", ""]), st.text(max_size=10))


def plain_option(command: str) -> st.SearchStrategy[list[str]]:
    """One option of `command` as units and scripts write it: `-c FILE`, `--config FILE`, `--config=FILE`..."""

    def spelled(flag: str, value: str, joined: bool) -> list[str]:
        return [f"{flag}={value}"] if joined and flag.startswith("--") else [flag, value]

    return st.one_of(
        [
            st.builds(
                spelled,
                st.sampled_from(flags),
                (NUMBERS if "type" in keywords else TEXTS).filter(_unsigned),
                st.booleans(),
            )
            for flags, keywords in cli.PLAIN[command]
        ]
    )


@settings(max_examples=300)
@given(st.sampled_from(sorted(cli.PLAIN)).flatmap(lambda c: st.tuples(st.just(c), st.lists(plain_option(c)))))
def test_plain_takes_the_argv_units_and_scripts_write(case: tuple[str, list[list[str]]]) -> None:
    """`once` and `run` with any of their options, each spelled in full (value as the next word or after `=`),
    repeated or not: read without argparse, to argparse's values."""
    command, options = case
    argv = [command, *(word for option in options for word in option)]
    ours = cli.plain(argv)
    assert ours is not None, argv
    theirs = argparse_reads(argv)
    assert theirs is not None and same(vars(ours), theirs), (argv, vars(ours), theirs)


TIMEOUTS = st.one_of(
    st.sampled_from(["nan", "NaN", "-nan", "+nan", " nan ", "inf", "+inf", "-inf", "Infinity", "1e309", "-1e309",
                     "-1", "-0.5", "-1e-300", "0", "-0", "-0.0", "0.0", "1e308", "5", "x", ""]),
    st.floats().map(repr),
    st.floats().map(str),
)  # fmt: skip


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@settings(max_examples=400)
@given(st.sampled_from(["once", "exec"]), TIMEOUTS, st.booleans())
def test_a_timeout_is_a_finite_number_of_seconds_for_both_readers(command: str, value: str, joined: bool) -> None:
    """`--timeout V` (`--timeout=V`) is taken iff V is a finite number >= 0 (0: one attempt, no retries): NaN,
    infinities and negative numbers are a usage error from argparse, and `plain` never takes one of them (it
    leaves them to argparse, which refuses them); a taken value reads alike in both."""
    argv = [command, *([f"--timeout={value}"] if joined else ["--timeout", value])]
    if command == "exec":
        argv += ["--", "true"]
    number = _number(value)
    allowed = number is not None and math.isfinite(number) and number >= 0
    theirs = argparse_reads(argv)
    assert (theirs is not None) == allowed, (argv, theirs)
    ours = cli.plain(argv)
    if ours is not None:
        assert allowed and theirs is not None and same(vars(ours), theirs), (argv, vars(ours), theirs)
        assert ours.timeout == number


@settings(max_examples=50)
@given(st.sampled_from(["nan", "inf", "-1", "-inf", "1e999"]), st.sampled_from(["once", "exec"]))
def test_the_timeout_usage_error_says_what_is_allowed(value: str, command: str) -> None:
    """The usage error names the option, what it takes and the value given; a word that is no number keeps
    argparse's own message."""
    argv = [command, f"--timeout={value}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cliparser.build(argv).parse_args(argv)
    assert (
        f"argument --timeout: must be a finite number of seconds, 0 or more (0: one attempt, no retries), not {value!r}"
        in err.getvalue()
    ), err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cliparser.build([command, "--timeout=x"]).parse_args([command, "--timeout=x"])
    assert "argument --timeout: invalid float value: 'x'" in err.getvalue()
