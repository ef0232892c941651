"""The runtime configuration: immutable records (core/record.py), validated by config/ and read by everything else.

Pure values: nothing here reads a file or the environment. A secret appears only as a `SecretSource` (where it
lives); `secrets.read_secret()` is the one place that reads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_token.core.record import Record, field, replace

SITECORE_TOKEN_URL = "https://auth.sitecorecloud.io/oauth/token"

SITECORE_AUDIENCE = "https://api.sitecorecloud.io"

SITECORE_ISSUER = "https://auth.sitecorecloud.io/"

SITECORE_JWKS_URL = "https://auth.sitecorecloud.io/.well-known/jwks.json"

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class SecretSource(Record):
    """Where a profile's client secret lives. A reference only: secrets.read_secret() does the reading."""

    kind: str  # file | env | credential | inline
    ref: str = field(repr=False)  # path, variable name, credential name, or (inline) the secret itself

    def describe(self) -> str:
        """Where the secret comes from, for `check` and logs; never the secret."""
        if self.kind == "inline":
            return "inline in the config file"
        return f"{self.kind} {self.ref}"


class Egress(Record):
    """One destination's egress settings: `proxy` is "none", "env" or an http:// proxy URL without user info."""

    proxy: str = "none"
    proxy_auth: SecretSource | None = field(default=None, repr=False)
    ca_file: Path | None = None


DIRECT = Egress()


class SinkConfig(Record):
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


class KubernetesSecretOptions(Record):
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
        """The sink's name in logs and metrics: namespace/secret#key."""
        return f"kubernetes_secret:{self.namespace or '(pod namespace)'}/{self.secret_name}#{self.key}"


class VaultKvOptions(Record):
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
        """The sink's name in logs and metrics: mount/path."""
        return f"vault_kv:{self.mount}/{self.path}"


class ProfileConfig(Record):
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


class DaemonConfig(Record):
    """Process-wide settings (`[daemon]`)."""

    listen: str = "127.0.0.1:9464"
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    max_concurrent_renewals: int = 16
    jwks_refresh_seconds: float = 3600.0
    jwks_min_refetch_seconds: float = 30.0
    ready_timeout_seconds: float = 60.0


class FleetConfig(Record):
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


class Config(Record):
    """The whole validated configuration."""

    path: Path
    daemon: DaemonConfig
    profiles: Mapping[str, ProfileConfig]
    fleet: FleetConfig | None = None


def env_prefix(profile: str) -> str:
    """`EDGE_TOKEN_<PROFILE>_`: the prefix of a profile's environment overrides (`prod-eu.1` -> `PROD_EU_1`)."""
    return "EDGE_TOKEN_" + _NOT_ALNUM.sub("_", profile).upper() + "_"


_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


class ReloadPlan(Record):
    """What a reload changes, by profile name: removed, changed (with whether the held token may be kept), added."""

    removed: tuple[str, ...]
    changed: tuple[tuple[str, bool], ...]  # (name, inherit): inherit when only the sinks changed
    added: tuple[str, ...]
    daemon_changed: bool


def plan_reload(old: Config, new: Config, only: Sequence[str] | None = None) -> ReloadPlan:
    """Compare two configurations (restricted to `only` profiles, if given)."""
    before = {n: p for n, p in old.profiles.items() if not only or n in only}
    after = {n: p for n, p in new.profiles.items() if not only or n in only}
    changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
    return ReloadPlan(
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple((n, same_provider(before[n], after[n])) for n in changed),
        added=tuple(sorted(after.keys() - before.keys())),
        daemon_changed=new.daemon != old.daemon,
    )


def same_provider(old: ProfileConfig, new: ProfileConfig) -> bool:
    """True when only a profile's sinks changed, so the token it holds is still the one the new settings would
    get and verify: the reload then reuses it (no request) and writes each new sink once."""
    return replace(old, sinks=new.sinks) == new
