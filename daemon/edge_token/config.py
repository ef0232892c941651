"""TOML file -> frozen, validated runtime config.

The file format is a public contract (see README "Configuration"). Every problem is reported as a
`ConfigError` naming the file, the key path (`profiles.production.sinks[0].mode`) and what is expected.
Unknown keys are rejected so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import errno
import grp
import math
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edge_token import scrub
from edge_token.egress import DIRECT, Egress, check_proxy_url, tls_context
from edge_token.errors import ConfigError, TransientError
from edge_token.tlsfiles import client_context

SITECORE_TOKEN_URL = "https://auth.sitecorecloud.io/oauth/token"
SITECORE_AUDIENCE = "https://api.sitecorecloud.io"
SITECORE_ISSUER = "https://auth.sitecorecloud.io/"
SITECORE_JWKS_URL = "https://auth.sitecorecloud.io/.well-known/jwks.json"

PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
SIGNALS = ("HUP", "USR1", "USR2", "TERM", "INT")
MAX_SECRET_BYTES = 64 * 1024  # a secret file larger than this is the wrong file (a key bundle, a log)
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN})
T = TypeVar("T")


@dataclass(frozen=True)
class SecretSource:
    """Where a profile's client secret lives. Re-read on every token request so a rotation heals itself."""

    kind: str  # file | env | credential | inline
    ref: str = field(repr=False)  # path, variable name, credential name, or (inline) the secret itself

    def describe(self) -> str:
        """Where the secret comes from, for `check` and logs; never the secret."""
        if self.kind == "inline":
            return "inline in the config file"
        return f"{self.kind} {self.ref}"

    def read(self, environ: Mapping[str, str], what: str = "client secret") -> str:
        """Return the secret (surrounding whitespace stripped) or raise ConfigError saying where it failed.

        Running out of descriptors or memory (EMFILE, ENFILE, ENOMEM) is TransientError: retried, not "config".
        """
        if self.kind == "inline":
            value = self.ref
        elif self.kind == "env":
            if self.ref not in environ:
                raise ConfigError(f"{what}: environment variable {self.ref} is not set")
            value = environ[self.ref]
        else:
            path = Path(self.ref)
            if self.kind == "credential":
                directory = environ.get("CREDENTIALS_DIRECTORY")
                if not directory:
                    raise ConfigError(
                        f"{what}: credential {self.ref!r} needs $CREDENTIALS_DIRECTORY "
                        "(systemd LoadCredential=/LoadCredentialEncrypted=)"
                    )
                path = Path(directory) / self.ref
            try:
                # O_NONBLOCK: a FIFO at the secret path must not block the event loop (it is refused just below)
                with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
                    info = os.fstat(handle.fileno())
                    if not stat.S_ISREG(info.st_mode):
                        raise ConfigError(f"{what}: {path} is not a regular file; point it at the secret file")
                    value = handle.read(MAX_SECRET_BYTES + 1).decode("utf-8")
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:  # the process is short of descriptors/memory, not misconfigured
                    raise TransientError(f"{what}: cannot read {path} now: {exc.strerror}; will retry") from None
                raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{what}: cannot read {path}: UnicodeDecodeError") from None
            if len(value) > MAX_SECRET_BYTES:
                raise ConfigError(f"{what}: {path} is larger than {MAX_SECRET_BYTES} bytes; is it the right file?")
            if world_readable_secret(path, info):
                raise ConfigError(
                    f"{what}: {path} is readable by every local user (mode {stat.S_IMODE(info.st_mode):04o}, "
                    f"and every directory above it is searchable); chmod o-r {path} (or use a systemd credential)"
                )
        value = value.strip()
        if not value:
            raise ConfigError(f"{what} from {self.describe()} is empty")
        scrub.register(value)  # before anyone can send it: an echo in any encoding is cut everywhere (scrub.py)
        return value


@dataclass(frozen=True)
class SinkConfig:
    """One destination of a profile's token. `type = "file"` is the only sink type so far."""

    type: str
    path: Path | None = None  # file sinks only
    format: str = "raw"
    mode: int = 0o600
    uid: int = -1
    gid: int = -1
    env_name: str = "EDGE_TOKEN"
    on_update: tuple[str, ...] = ()
    on_update_timeout: float = 30.0
    signal: str | None = None
    pid_file: Path | None = None
    store: KubernetesSecretOptions | VaultKvOptions | None = None  # secret-store sinks only

    @property
    def name(self) -> str:
        """Stable, bounded label for logs and metrics (never a secret)."""
        return self.store.label if self.store is not None else f"{self.type}:{self.path}"


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubernetesSecretOptions:
    """`type = "kubernetes_secret"`: one key of one Secret, written over the Kubernetes REST API."""

    secret_name: str
    namespace: str | None = None  # None: the pod's own namespace (service-account namespace file)
    key: str = "token"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    api_url: str | None = None  # None: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
    token_file: Path = SA_DIR / "token"
    ca_file: Path | None = SA_DIR / "ca.crt"
    timeout_seconds: float = 10.0
    egress: Egress = DIRECT  # proxy only; ca_file above decides TLS trust

    @property
    def label(self) -> str:
        return f"kubernetes_secret:{self.namespace or '(pod namespace)'}/{self.secret_name}#{self.key}"


@dataclass(frozen=True)
class VaultKvOptions:
    """`type = "vault_kv"`: a HashiCorp Vault KV v2 secret {token, expires_at, token_type}, check-and-set."""

    address: str
    path: str
    mount: str = "secret"
    namespace: str | None = None
    token: SecretSource | None = None  # a Vault token (file or env), or AppRole below
    role_id: str | None = None
    secret_id: SecretSource | None = None
    approle_mount: str = "approle"
    ca_file: Path | None = None
    timeout_seconds: float = 10.0
    egress: Egress = DIRECT  # proxy only; ca_file above decides TLS trust

    @property
    def label(self) -> str:
        return f"vault_kv:{self.mount}/{self.path}"


@dataclass(frozen=True)
class ProfileConfig:
    """One client id + secret + audience, and where its token goes."""

    name: str
    client_id: str
    secret: SecretSource
    sinks: tuple[SinkConfig, ...]
    token_url: str = SITECORE_TOKEN_URL
    audience: str = SITECORE_AUDIENCE
    issuer: str = SITECORE_ISSUER
    jwks_url: str = SITECORE_JWKS_URL
    request_format: str = "json"  # json | form
    auth_method: str = "client_secret_post"  # client_secret_post | client_secret_basic
    scope: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    leeway_seconds: float = 60.0
    refresh_at: float = 0.8
    jitter: float = 0.05
    timeout_seconds: float = 10.0
    retry_max_seconds: float = 300.0
    egress: Egress = DIRECT  # proxy and CA bundle for the token endpoint and the JWKS (egress.py)
    required_claims: tuple[tuple[str, str], ...] = ()  # (claim, value) pins, e.g. Sitecore's tenant_id


@dataclass(frozen=True)
class DaemonConfig:
    """Process-wide settings (`[daemon]`)."""

    listen: str = "127.0.0.1:9464"
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    max_concurrent_renewals: int = 16
    jwks_refresh_seconds: float = 3600.0
    jwks_min_refetch_seconds: float = 30.0
    ready_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class FleetConfig:
    """`[fleet]`: share one token per profile across daemons through etcd (see fleet.py)."""

    etcd_endpoints: tuple[str, ...]
    key_prefix: str = "/edge-token"
    lease_ttl_seconds: float = 15.0
    poll_seconds: float = 5.0
    timeout_seconds: float = 2.0
    node_name: str | None = None
    username: str | None = None
    password: SecretSource | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    egress: Egress = DIRECT  # proxy only; ca_file above decides TLS trust


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path
    daemon: DaemonConfig
    profiles: Mapping[str, ProfileConfig]
    fleet: FleetConfig | None = None


class _Table:
    """A TOML table being validated: typed getters that name the key path, and unknown-key detection."""

    def __init__(self, data: Mapping[str, Any], where: str, file: Path) -> None:
        self.data, self.where, self.file, self.used = data, where, file, set[str]()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.path(key)}: expected {expected}, got {self.data.get(key)!r}")

    def get(self, key: str, kind: type[T], default: T, expected: str) -> T:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(key, expected)
        return value

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str | None:
        expected = f"one of {', '.join(map(repr, choices))}" if choices else "a non-empty string"
        value = self.get(key, str, default, expected)
        if value is not None and (not value or (choices and value not in choices)):
            raise self.fail(key, expected)
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        expected = f"a number from {low:g} to {high:g}"
        value = self.get(key, float, default, expected)
        if not (math.isfinite(value) and low <= value <= high):
            raise self.fail(key, expected)
        return value

    def table(self, key: str) -> _Table:
        value = self.get(key, dict, {}, "a table")
        return _Table(value, self.path(key), self.file)

    def only(self, known: frozenset[str]) -> None:
        """Reject unknown keys first, so a misspelt required key is reported as the typo it is."""
        self.used |= known
        self.finish()

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            where = self.where or "the top level"
            close = difflib.get_close_matches(unknown[0], sorted(self.used), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(sorted(self.used))}"
            raise ConfigError(f"{self.file}: unknown key {self.path(unknown[0])!r} in {where}; {hint}")


def is_loopback_host(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1: the only places plain HTTP may go."""
    if host.lower() in ("localhost", "localhost."):
        return True
    import ipaddress  # only for http:// URLs

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(table: _Table, key: str, default: str) -> str:
    value = table.text(key, default)
    assert value is not None
    return _check_url(table, key, value)


def _check_url(table: _Table, key: str, value: str) -> str:
    parts = urlsplit(value)
    expected = "an https:// URL (http:// only for a loopback host) without user info or fragment"
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise table.fail(key, expected) from None
    if not host or parts.username or parts.password or parts.fragment or parts.scheme not in ("https", "http"):
        raise table.fail(key, expected)
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"{table.file}: {table.path(key)}: plain http:// is refused for {host!r} (tokens and secrets would "
            "travel unencrypted); use https://, or a loopback address for local testing"
        )
    return value


def _mode(table: _Table, key: str) -> int:
    table.used.add(key)
    raw = table.data.get(key, "0600")
    expected = 'an octal mode string such as "0600" or "0640" (not writable by group or others)'
    if isinstance(raw, str) and re.fullmatch(r"0?[0-7]{3}", raw):
        mode = int(raw, 8)
    elif isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0o777:
        mode = raw
    else:
        raise table.fail(key, expected)
    if mode & 0o022 or not mode & stat.S_IRUSR:
        raise table.fail(key, expected)
    return mode


def _owner(table: _Table, key: str, lookup: Callable[[str], int]) -> int:
    value = table.data.get(key)
    table.used.add(key)
    if value is None:
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value:
        try:
            return lookup(value)
        except KeyError:
            raise ConfigError(f"{table.file}: {table.path(key)}: no such {key} {value!r} on this system") from None
    raise table.fail(key, f"a {key} name or a numeric id")


def _string_list(table: _Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key, list, list(default), "a list of non-empty strings")
    if not all(isinstance(item, str) and item for item in value):
        raise table.fail(key, "a list of non-empty strings")
    return tuple(value)


COMMON_SINK_KEYS = frozenset({"type", "on_update", "on_update_timeout", "signal", "pid_file"})
PROXY_KEYS = frozenset({"proxy", "proxy_auth_file", "proxy_auth_credential"})
SINK_KEYS = {
    "file": COMMON_SINK_KEYS | {"path", "format", "mode", "owner", "group", "env_name"},
    "kubernetes_secret": COMMON_SINK_KEYS | {"secret_name", "namespace", "key", "labels", "annotations", "api_url",
                                             "token_file", "ca_file", "timeout_seconds"} | PROXY_KEYS,
    "vault_kv": COMMON_SINK_KEYS | {"address", "mount", "path", "namespace", "token_file", "token_env", "role_id",
                                    "secret_id_file", "approle_mount", "ca_file", "timeout_seconds"} | PROXY_KEYS,
}  # fmt: skip
PROFILE_KEYS = frozenset(
    {"client_id", "sinks", "token_url", "audience", "issuer", "jwks_url", "request_format", "auth_method", "scope",
     "algorithms", "leeway_seconds", "refresh_at", "jitter", "timeout_seconds", "retry_max_seconds", "ca_file",
     "required_claims"} | PROXY_KEYS
)  # fmt: skip
DAEMON_KEYS = frozenset(
    {
        "listen",
        "log_format",
        "log_level",
        "max_concurrent_renewals",
        "jwks_refresh_seconds",
        "jwks_min_refetch_seconds",
        "ready_timeout_seconds",
    }
)


def _sink(table: _Table) -> SinkConfig:
    kind = table.text("type", "file", choices=tuple(SINK_KEYS)) or "file"
    table.only(frozenset(SINK_KEYS[kind]))
    signal = table.text("signal", None, choices=SIGNALS)
    pid_file = table.text("pid_file", None)
    if (signal is None) != (pid_file is None):
        raise ConfigError(f"{table.file}: {table.where}: set both signal and pid_file, or neither")
    on_update = _string_list(table, "on_update", ())
    if on_update:
        _check_program(table, Path(on_update[0]))
    common: dict[str, Any] = {
        "type": kind,
        "on_update": on_update,
        "on_update_timeout": table.number("on_update_timeout", 30.0, 0.1, 3600.0),
        "signal": signal,
        "pid_file": Path(pid_file) if pid_file else None,
    }
    if kind == "kubernetes_secret":
        return SinkConfig(**common, store=_kubernetes(table))
    if kind == "vault_kv":
        return SinkConfig(**common, store=_vault(table))
    path_text = table.text("path")
    if path_text is None:
        raise table.fail("path", "the absolute path of the token file")
    path = Path(path_text)
    if not path.is_absolute():
        path = (table.file.parent / path).resolve()
    fmt = table.text("format", "raw", choices=("raw", "json", "env")) or "raw"
    env_name = table.text("env_name", "EDGE_TOKEN") or "EDGE_TOKEN"
    if not ENV_NAME.match(env_name):
        raise table.fail("env_name", "a shell variable name such as EDGE_TOKEN")
    return SinkConfig(
        **common,
        path=path,
        format=fmt,
        mode=_mode(table, "mode"),
        uid=_owner(table, "owner", lambda name: pwd.getpwnam(name).pw_uid),
        gid=_owner(table, "group", lambda name: grp.getgrnam(name).gr_gid),
        env_name=env_name,
    )


def _string_table(table: _Table, key: str) -> dict[str, str]:
    value = table.get(key, dict, {}, "a table of strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise table.fail(key, "a table of strings")
    return dict(value)


def _optional_path(table: _Table, key: str, default: Path | None) -> Path | None:
    text = table.text(key, None)
    return Path(text) if text else default


def _kubernetes(table: _Table) -> KubernetesSecretOptions:
    name = table.text("secret_name")
    if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
        raise table.fail("secret_name", "a Kubernetes object name (lowercase letters, digits, '-', '.')")
    key = table.text("key", "token") or "token"
    if not re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", key):
        raise table.fail("key", "a Secret data key ([-._a-zA-Z0-9]+)")
    api_url = _url(table, "api_url", "") if "api_url" in table.data else None
    return KubernetesSecretOptions(
        secret_name=name,
        namespace=table.text("namespace", None),
        key=key,
        labels=_string_table(table, "labels"),
        annotations=_string_table(table, "annotations"),
        api_url=api_url,
        token_file=_optional_path(table, "token_file", SA_DIR / "token") or SA_DIR / "token",
        ca_file=_optional_path(table, "ca_file", SA_DIR / "ca.crt"),
        timeout_seconds=table.number("timeout_seconds", 10.0, 0.1, 300.0),
        egress=_egress(table, None),
    )


def _vault(table: _Table) -> VaultKvOptions:
    address = _url(table, "address", "")
    kv_path = table.text("path")
    if not kv_path or kv_path.startswith("/") or ".." in kv_path.split("/"):
        raise table.fail("path", "a KV path such as \"edge-token/production\" (relative, no '..')")
    token_file, token_env = table.text("token_file", None), table.text("token_env", None)
    role_id, secret_id_file = table.text("role_id", None), table.text("secret_id_file", None)
    methods = [m for m in (token_file, token_env, role_id) if m]
    if len(methods) != 1 or (role_id is None) != (secret_id_file is None):
        raise ConfigError(
            f"{table.file}: {table.where}: authenticate to Vault with exactly one of token_file, token_env, "
            "or role_id + secret_id_file (AppRole)"
        )
    token = SecretSource("file", token_file) if token_file else SecretSource("env", token_env) if token_env else None
    return VaultKvOptions(
        address=address.rstrip("/"),
        path=kv_path.strip("/"),
        mount=(table.text("mount", "secret") or "secret").strip("/"),
        namespace=table.text("namespace", None),
        token=token,
        role_id=role_id,
        secret_id=SecretSource("file", secret_id_file) if secret_id_file else None,
        approle_mount=(table.text("approle_mount", "approle") or "approle").strip("/"),
        ca_file=_optional_path(table, "ca_file", None),
        timeout_seconds=table.number("timeout_seconds", 10.0, 0.1, 300.0),
        egress=_egress(table, None),
    )


def _absolute(table: _Table, path: Path | None) -> Path | None:
    return path if path is None or path.is_absolute() else table.file.parent / path


def _ca_bundle(table: _Table) -> Path | None:
    """A profile's `ca_file`, loaded once now so a typo or a non-PEM file fails `check` and the start (exit 78)."""
    path = _absolute(table, _optional_path(table, "ca_file", None))
    if path is not None:
        try:
            tls_context(path)
        except ConfigError as exc:
            raise ConfigError(
                f"{table.file}: {table.path('ca_file')}: {exc}; give a PEM bundle of CA certificates"
            ) from None
    return path


def _egress(table: _Table, ca_file: Path | None) -> Egress:
    """`proxy` ("none" default, "env", or "http://host:port") and its credentials file or systemd credential."""
    setting = table.text("proxy", "none") or "none"
    if setting not in ("none", "env"):
        setting = check_proxy_url(setting, f"{table.file}: {table.path('proxy')}")
    auth_file, auth_credential = table.text("proxy_auth_file", None), table.text("proxy_auth_credential", None)
    if auth_file and auth_credential:
        raise ConfigError(f"{table.file}: {table.where}: set proxy_auth_file or proxy_auth_credential, not both")
    auth = None
    if auth_file or auth_credential:
        if setting == "none":
            raise ConfigError(f'{table.file}: {table.where}: proxy credentials are set but proxy is "none"; set proxy')
        auth = SecretSource("file", str(_absolute(table, Path(auth_file)))) if auth_file else None
        auth = auth or SecretSource("credential", auth_credential or "")
    return Egress(proxy=setting, proxy_auth=auth, ca_file=ca_file)


def _required_claims(table: _Table) -> tuple[tuple[str, str], ...]:
    """`required_claims = { "claim" = "value" }`: every pin a non-empty claim name and a non-empty string."""
    value = table.get("required_claims", dict, {}, "a table of claim name = required string value")
    if not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise table.fail("required_claims", "a table of claim name = required string value (non-empty strings)")
    return tuple(sorted(value.items()))


def env_prefix(profile: str) -> str:
    """`EDGE_TOKEN_<PROFILE>_`: the prefix of a profile's environment overrides (`prod-eu.1` -> `PROD_EU_1`)."""
    return "EDGE_TOKEN_" + re.sub(r"[^A-Za-z0-9]", "_", profile).upper() + "_"


SECRET_KEYS = {
    "client_secret_file": "file",
    "client_secret_env": "env",
    "client_secret_credential": "credential",
    "client_secret": "inline",
}


def _secret(table: _Table, environ: Mapping[str, str], file_private: bool) -> SecretSource:
    prefix = env_prefix(table.where.split(".", 1)[1])
    overrides = [(key, environ[prefix + key.upper()]) for key in SECRET_KEYS if prefix + key.upper() in environ]
    given: list[tuple[str, str | None]] = list(overrides) or [
        (key, table.text(key)) for key in SECRET_KEYS if key in table.data
    ]
    for key in SECRET_KEYS:
        table.used.add(key)
    if len(given) != 1:
        names = ", ".join(SECRET_KEYS)
        problem = "is given more than once" if given else "is missing"
        raise ConfigError(f"{table.file}: {table.where}: the client secret {problem}; set exactly one of {names}")
    key, value = given[0]
    if not value:
        raise table.fail(key, "a non-empty string")
    if key == "client_secret" and not overrides and not file_private:
        raise ConfigError(
            f"{table.file}: {table.path(key)}: an inline secret is refused because the file is readable by "
            "group or others; chmod 600 the file, or use client_secret_file / client_secret_credential"
        )
    if key == "client_secret_env" and not ENV_NAME.match(value):
        raise table.fail(key, "an environment variable name")
    if key == "client_secret_file" and not Path(value).is_absolute():
        value = str(table.file.parent / value)  # relative to the config file, like sink paths
    return SecretSource(SECRET_KEYS[key], value)


def _profile(name: str, table: _Table, environ: Mapping[str, str], file_private: bool) -> ProfileConfig:
    if not PROFILE_NAME.match(name):
        raise ConfigError(f"{table.file}: profile name {name!r}: use only letters, digits, '_', '.', '-'")
    table.only(PROFILE_KEYS | SECRET_KEYS.keys())
    client_id = environ.get(env_prefix(name) + "CLIENT_ID") or table.text("client_id")
    table.used.add("client_id")
    if not client_id:
        raise table.fail("client_id", "the OAuth2 client id (a non-empty string)")
    algorithms = _string_list(table, "algorithms", ("RS256",))
    if not algorithms or not set(algorithms) <= ALLOWED_ALGORITHMS:
        raise table.fail("algorithms", f"a non-empty list drawn from {sorted(ALLOWED_ALGORITHMS)}")
    sink_list = table.get("sinks", list, [], "an array of [[...sinks]] tables")
    if not sink_list:
        raise ConfigError(f"{table.file}: {table.where}: add at least one [[{table.where}.sinks]] table")
    sinks = []
    for index, item in enumerate(sink_list):
        if not isinstance(item, dict):
            raise table.fail("sinks", "an array of tables")
        sinks.append(_sink(_Table(item, f"{table.where}.sinks[{index}]", table.file)))
    profile = ProfileConfig(
        name=name,
        client_id=client_id,
        secret=_secret(table, environ, file_private),
        sinks=tuple(sinks),
        token_url=_url(table, "token_url", SITECORE_TOKEN_URL),
        audience=table.text("audience", SITECORE_AUDIENCE) or SITECORE_AUDIENCE,
        issuer=table.text("issuer", SITECORE_ISSUER) or SITECORE_ISSUER,
        jwks_url=_url(table, "jwks_url", SITECORE_JWKS_URL),
        request_format=table.text("request_format", "json", choices=("json", "form")) or "json",
        auth_method=table.text(
            "auth_method", "client_secret_post", choices=("client_secret_post", "client_secret_basic")
        )
        or "client_secret_post",
        scope=table.text("scope", None),
        algorithms=algorithms,
        leeway_seconds=table.number("leeway_seconds", 60.0, 0.0, 600.0),
        refresh_at=table.number("refresh_at", 0.8, 0.1, 0.95),
        jitter=table.number("jitter", 0.05, 0.0, 0.25),
        timeout_seconds=table.number("timeout_seconds", 10.0, 0.1, 300.0),
        retry_max_seconds=table.number("retry_max_seconds", 300.0, 1.0, 3600.0),
        egress=_egress(table, _ca_bundle(table)),
        required_claims=_required_claims(table),
    )
    if profile.refresh_at - profile.jitter < 0.05:
        raise ConfigError(f"{table.file}: {table.where}: refresh_at minus jitter must leave at least 0.05")
    return profile


def _daemon(table: _Table) -> DaemonConfig:
    table.only(DAEMON_KEYS)
    listen = table.get("listen", str, "127.0.0.1:9464", '"host:port", or "" to disable')
    if listen:
        parse_listen(listen, f"{table.file}: {table.path('listen')}")
    level = table.text("log_level", "info", choices=("debug", "info", "warning", "error"))
    config = DaemonConfig(
        listen=listen,
        log_format=table.text("log_format", "auto", choices=("auto", "json", "console")) or "auto",
        log_level=level or "info",
        max_concurrent_renewals=int(table.number("max_concurrent_renewals", 16, 1, 1024)),
        jwks_refresh_seconds=table.number("jwks_refresh_seconds", 3600.0, 10.0, 86400.0),
        jwks_min_refetch_seconds=table.number("jwks_min_refetch_seconds", 30.0, 1.0, 3600.0),
        ready_timeout_seconds=table.number("ready_timeout_seconds", 60.0, 0.0, 3600.0),
    )
    return config


FLEET_KEYS = frozenset(
    {"etcd_endpoints", "key_prefix", "lease_ttl_seconds", "poll_seconds", "timeout_seconds", "node_name", "username",
     "password_file", "ca_file", "cert_file", "key_file"} | PROXY_KEYS
)  # fmt: skip


def _fleet(table: _Table) -> FleetConfig | None:
    if not table.data:
        return None
    table.only(FLEET_KEYS)
    endpoints = [_check_url(table, "etcd_endpoints", value) for value in _string_list(table, "etcd_endpoints", ())]
    if not endpoints:
        raise table.fail("etcd_endpoints", "a non-empty list of etcd client URLs (https://, or http:// on loopback)")
    username, password_file = table.text("username", None), table.text("password_file", None)
    if (username is None) != (password_file is None):
        raise ConfigError(f"{table.file}: fleet: set both username and password_file, or neither")
    tls_files = [_optional_path(table, key, None) for key in ("ca_file", "cert_file", "key_file")]
    client_context(f"{table.file}: fleet", *tls_files)  # `check` refuses what `run` could not load (exit 78)
    return FleetConfig(
        etcd_endpoints=tuple(e.rstrip("/") for e in endpoints),
        key_prefix=table.text("key_prefix", "/edge-token") or "/edge-token",
        lease_ttl_seconds=table.number("lease_ttl_seconds", 15.0, 2.0, 600.0),
        poll_seconds=table.number("poll_seconds", 5.0, 0.1, 600.0),
        timeout_seconds=table.number("timeout_seconds", 2.0, 0.1, 60.0),
        node_name=table.text("node_name", None),
        username=username,
        password=SecretSource("file", password_file) if password_file else None,
        ca_file=tls_files[0],
        cert_file=tls_files[1],
        key_file=tls_files[2],
        egress=_egress(table, None),
    )


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464` -> (host, port); ConfigError otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    port = int(match.group(2) or match.group(4)) if match else -1
    if not match or not 0 <= port <= 65535:
        raise ConfigError(f'{where}: expected "host:port" (IPv6 as "[::1]:9464"), got {value!r}')
    return match.group(1) or match.group(3), port


def _owner_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _untrusted(info: os.stat_result, is_dir: bool) -> str | None:
    """Why someone other than root or us could change this file or directory, or None if nobody can.

    A directory writable by others lets them rename another file over ours, unless the sticky bit restricts
    renames to the owners (as on /tmp); a file or directory owned by another user can be chmod'ed by them.
    """
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, os.geteuid()):
        return f"is owned by {_owner_name(info.st_uid)}, neither root nor this daemon's user"
    if mode & 0o022 and not (is_dir and mode & stat.S_ISVTX):
        kind = "without the sticky bit " if is_dir else ""
        return f"is writable by group or others {kind}(mode {mode:04o})"
    return None


def check_trusted_file(file: Path, info: os.stat_result, what: str) -> None:
    """Refuse `file` (already open; `info` from fstat) if anyone but root or us can change it or its directories.

    A config file is code: its `on_update` commands run as the daemon's user. If another local user can edit
    it (or swap it, through a writable directory above it), they can run commands as us on the next reload.
    Both the path as given and the path after symlinks are checked: either chain could be swapped.
    """
    problem = _untrusted(info, is_dir=False)
    if problem:
        raise ConfigError(
            f"{file}: refusing the {what}: it {problem}, so another local user could change what this daemon "
            f"runs; make it owned by root or this user and not group/other-writable (chown root {file}; "
            f"chmod go-w {file})"
        )
    absolute = Path(os.path.abspath(file))
    for directory in dict.fromkeys([*absolute.parents, *absolute.resolve().parents]):
        try:
            problem = _untrusted(directory.stat(), is_dir=True)
        except OSError:
            continue  # we opened the file through it; an unstat-able ancestor cannot be judged, only skipped
        if problem:
            raise ConfigError(
                f"{file}: refusing the {what}: its directory {directory} {problem}, so another local user could "
                f"replace the file; fix the directory (chown root {directory}; chmod go-w {directory}, or "
                f"chmod +t {directory} for a shared directory)"
            )


def _check_program(table: _Table, program: Path) -> None:
    """An on_update program (absolute path) anyone else can change is refused like a writable config file:
    it runs as this daemon. Bare names are looked up in PATH at run time and are not judged here."""
    if not program.is_absolute():
        return
    try:
        info = program.stat()  # not opened: an execute-only (0711) program is fine
    except OSError:
        return  # missing or unreadable: the hook fails when it runs, with its own message
    try:
        check_trusted_file(program, info, f"on_update program of {table.where}")
    except ConfigError as exc:
        raise ConfigError(f"{table.file}: {table.path('on_update')}: {exc}") from None


def world_readable_secret(path: Path, info: os.stat_result) -> bool:
    """True if any local user can read this secret file: o+r on it and o+x on every directory above it.

    A 0644 file in a 0700 directory (systemd's credentials directory, a private /etc subdirectory) is not
    exposed, so the file mode alone is not the question. Group-readable is allowed: handing a root-owned
    secret to the daemon's group (root:edge-token 0640) is the usual way to share it.
    """
    if not info.st_mode & stat.S_IROTH:
        return False
    for directory in Path(os.path.abspath(path)).resolve().parents:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def listen_exposure(listen: str) -> str | None:
    """A warning when `[daemon] listen` is reachable from other hosts, None on loopback (or when disabled).

    /metrics holds no secret, but /status and /readyz tell anyone who can connect which profiles exist, when
    their tokens expire and why renewals fail: worth a line in the log whenever it is not loopback-only.
    """
    if not listen:
        return None
    host, _ = parse_listen(listen, "[daemon] listen")
    if is_loopback_host(host):
        return None
    where = "every interface" if host in ("0.0.0.0", "::", "") else f"{host}, not a loopback address"
    return (
        f"[daemon] listen = {listen!r} serves /status, /readyz and /metrics on {where}: anyone who can reach it "
        "learns the profile names, token expiry times and renewal errors; bind 127.0.0.1 (or ::1) or firewall it"
    )


INLINE_SECRET_KEY = re.compile(r"secret(?!_file|_env|_credential)|password(?!_file)|^\s*token\s*$", re.I)
TOML_LINE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)")
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def toml_problem(file: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    """A TOML syntax error as an operator can act on it: the line quoted, and the fix for the usual mistakes."""
    reason = TOML_LINE.sub("", str(exc)).strip()
    found = TOML_LINE.search(str(exc))
    lines = text.splitlines()
    if found and found.group(1):
        number, where = int(found.group(1)), f"line {found.group(1)}, column {found.group(2)}"
    else:  # "at end of document": the last line with something on it is where it went wrong
        number = max((i + 1 for i, line in enumerate(lines) if line.strip()), default=0)
        where = f"end of file (line {number})"
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    key, equals, _ = line.partition("=")
    if equals and INLINE_SECRET_KEY.search(key):  # never quote a secret, even one no one has read yet
        line = f"{key.strip()} = {scrub.REDACTED}"
    quoted = line.strip()[:160]
    hint = _toml_hint(line, reason)
    return scrub.scrub_text(f"{file}: {where}: not valid TOML ({reason.lower()}): {quoted!r}; {hint}")


def _toml_hint(line: str, reason: str) -> str:
    """The fix for the mistakes people actually make in this file."""
    if "twice" in reason or "overwrite" in reason:
        return "each key and each [table] may appear once; every [[profiles.NAME.sinks]] adds another sink"
    key, equals, value = line.partition("=")
    key, value = key.strip(), value.strip()
    if equals and re.fullmatch(r"0[0-7]+", value):
        return f'TOML numbers have no leading zero: quote the mode, {key} = "{value}"'
    if equals and re.fullmatch(r"""[A-Za-z_./:~-][^"'\[{]*""", value) and value not in ("true", "false"):
        return f'strings must be quoted: {key} = "{value}"'
    if equals and value.startswith('"') and "\\" in value:
        return "inside double quotes a backslash starts an escape: use single quotes, or double each backslash"
    if line.strip().startswith("[") and not line.strip().endswith("]"):
        return "a table header needs its closing bracket: [profiles.NAME] or [[profiles.NAME.sinks]]"
    if equals and value[:1] in "[{" and value.count(value[0]) > value.count("]" if value[0] == "[" else "}"):
        return "close the list or inline table on the same line (lists may span lines only inside [ ])"
    return 'one key = value per line; strings are quoted ("..."), lists are [...], tables are [profiles.NAME]'


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError with the file and key path on any problem."""
    file = Path(path)
    environ = os.environ if environ is None else environ
    try:
        with file.open("rb") as handle:
            info = os.fstat(handle.fileno())
            check_trusted_file(file, info, "config file")
            file_private = not info.st_mode & 0o044
            text = handle.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except OSError as exc:
        fix = "; give -c the right path (or set $EDGE_TOKEN_CONFIG)" if exc.errno == errno.ENOENT else ""
        raise ConfigError(f"{file}: cannot read the config file: {exc.strerror}{fix}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(toml_problem(file, text, exc)) from None
    root = _Table(data, "", file)
    daemon = _daemon(root.table("daemon"))
    fleet = _fleet(root.table("fleet"))
    profiles_table = root.table("profiles")
    profiles: dict[str, ProfileConfig] = {}
    for name in profiles_table.data:
        profiles[name] = _profile(name, profiles_table.table(name), environ, file_private)
    root.finish()
    if not profiles:
        raise ConfigError(f"{file}: no profiles; add a [profiles.NAME] table (see config/local.toml)")
    seen: dict[str, str] = {}
    for profile in profiles.values():
        for sink in profile.sinks:
            if sink.name in seen:
                raise ConfigError(
                    f"{file}: sink {sink.name} is used by both {seen[sink.name]} and profiles.{profile.name}; "
                    "every sink needs its own destination"
                )
            seen[sink.name] = f"profiles.{profile.name}"
    return Config(path=file, daemon=daemon, profiles=profiles, fleet=fleet)
