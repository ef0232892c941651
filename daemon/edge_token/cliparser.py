"""The argparse parser of every command: --help, usage errors and every argv `cli.plain` does not take.

`run` and `once` take their options from `cli.PLAIN`, the table `cli.plain` reads their plain argv with (without
importing argparse, issue 15): one definition of each option for both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_token import __version__
from edge_token.cli import CONFIG, CONFIG_ENV, PROFILE, TIMEOUT, Option, OutOfRange, seconds

EPILOG = (
    f"The config file defaults to ${CONFIG_ENV} if set, else /etc/edge-token/config.toml. Exit codes (sysexits): "
    "0 ok, 65 token failed verification, 66 input file missing, 69 provider unavailable, 73 sink not writable, "
    "76 provider answered something unusable, 77 credentials rejected, 78 configuration error."
)


class _Help(argparse.HelpFormatter):
    """Every option's default in --help (an operator should not have to read the code to learn one); flags and
    options without a default (None, False) say nothing rather than "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _command(commands: Any, name: str, text: str, description: str = "") -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name, help=text, description=description or text, epilog=EPILOG, formatter_class=_Help
    )
    return sub


def _seconds(value: str) -> float:
    """`cli.seconds` with argparse's words: its own for a word that is no number (as with type=float), what the
    option takes for a number out of range."""
    try:
        return seconds(value)
    except OutOfRange as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {value!r}") from None


def _add(sub: argparse.ArgumentParser, option: Option, **changes: Any) -> None:
    flags, settings = option
    settings = {**settings, **changes}
    if settings.get("type") is seconds:
        settings["type"] = _seconds
    sub.add_argument(*flags, **settings)


def _with_config(sub: argparse.ArgumentParser, profiles: bool = True) -> argparse.ArgumentParser:
    _add(sub, CONFIG)
    if profiles:
        _add(sub, PROFILE)
    return sub


def _run(commands: Any) -> None:
    _with_config(_command(commands, "run", "run the daemon: keep every profile's sinks fresh"))


def _exec(commands: Any) -> None:
    wrap = _with_config(
        _command(
            commands, "exec", "obtain tokens, then run CMD as a child and keep them fresh",
            "Obtain every profile's token (like `once`), then run CMD with EDGE_TOKEN_PATH_<PROFILE> (and, with a "
            "single profile, EDGE_TOKEN_PATH) in its environment, renewing in the background.",
        ),
        profiles=False,
    )  # fmt: skip
    wrap.add_argument("--on-rotation", choices=("none", "signal", "restart"), default="none",
                      help="after each new token: nothing, signal the child, or restart it")  # fmt: skip
    wrap.add_argument("--signal", default="HUP", choices=("HUP", "USR1", "USR2", "TERM", "INT"),
                      help="the signal for --on-rotation signal")  # fmt: skip
    wrap.add_argument(
        "--token-env", action="store_true", help="also put the token in the child environment (EDGE_TOKEN_<PROFILE>)"
    )
    _add(wrap, TIMEOUT, help="total seconds of retries to obtain the tokens before CMD starts")
    wrap.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")


def _once(commands: Any) -> None:
    once = _with_config(
        _command(
            commands, "once", "make every profile's sinks hold a verified token, exit",
            "Make every selected profile's sinks hold a verified token, then exit. A FRESH token already in the "
            "sinks is kept (no request). `once` does not run on_update hooks or signal pid_file processes: "
            "consumers started after it read the files themselves.",
        )
    )  # fmt: skip
    _add(once, TIMEOUT)


def _check(commands: Any) -> None:
    check = _with_config(
        _command(
            commands, "check", "validate the config and everything `run` needs at start (offline unless --online)",
            "Validate the config and what `run` needs at start: each secret readable and non-empty, each sink "
            "directory present and writable, TLS files loadable, the listen address bindable, on_update programs "
            "executable. Exits with the first problem's code (78 config, 73 sink).",
        )
    )  # fmt: skip
    check.add_argument("--online", action="store_true", help="also fetch each JWKS and request one token each")
    check.add_argument(
        "--as", dest="as_user", metavar="USER[:GROUP]",
        help="run the checks as this user (and group), as the service does; needs root",
    )  # fmt: skip


def _inspect(commands: Any) -> None:
    inspect = _command(commands, "inspect", "decode a token (never prints the signature)")
    inspect.add_argument(
        "token", nargs="?", default="-", help="token file (raw, json or env format), or - for stdin (the default)"
    )
    inspect.add_argument(
        "--verify", action="store_true",
        help="verify against each selected profile's JWKS and rules (exit 0 if one accepts it)",
    )  # fmt: skip
    _with_config(inspect)


def _local_auth(commands: Any) -> None:
    local = _command(commands, "local-auth", "run the bundled local OAuth2 + JWKS server")
    local.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    local.add_argument("--port", type=int, default=8400, help="port to listen on")
    local.add_argument("--ttl", type=float, default=3600.0, help="token lifetime in seconds")
    local.add_argument("--client-id", default="local-client", help="the one client it knows")
    local.add_argument(
        "--client-secret-file",
        type=Path,
        required=True,
        help="the client's secret; a random one is created (mode 0600) if the file is missing",
    )


def _demo(commands: Any) -> None:
    demo = _command(commands, "demo", "run edge-token against the bundled local auth server")
    demo.add_argument("--dir", type=Path, default=Path("edge-token-demo"), help="where to write")
    demo.add_argument("--ttl", type=float, default=20.0, help="token lifetime in seconds (short to see rotations)")
    demo.add_argument("--duration", type=float, default=45.0, help="seconds to run the daemon (0: until Ctrl-C)")


# every subcommand's arguments, in --help order
SUBCOMMANDS = {
    "run": _run, "exec": _exec, "once": _once, "check": _check, "inspect": _inspect, "local-auth": _local_auth,
    "demo": _demo,
}  # fmt: skip


def build(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. With a command name first in `argv`, only that command's parser is built (a third of
    the parser's cost, on the path of `once`); its help, usage and errors are the same, the top-level ones (no
    command, an unknown one, --help, --version) get every command."""
    parser = argparse.ArgumentParser(
        prog="edge-token",
        description="Keep verified OAuth2 client-credentials tokens (Sitecore Experience Edge by default) on disk.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"edge-token {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    first = (list(sys.argv[1:] if argv is None else argv) or [""])[0]
    for name, add in SUBCOMMANDS.items():
        if first not in SUBCOMMANDS or name == first:
            add(commands)
    return parser


def parse(argv: Sequence[str] | None = None) -> Any:
    """The parsed command line, as `cli.plain` gives it (a SimpleNamespace), or argparse's exit (help, usage error)."""
    from types import SimpleNamespace

    return SimpleNamespace(**vars(build(argv).parse_args(argv)))
