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
from edge_token.core.errors import EX_CONFIG, EX_NOINPUT, EX_SOFTWARE, EdgeTokenError
from edge_token.secrets import read_secret

CONFIG_ENV = "EDGE_TOKEN_CONFIG"
DEFAULT_CONFIG = os.environ.get(CONFIG_ENV, "/etc/edge-token/config.toml")
EPILOG = (
    f"The config file defaults to ${CONFIG_ENV} if set, else /etc/edge-token/config.toml. Exit codes (sysexits): "
    "0 ok, 65 token failed verification, 66 input file missing, 69 provider unavailable, 73 sink not writable, "
    "76 provider answered something unusable, 77 credentials rejected, 78 configuration error."
)
PROFILE_HELP = "only this profile (repeatable; default: every profile)"


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-token",
        description="Keep verified OAuth2 client-credentials tokens (Sitecore Experience Edge by default) on disk.",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"edge-token {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser, profiles: bool = True) -> argparse.ArgumentParser:
        sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (${CONFIG_ENV} sets the default)")
        if profiles:
            sub.add_argument("--profile", action="append", metavar="NAME", help=PROFILE_HELP)
        return sub

    with_config(_command(commands, "run", "run the daemon: keep every profile's sinks fresh"))
    wrap = with_config(
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
    wrap.add_argument(
        "--timeout", type=float, default=60.0, help="total seconds of retries to obtain the tokens before CMD starts"
    )
    wrap.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    once = with_config(
        _command(
            commands, "once", "make every profile's sinks hold a verified token, exit",
            "Make every selected profile's sinks hold a verified token, then exit. A FRESH token already in the "
            "sinks is kept (no request). `once` does not run on_update hooks or signal pid_file processes: "
            "consumers started after it read the files themselves.",
        )
    )  # fmt: skip
    once.add_argument("--timeout", type=float, default=60.0, help="total seconds of retries of transient failures")
    check = with_config(
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
    inspect = _command(commands, "inspect", "decode a token (never prints the signature)")
    inspect.add_argument(
        "token", nargs="?", default="-", help="token file (raw, json or env format), or - for stdin (the default)"
    )
    inspect.add_argument(
        "--verify", action="store_true",
        help="verify against each selected profile's JWKS and rules (exit 0 if one accepts it)",
    )  # fmt: skip
    with_config(inspect)
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
    demo = _command(commands, "demo", "run edge-token against the bundled local auth server")
    demo.add_argument("--dir", type=Path, default=Path("edge-token-demo"), help="where to write")
    demo.add_argument("--ttl", type=float, default=20.0, help="token lifetime in seconds (short to see rotations)")
    demo.add_argument("--duration", type=float, default=45.0, help="seconds to run the daemon (0: until Ctrl-C)")
    return parser


HOLDS_SECRETS = frozenset({"run", "once", "exec", "check"})


def say(text: str, *, err: bool = False) -> None:
    """Print one line through the process scrubber: a server that echoed a secret (in any encoding) or a token
    in an error message must not get it onto a terminal or into a CI log."""
    from edge_token.core.scrub import scrub_text

    print(scrub_text(text), file=sys.stderr if err else sys.stdout, flush=True)


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


def _load(args: argparse.Namespace) -> Any:
    from edge_token.config import load_config

    config = load_config(args.config)
    for name in getattr(args, "profile", None) or []:
        if name not in config.profiles:
            from edge_token.core.errors import ConfigError

            raise ConfigError(f"{args.config}: no profile {name!r} (have: {', '.join(config.profiles)})")
    return config


def _once(args: argparse.Namespace) -> int:
    from edge_token.app import exit_code, run_once
    from edge_token.core.clock import SystemClock
    from edge_token.observe import logs

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
    from edge_token.core.errors import ConfigError
    from edge_token.wrapper import main as exec_main

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ConfigError("exec needs a command: edge-token exec -c FILE -- CMD ARGS...")
    return exec_main(_load(args), cmd, args.on_rotation, args.signal, args.token_env, args.timeout)


def _check(args: argparse.Namespace) -> int:
    if args.as_user:
        return _check_as(args)
    config = _load(args)
    say(f"{config.path}: valid, {len(config.profiles)} profile(s)")
    for profile in config.profiles.values():
        if args.profile and profile.name not in args.profile:
            continue
        say(f"  {profile.name}: client_id {profile.client_id}, secret from {profile.secret.describe()}")
        say(f"    token_url {profile.token_url} ({profile.request_format}, {profile.auth_method})")
        say(f"    issuer {profile.issuer}  audience {profile.audience}")
        say(f"    jwks_url {profile.jwks_url}  algorithms {','.join(profile.algorithms)}")
        for sink in profile.sinks:
            say(f"    sink {sink.name} format={sink.format} mode={sink.mode:04o}")
    from edge_token.preflight import Problem, preflight

    found = preflight(config, os.environ, args.profile)
    problems = [item for item in found if isinstance(item, Problem)]
    for item in found:
        if isinstance(item, Problem):
            say(f"edge-token: {item}", err=True)
        else:
            say(f"  note: {item.where}: {item.message}")
    if problems:
        say(f"edge-token: check failed: {len(problems)} problem(s) `run` would fail on", err=True)
        return problems[0].exit_code
    say("check: OK (secrets, sinks, TLS files, listen address, hooks)")
    if not args.online:
        return 0
    return asyncio.run(_check_online(config, args.profile))


def _check_as(args: argparse.Namespace) -> int:
    """`check --as USER[:GROUP]`: the same check in a forked child running as that user, with that user's
    groups, so file permissions are judged as the service will meet them (root can read everything)."""
    import grp
    import pwd

    from edge_token.core.errors import ConfigError

    user, _, group = args.as_user.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        gid = (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid) if group else entry.pw_gid
    except KeyError:
        raise ConfigError(f"check --as {args.as_user}: no such user or group on this system") from None
    if os.geteuid() != 0:
        raise ConfigError(f"check --as {args.as_user} needs root; or run `edge-token check` as that user")
    groups = os.getgrouplist(entry.pw_name, gid)
    # import now what the check will need: the user may not be able to read this interpreter's files
    import encodings.idna  # noqa: F401 - socket.getaddrinfo looks this codec up lazily

    import edge_token.preflight

    if args.online:
        import edge_token.app
        import edge_token.observe.logs
        import edge_token.provider.verify  # noqa: F401
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user for good, then the ordinary check
        code = EX_SOFTWARE
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(entry.pw_uid)
            from edge_token.hardening import make_non_dumpable

            make_non_dumpable()  # setuid resets the flag to the sysctl default
            args.as_user = None
            code = _check(args)
        except EdgeTokenError as exc:
            say(f"edge-token: {exc}", err=True)
            code = exc.exit_code
        except BaseException as exc:
            print(f"edge-token: internal error ({type(exc).__name__}); please report it", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else EX_SOFTWARE


async def _check_online(config: Any, selected: list[str] | None) -> int:
    """Fetch each JWKS and one token per profile, verified and never written. Log lines use the configured
    format; the summary says what was checked, not a repr, and claims no renewal (nothing is written)."""
    from datetime import UTC, datetime

    from edge_token.app import Parts, make_session
    from edge_token.core.clock import SystemClock
    from edge_token.core.errors import EdgeTokenError
    from edge_token.observe import logs
    from edge_token.provider.oauth import request_token
    from edge_token.provider.verify import verify_token

    logs.configure(config.daemon.log_format, config.daemon.log_level)
    import structlog

    log = structlog.get_logger("edge_token")
    clock, worst = SystemClock(), 0
    async with make_session() as session:
        parts = Parts(config, session, clock, log, environ=os.environ)  # the daemon's own JWKS caches and egress
        for profile in config.profiles.values():
            if selected and profile.name not in selected:
                continue
            cache, rules = parts.jwks_for(profile), parts.renewer(profile, sinks=[]).rules
            try:
                secret = read_secret(profile.secret, os.environ)
                answer = await request_token(session, profile, secret, clock, os.environ)
                token = await verify_token(answer.access_token, cache.key_set, rules, clock.time(),
                                           received_at=answer.received_at, expires_in=answer.expires_in)  # fmt: skip
            except EdgeTokenError as exc:
                say(f"edge-token: profile {profile.name}: online check failed: {exc}", err=True)
                log.warning("check.online_failed", profile=profile.name, error=exc.kind, message=str(exc))
                worst = worst or exc.exit_code
                continue
            expires = datetime.fromtimestamp(token.exp, UTC).isoformat(timespec="seconds")
            log.info("check.token_verified", profile=profile.name, kid=token.kid, expires_at=token.exp,
                     fingerprint=token.fingerprint, written=False)  # fmt: skip
            say(f"  {profile.name}: online OK: JWKS {profile.jwks_url} ({len(cache.kids)} key(s)); token from "
                f"{profile.token_url} verified (kid {token.kid}, expires {expires}); not written")  # fmt: skip
    return worst


def _read_token_arg(source: str) -> str:
    from edge_token.sinks.file import extract

    text = sys.stdin.read(1 << 20) if source == "-" else Path(source).read_text(encoding="utf-8")[: 1 << 20]
    for fmt in ("json", "env", "raw"):
        token = extract(text, fmt)
        if token:
            return token
    from edge_token.core.errors import VerificationError

    raise VerificationError("no JWT found in the input (expected a raw JWT, or a json or env sink file)", "malformed")


def _inspect(args: argparse.Namespace) -> int:
    import time

    from edge_token.provider.verify import decode_unverified

    try:
        token = _read_token_arg(args.token)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        say(f"edge-token: cannot read {args.token}: {reason}; give a token file (raw, json or env) or - for stdin",
            err=True)  # fmt: skip
        return EX_NOINPUT
    header, claims = decode_unverified(token)
    now = time.time()
    report: dict[str, Any] = {"header": header, "claims": claims}
    if isinstance(claims.get("exp"), int | float):
        report["seconds_left"] = round(claims["exp"] - now, 1)
    code = 0
    if args.verify:
        accepted, refused = asyncio.run(_verify_one(args, token))
        report["verified"] = bool(accepted)
        report["verified_by"] = accepted
        if not accepted:
            for name, error in refused.items():
                say(f"edge-token: profile {name}: {error}", err=True)
            code = next(iter(refused.values())).exit_code
    say(json.dumps(report, indent=2, sort_keys=True, default=str))
    return code


async def _verify_one(args: argparse.Namespace, token: str) -> tuple[list[str], dict[str, EdgeTokenError]]:
    """Verify against each selected profile (every profile by default): which accept it, and why the others
    refuse. A token belongs to one profile, so with several the question is "whose is it?", not an error."""
    import time

    from edge_token.app import Parts, make_session
    from edge_token.core.clock import SystemClock
    from edge_token.provider.verify import verify_token

    config = _load(args)
    names = args.profile or list(config.profiles)
    accepted: list[str] = []
    refused: dict[str, EdgeTokenError] = {}
    import structlog

    async with make_session() as session:
        parts = Parts(config, session, SystemClock(), structlog.get_logger("edge_token"), environ=os.environ)
        for name in names:
            profile = config.profiles[name]
            renewer = parts.renewer(profile, sinks=[])
            try:
                await verify_token(token, parts.jwks_for(profile).key_set, renewer.rules, time.time())
            except EdgeTokenError as exc:
                refused[name] = exc
            else:
                accepted.append(name)
    return accepted, refused


def _local_auth(args: argparse.Namespace) -> int:
    from edge_token.config.trust import is_loopback_host
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
