"""Fleet mode is bounded whatever etcd answers, and its TLS files are configuration, checked by `check`."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import profile_toml
from edge_token.core.errors import ConfigError
from edge_token.core.settings import FleetConfig, SecretSource
from edge_token.fleet.etcd import Etcd, EtcdAuthRejected, EtcdUnavailable
from edge_token.localauth import LocalAuthServer
from edge_token.net.http import make_session
from etcdparts import serve_posts
from unprivileged import as_user

Answer = tuple[int, Any]  # (status, JSON body or raw text)


class ScriptedEtcd:
    """An etcd JSON gateway on loopback that answers from a script; counts every request by path."""

    def __init__(self, answer: Callable[[str, int], Answer]) -> None:
        self.answer = answer
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        status, body = self.answer(request.path, len(self.requests))
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")

    async def start(self) -> str:
        self.runner, url = await serve_posts(self.handle)
        return url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def with_etcd(
    answer: Callable[[str, int], Answer],
    tmp_path: Path,
    body: Callable[[Etcd, list[ScriptedEtcd]], Awaitable[None]],
    endpoints: int = 1,
) -> list[ScriptedEtcd]:
    servers = [ScriptedEtcd(answer) for _ in range(endpoints)]
    try:
        urls = tuple([await server.start() for server in servers])
        password = tmp_path / "etcd.password"
        password.write_text("etcd-pass-123")
        config = FleetConfig(
            etcd_endpoints=urls, username="edge", password=SecretSource("file", str(password)), timeout_seconds=2
        )
        async with make_session() as session:
            await body(Etcd(config, session), servers)
    finally:
        for server in servers:
            await server.stop()
    return servers


async def test_etcd_answering_401_forever_is_bounded_and_classified(tmp_path: Path) -> None:
    """etcd issues auth tokens but rejects every request with 401: each call re-authenticates once per endpoint,
    retries once, then fails as EtcdAuthRejected (kind etcd_auth), counted — no recursion, no RecursionError."""

    def answer(path: str, _n: int) -> Answer:
        return (200, {"token": "tok"}) if path == "/v3/auth/authenticate" else (401, {"error": "invalid auth token"})

    async def body(etcd: Etcd, _servers: list[ScriptedEtcd]) -> None:
        for _ in range(5):
            with pytest.raises(EtcdAuthRejected) as caught:
                await etcd.get("/edge-token/main/token")
            assert caught.value.kind == "etcd_auth" and "401 after re-authenticating" in str(caught.value)
        assert (etcd.authentications, etcd.auth_rejections) == (10, 10)  # 5 calls x 2 endpoints

    servers = await with_etcd(answer, tmp_path, body, endpoints=2)
    for server in servers:
        assert len(server.requests) == 15  # per call and endpoint: request, authenticate, one retry


ANSWERS = st.one_of(
    st.tuples(st.sampled_from([200, 401, 400, 404, 500, 503]), st.one_of(
        st.dictionaries(st.sampled_from(["token", "ID", "TTL", "kvs", "header", "succeeded", "responses", "result"]),
                        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                                     | st.just("١٢٣") | st.just("9" * 30) | st.just("-1") | st.just("!!"),
                                     lambda inner: st.lists(inner, max_size=3)
                                     | st.dictionaries(st.sampled_from(["value", "mod_revision", "revision", "kvs",
                                                                        "response_range", "TTL"]), inner, max_size=3),
                                     max_leaves=8),
                        max_size=4),
        st.text(max_size=20),
    )),
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(ANSWERS, min_size=1, max_size=8))
def test_any_etcd_answer_gives_a_result_or_a_classified_error_in_bounded_requests(
    tmp_path: Path, script: list[Answer]
) -> None:
    """Property: for any sequence of statuses and bodies, every Etcd operation returns or raises EtcdUnavailable
    (never KeyError/TypeError/ValueError/RecursionError), with at most 3 requests per endpoint per call."""
    failures: list[str] = []

    def answer(_path: str, n: int) -> Answer:
        return script[(n - 1) % len(script)]

    async def body(etcd: Etcd, servers: list[ScriptedEtcd]) -> None:
        operations: list[Callable[[], Awaitable[Any]]] = [
            lambda: etcd.get("k"), lambda: etcd.grant(5), lambda: etcd.keepalive("1"),
            lambda: etcd.create_if_absent("k", "v", "1"), lambda: etcd.put_if_revision("k", "v", 3),
        ]  # fmt: skip
        for operation in operations:
            before = len(servers[0].requests)
            try:
                await operation()
            except EtcdUnavailable:
                pass
            except Exception as exc:  # the property: nothing else escapes
                failures.append(f"{type(exc).__name__}: {exc}")
            assert len(servers[0].requests) - before <= 3

    asyncio.run(with_etcd(answer, tmp_path, body))
    assert failures == []


# ---- TLS files ------------------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-token-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "client.pem", directory / "client-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def fleet_config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, **files: Path) -> Path:
    config = tmp_path / "config.toml"
    tls = "".join(f'{key} = "{path}"\n' for key, path in files.items())
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = ""\n'
        f'[fleet]\netcd_endpoints = ["http://127.0.0.1:1"]\n{tls}'
        + profile_toml("main", auth, secret_file, [{"path": str(tmp_path / "t.jwt")}])
    )
    config.chmod(0o600)
    return config


def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edge_token", *args]
    if user is not None:  # the interpreter may live under /root: run it from a view `user` can read
        entry = pwd.getpwnam(user)
        argv = as_user(entry.pw_uid, entry.pw_gid, *argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


BROKEN: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "missing ca_file": ("ca_file", lambda d: d / "absent-ca.pem", "cannot read the file"),
    "missing cert_file": ("cert_file", lambda d: d / "absent.pem", "cannot read the file"),
    "cert_file is a directory": ("cert_file", lambda d: d, "not a regular file"),
    "garbage ca_file": ("ca_file", lambda d: _write(d / "ca.pem", "not a certificate"), "not a PEM CA bundle"),
    "garbage cert_file": ("cert_file", lambda d: _write(d / "c.pem", "junk"), "cannot load the client certificate"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_refuses_a_broken_tls_file_naming_the_key(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path, case: str
) -> None:
    """`check` and `run` exit 78 naming fleet.<key> for a missing, unreadable or malformed TLS file; never a
    traceback."""
    key, make, expected = BROKEN[case]
    cert, private = self_signed(tmp_path)
    files = {"cert_file": cert, "key_file": private, key: make(tmp_path)}
    config = fleet_config(tmp_path, auth, secret_file, **files)
    for command in ("check", "run"):
        result = cli(command, "-c", str(config))
        assert result.returncode == 78, (command, result.stderr)
        assert f"fleet.{key}" in result.stderr and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_key_file_only_the_owner_may_read_is_a_config_error_for_another_user(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """Run as an unprivileged user, a key file readable only by root is refused by `check` (exit 78, the key and
    the OS reason named)."""
    directory = Path("/tmp") / f"edge-token-fleet-{os.getpid()}"
    directory.mkdir(mode=0o755, exist_ok=True)
    try:
        cert, private = self_signed(directory)
        cert.chmod(0o644)
        readable_secret = directory / "secret"
        readable_secret.write_text(secret_file.read_text())
        readable_secret.chmod(0o600)  # not world-readable: `check` (as root) refuses that, as `run` would
        config = fleet_config(directory, auth, readable_secret, cert_file=cert, key_file=private)
        config.chmod(0o644)
        result = cli("check", "-c", str(config), user="nobody")
        assert result.returncode == 78, result.stderr
        assert "fleet.key_file" in result.stderr and "Permission denied" in result.stderr
        assert cli("check", "-c", str(config)).returncode == 0  # root may read it: the same files are fine
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


async def test_a_tls_file_removed_after_loading_is_a_config_error_at_start(tmp_path: Path) -> None:
    """The file vanished between `check` (or config load) and start: ConfigError naming the key, no traceback."""
    config = FleetConfig(etcd_endpoints=("https://127.0.0.1:1",), ca_file=tmp_path / "gone.pem")
    async with make_session() as session:
        with pytest.raises(ConfigError, match=r"fleet\.ca_file .* cannot read the file"):
            Etcd(config, session)
