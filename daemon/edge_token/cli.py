"""Command line: argument parsing, process setup and exit codes, nothing else; `commands.py` does the work.

Only the standard library and `commands` (itself light) are imported here: each command imports what it needs
when it runs, so `once` and `--help` do not pay for the daemon's libraries. The argv of `once` and `run` as units,
containers and cron jobs write it is read by `plain` from the option table below, without importing argparse
(~3 ms of a cold `once`, issue 15); argparse (cliparser.py, built from the same table) reads everything else and
answers --help and every usage error.
"""

from __future__ import annotations

import gc
import math
import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from edge_token import commands
from edge_token.commands import say
from edge_token.core.errors import EX_SOFTWARE, EdgeTokenError

CONFIG_ENV = "EDGE_TOKEN_CONFIG"
DEFAULT_CONFIG = os.environ.get(CONFIG_ENV, "/etc/edge-token/config.toml")
PROFILE_HELP = "only this profile (repeatable; default: every profile)"


class OutOfRange(ValueError):
    """A number the option does not take (cliparser turns it into a usage error saying what it takes)."""


def seconds(value: str) -> float:
    """A `--timeout`: a finite number of seconds, 0 or more (0: one attempt, no retries). NaN would retry forever
    (no deadline comparison with it is true), infinity likewise, and a negative budget is a typo. A ValueError
    either way: `plain` then leaves the argv to argparse, which refuses it."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise OutOfRange(f"must be a finite number of seconds, 0 or more (0: one attempt, no retries), not {value!r}")
    return number


# An option: its flags and argparse's add_argument keywords. `plain` understands the keywords used here (dest,
# default, action "append", type), and tests/test_cli_plain.py proves it reads every argv it takes as argparse does.
Option = tuple[tuple[str, ...], dict[str, Any]]
CONFIG: Option = (
    ("-c", "--config"),
    {"dest": "config", "default": DEFAULT_CONFIG, "help": f"config file (${CONFIG_ENV} sets the default)"},
)
PROFILE: Option = (("--profile",), {"dest": "profile", "action": "append", "metavar": "NAME", "help": PROFILE_HELP})
TIMEOUT: Option = (
    ("--timeout",),
    {"dest": "timeout", "type": seconds, "default": 60.0, "help": "total seconds of retries of transient failures"},
)
PLAIN: dict[str, tuple[Option, ...]] = {"run": (CONFIG, PROFILE), "once": (CONFIG, PROFILE, TIMEOUT)}


def plain(argv: Sequence[str]) -> SimpleNamespace | None:
    """`run` or `once` with each option spelled in full, its value the next word or after `--option=`, no value
    starting with "-": what argparse would make of it. None for anything else (help, abbreviations, `-cFILE`,
    `--`, a stray word, a value argparse would refuse), which argparse then reads, answers or refuses."""
    if not argv or argv[0] not in PLAIN:
        return None
    options = {flag: settings for flags, settings in PLAIN[argv[0]] for flag in flags}
    values: dict[str, Any] = {settings["dest"]: settings.get("default") for settings in options.values()}
    words = iter(argv[1:])
    for word in words:
        flag, equals, value = word.partition("=")
        if not (equals and flag.startswith("--")):
            flag, value = word, next(words, "-")  # "-": no value given
        settings = options.get(flag)
        if settings is None or value.startswith("-"):
            return None
        parsed: Any = value
        if "type" in settings:
            try:
                parsed = settings["type"](value)
            except ValueError:
                return None
        dest = settings["dest"]
        values[dest] = [*(values[dest] or []), parsed] if settings.get("action") == "append" else parsed
    return SimpleNamespace(command=argv[0], **values)


def parse_args(argv: Sequence[str] | None = None) -> SimpleNamespace:
    """The command line: the plain argv of `once` and `run` read here, anything else by argparse."""
    args = plain(list(sys.argv[1:] if argv is None else argv))
    if args is None:
        from edge_token.cliparser import parse

        args = parse(argv)
    return args


HOLDS_SECRETS = frozenset({"run", "once", "exec", "check"})


def _scrub_std_streams() -> None:
    """Every line anyone in this process prints (the exec wrapper, a library, a future command) is scrubbed
    too, not only the lines `say` prints; children keep the raw file descriptors."""
    from edge_token.core.scrub import ScrubbingStream

    if not isinstance(sys.stdout, ScrubbingStream):
        sys.stdout = ScrubbingStream(sys.stdout)
        sys.stderr = ScrubbingStream(sys.stderr)


def _exit_on_sigterm_as_pid1() -> None:
    """As a container's PID 1 a signal without a handler is ignored by the kernel, so SIGTERM would do nothing
    until the runtime's SIGKILL: exit 143 as if it had its default action. `run` and `exec` install their own."""
    if os.getpid() != 1:
        return
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """The `edge-token` command: set the process up (scrubbed output, non-dumpable), parse, run, map errors to
    sysexits codes; never a traceback (it could carry a secret)."""
    _scrub_std_streams()  # before parsing: a usage error quotes argv, where a token may have been pasted
    args = parse_args(argv)
    args.dumpable = None  # why the process stays dumpable, if it does: each command says so (hardening.py)
    if args.command in HOLDS_SECRETS:
        from edge_token.hardening import make_non_dumpable

        args.dumpable = make_non_dumpable()  # first: same-uid processes must not read our environ/memory
    _exit_on_sigterm_as_pid1()
    if args.command not in ("run", "once"):  # those turn it on when their start-up ends (commands.started)
        gc.enable()
    try:
        if args.command == "once":
            return commands.once(args)
        if args.command in ("run", "exec"):
            from edge_token.limits import raise_nofile_limit

            raise_nofile_limit()  # before anything opens descriptors (README "Reliability")
        if args.command == "run":
            return commands.run(args)
        if args.command == "exec":
            return commands.exec_(args)
        if args.command == "check":
            return commands.check(args)
        if args.command == "inspect":
            return commands.inspect(args)
        if args.command == "local-auth":
            return commands.local_auth(args)
        from edge_token.demo import main as demo_main

        return demo_main(args.dir, args.ttl, args.duration)
    except EdgeTokenError as exc:
        from edge_token.observe.journal import stream_prefix

        say(f"{stream_prefix('error', sys.stderr)}edge-token: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-token inspect t.jwt | head`: the reader left; exit quietly like cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug: a sysexits code and one line, never a traceback that could carry a secret
        print(f"edge-token: internal error ({type(exc).__name__}); please report it", file=sys.stderr)
        return EX_SOFTWARE
