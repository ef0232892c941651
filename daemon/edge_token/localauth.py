"""The bundled local OAuth2 client-credentials + JWKS server, shaped like Sitecore's Auth0 tenant.

For `edge-token local-auth`, the README demo, local development and the test suite. RS256 keys are generated at
start (never stored); tokens carry Auth0's claims (`iss` with a trailing slash, `sub=<id>@clients`, `azp`, `gty`,
`aud`, `scope`); JSON and form bodies and HTTP Basic client authentication are accepted; errors use Auth0's shapes.

The Python API models what a provider does: token TTL, key rotation, token minting, request counters, extra
claims (Sitecore's tenant claims), HTTPS under a caller's certificate, and Auth0's rate-limit and quota signals:
with `rate_limit` set, every token answer carries `x-ratelimit-limit/-remaining/-reset` (a fixed window on `now`)
and a request over the limit gets 429 without Retry-After; with `quotas` set, every answer carries
`Auth0-Client-Quota-Limit` and an exhausted bucket gets 429 too (as Auth0's fine-grained M2M quotas do).
Misbehaving on purpose (fault injection) is test support and lives with the tests (`tests/faultyauth.py`, a
subclass that overrides the steps of `_issue` and `_jwks`).
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySetSerialization, RSAKey

DEFAULT_AUDIENCE = "https://api.sitecorecloud.io"


def load_client_secret(path: Path) -> str:
    """The `local-auth` client secret: created (random, mode 0600) when the file is missing; refused (exit 78)
    when empty or whitespace only, since the server would then issue tokens to clients that send no secret."""
    from edge_token.core.errors import ConfigError

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
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        quotas: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        for client_id, secret in (clients or {}).items():
            if not secret.strip():
                raise ValueError(f"client {client_id!r} has an empty secret: it would be issued tokens for nothing")
        self.clients = dict(clients or {})
        self.ttl, self.audiences, self.scope, self.now = ttl, audiences, scope, now
        self.keys: list[RSAKey] = [self._new_key()]
        self.token_requests = 0  # every request to the token endpoint, answered or refused
        self.tokens_issued = 0
        self.jwks_requests = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.extra_claims: dict[str, Any] = {}  # added to every token it issues (e.g. Sitecore tenant claims)
        # Auth0's signals: a fixed rate-limit window, and quota buckets {name: (quota, seconds)} counting tokens
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self._window: tuple[float, int] = (0.0, 0)  # (window start, requests in it)
        self.quotas = dict(quotas or {})
        self._quota_used: dict[str, tuple[float, int]] = {}  # bucket -> (period start, tokens issued in it)

    @staticmethod
    def _new_key() -> RSAKey:
        return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})

    # ---- addresses ---------------------------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        """The `iss` of every token: the base URL with Auth0's trailing slash (what a profile's `issuer` must be)."""
        return self.base_url + "/"

    @property
    def token_url(self) -> str:
        """Where clients POST client-credentials requests (Auth0's path)."""
        return self.base_url + "/oauth/token"

    @property
    def jwks_url(self) -> str:
        """Where the public keys are published, as the discovery document also says."""
        return self.base_url + "/.well-known/jwks.json"

    # ---- knobs -------------------------------------------------------------------------------------------
    @property
    def signing_key(self) -> RSAKey:
        """The key new tokens are signed with: the newest one (older ones may still be published)."""
        return self.keys[-1]

    def rotate_key(self, keep_old: bool = True) -> RSAKey:
        """Sign with a new key from now on; the old ones stay in the JWKS unless `keep_old` is False."""
        key = self._new_key()
        self.keys = [*self.keys, key] if keep_old else [key]
        return key

    def retire_old_keys(self) -> None:
        """Publish only the current signing key (the second half of a rotation)."""
        self.keys = [self.signing_key]

    def jwks(self) -> KeySetSerialization:
        """The published key set: the public halves of the current keys."""
        return {"keys": [key.as_dict(private=False) for key in self.keys]}

    def claims_for(self, client_id: str, audience: str) -> dict[str, Any]:
        """The claims Auth0 puts in a client-credentials token for this client and audience, issued now."""
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
            **self.extra_claims,
        }

    def mint(self, claims: dict[str, Any], header: dict[str, Any] | None = None, key: RSAKey | None = None) -> str:
        """Sign claims with a header and key of the caller's choosing (default: the current key): the server's own
        tokens, and the forged or foreign ones a test or a local experiment needs."""
        key = key or self.signing_key
        head = {"alg": "RS256", "typ": "JWT", "kid": key.kid, **(header or {})}
        return jwt.encode(head, claims, key, algorithms=[head["alg"]])

    # ---- lifecycle ---------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> str:
        """Serve on `host:port` (0: a free port), over HTTPS with `tls`; return the base URL actually bound."""
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"{'https' if tls else 'http'}://{shown}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        """Close the listener and every connection; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- handlers ----------------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    async def _read_params(self, request: web.Request) -> dict[str, str]:
        """The request's parameters from a JSON or form body, client credentials from HTTP Basic if sent."""
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

    # ---- Auth0's rate-limit and quota signals -----------------------------------------------------------------
    def _limit_headers(self, count: bool) -> tuple[dict[str, str], bool]:
        """(headers, over the limit) for one token request; `count` it against the window."""
        if self.rate_limit is None:
            return {}, False
        now = self.now()
        start, used = self._window
        if now >= start + self.rate_window:
            start, used = now, 0
        over = count and used >= self.rate_limit
        used += 1 if count and not over else 0
        self._window = (start, used)
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(0, self.rate_limit - used)),
            "x-ratelimit-reset": str(int(start + self.rate_window)),
        }, over

    def _quota_state(self, issue: bool) -> tuple[dict[str, str], bool]:
        """(headers, exhausted) of the quota buckets; `issue` counts one token against every bucket."""
        if not self.quotas:
            return {}, False
        now, parts, exhausted = self.now(), [], False
        for bucket, (quota, period) in self.quotas.items():
            start, used = self._quota_used.get(bucket, (now, 0))
            if now >= start + period:
                start, used = now, 0
            exhausted |= used >= quota
            self._quota_used[bucket] = (start, used)
        for bucket, (quota, period) in self.quotas.items():
            start, used = self._quota_used[bucket]
            if issue and not exhausted:
                used += 1
                self._quota_used[bucket] = (start, used)
            reset = max(0, int(start + period - now))
            parts.append(f"b={bucket};q={quota};r={max(0, quota - used)};t={reset}")
        return {"Auth0-Client-Quota-Limit": ",".join(parts)}, exhausted

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        limit_headers, over = self._limit_headers(count=True)
        if over:
            return web.json_response({"error": "too_many_requests", "error_description": "Too Many Requests"},
                                     status=429, headers=limit_headers)  # fmt: skip
        quota_headers, exhausted = self._quota_state(issue=False)
        if exhausted:
            return web.json_response(
                {"error": "too_many_requests", "error_description": "Quota exceeded"},
                status=429, headers={**limit_headers, **quota_headers},
            )  # fmt: skip
        response = await self._issue(request)
        if not response.prepared:  # a streamed answer (a subclass may stream one) has sent its headers already
            quota_headers, _ = self._quota_state(issue=response.status == 200)
            response.headers.update({**limit_headers, **quota_headers})
        return response

    async def _issue(self, request: web.Request) -> web.StreamResponse:
        """The answer to a token request within the rate limit and quotas: a new token, or the OAuth error."""
        granted = await self._authenticate(request)
        if isinstance(granted, web.Response):
            return granted
        return self._grant(self._new_token(*granted))

    async def _authenticate(self, request: web.Request) -> tuple[str, str] | web.Response:
        """(client id, audience) of a valid client-credentials request, or the error answer Auth0 would give."""
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
        return client_id, audience

    def _new_token(self, client_id: str, audience: str) -> str:
        """A genuine token for this client and audience, signed with the current key."""
        return self.mint(self.claims_for(client_id, audience))

    def _grant(self, token: str) -> web.Response:
        """The successful token answer, counted."""
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "expires_in": max(1, round(self.ttl)), "token_type": "Bearer", "scope": self.scope}
        )

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_requests += 1
        return web.json_response(self.jwks())

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
