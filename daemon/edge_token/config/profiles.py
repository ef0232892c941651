"""`[profiles.NAME]`, `[daemon]` and `[fleet]` tables -> core.settings values."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from edge_token.config.sinks import parse_sink
from edge_token.config.table import (
    ENV_NAME,
    PROXY_KEYS,
    Table,
    ca_bundle,
    checked_url,
    egress_setting,
    file_ref,
    optional_path,
    string_list,
    url_setting,
)
from edge_token.config.trust import parse_listen
from edge_token.core.errors import ConfigError
from edge_token.core.settings import (
    ALLOWED_ALGORITHMS,
    SITECORE_AUDIENCE,
    SITECORE_ISSUER,
    SITECORE_JWKS_URL,
    SITECORE_TOKEN_URL,
    DaemonConfig,
    FleetConfig,
    ProfileConfig,
    SecretSource,
    env_prefix,
)

PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # fullmatch: `$` would let a final newline through

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


def required_claims(table: Table) -> tuple[tuple[str, str], ...]:
    """`required_claims = { "claim" = "value" }`: every pin a non-empty claim name and a non-empty string."""
    value = table.get("required_claims", dict, {}, "a table of claim name = required string value")
    if not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise table.fail("required_claims", "a table of claim name = required string value (non-empty strings)")
    return tuple(sorted(value.items()))


SECRET_KEYS = {
    "client_secret_file": "file",
    "client_secret_env": "env",
    "client_secret_credential": "credential",
    "client_secret": "inline",
}

PROFILE_AND_SECRET_KEYS = PROFILE_KEYS | SECRET_KEYS.keys()


def secret_source(table: Table, environ: Mapping[str, str], file_private: bool, prefix: str) -> SecretSource:
    """The one client secret source of a profile (file, env, credential or inline; `prefix`* overrides, i.e.
    EDGE_TOKEN_<PROFILE>_*, win). Inline secrets only in a file nobody else can read."""
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
    if key == "client_secret_env" and not re.fullmatch(ENV_NAME, value):
        raise table.fail(key, "an environment variable name")
    if key == "client_secret_file" and not os.path.isabs(value):
        value = str(table.file.parent / value)  # relative to the config file, like sink paths
    return SecretSource(SECRET_KEYS[key], value)


def parse_profile(name: str, table: Table, environ: Mapping[str, str], file_private: bool) -> ProfileConfig:
    """`[profiles.NAME]` -> ProfileConfig: every key checked, defaults are Sitecore's."""
    if not PROFILE_NAME.fullmatch(name):
        raise ConfigError(f"{table.file}: profile name {name!r}: use only letters, digits, '_', '.', '-'")
    table.only(PROFILE_AND_SECRET_KEYS)
    prefix = env_prefix(name)
    client_id = environ.get(prefix + "CLIENT_ID") or table.text("client_id")
    if not client_id:
        raise table.fail("client_id", "the OAuth2 client id (a non-empty string)")
    algorithms = string_list(table, "algorithms", ("RS256",))
    if not algorithms or not set(algorithms) <= ALLOWED_ALGORITHMS:
        raise table.fail("algorithms", f"a non-empty list drawn from {sorted(ALLOWED_ALGORITHMS)}")
    sink_list = table.get("sinks", list, [], "an array of [[...sinks]] tables")
    if not sink_list:
        raise ConfigError(f"{table.file}: {table.where}: add at least one [[{table.where}.sinks]] table")
    sinks = []
    for index, item in enumerate(sink_list):
        if not isinstance(item, dict):
            raise table.fail("sinks", "an array of tables")
        sinks.append(parse_sink(Table(item, f"{table.where}.sinks[{index}]", table.file)))
    profile = ProfileConfig(
        name=name,
        client_id=client_id,
        secret=secret_source(table, environ, file_private, prefix),
        sinks=tuple(sinks),
        token_url=url_setting(table, "token_url", SITECORE_TOKEN_URL),
        audience=table.text("audience", SITECORE_AUDIENCE) or SITECORE_AUDIENCE,
        issuer=table.text("issuer", SITECORE_ISSUER) or SITECORE_ISSUER,
        jwks_url=url_setting(table, "jwks_url", SITECORE_JWKS_URL),
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
        egress=egress_setting(table, ca_bundle(table)),
        required_claims=required_claims(table),
    )
    unmet = impossible_pin(profile)
    if unmet:
        raise ConfigError(f"{table.file}: {table.path('required_claims')}.{unmet[0]}: {unmet[1]}")
    if profile.refresh_at - profile.jitter < 0.05:
        raise ConfigError(f"{table.file}: {table.where}: refresh_at minus jitter must leave at least 0.05")
    return profile


def parse_daemon(table: Table) -> DaemonConfig:
    """`[daemon]` -> DaemonConfig."""
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


def parse_fleet(table: Table) -> FleetConfig | None:
    """`[fleet]` -> FleetConfig, or None when the table is absent; TLS files loaded now so `check` refuses what `run`
    could not use."""
    if not table.data:
        return None
    table.only(FLEET_KEYS)
    endpoints = [checked_url(table, "etcd_endpoints", value) for value in string_list(table, "etcd_endpoints", ())]
    if not endpoints:
        raise table.fail("etcd_endpoints", "a non-empty list of etcd client URLs (https://, or http:// on loopback)")
    username, password_file = table.text("username", None), table.text("password_file", None)
    if (username is None) != (password_file is None):
        raise ConfigError(f"{table.file}: fleet: set both username and password_file, or neither")
    tls_files = [optional_path(table, key, None) for key in ("ca_file", "cert_file", "key_file")]
    from edge_token.net.tls import client_context  # only with a [fleet] table

    client_context(f"{table.file}: fleet", *tls_files)  # `check` refuses what `run` could not load (exit 78)
    return FleetConfig(
        etcd_endpoints=tuple(e.rstrip("/") for e in endpoints),
        key_prefix=table.text("key_prefix", "/edge-token") or "/edge-token",
        lease_ttl_seconds=table.number("lease_ttl_seconds", 15.0, 2.0, 600.0),
        poll_seconds=table.number("poll_seconds", 5.0, 0.1, 600.0),
        timeout_seconds=table.number("timeout_seconds", 2.0, 0.1, 60.0),
        node_name=table.text("node_name", None),
        username=username,
        password=SecretSource("file", file_ref(table, password_file)) if password_file else None,
        ca_file=tls_files[0],
        cert_file=tls_files[1],
        key_file=tls_files[2],
        egress=egress_setting(table, None),
    )


NUMERIC_DATES = ("exp", "iat", "nbf")
CLIENT_CLAIMS = ("azp", "client_id", "appid")


def impossible_pin(profile: ProfileConfig) -> tuple[str, str] | None:
    """(claim, why) for a `required_claims` pin no token the verifier accepts can carry, else None: the profile
    would never get a token, and only a failing renewal would say so. The verifier wants `iss` equal to `issuer`,
    `azp`/`client_id`/`appid` (when present) equal to `client_id`, and numbers in the NumericDates."""
    for name, value in profile.required_claims:
        if name == "iss" and value != profile.issuer:
            return name, f"pins {value!r}, but tokens must carry issuer = {profile.issuer!r}; drop the pin or fix one"
        if name in CLIENT_CLAIMS and value != profile.client_id:
            return name, f"pins {value!r}, but a token naming another client than client_id is always refused"
        if name in NUMERIC_DATES:
            return name, "is a NumericDate (a number that changes with every token); it cannot be pinned to a string"
        if name == "jti":
            return name, "is unique to every token (its id): a pin would refuse every token after the first"
    return None
