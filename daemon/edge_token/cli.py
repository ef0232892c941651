"""Command line: argument parsing and exit codes, nothing else. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_token import __version__
from edge_token.errors import EX_CONFIG, EX_DATAERR, EX_SOFTWARE, EdgeTokenError

DEFAULT_CONFIG = os.environ.get("EDGE_TOKEN_CONFIG", "/etc/edge-token/config.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-token",
        description="Keep verified OAuth2 client-credentials tokens (Sitecore Experience Edge by default) on disk.",
    )
    parser.add_argument("--version", action="version", version=f"edge-token {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
        return sub

    run = with_config(commands.add_parser("run", help="run the daemon: keep every profile's sinks fresh"))
    run.add_argument("--profile", action="append", help="only this profile (repeatable)")
    wrap = with_config(commands.add_parser("exec", help="obtain tokens, then run CMD as a child and keep them fresh"))
    wrap.add_argument("--on-rotation", choices=("none", "signal", "restart"), default="none",
                      help="after each new token: nothing (default), signal the child, or restart it")  # fmt: skip
    wrap.add_argument("--signal", default="HUP", choices=("HUP", "USR1", "USR2", "TERM", "INT"),
                      help="the signal for --on-rotation signal (default HUP)")  # fmt: skip
    wrap.add_argument(
        "--token-env", action="store_true", help="also put the token in the child environment (EDGE_TOKEN_<PROFILE>)"
    )
    wrap.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    once = with_config(commands.add_parser("once", help="make every profile's sinks hold a verified token, exit"))
    once.add_argument("--profile", action="append", help="only this profile (repeatable)")
    once.add_argument("--timeout", type=float, default=60.0, help="total seconds of retries (default 60)")
    check = with_config(commands.add_parser("check", help="validate the config (offline unless --online)"))
    check.add_argument("--online", action="store_true", help="also fetch each JWKS and request one token each")
    inspect = commands.add_parser("inspect", help="decode a token (never prints the signature)")
    inspect.add_argument("token", nargs="?", default="-", help="token file (raw, json or env format) or - for stdin")
    inspect.add_argument("--verify", action="store_true", help="verify against a profile's JWKS and rules")
    inspect.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    inspect.add_argument("--profile", help="profile whose rules apply (default: the only one)")
    local = commands.add_parser("local-auth", help="run the bundled local OAuth2 + JWKS server")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=8400)
    local.add_argument("--ttl", type=float, default=3600.0, help="token lifetime in seconds")
    local.add_argument("--client-id", default="local-client")
    local.add_argument(
        "--client-secret-file",
        type=Path,
        required=True,
        help="the client's secret; a random one is created (mode 0600) if the file is missing",
    )
    demo = commands.add_parser("demo", help="run edge-token against the bundled local auth server")
    demo.add_argument("--dir", type=Path, default=Path("edge-token-demo"), help="where to write (./edge-token-demo)")
    demo.add_argument("--ttl", type=float, default=20.0, help="token lifetime in seconds (short to see rotations)")
    demo.add_argument("--duration", type=float, default=45.0, help="seconds to run the daemon (0: until Ctrl-C)")
    return parser


HOLDS_SECRETS = frozenset({"run", "once", "exec", "check"})


def say(text: str, *, err: bool = False) -> None:
    """Print one line through the process scrubber: a server that echoed a secret (in any encoding) or a token
    in an error message must not get it onto a terminal or into a CI log."""
    from edge_token.scrub import scrub_text

    print(scrub_text(text), file=sys.stderr if err else sys.stdout, flush=True)


def _scrub_std_streams() -> None:
    """Every line anyone in this process prints (the exec wrapper, a library, a future command) is scrubbed
    too, not only the lines `say` prints; children keep the raw file descriptors."""
    from edge_token.scrub import ScrubbingStream

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
    args = _parser().parse_args(argv)
    _scrub_std_streams()
    if args.command in HOLDS_SECRETS:
        from edge_token.hardening import make_non_dumpable

        make_non_dumpable()  # first: same-uid processes must not read our environ/memory (hardening.py)
    _exit_on_sigterm_as_pid1()
    try:
        if args.command == "once":
            return _once(args)
        if args.command in ("run", "exec"):
            from edge_token.limits import raise_nofile_limit

            raise_nofile_limit()  # before anything opens descriptors (README "Reliability")
        if args.command == "run":
            from edge_token.daemon import main as daemon_main

            return daemon_main(_load(args), args.profile)  # _load validates --profile names first
        if args.command == "exec":
            return _exec(args)
        if args.command == "check":
            return _check(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "local-auth":
            return _local_auth(args)
        from edge_token.demo import main as demo_main

        return demo_main(args.dir, args.ttl, args.duration)
    except EdgeTokenError as exc:
        from edge_token.journal import stream_prefix

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


def _load(args: argparse.Namespace) -> Any:
    from edge_token.config import load_config

    config = load_config(args.config)
    for name in getattr(args, "profile", None) or []:
        if name not in config.profiles:
            from edge_token.errors import ConfigError

            raise ConfigError(f"{args.config}: no profile {name!r} (have: {', '.join(config.profiles)})")
    return config


def _once(args: argparse.Namespace) -> int:
    from edge_token import logs
    from edge_token.app import exit_code, run_once
    from edge_token.clock import SystemClock

    config = _load(args)
    redactor = logs.configure(config.daemon.log_format, config.daemon.log_level)
    import structlog

    results = asyncio.run(
        run_once(
            config,
            SystemClock(),
            structlog.get_logger("edge_token"),
            environ=os.environ,
            profiles=args.profile,
            timeout=args.timeout,
            on_secret=redactor.add_secret,
        )
    )
    for result in results:
        if result.error is not None:
            say(f"edge-token: profile {result.profile}: {result.error}", err=True)
    return exit_code(results)


def _exec(args: argparse.Namespace) -> int:
    from edge_token.errors import ConfigError
    from edge_token.wrapper import main as exec_main

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ConfigError("exec needs a command: edge-token exec -c FILE -- CMD ARGS...")
    return exec_main(_load(args), cmd, args.on_rotation, args.signal, args.token_env)


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    say(f"{config.path}: OK, {len(config.profiles)} profile(s)")
    for profile in config.profiles.values():
        say(f"  {profile.name}: client_id {profile.client_id}, secret from {profile.secret.describe()}")
        say(f"    token_url {profile.token_url} ({profile.request_format}, {profile.auth_method})")
        say(f"    issuer {profile.issuer}  audience {profile.audience}")
        say(f"    jwks_url {profile.jwks_url}  algorithms {','.join(profile.algorithms)}")
        for sink in profile.sinks:
            say(f"    sink {sink.name} format={sink.format} mode={sink.mode:04o}")
    if not args.online:
        return 0
    return asyncio.run(_check_online(config))


async def _check_online(config: Any) -> int:
    import structlog

    from edge_token.app import Parts, make_session
    from edge_token.clock import SystemClock

    worst = 0
    async with make_session() as session:
        parts = Parts(config, session, SystemClock(), structlog.get_logger("edge_token"), environ=os.environ)
        for profile in config.profiles.values():
            renewer = parts.renewer(profile, sinks=[])
            outcome = await renewer.renew()
            if outcome.error is None:
                say(f"  {profile.name}: online OK, token verified ({outcome.token!r}; not written)")
            else:
                say(f"  {profile.name}: online FAILED: {outcome.error}", err=True)
                worst = worst or outcome.error.exit_code
    return worst


def _read_token_arg(source: str) -> str:
    from edge_token.sinks.file import extract

    text = sys.stdin.read(1 << 20) if source == "-" else Path(source).read_text(encoding="utf-8")[: 1 << 20]
    for fmt in ("json", "env", "raw"):
        token = extract(text, fmt)
        if token:
            return token
    from edge_token.errors import VerificationError

    raise VerificationError("no JWT found in the input (expected a raw JWT, or a json or env sink file)", "malformed")


def _inspect(args: argparse.Namespace) -> int:
    import time

    from edge_token.verify import decode_unverified

    try:
        token = _read_token_arg(args.token)
    except OSError as exc:
        say(f"edge-token: cannot read {args.token}: {exc.strerror}", err=True)
        return EX_DATAERR
    header, claims = decode_unverified(token)
    now = time.time()
    report: dict[str, Any] = {"header": header, "claims": claims}
    if isinstance(claims.get("exp"), int | float):
        report["seconds_left"] = round(claims["exp"] - now, 1)
    if args.verify:
        report["verified"] = asyncio.run(_verify_one(args, token))
    say(json.dumps(report, indent=2, sort_keys=True, default=str))
    return 0


async def _verify_one(args: argparse.Namespace, token: str) -> bool:
    import time

    from edge_token.app import Parts, make_session
    from edge_token.clock import SystemClock
    from edge_token.errors import ConfigError
    from edge_token.verify import verify_token

    config = _load(args)
    if args.profile is None and len(config.profiles) != 1:
        raise ConfigError(f"{args.config}: several profiles; choose one with --profile")
    profile = config.profiles[args.profile or next(iter(config.profiles))]
    import structlog

    async with make_session() as session:
        parts = Parts(config, session, SystemClock(), structlog.get_logger("edge_token"), environ=os.environ)
        renewer = parts.renewer(profile, sinks=[])
        await verify_token(token, parts.jwks_for(profile).key_set, renewer.rules, time.time())
    return True


def _local_auth(args: argparse.Namespace) -> int:
    from edge_token.config import is_loopback_host
    from edge_token.localauth import LocalAuthServer, load_client_secret

    if not is_loopback_host(args.host):
        print("edge-token: local-auth serves plain HTTP and only binds loopback addresses", file=sys.stderr)
        return EX_CONFIG
    path: Path = args.client_secret_file
    server = LocalAuthServer({args.client_id: load_client_secret(path)}, ttl=args.ttl)

    async def serve() -> None:
        url = await server.start(args.host, args.port)
        print(f"local-auth: issuer {server.issuer}", flush=True)
        print(f'  token_url = "{server.token_url}"\n  jwks_url  = "{server.jwks_url}"', flush=True)
        print(f'  client_id = "{args.client_id}", secret in {path}; Ctrl-C stops ({url})', flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
