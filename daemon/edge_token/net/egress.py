"""How a request leaves the host: which HTTP proxy (if any) and which CAs verify the far end.

Every outgoing request (token endpoint, JWKS, secret stores, etcd) asks `route()` for its `Route` and passes it to
aiohttp as `proxy=` / `proxy_headers=` / `ssl=`. The session itself keeps `trust_env=False`: proxy variables are
honoured only where the configuration says `proxy = "env"`, and then resolved here, explicitly and testably, from
the environment the daemon was started with.

- HTTPS through a proxy is a CONNECT tunnel: TLS runs end to end between us and the destination and is verified
  against the destination's name (the proxy sees only the host and port). Plain http:// destinations (loopback
  only, see config) always go direct.
- Proxy credentials ("user:password") come from a file or a systemd credential, are re-read on every request (so
  a rotation heals without a restart) and registered with the scrubber before they are sent, so neither they nor
  the `Proxy-Authorization` header value can appear in any log line or message.
- `ca_file` REPLACES the system trust for that destination: only the CAs in the bundle are trusted (like the
  existing `ca_file` of the secret stores). To trust both, concatenate the system bundle and yours.
- A proxy that is down, or refuses us (407), is named as the proxy, never blamed on the provider.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp

from edge_token.core import scrub
from edge_token.core.errors import ConfigError, CredentialsRejected, EdgeTokenError, JwksError
from edge_token.core.record import Record
from edge_token.core.settings import Egress
from edge_token.secrets import read_secret

MAX_NO_PROXY_ENTRIES = 256


class Route(Record):
    """The aiohttp arguments of one request: proxy URL (or None), proxy headers, TLS verification."""

    proxy: str | None
    proxy_headers: Mapping[str, str] | None
    ssl: ssl.SSLContext | bool

    @property
    def proxy_host(self) -> str:
        """host:port of the proxy, for messages (never credentials: proxy URLs carry none)."""
        return urlsplit(self.proxy).netloc if self.proxy else ""

    def __repr__(self) -> str:
        return f"Route(proxy={self.proxy_host or None!r})"


class ProxyRejected(CredentialsRejected):
    """The HTTP proxy refused our proxy credentials (407): the proxy's fault to fix, not the provider's."""


class JwksProxyRejected(JwksError, ProxyRejected):
    """The proxy refused our credentials on the way to the JWKS: a credentials problem to fix at the proxy (exit 77,
    state credentials_rejected) whichever request meets it first, yet a JWKS failure for the key cache (the last
    good key set is kept)."""

    exit_code = ProxyRejected.exit_code
    kind = ProxyRejected.kind


def route(egress: Egress, url: str, environ: Mapping[str, str]) -> Route:
    """The proxy and TLS settings for a request to `url`. Raises ConfigError if a proxy credential is unreadable
    or an environment proxy variable is not a usable http:// proxy URL."""
    tls: ssl.SSLContext | bool = True  # the system trust, as client_context() answers without files
    if egress.ca_file is not None:
        from edge_token.net.tls import client_context  # only then: a cold `once` without one skips the module

        tls = client_context("", egress.ca_file)  # the one cached builder (tls.py): ca_file replaces the system trust
    # http:// is allowed for loopback destinations only (config.py), and a proxy cannot reach our loopback: those
    # go direct, as Go's ProxyFromEnvironment does for localhost. (Forwarding plain requests is also where proxies
    # and aiohttp disagree: tinyproxy closes the connection after each answer without saying so.)
    try:
        proxy = None if urlsplit(url).scheme == "http" else _proxy_for(egress.proxy, url, environ)
    except ValueError:  # e.g. an unterminated [ in HTTPS_PROXY: urlsplit raises (its text is not shown: a password)
        raise ConfigError("a proxy URL (proxy = or the *_PROXY environment variables) is not a valid URL") from None
    if proxy is None:
        return Route(None, None, tls)
    headers: dict[str, str] | None = None
    if egress.proxy_auth is not None:
        credentials = read_secret(egress.proxy_auth, environ, "proxy credentials")
        if ":" not in credentials:
            raise ConfigError(f"proxy credentials from {egress.proxy_auth.describe()} must be one line 'user:password'")
        value = "Basic " + base64.b64encode(credentials.encode()).decode()
        scrub.register(value)  # the header value as a whole, too, before it is ever sent
        scrub.register(credentials.split(":", 1)[1])  # and the password alone (a proxy may echo just that)
        headers = {"Proxy-Authorization": value}
    return Route(proxy, headers, tls)


def _proxy_for(setting: str, url: str, environ: Mapping[str, str]) -> str | None:
    if setting == "none":
        return None
    if setting != "env":
        return setting
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    # curl's precedence: the lower-case name first, then the upper-case one (a daemon is no CGI script, so
    # HTTP_PROXY is read too); then ALL_PROXY
    value = _env(environ, f"{scheme}_proxy") or _env(environ, "all_proxy")
    if not value or bypassed(parts.hostname or "", parts.port, _env(environ, "no_proxy") or ""):
        return None
    return check_proxy_url(value, f"environment variable {scheme.upper()}_PROXY")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name.lower()) or environ.get(name.upper())
    return value.strip() if value and value.strip() else None


def check_proxy_url(value: str, where: str) -> str:
    """An http:// proxy URL (host and port, nothing else); ConfigError naming `where` otherwise.

    User info is refused: a password in a URL ends up in process listings, logs and shell history; use
    proxy_auth_file / proxy_auth_credential. https:// proxies are refused too (aiohttp's support is partial):
    the tunnel inside is TLS to the destination anyway."""
    parts = urlsplit(value if "://" in value else f"http://{value}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where}: the proxy URL carries user info; put 'user:password' in a file and set proxy_auth_file "
            "(or proxy_auth_credential) instead"
        )
    if parts.scheme != "http" or not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f'{where}: expected an http://host:port proxy URL, "env" or "none"')
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port or 80}"


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """NO_PROXY as curl and Go read it: comma/space separated; `*` matches everything; a name matches itself and
    its subdomains (a leading dot is optional); an IP or CIDR matches addresses; `name:port` only that port."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(" ", ",").split(",")[:MAX_NO_PROXY_ENTRIES]:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = entry, None
        if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
            name, _, port_text = entry.rpartition(":")
            entry_port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
        name = name.strip("[]").lstrip(".").rstrip(".")
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_failure(
    exc: aiohttp.ClientError,
    where: Route,
    what: str,
    error: type[EdgeTokenError],
    rejected: type[EdgeTokenError] | None = None,
) -> EdgeTokenError:
    """The error for a request that failed at the proxy, naming the proxy: 407 is `rejected` (default `error`);
    a proxy that is down or refuses the tunnel is the caller's `error` class (transient for the provider)."""
    proxy = where.proxy_host or "the proxy"
    status = getattr(exc, "status", None)
    # 407 is the standard answer; tinyproxy (and some appliances) answer a CONNECT with wrong credentials with 401.
    # Either way it is the proxy speaking (aiohttp raises ClientHttpProxyError only for the CONNECT answer).
    if status in (401, 407):
        return proxy_rejected(proxy, what, rejected or error)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return error(f"{what}: proxy {proxy} refused the tunnel (HTTP {status}); check the proxy's access rules")
    return error(f"{what}: proxy {proxy} unreachable ({type(exc).__name__}); is the proxy up?")


def proxy_rejected(proxy: str, what: str, error: type[EdgeTokenError]) -> EdgeTokenError:
    """407 Proxy Authentication Required, as `error`, naming the proxy and the keys to fix."""
    return error(
        f"{what}: proxy {proxy} rejected the proxy credentials (Proxy Authentication Required); check "
        "proxy_auth_file / proxy_auth_credential (one line 'user:password'); the provider was not reached"
    )


PROXY_ERRORS = (aiohttp.ClientHttpProxyError, aiohttp.ClientProxyConnectionError)
