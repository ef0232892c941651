"""`cli.plain` reads the plain argv of `once` and `run` without argparse (issue 15: ~3 ms of a cold `once`), from
the option table argparse is built from (cli.PLAIN). Properties: whatever argv it takes, argparse takes too and
reads to the same values; whatever it leaves (help, abbreviations, attached values, stray words, bad numbers),
argparse answers; and it does take the argv units, containers and cron jobs write."""

from __future__ import annotations

import contextlib
import io
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


NUMBERS = st.one_of(st.sampled_from(["5", "0.5", "30", "1e3", "inf", " 7 ", "1_0"]), st.floats().map(repr))
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
