"""The bundled local OAuth2 client-credentials + JWKS server, shaped like Sitecore's Auth0 tenant.

For the README demo, local development and the test suite. RS256 keys are generated at start (never stored);
tokens carry Auth0's claims (`iss` with a trailing slash, `sub=<id>@clients`, `azp`, `gty`, `aud`, `scope`);
JSON and form bodies and HTTP Basic client authentication are accepted; errors use Auth0's shapes.

The Python API has the knobs tests need: token TTL, key rotation, queued faults (any status, body, headers or
delay) for the token and JWKS endpoints, custom token minting, and request counters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

DEFAULT_AUDIENCE = "https://api.sitecorecloud.io"


@dataclass
class Fault:
    """One injected answer. `body` may be bytes (sent as is) or JSON-able; `delay` happens before answering."""

    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    access_token: str | None = None  # with status 200: a normal answer carrying this token instead
    reset: bool = False  # drop the connection without answering
    trickle: float = 0.0  # seconds between body bytes (a slowloris answer)
    chunks: int = 0  # send `body` this many times as chunked transfer encoding (an endless body)
    #: (raw request body, request headers) -> the JSON error body: a provider that echoes what it was sent
    echo: Callable[[bytes, Mapping[str, str]], Any] | None = None


def load_client_secret(path: Path) -> str:
    """The `local-auth` client secret: created (random, mode 0600) when the file is missing; refused (exit 78)
    when empty or whitespace only, since the server would then issue tokens to clients that send no secret."""
    from edge_token.errors import ConfigError

    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"local-auth: cannot read the client secret file {path}: {reason}") from None
    if not secret:
        raise ConfigError(
            f"local-auth: the client secret file {path} is empty (or only whitespace): refusing to start, since "
            f"any client sending no secret would get tokens; put a secret in it, or delete it to have one generated"
        )
    return secret


class LocalAuthServer:
    """An in-process OAuth2 server on loopback. `await start()`, use `.token_url` etc., `await stop()`."""

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        *,
        ttl: float = 86400.0,
        audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,),
        scope: str = "edge.tokens:manage",
        now: Callable[[], float] = time.time,
    ) -> None:
        for client_id, secret in (clients or {}).items():
            if not secret.strip():
                raise ValueError(f"client {client_id!r} has an empty secret: it would be issued tokens for nothing")
        self.clients = dict(clients or {})
        self.ttl, self.audiences, self.scope, self.now = ttl, audiences, scope, now
        self.keys: list[RSAKey] = [self._new_key()]
        self.token_faults: deque[Fault] = deque()
        self.jwks_faults: deque[Fault] = deque()
        # consulted when no fault is queued: a chaos source for soak tests (None = no fault this time)
        self.token_chaos: Callable[[], Fault | None] | None = None
        self.jwks_chaos: Callable[[], Fault | None] | None = None
        self.good_issue_times: list[float] = []  # now() of every genuine token handed out
        self.token_requests = 0
        self.request_times: list[float] = []  # now() of every token request, for Retry-After tests
        self.tokens_issued = 0
        self.issued: list[str] = []  # every token handed out (tests search outputs for leaks)
        self.jwks_requests = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    @staticmethod
    def _new_key() -> RSAKey:
        return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})

    # ---- addresses ---------------------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return self.base_url + "/"

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth/token"

    @property
    def jwks_url(self) -> str:
        return self.base_url + "/.well-known/jwks.json"

    # ---- knobs -------------------------------------------------------------------------------------------
    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def rotate_key(self, keep_old: bool = True) -> RSAKey:
        """Sign with a new key from now on; the old ones stay in the JWKS unless `keep_old` is False."""
        key = self._new_key()
        self.keys = [*self.keys, key] if keep_old else [key]
        return key

    def retire_old_keys(self) -> None:
        """Publish only the current signing key (the second half of a rotation)."""
        self.keys = [self.signing_key]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self.keys]}

    def claims_for(self, client_id: str, audience: str) -> dict[str, Any]:
        issued = int(self.now())
        return {
            "iss": self.issuer,
            "sub": f"{client_id}@clients",
            "aud": audience,
            "iat": issued,
            "exp": issued + max(1, round(self.ttl)),
            "scope": self.scope,
            "gty": "client-credentials",
            "azp": client_id,
            "jti": secrets.token_hex(8),
        }

    def mint(self, claims: dict[str, Any], header: dict[str, Any] | None = None, key: RSAKey | None = None) -> str:
        """Sign arbitrary claims (tests build bad tokens with this)."""
        key = key or self.signing_key
        head = {"alg": "RS256", "typ": "JWT", "kid": key.kid, **(header or {})}
        return jwt.encode(head, claims, key, algorithms=[head["alg"]])

    # ---- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- handlers ----------------------------------------------------------------------------------------
    @staticmethod
    async def _fault_response(fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.reset and request.transport is not None:
            request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if fault.access_token is not None:
            return None
        if fault.echo is not None:
            body = fault.echo(await request.read(), request.headers)
            return web.json_response(body, status=fault.status, headers=fault.headers)
        if fault.chunks:
            stream = web.StreamResponse(status=fault.status, headers=fault.headers)
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            for _ in range(fault.chunks):
                await stream.write(fault.body if isinstance(fault.body, bytes) else b" ")
            return stream
        if fault.trickle:
            stream = web.StreamResponse(status=fault.status, headers=fault.headers)
            await stream.prepare(request)
            for byte in fault.body if isinstance(fault.body, bytes) else b"{}":
                await stream.write(bytes([byte]))
                await asyncio.sleep(fault.trickle)
            return stream
        if isinstance(fault.body, bytes):
            return web.Response(status=fault.status, body=fault.body, headers=fault.headers)
        return web.json_response(fault.body, status=fault.status, headers=fault.headers)

    @staticmethod
    def _error(status: int, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def _read_params(self, request: web.Request) -> dict[str, str]:
        if request.content_type == "application/json":
            data = await request.json()
            params = {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        else:
            params = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            params.setdefault("client_id", unquote(user))
            params.setdefault("client_secret", unquote(password))
        return params

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        self.request_times.append(self.now())
        fault = self.token_faults.popleft() if self.token_faults else self.token_chaos() if self.token_chaos else None
        override = None
        if fault is not None:
            response = await self._fault_response(fault, request)
            if response is not None:
                return response
            override = fault.access_token
        try:
            params = await self._read_params(request)
        except (ValueError, UnicodeDecodeError):
            return self._error(400, "invalid_request", "Malformed request body")
        if params.get("grant_type") != "client_credentials":
            return self._error(403, "unauthorized_client", "Grant type not allowed for the client.")
        client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        expected = self.clients.get(client_id)
        if expected is None or not secret or not secrets.compare_digest(expected.encode(), secret.encode()):
            return self._error(401, "access_denied", "Unauthorized")
        audience = params.get("audience", "")
        if audience not in self.audiences:
            return self._error(403, "access_denied", f"Service not found: {audience[:100]}")
        self.tokens_issued += 1
        token = override if override is not None else self.mint(self.claims_for(client_id, audience))
        self.issued.append(token)
        if override is None:
            self.good_issue_times.append(self.now())
        return web.json_response(
            {"access_token": token, "expires_in": max(1, round(self.ttl)), "token_type": "Bearer", "scope": self.scope}
        )

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_requests += 1
        fault = self.jwks_faults.popleft() if self.jwks_faults else self.jwks_chaos() if self.jwks_chaos else None
        if fault is not None:
            response = await self._fault_response(fault, request)
            if response is not None:
                return response
        return web.Response(text=json.dumps(self.jwks()), content_type="application/json")

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "issuer": self.issuer,
                "token_endpoint": self.token_url,
                "jwks_uri": self.jwks_url,
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )
