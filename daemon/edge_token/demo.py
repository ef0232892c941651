"""`edge-token demo`: the bundled local auth server plus edge-token, with no real credentials needed."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

DEMO_CLIENT = "demo-client"


def write_private(path: Path, text: str) -> None:
    """Create or replace a file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def demo_config(directory: Path, token_url: str, issuer: str, jwks_url: str) -> str:
    """The demo's config text: one profile against the bundled auth server, its token in `directory`."""
    return f"""# Written by `edge-token demo` for its bundled local auth server (a random port, valid while it runs).
[daemon]
listen = "127.0.0.1:0"
log_format = "console"

[profiles.demo]
client_id = "{DEMO_CLIENT}"
client_secret_file = "{directory / "demo.secret"}"
token_url = "{token_url}"
issuer = "{issuer}"
jwks_url = "{jwks_url}"
refresh_at = 0.5
leeway_seconds = 5

[[profiles.demo.sinks]]
path = "{directory / "demo.jwt"}"

[[profiles.demo.sinks]]
path = "{directory / "demo.json"}"
format = "json"
"""


DEMO_QUOTAS = {"per_hour": (100, 3600), "per_day": (1000, 86400)}  # shown on /metrics as provider_quota


async def _demo(directory: Path, ttl: float, duration: float) -> int:
    from edge_token.localauth import LocalAuthServer

    secret = secrets.token_urlsafe(32)
    write_private(directory / "demo.secret", secret + "\n")
    server = LocalAuthServer({DEMO_CLIENT: secret}, ttl=ttl, rate_limit=30, quotas=DEMO_QUOTAS)  # Auth0's signals
    await server.start()
    config_path = directory / "config.toml"
    write_private(config_path, demo_config(directory, server.token_url, server.issuer, server.jwks_url))
    print(f"demo: local auth server at {server.base_url} (tokens live {ttl:g}s); config {config_path}", flush=True)
    try:
        from edge_token.daemon import run_daemon

        code = await run_daemon(config_path, duration=duration or None)
    finally:
        await server.stop()
    print(f"demo: token file {directory / 'demo.jwt'} (and {directory / 'demo.json'})")
    print(f"demo: look inside with: edge-token inspect {directory / 'demo.jwt'}")
    print(f"demo: {server.tokens_issued} token(s) issued, {server.token_requests} request(s) made")
    return code


def main(directory: Path, ttl: float, duration: float) -> int:
    """`edge-token demo`: the bundled auth server and the daemon in one process, until Ctrl-C."""
    directory = directory.resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(directory, ttl, duration))
    except KeyboardInterrupt:
        return 0
