"""The OAuth2 client-credentials request (RFC 6749 section 4.4), classified once at this boundary.

Every way the exchange can go wrong ends here as exactly one of: TransientError (retry soon, maybe with the
server's Retry-After), CredentialsRejected (the provider refused us) or ProtocolError (the provider answered
something that is not a token answer). Messages quote the provider's `error`/`error_description` (sanitised,
with our own secret scrubbed in case a hostile server echoes it), never the request body.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp

from edge_token.core import ratelimit, strictjson
from edge_token.core.clock import Clock
from edge_token.core.errors import CredentialsRejected, ProtocolError, TransientError
from edge_token.core.policy import parse_retry_after
from edge_token.core.record import Record, field, replace
from edge_token.core.settings import ProfileConfig
from edge_token.core.strictnum import ascii_uint, finite
from edge_token.net import egress
from edge_token.net.http import read_limited, sanitize
from edge_token.net.reasons import unreachable

MAX_RESPONSE_BYTES = 64 * 1024
MAX_EXPIRES_IN = 10 * 365 * 86400.0
REJECTING_ERRORS = frozenset(
    {"invalid_client", "access_denied", "unauthorized_client", "invalid_grant", "invalid_scope",
     "invalid_request", "unsupported_grant_type", "invalid_target"}
)  # fmt: skip
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
KNOWN_ERRORS = REJECTING_ERRORS | TRANSIENT_ERRORS | {"too_many_requests", "invalid_token", "insufficient_scope"}


class TokenAnswer(Record):
    """A successful token endpoint answer, not yet verified."""

    access_token: str = field(repr=False)
    received_at: float
    expires_in: float | None
    token_type: str
    scope: str | None
    rate_limit: ratelimit.RateLimit | None = None

    def __repr__(self) -> str:
        return f"TokenAnswer(expires_in={self.expires_in}, token_type={self.token_type!r})"


def _request(profile: ProfileConfig, secret: str) -> tuple[dict[str, str], dict[str, str]]:
    """The token request's parameters and extra headers for the configured client authentication."""
    params = {"grant_type": "client_credentials", "audience": profile.audience}
    headers = {"Accept": "application/json"}
    if profile.auth_method == "client_secret_basic":
        # RFC 6749 2.3.1: form-encode id and secret before base64, so ':' and '%' survive.
        pair = f"{quote(profile.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        params.update(client_id=profile.client_id, client_secret=secret)
    if profile.scope:
        params["scope"] = profile.scope
    return params, headers


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """The request's timeout (frozen, so one per configured value is shared: building it was 42 bytecodes)."""
    return aiohttp.ClientTimeout(total=seconds, connect=min(5.0, seconds))


async def request_token(
    session: aiohttp.ClientSession,
    profile: ProfileConfig,
    secret: str,
    clock: Clock,
    environ: Mapping[str, str] | None = None,
) -> TokenAnswer:
    """POST the client-credentials grant and return the parsed answer, or raise a classified error.

    `environ` resolves `proxy = "env"` and proxy credentials (egress.py); None means no environment."""
    params, headers = _request(profile, secret)
    via = egress.route(profile.egress, profile.token_url, environ or {})
    body: dict[str, Any] = {"json": params} if profile.request_format == "json" else {"data": params}
    timeout = _timeout(profile.timeout_seconds)
    host = urlsplit(profile.token_url).netloc
    try:
        async with session.post(
            profile.token_url, headers=headers, allow_redirects=False, timeout=timeout, proxy=via.proxy,
            proxy_headers=via.proxy_headers, ssl=via.ssl, **body,
        ) as response:  # fmt: skip
            raw = await read_limited(response, MAX_RESPONSE_BYTES, "the token endpoint's answer")
            received_at = clock.time()
            status, response_headers = response.status, response.headers
    except TimeoutError:
        raise TransientError(
            f"token endpoint {sanitize(profile.token_url, (secret,))} did not answer within "
            f"{profile.timeout_seconds:g}s (timeout_seconds); check token_url and the network; will retry"
        ) from None
    except egress.PROXY_ERRORS as exc:
        raise egress.proxy_failure(exc, via, f"token endpoint {host}", TransientError, egress.ProxyRejected) from None
    except aiohttp.ClientError as exc:  # refused, DNS, TLS, reset...: the cause in words, the URL and key to check
        url = sanitize(profile.token_url, (secret,))
        raise TransientError(unreachable("the token endpoint", url, "token_url", exc) + "; will retry") from None
    except (OSError, ValueError, LookupError) as exc:  # a malformed answer aiohttp did not wrap (bad encoding...)
        raise TransientError(f"token endpoint {host} answered unreadably ({type(exc).__name__}); will retry") from None
    limits = ratelimit.parse(response_headers, received_at)
    if status != 200:
        failure = _classify_failure(status, response_headers, raw, host, secret, clock.time())
        raise ratelimit.attach(failure, limits, status, clock.time())
    answer = parse_token_answer(raw, response_headers.get("Content-Type", ""), received_at, secret)
    return answer if limits is None else replace(answer, rate_limit=limits)


def _oauth_error(raw: bytes) -> tuple[str | None, str | None]:
    """(error, error_description) from an OAuth error body, if it is one."""
    try:
        data = strictjson.loads(raw)
    except ValueError:  # strictjson: every refusal (ambiguous, invalid, too deep) is a ValueError
        return None, None
    if not isinstance(data, dict):
        return None, None
    error, description = data.get("error"), data.get("error_description")
    return (error if isinstance(error, str) else None, description if isinstance(description, str) else None)


def _classify_failure(
    status: int, headers: Mapping[str, str], raw: bytes, host: str, secret: str, now: float
) -> Exception:
    # Only a known OAuth error code is repeated, never the provider's free text (error_description, an unknown
    # code): a provider that echoes our request can encode the secret in ways no scrubber can enumerate (base32,
    # UTF-16, reversed...). The status and the code say what to fix; the provider's own logs say the rest.
    error, _description = _oauth_error(raw)
    said = f"{status}"
    if error in KNOWN_ERRORS:
        said += f" {error}"
    elif error:
        said += " (an unrecognised error code, not shown)"
    retry_after = parse_retry_after(headers.get("Retry-After"), now)
    if 300 <= status < 400:
        return ProtocolError(
            f"token endpoint {host} answered {status} (a redirect); redirects are not followed on the token "
            "endpoint: set token_url to the final URL"
        )
    if status == 429 or status >= 500 or error in TRANSIENT_ERRORS:
        return TransientError(f"token endpoint {host} answered {said}; will retry", retry_after)
    if status in (400, 401, 403) or error in REJECTING_ERRORS:
        return CredentialsRejected(
            f"credentials rejected by {host} ({said}); check client_id, the client secret and audience"
        )
    return ProtocolError(f"token endpoint {host} answered {said}; check token_url")


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if "application/x-www-form-urlencoded" in content_type.lower():
        try:
            return dict(parse_qsl(raw.decode("utf-8"), strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("token answer is not valid form-encoded text") from None
    try:
        data = strictjson.loads(raw)
    except ValueError as exc:  # strictjson.JsonDefect: names the defect, never quotes the body
        kind = "an HTML page" if raw.lstrip()[:1] == b"<" else f"not acceptable JSON: {exc}"
        raise ProtocolError(f"token answer with status 200 is {kind}; check token_url") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"token answer is JSON but {strictjson.kind(data)}, not an object; check token_url")
    return data


def parse_token_answer(raw: bytes, content_type: str, received_at: float, secret: str = "") -> TokenAnswer:
    """Validate a 200 answer's shape (RFC 6749 5.1); the JWT itself is checked later by `verify`."""
    data = _parse_body(raw, content_type)
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise ProtocolError("token answer has no access_token string")
    expires_in = _expires_in(data.get("expires_in"), secret)
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ProtocolError(
            f"token answer has token_type {sanitize(token_type, (secret,), 40)}; only Bearer tokens are supported"
        )
    scope = data.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise ProtocolError("token answer has a scope that is not a string")
    return TokenAnswer(
        access_token=token,
        received_at=received_at,
        expires_in=expires_in,
        token_type="Bearer",
        scope=scope,
        rate_limit=None,  # every field given: a Record then fills in no defaults (a call fewer per renewal)
    )


def _expires_in(value: object, secret: str) -> float | None:
    """RFC 6749 5.1 `expires_in`: RECOMMENDED, so absent is fine; present, it must be a positive number of seconds
    (a JSON number, or ASCII digits in a form-encoded answer) of at most ten years."""
    if value is None:
        return None
    seconds = float(ascii_uint(value, 10) or 0) if isinstance(value, str) else finite(value, 0, MAX_EXPIRES_IN)
    if not seconds or seconds > MAX_EXPIRES_IN:
        raise ProtocolError(f"token answer has an invalid expires_in {sanitize(value, (secret,), 40)}")
    return seconds
