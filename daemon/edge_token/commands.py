"""The commands behind the CLI: each loads the config and wires the parts it needs (`cli.py` only parses).

Heavy imports happen inside each command, so a command pays only for what it uses: `once` (a container's init
step, a cron job) imports neither structlog, APScheduler nor prometheus-client (issue 15; tests/test_once_imports.py).
Long because it is every command's wiring in one place: eight commands, each a short function.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edge_token.core.errors import EX_CONFIG, EX_NOINPUT, EX_SOFTWARE, EdgeTokenError


def say(text: str, *, err: bool = False) -> None:
    """Print one line through the process scrubber: a server that echoed a secret (in any encoding) or a token
    in an error message must not get it onto a terminal or into a CI log."""
    from edge_token.core.scrub import scrub_text

    print(scrub_text(text), file=sys.stderr if err else sys.stdout, flush=True)


def load(args: SimpleNamespace) -> Any:
    """The config file named by -c, with every --profile name checked against it (a ConfigError if unknown)."""
    from edge_token.config import check_selected, load_config

    return check_selected(load_config(args.config), getattr(args, "profile", None))


def started() -> None:
    """Start-up is over (imports, the config): `__main__` kept the cyclic collector off for it. Everything it
    allocated sits in the youngest generation, so turning the collector on alone would have its first collections
    go over all of it (~25 ms of a cold `once`); it lives as long as the process, so it is frozen out of every
    collection (`gc.freeze`: a cycle start-up left behind stays, once) and the collector runs again."""
    gc.freeze()
    gc.enable()


def selected(config: Any, args: SimpleNamespace) -> list[str] | None:
    """The --profile names in config order, each once (None: every profile), as `run` and `check` take them: a
    repeated name must not run a profile twice, concurrently, into one sink, and the first failure's exit code is
    the config's first (README "Exit codes"), whatever the argv order."""
    wanted = getattr(args, "profile", None)
    return [name for name in config.profiles if name in wanted] if wanted else None


def warn_if_dumpable(log: Any, args: SimpleNamespace) -> None:
    """Log, loudly, that this process could not make itself non-dumpable (main tried, hardening.py)."""
    if getattr(args, "dumpable", None):
        from edge_token.hardening import dumpable_warning

        log.warning("hardening.dumpable", message=dumpable_warning(args.dumpable))


def run(args: SimpleNamespace) -> int:
    """`run`: the daemon (daemon.py), once the config and the --profile names are valid."""
    from edge_token.daemon import main as daemon_main

    try:
        config = load(args)
    finally:
        started()
    if getattr(args, "dumpable", None):  # said in the daemon's own log format, before the daemon configures it
        import structlog

        from edge_token.observe import logs

        logs.configure(config.daemon.log_format, config.daemon.log_level)
        warn_if_dumpable(structlog.get_logger("edge_token"), args)
    return daemon_main(config, args.profile)


def once(args: SimpleNamespace) -> int:
    """`once`: make every selected profile's sinks hold a verified token, then exit with the first failure's code."""
    from edge_token.app import exit_code, run_once
    from edge_token.core.clock import SystemClock

    try:
        config = load(args)
    finally:
        started()
    log, redactor = _short_lived_logger(config.daemon.log_format, config.daemon.log_level)
    warn_if_dumpable(log, args)
    results = asyncio.run(
        run_once(
            config,
            SystemClock(),
            log,
            environ=os.environ,
            profiles=selected(config, args),
            timeout=args.timeout,
            on_secret=redactor.add_secret,
        )
    )
    for result in results:
        if result.error is not None:
            say(f"edge-token: profile {result.profile}: {result.error}", err=True)
    return exit_code(results)


def _short_lived_logger(log_format: str, level: str) -> tuple[Any, Any]:
    """(logger, redactor) for a command that starts, logs a few lines and exits: JSON lines (off a terminal, as
    in a container or a unit) without importing structlog (observe/plainlog.py writes the same lines); the
    console format, for a person at a terminal, through structlog as the daemon does."""
    from edge_token.observe.logs import Redactor

    redactor = Redactor()
    if log_format == "json" or (log_format == "auto" and not sys.stderr.isatty()):
        from edge_token.observe import plainlog

        return plainlog.configure(level, sys.stderr, redactor), redactor
    import structlog

    from edge_token.observe import logs

    logs.configure(log_format, level, redactor=redactor)
    return structlog.get_logger("edge_token"), redactor


def exec_(args: SimpleNamespace) -> int:
    """`exec -- CMD`: obtain the tokens, then run CMD as a child and keep them fresh (wrapper.py)."""
    from edge_token.core.errors import ConfigError
    from edge_token.wrapper import main as exec_main

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ConfigError("exec needs a command: edge-token exec -c FILE -- CMD ARGS...")
    return exec_main(load(args), cmd, args.on_rotation, args.signal, args.token_env, args.timeout,
                     dumpable=getattr(args, "dumpable", None))  # fmt: skip


def check(args: SimpleNamespace) -> int:
    """`check`: validate the config and what `run` needs at start; with --online also one token per profile."""
    if args.as_user:
        return check_as(args)
    config = load(args)
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

    found = preflight(config, os.environ, args.profile, dumpable=getattr(args, "dumpable", None))
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
    return asyncio.run(check_online(config, args.profile))


def check_as(args: SimpleNamespace) -> int:
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
    _preload_for_check(args.online)
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

            args.dumpable = make_non_dumpable()  # setuid resets the flag to the sysctl default
            args.as_user = None
            code = check(args)
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


def _preload_for_check(online: bool) -> None:
    """Import now what the check will need: the user `check --as` drops to may not be able to read this
    interpreter's files. Besides our modules, the ones imported on demand: difflib (an unknown key's
    suggestion), grp and pwd (a sink's owner and group), html (scrubbing a line that holds an `&`)."""
    import difflib  # noqa: F401
    import encodings.idna  # noqa: F401 - socket.getaddrinfo looks this codec up lazily
    import grp  # noqa: F401
    import html  # noqa: F401
    import pwd  # noqa: F401

    import edge_token.preflight

    if online:
        import structlog  # noqa: F401 - logs.configure imports it when called

        import edge_token.app
        import edge_token.observe.logs
        import edge_token.provider.verify  # noqa: F401


async def check_online(config: Any, selected: list[str] | None) -> int:
    """Fetch each JWKS and one token per profile, verified and never written. Log lines use the configured
    format; the summary says what was checked, not a repr, and claims no renewal (nothing is written)."""
    from datetime import UTC, datetime

    from edge_token.app import Parts
    from edge_token.core.clock import SystemClock
    from edge_token.core.errors import EdgeTokenError
    from edge_token.net.http import make_session
    from edge_token.observe import logs
    from edge_token.provider.oauth import request_token
    from edge_token.provider.verify import verify_token
    from edge_token.secrets import read_secret

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


def read_token_arg(source: str) -> str:
    """The JWT in a token file (raw, json or env format) or on stdin (`-`)."""
    from edge_token.sinks.file import extract

    text = sys.stdin.read(1 << 20) if source == "-" else Path(source).read_text(encoding="utf-8")[: 1 << 20]
    for fmt in ("json", "env", "raw"):
        token = extract(text, fmt)
        if token:
            return token
    from edge_token.core.errors import VerificationError

    raise VerificationError("no JWT found in the input (expected a raw JWT, or a json or env sink file)", "malformed")


def inspect(args: SimpleNamespace) -> int:
    """`inspect`: print a token's header and claims (never its signature); with --verify, which profile accepts it."""
    import time

    from edge_token.provider.verify import decode_unverified

    try:
        token = read_token_arg(args.token)
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
        accepted, refused = asyncio.run(verify_one(args, token))
        report["verified"] = bool(accepted)
        report["verified_by"] = accepted
        if not accepted:
            for name, error in refused.items():
                say(f"edge-token: profile {name}: {error}", err=True)
            code = next(iter(refused.values())).exit_code
    say(json.dumps(report, indent=2, sort_keys=True, default=str))
    return code


async def verify_one(args: SimpleNamespace, token: str) -> tuple[list[str], dict[str, EdgeTokenError]]:
    """Verify against each selected profile (every profile by default): which accept it, and why the others
    refuse. A token belongs to one profile, so with several the question is "whose is it?", not an error."""
    import time

    from edge_token.app import Parts
    from edge_token.core.clock import SystemClock
    from edge_token.net.http import make_session
    from edge_token.provider.verify import verify_token

    config = load(args)
    names = selected(config, args) or list(config.profiles)
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


def local_auth(args: SimpleNamespace) -> int:
    """`local-auth`: serve the bundled OAuth2 + JWKS server on loopback until Ctrl-C."""
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
