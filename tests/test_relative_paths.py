"""Every path in the config file is relative to the file, never to the working directory (under systemd it is /):
`check` and `run` see the same files wherever they are started from."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_token.config import load_config
from edge_token.core.settings import Config, KubernetesSecretOptions, VaultKvOptions
from egressparts import make_ca


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """Run from another directory than the config's."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    before = os.getcwd()
    os.chdir(other)
    yield other
    os.chdir(before)


def paths(config: Config) -> dict[str, Path | None]:
    profile = config.profiles["p"]
    file_sink, k8s, vault = profile.sinks
    assert isinstance(k8s.store, KubernetesSecretOptions) and isinstance(vault.store, VaultKvOptions)
    assert config.fleet is not None and config.fleet.password is not None and vault.store.secret_id is not None
    return {
        "client_secret_file": Path(profile.secret.ref),
        "sink path": file_sink.path,
        "pid_file": file_sink.pid_file,
        "profile ca_file": profile.egress.ca_file,
        "kubernetes token_file": k8s.store.token_file,
        "kubernetes ca_file": k8s.store.ca_file,
        "vault secret_id_file": Path(vault.store.secret_id.ref),
        "vault ca_file": vault.store.ca_file,
        "fleet ca_file": config.fleet.ca_file,
        "fleet cert_file": config.fleet.cert_file,
        "fleet key_file": config.fleet.key_file,
        "fleet password_file": Path(config.fleet.password.ref),
    }


def test_every_relative_path_is_relative_to_the_config_file(tmp_path: Path, elsewhere: Path) -> None:
    home = tmp_path / "etc"
    home.mkdir()
    ca = make_ca(home)
    for name in ("secret", "sa-token", "secret-id", "etcd-password"):
        (home / name).write_text("x")
        (home / name).chmod(0o600)
    rel = {key: os.path.relpath(getattr(ca, key), home) for key in ("ca_file", "cert_file", "key_file")}
    text = f"""
[fleet]
etcd_endpoints = ["http://127.0.0.1:1"]
ca_file = "{rel["ca_file"]}"
cert_file = "{rel["cert_file"]}"
key_file = "{rel["key_file"]}"
username = "u"
password_file = "etcd-password"
[profiles.p]
client_id = "c"
client_secret_file = "secret"
ca_file = "{rel["ca_file"]}"
[[profiles.p.sinks]]
path = "tokens/t.jwt"
signal = "HUP"
pid_file = "run/app.pid"
[[profiles.p.sinks]]
type = "kubernetes_secret"
secret_name = "s"
namespace = "n"
token_file = "sa-token"
ca_file = "{rel["ca_file"]}"
[[profiles.p.sinks]]
type = "vault_kv"
address = "https://vault.example"
path = "edge-token/p"
role_id = "r"
secret_id_file = "secret-id"
ca_file = "{rel["ca_file"]}"
"""
    (home / "config.toml").write_text(text)
    (home / "config.toml").chmod(0o600)
    config = load_config(home / "config.toml", environ={})
    wrong = {key: path for key, path in paths(config).items() if path is None or not path.is_relative_to(home)}
    assert not wrong, f"resolved against the working directory {elsewhere}, not the config file: {wrong}"
