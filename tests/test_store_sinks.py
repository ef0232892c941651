"""Kubernetes Secret and Vault KV v2 sinks against in-process servers implementing the documented contracts."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import FakeClock
from edge_token.app import exit_code, run_once
from edge_token.core.errors import SinkError
from edge_token.core.settings import Config, KubernetesSecretOptions, SecretSource, SinkConfig, VaultKvOptions
from edge_token.core.token import Token
from edge_token.net.http import make_session
from edge_token.sinks.kubernetes import EXPIRY_ANNOTATION, KubernetesSecretSink
from edge_token.sinks.vault import VaultKvSink
from fakestores import FakeKubernetes, FakeVault


def jws(exp: float) -> str:
    """A compact JWS claiming `exp` (unsigned: the stores never verify, they only compare expiries)."""
    payload = base64.urlsafe_b64encode(json.dumps({"exp": int(exp)}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{payload}.sig"


def token(exp: float, jwt: str | None = None) -> Token:
    return Token(jwt=jwt or jws(exp), claims={"exp": exp}, received_at=exp - 1000, lifetime=1000)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session() as client:
        yield client


@pytest.fixture
async def vault() -> AsyncIterator[FakeVault]:
    server = FakeVault()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def sa_token(tmp_path: Path) -> Path:
    path = tmp_path / "sa-token"
    path.write_text("sa-token-1\n")
    return path


def k8s_sink(
    k8s: FakeKubernetes, session: aiohttp.ClientSession, sa_token: Path, **changes: Any
) -> KubernetesSecretSink:
    options = KubernetesSecretOptions(
        secret_name="edge-token", namespace="apps", api_url=k8s.url, token_file=sa_token, ca_file=None,
        labels={"team": "web"}, annotations={"owner": "platform"}, **changes,
    )  # fmt: skip
    return KubernetesSecretSink(SinkConfig(type="kubernetes_secret", store=options), options, session)


async def test_kubernetes_creates_then_updates_with_resource_version(
    k8s: FakeKubernetes, session: aiohttp.ClientSession, sa_token: Path
) -> None:
    """Absent: created with labels, annotations and the expiry; present: replaced conditionally; same: skipped."""
    sink = k8s_sink(k8s, session, sa_token)
    assert await sink.read() is None
    assert await sink.write(token(2e9)) is True
    secret = k8s.secrets[("apps", "edge-token")]
    assert k8s.value("apps", "edge-token") == token(2e9).jwt
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "edge-token", "team": "web"}
    assert secret["metadata"]["annotations"] == {"owner": "platform", EXPIRY_ANNOTATION: "2000000000"}
    assert await sink.write(token(2e9)) is False
    assert await sink.write(token(2e9 + 100)) is True
    assert k8s.value("apps", "edge-token") == token(2e9 + 100).jwt
    assert await sink.read() == token(2e9 + 100).jwt
    assert [m for m, _, _ in k8s.requests].count("PUT") == 1


async def test_kubernetes_conflict_rereads_and_never_regresses_a_newer_token(
    k8s: FakeKubernetes, session: aiohttp.ClientSession, sa_token: Path
) -> None:
    """A 409 makes the sink re-read; if the other writer's token expires later, it is left in place."""
    sink = k8s_sink(k8s, session, sa_token)
    await sink.write(token(2e9))
    k8s.interfere.append({"other": "eA=="})  # an unrelated key changes between our GET and PUT
    assert await sink.write(token(2e9 + 10)) is True
    assert k8s.value("apps", "edge-token") == token(2e9 + 10).jwt
    assert k8s.value("apps", "edge-token", "other") == "x"
    newer = token(2e9 + 500)
    await k8s_sink(k8s, session, sa_token).write(newer)
    assert await sink.write(token(2e9 + 20)) is False
    assert k8s.value("apps", "edge-token") == newer.jwt


async def test_kubernetes_rereads_the_projected_token(
    k8s: FakeKubernetes, session: aiohttp.ClientSession, sa_token: Path
) -> None:
    """The service-account token file is read on every call, so a rotated projected token is used at once."""
    sink = k8s_sink(k8s, session, sa_token)
    await sink.write(token(2e9))
    k8s.tokens = {"sa-token-2"}
    sa_token.write_text("sa-token-2")
    assert await sink.write(token(2e9 + 1)) is True
    assert k8s.requests[-1][2]["Authorization"] == "Bearer sa-token-2"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda k: setattr(k, "forbidden", True), "needs get, create, update on secrets/edge-token in apps"),
        (lambda k: setattr(k, "tokens", {"other"}), "rejected the service-account token"),
        (lambda k: k.failures.append(503), "answered 503"),
        (lambda k: k.namespaces.clear(), "namespace apps not found"),
    ],
)
async def test_kubernetes_errors_say_what_to_do(
    k8s: FakeKubernetes, session: aiohttp.ClientSession, sa_token: Path, setup: Callable[[FakeKubernetes], None],
    message: str,
) -> None:  # fmt: skip
    """403, 401, 5xx and a missing namespace are specific SinkErrors; nothing is written."""
    setup(k8s)
    with pytest.raises(SinkError, match=message):
        await k8s_sink(k8s, session, sa_token).write(token(2e9))
    assert k8s.secrets == {}


def vault_sink(vault: FakeVault, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock | None = None,
               **changes: Any) -> VaultKvSink:  # fmt: skip
    settings: dict[str, Any] = {"token": SecretSource("env", "VAULT_TOKEN")} | changes
    options = VaultKvOptions(address=vault.url, path="edge-token/production", **settings)
    sink_config = SinkConfig(type="vault_kv", store=options)
    monotonic = clock.monotonic if clock else (lambda: 0.0)
    return VaultKvSink(sink_config, options, session, environ={"VAULT_TOKEN": "root-token"}, monotonic=monotonic)


async def test_vault_writes_with_check_and_set(
    vault: FakeVault, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """cas=0 creates, cas=N updates; the stored value carries the token and its expiry; read-back works."""
    sink = vault_sink(vault, session, tmp_path, namespace="team-a")
    assert await sink.read() is None
    assert await sink.write(token(2e9)) is True
    assert vault.current("secret", "edge-token/production") == {
        "token": token(2e9).jwt, "token_type": "Bearer", "expires_at": "2033-05-18T03:33:20+00:00",
        "expires_at_unix": 2000000000,
    }  # fmt: skip
    assert await sink.write(token(2e9)) is False
    assert await sink.write(token(2e9 + 5)) is True
    assert len(vault.kv[("secret", "edge-token/production")]) == 2
    assert await sink.read() == token(2e9 + 5).jwt
    assert all(headers.get("X-Vault-Namespace") == "team-a" for _, _, headers in vault.requests)


async def test_vault_cas_mismatch_rereads_and_never_regresses(
    vault: FakeVault, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A concurrent write makes the cas fail; we re-read: an older value is replaced, a newer one kept."""
    sink = vault_sink(vault, session, tmp_path)
    await sink.write(token(2e9))
    vault.interfere.append({"token": "older", "expires_at_unix": 2e9 - 5})
    assert await sink.write(token(2e9 + 10)) is True
    assert vault.current("secret", "edge-token/production")["token"] == token(2e9 + 10).jwt  # type: ignore[index]
    vault.interfere.append({"token": jws(2e9 + 999), "expires_at_unix": 2e9 + 999})
    assert await sink.write(token(2e9 + 20)) is False
    assert vault.current("secret", "edge-token/production")["token"] == jws(2e9 + 999)  # type: ignore[index]


async def test_vault_approle_login_renewal_and_relogin(
    vault: FakeVault, session: aiohttp.ClientSession, tmp_path: Path, clock: FakeClock
) -> None:
    """AppRole: one login, renew-self when a third of the lease is left, a fresh login after revocation."""
    secret_id = tmp_path / "secret-id"
    secret_id.write_text("sid-1")
    vault.approles["role-1"] = "sid-1"
    vault.lease = 90
    sink = vault_sink(vault, session, tmp_path, clock, token=None, role_id="role-1",
                      secret_id=SecretSource("file", str(secret_id)))  # fmt: skip
    await sink.write(token(2e9))
    assert (vault.logins, vault.renewals) == (1, 0)
    clock.advance(70)  # 20 s of 90 left: renew
    await sink.write(token(2e9 + 1))
    assert (vault.logins, vault.renewals) == (1, 1)
    vault.tokens.clear()  # revoked: 403, then a new login
    vault.tokens["root-token"] = 1
    assert await sink.write(token(2e9 + 2)) is True
    assert vault.logins == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mount": "kv"}, "no KV v2 engine mounted at 'kv'"),
        ({"token": SecretSource("env", "NOPE")}, "environment variable NOPE is not set"),
        ({"token": SecretSource("inline", "wrong-token")}, "permission denied: the Vault policy needs read"),
    ],
)
async def test_vault_errors_say_what_to_do(
    vault: FakeVault, session: aiohttp.ClientSession, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    """A missing mount, a missing token and a token without permission are specific SinkErrors."""
    with pytest.raises(SinkError, match=message):
        await vault_sink(vault, session, tmp_path, **changes).write(token(2e9))


async def test_once_adopts_a_fresh_token_from_the_stores(
    make_config: Callable[..., Config], k8s: FakeKubernetes, vault: FakeVault, sa_token: Path, clock: FakeClock,
    log: Any, auth: Any,
) -> None:  # fmt: skip
    """Store-only profiles: the first `once` writes both stores, the second adopts from them (no request)."""
    sinks = [
        {"type": "kubernetes_secret", "secret_name": "edge-token", "namespace": "apps", "api_url": k8s.url,
         "token_file": str(sa_token)},
        {"type": "vault_kv", "address": vault.url, "path": "edge-token/p", "token_env": "VT"},
    ]  # fmt: skip
    config = make_config(sinks=sinks)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    for _ in range(2):
        results = await run_once(config, clock, log, environ={"VT": "root-token"}, sleep=sleep)
        assert exit_code(results) == 0, [r.error for r in results]
    assert auth.token_requests == 1
    assert k8s.value("apps", "edge-token") == vault.current("secret", "edge-token/p")["token"]  # type: ignore[index]


@pytest.mark.parametrize("value", ["not-a-jwt-at-all", "eyJh.eyJ9.sig", "JWT-shaped-but.e30.claims-no-exp"])
async def test_a_forged_expiry_beside_garbage_never_freezes_a_store(
    k8s: FakeKubernetes, vault: FakeVault, session: aiohttp.ClientSession, sa_token: Path, tmp_path: Path, value: str
) -> None:
    """Someone put garbage (or a token-shaped value claiming no such expiry) in the store with a far-future expiry
    beside it: that is not "a newer token"; ours replaces it (it used to be left there forever, reported healthy)."""
    sink = k8s_sink(k8s, session, sa_token)
    await sink.write(token(2e9))
    secret = k8s.secrets[("apps", "edge-token")]
    secret["data"]["token"] = base64.b64encode(value.encode()).decode()
    secret["metadata"]["annotations"][EXPIRY_ANNOTATION] = "99999999999"
    assert await sink.write(token(2e9 + 10)) is True
    assert k8s.value("apps", "edge-token") == token(2e9 + 10).jwt
    store = vault_sink(vault, session, tmp_path)
    await store.write(token(2e9))
    vault.interfere.append({"token": value, "expires_at_unix": 99999999999})
    assert await store.write(token(2e9 + 10)) is True
    assert vault.current("secret", "edge-token/production")["token"] == token(2e9 + 10).jwt  # type: ignore[index]
