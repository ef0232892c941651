"""`[[profiles.NAME.sinks]]` tables: the keys each sink type accepts and its parser (`SINK_TYPES`: adding a sink
type is one entry and parser here and one module in sinks/)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_token.config.table import (
    ENV_NAME,
    PROXY_KEYS,
    Table,
    absolute_path,
    egress_setting,
    file_mode,
    file_ref,
    optional_path,
    owner_id,
    string_list,
    string_table,
    url_setting,
)
from edge_token.config.trust import check_trusted_file
from edge_token.core.errors import ConfigError
from edge_token.core.settings import SA_DIR, KubernetesSecretOptions, SecretSource, SinkConfig, VaultKvOptions

SIGNALS = ("HUP", "USR1", "USR2", "TERM", "INT")

COMMON_SINK_KEYS = frozenset({"type", "on_update", "on_update_timeout", "signal", "pid_file"})

FILE_KEYS = frozenset({"path", "format", "mode", "owner", "group", "env_name"})
KUBERNETES_KEYS = (
    frozenset(
        {
            "secret_name",
            "namespace",
            "key",
            "labels",
            "annotations",
            "api_url",
            "token_file",
            "ca_file",
            "timeout_seconds",
        }
    )
    | PROXY_KEYS
)
VAULT_KEYS = (
    frozenset(
        {
            "address",
            "mount",
            "path",
            "namespace",
            "token_file",
            "token_env",
            "role_id",
            "secret_id_file",
            "approle_mount",
            "ca_file",
            "timeout_seconds",
        }
    )
    | PROXY_KEYS
)


def parse_sink(table: Table) -> SinkConfig:
    """One `[[profiles.NAME.sinks]]` table -> SinkConfig: the keys its type accepts, hooks, then the type's options."""
    kind = table.text("type", "file", choices=SINK_TYPE_NAMES) or "file"
    keys, parse_options = SINK_TYPES[kind]
    table.only(keys)
    signal = table.text("signal", None, choices=SIGNALS)
    pid_file = table.text("pid_file", None)
    if (signal is None) != (pid_file is None):
        raise ConfigError(f"{table.file}: {table.where}: set both signal and pid_file, or neither")
    on_update = string_list(table, "on_update", ())
    if on_update:
        check_program(table, Path(on_update[0]))
    common: dict[str, Any] = {
        "type": kind,
        "on_update": on_update,
        "on_update_timeout": table.number("on_update_timeout", 30.0, 0.1, 3600.0),
        "signal": signal,
        "pid_file": absolute_path(table, Path(pid_file)) if pid_file else None,
    }
    return parse_options(table, common)


def file_sink(table: Table, common: dict[str, Any]) -> SinkConfig:
    """`type = "file"` (the default): path (relative to the config file), format, exact mode, owner and group."""
    path_text = table.text("path")
    if path_text is None:
        raise table.fail("path", "the absolute path of the token file")
    path = Path(path_text)
    if not path.is_absolute():
        path = Path(os.path.normpath(table.file.parent / path))  # never resolve(): it follows a symlink at the path
    fmt = table.text("format", "raw", choices=("raw", "json", "env")) or "raw"
    env_name = table.text("env_name", "EDGE_TOKEN") or "EDGE_TOKEN"
    if not re.fullmatch(ENV_NAME, env_name):
        raise table.fail("env_name", "a shell variable name such as EDGE_TOKEN")
    return SinkConfig(
        **common,
        path=path,
        format=fmt,
        mode=file_mode(table, "mode"),
        uid=owner_id(table, "owner", _uid),
        gid=owner_id(table, "group", _gid),
        env_name=env_name,
    )


def _uid(user: str) -> int:
    import pwd  # here: most sinks name no owner, and `once` need not load the module

    return pwd.getpwnam(user).pw_uid


def _gid(group: str) -> int:
    import grp  # here: most sinks name no group, and `once` need not load the module

    return grp.getgrnam(group).gr_gid


def kubernetes_options(table: Table) -> KubernetesSecretOptions:
    """`type = "kubernetes_secret"` options."""
    name = table.text("secret_name")
    if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
        raise table.fail("secret_name", "a Kubernetes object name (lowercase letters, digits, '-', '.')")
    key = table.text("key", "token") or "token"
    if not re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", key):
        raise table.fail("key", "a Secret data key ([-._a-zA-Z0-9]+)")
    api_url = url_setting(table, "api_url", "") if "api_url" in table.data else None
    return KubernetesSecretOptions(
        secret_name=name,
        namespace=table.text("namespace", None),
        key=key,
        labels=string_table(table, "labels"),
        annotations=string_table(table, "annotations"),
        api_url=api_url,
        token_file=optional_path(table, "token_file", SA_DIR / "token") or SA_DIR / "token",
        ca_file=optional_path(table, "ca_file", SA_DIR / "ca.crt"),
        timeout_seconds=table.number("timeout_seconds", 10.0, 0.1, 300.0),
        egress=egress_setting(table, None),
    )


def vault_options(table: Table) -> VaultKvOptions:
    """`type = "vault_kv"` options: exactly one way to authenticate."""
    address = url_setting(table, "address", "")
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
    token = SecretSource("file", file_ref(table, token_file)) if token_file else None
    token = token or (SecretSource("env", token_env) if token_env else None)
    return VaultKvOptions(
        address=address.rstrip("/"),
        path=kv_path.strip("/"),
        mount=(table.text("mount", "secret") or "secret").strip("/"),
        namespace=table.text("namespace", None),
        token=token,
        role_id=role_id,
        secret_id=SecretSource("file", file_ref(table, secret_id_file)) if secret_id_file else None,
        approle_mount=(table.text("approle_mount", "approle") or "approle").strip("/"),
        ca_file=optional_path(table, "ca_file", None),
        timeout_seconds=table.number("timeout_seconds", 10.0, 0.1, 300.0),
        egress=egress_setting(table, None),
    )


def check_program(table: Table, program: Path) -> None:
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


def kubernetes_sink(table: Table, common: dict[str, Any]) -> SinkConfig:
    """`type = "kubernetes_secret"`."""
    return SinkConfig(**common, store=kubernetes_options(table))


def vault_sink(table: Table, common: dict[str, Any]) -> SinkConfig:
    """`type = "vault_kv"`."""
    return SinkConfig(**common, store=vault_options(table))


# Every sink type: the keys its table may hold (the common ones and its own) and its parser. A new sink type is one
# entry here and one module in sinks/ (sinks.build_sink).
SINK_TYPES: dict[str, tuple[frozenset[str], Callable[[Table, dict[str, Any]], SinkConfig]]] = {
    "file": (COMMON_SINK_KEYS | FILE_KEYS, file_sink),
    "kubernetes_secret": (COMMON_SINK_KEYS | KUBERNETES_KEYS, kubernetes_sink),
    "vault_kv": (COMMON_SINK_KEYS | VAULT_KEYS, vault_sink),
}
SINK_TYPE_NAMES = tuple(SINK_TYPES)
