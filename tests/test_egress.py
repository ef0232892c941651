"""Proxies and private CAs with real parts on loopback: Debian's tinyproxy, and an HTTPS provider under a test CA."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from conftest import CLIENT_ID, CLIENT_SECRET, FakeClock, profile_toml, run_child
from edge_token.app import Parts
from edge_token.config import load_config
from edge_token.core import scrub
from edge_token.core.errors import EX_NOPERM, ConfigError, JwksError, TransientError
from edge_token.core.outcome import RenewalOutcome
from edge_token.localauth import LocalAuthServer
from edge_token.net.egress import ProxyRejected, bypassed
from edge_token.net.http import make_session
from egressparts import TINYPROXY, PrivateCA, TinyProxy, free_port, make_ca
from faultyauth import FaultyAuthServer

pytestmark = pytest.mark.skipif(not Path(TINYPROXY).exists(), reason="tinyproxy not installed (.ci/run installs it)")

PROXY_USER, PROXY_PASSWORD = "edge", "pr0xy-pa55-9d8c7b6a"


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    return make_ca(tmp_path / "ca")


@pytest.fixture
async def tls_auth(clock: FakeClock, ca: PrivateCA) -> AsyncIterator[FaultyAuthServer]:
    """The bundled auth server over HTTPS with a certificate from the test CA (not in the system trust)."""
    server = FaultyAuthServer({CLIENT_ID: CLIENT_SECRET}, ttl=1000, now=clock.time)
    await server.start(tls=ca.server_context())
    yield server
    await server.stop()


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start real tinyproxy processes; every one is stopped at the end, whatever happened."""
    started: list[TinyProxy] = []

    async def start(auth: tuple[str, str] | None = None) -> TinyProxy:
        proxy = TinyProxy(tmp_path, auth)
        started.append(proxy)
        return await proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def renew_once(tmp_path: Path, clock: FakeClock) -> Callable[..., Any]:
    """Write a one-profile config for `server` with `settings`, renew once with `environ`, return the outcome."""

    async def run(server: LocalAuthServer, environ: Mapping[str, str] | None = None, **settings: Any) -> RenewalOutcome:
        secret = tmp_path / "client.secret"
        secret.write_text(CLIENT_SECRET)
        secret.chmod(0o600)
        path = tmp_path / "config.toml"
        path.write_text(profile_toml("main", server, secret, [{"path": str(tmp_path / "token.jwt")}], **settings))
        path.chmod(0o600)
        config = load_config(path, environ={})
        async with make_session() as session:
            parts = Parts(config, session, clock, structlog.get_logger("test"), environ=environ or {})
            return await parts.renewer(config.profiles["main"]).renew()

    return run


def proxy_auth_file(tmp_path: Path, password: str = PROXY_PASSWORD) -> Path:
    path = tmp_path / "proxy.auth"
    path.write_text(f"{PROXY_USER}:{password}\n")
    path.chmod(0o600)
    return path


# ---- private CA ------------------------------------------------------------------------------------------------
async def test_tls_provider_under_a_private_ca_needs_its_ca_file(
    tls_auth: FaultyAuthServer, ca: PrivateCA, renew_once: Callable[..., Any], tmp_path: Path
) -> None:
    """Without ca_file the test CA is not trusted (TLS fails, nothing written); with it the token arrives."""
    refused = await renew_once(tls_auth)
    assert isinstance(refused.error, TransientError) and "TLS" in str(refused.error)
    assert not (tmp_path / "token.jwt").exists() and tls_auth.token_requests == 0
    outcome = await renew_once(tls_auth, ca_file=str(ca.ca_file))
    assert outcome.error is None, outcome.error
    assert (tmp_path / "token.jwt").read_text() == tls_auth.issued[-1]
    assert tls_auth.jwks_requests >= 1  # the JWKS over the same private-CA TLS


async def test_ca_file_replaces_the_system_trust(
    tls_auth: LocalAuthServer, renew_once: Callable[..., Any], tmp_path: Path
) -> None:
    """A ca_file holding another CA does not let the provider's certificate through: only the bundle is trusted."""
    other = make_ca(tmp_path / "other", "another CA")
    outcome = await renew_once(tls_auth, ca_file=str(other.ca_file))
    assert isinstance(outcome.error, TransientError) and "TLS" in str(outcome.error)
    assert tls_auth.token_requests == 0


# ---- a real proxy ----------------------------------------------------------------------------------------------
async def test_token_and_jwks_go_through_the_proxy_with_tls_end_to_end(
    tls_auth: LocalAuthServer,
    ca: PrivateCA,
    proxies: Callable[..., Any],
    renew_once: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """proxy = URL: the token request and the JWKS fetch go through CONNECT tunnels of tinyproxy, and TLS inside
    them is verified against the provider (a wrong CA fails even though the proxy is fine)."""
    proxy = await proxies()
    outcome = await renew_once(tls_auth, proxy=proxy.url, ca_file=str(ca.ca_file))
    assert outcome.error is None, outcome.error
    port = tls_auth.base_url.rsplit(":", 1)[1]
    tunnels = [line for line in proxy.requests() if line.startswith(f"CONNECT 127.0.0.1:{port} ")]
    # one tunnel may carry both (aiohttp keeps it open for the same host); none bypassed the proxy
    assert tunnels and tls_auth.token_requests == 1 and tls_auth.jwks_requests >= 1
    other = make_ca(tmp_path / "other", "another CA")
    refused = await renew_once(tls_auth, proxy=proxy.url, ca_file=str(other.ca_file))
    assert isinstance(refused.error, TransientError) and "TLS" in str(refused.error)
    assert tls_auth.token_requests == 1


async def test_plain_http_loopback_provider_goes_direct(
    auth: LocalAuthServer, proxies: Callable[..., Any], renew_once: Callable[..., Any]
) -> None:
    """An http:// (loopback-only) provider is never sent to the proxy, which could not reach our loopback anyway."""
    proxy = await proxies()
    outcome = await renew_once(auth, proxy=proxy.url)
    assert outcome.error is None, outcome.error
    assert proxy.requests() == [] and auth.token_requests == 1


async def test_proxy_credentials_from_a_file(
    tls_auth: LocalAuthServer, ca: PrivateCA, proxies: Callable[..., Any], renew_once: Callable[..., Any],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A proxy that demands Basic auth gets it from proxy_auth_file; the password is registered with the scrubber."""
    proxy = await proxies(auth=(PROXY_USER, PROXY_PASSWORD))
    outcome = await renew_once(
        tls_auth, proxy=proxy.url, proxy_auth_file=str(proxy_auth_file(tmp_path)), ca_file=str(ca.ca_file)
    )
    assert outcome.error is None, outcome.error
    assert tls_auth.token_requests == 1
    assert PROXY_PASSWORD not in scrub.scrub_text(f"echo {PROXY_USER}:{PROXY_PASSWORD}")
    assert PROXY_PASSWORD not in capsys.readouterr().out


async def test_proxy_407_is_a_credentials_error_naming_the_proxy(
    tls_auth: LocalAuthServer, ca: PrivateCA, proxies: Callable[..., Any], renew_once: Callable[..., Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Wrong or missing proxy credentials: a ProxyRejected (exit 77) that names the proxy and the keys to fix, says
    the provider was not reached, and never shows the password; the provider saw no request."""
    proxy = await proxies(auth=(PROXY_USER, PROXY_PASSWORD))
    for extra in ({}, {"proxy_auth_file": str(proxy_auth_file(tmp_path, "wrong-pa55word-1234"))}):
        outcome = await renew_once(tls_auth, proxy=proxy.url, ca_file=str(ca.ca_file), **extra)
        error = outcome.error
        assert isinstance(error, ProxyRejected) and error.exit_code == EX_NOPERM, error
        message = str(error)
        assert (
            f"proxy 127.0.0.1:{proxy.port}" in message
            and "Proxy Authentication Required" in message
            and "proxy_auth_file" in message
        )
        assert "provider was not reached" in message and "wrong-pa55word" not in message
    assert tls_auth.token_requests == 0


async def test_proxy_down_is_a_transient_error_naming_the_proxy(
    tls_auth: LocalAuthServer, ca: PrivateCA, renew_once: Callable[..., Any]
) -> None:
    """A proxy that is not listening: transient (retried with backoff), the message names the proxy. (The JWKS
    fetch meets it first: no token is requested before the keys to verify it are there.)"""
    port = free_port()
    outcome = await renew_once(tls_auth, proxy=f"http://127.0.0.1:{port}", ca_file=str(ca.ca_file))
    error = outcome.error
    assert isinstance(error, TransientError) and f"proxy 127.0.0.1:{port} unreachable" in str(error), error
    assert tls_auth.token_requests == 0


async def test_jwks_through_a_proxy_that_goes_down_is_a_jwks_error_naming_it(
    tls_auth: LocalAuthServer, ca: PrivateCA, clock: FakeClock
) -> None:
    """The JWKS cache keeps its own error class (the last good key set logic relies on it) and names the proxy."""
    from edge_token.core.settings import Egress
    from edge_token.provider.jwks import JwksCache

    port = free_port()
    async with make_session() as session:
        settings = Egress(proxy=f"http://127.0.0.1:{port}", ca_file=ca.ca_file)
        cache = JwksCache(tls_auth.jwks_url, session, clock, egress_settings=settings)
        with pytest.raises(JwksError, match=f"proxy 127.0.0.1:{port} unreachable"):
            await cache.key_set(None)
    assert tls_auth.jwks_requests == 0


# ---- proxy = "env" ---------------------------------------------------------------------------------------------
async def test_env_proxy_is_honoured_and_no_proxy_bypasses_it(
    tls_auth: LocalAuthServer, ca: PrivateCA, proxies: Callable[..., Any], renew_once: Callable[..., Any]
) -> None:
    """proxy = "env": HTTPS_PROXY is used; NO_PROXY naming the host goes direct (the proxy sees nothing); a dead
    HTTPS_PROXY without NO_PROXY fails naming it. With the default proxy = "none" the variables are ignored."""
    proxy = await proxies()
    dead = f"http://127.0.0.1:{free_port()}"
    via = await renew_once(tls_auth, {"HTTPS_PROXY": proxy.url}, proxy="env", ca_file=str(ca.ca_file))
    assert via.error is None and any(line.startswith("CONNECT ") for line in proxy.requests())
    seen = len(proxy.requests())
    direct = await renew_once(
        tls_auth, {"https_proxy": dead, "NO_PROXY": "localhost,127.0.0.1"}, proxy="env", ca_file=str(ca.ca_file)
    )
    assert direct.error is None, direct.error
    assert len(proxy.requests()) == seen
    failed = await renew_once(tls_auth, {"HTTPS_PROXY": dead}, proxy="env", ca_file=str(ca.ca_file))
    assert isinstance(failed.error, TransientError) and "unreachable" in str(failed.error)
    ignored = await renew_once(tls_auth, {"HTTPS_PROXY": dead}, ca_file=str(ca.ca_file))
    assert ignored.error is None


async def test_env_proxy_with_user_info_is_refused(tls_auth: LocalAuthServer, renew_once: Callable[..., Any]) -> None:
    """A password inside HTTPS_PROXY is refused with a config error that does not repeat it."""
    outcome = await renew_once(tls_auth, {"HTTPS_PROXY": "http://u:hunter2-secret@127.0.0.1:3128"}, proxy="env")
    assert isinstance(outcome.error, ConfigError) and "proxy_auth_file" in str(outcome.error)
    assert "hunter2" not in str(outcome.error)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("auth.sitecorecloud.io", 443, "sitecorecloud.io", True),
        ("auth.sitecorecloud.io", 443, ".sitecorecloud.io", True),
        ("sitecorecloud.io", 443, ".sitecorecloud.io", True),
        ("evilsitecorecloud.io", 443, "sitecorecloud.io", False),
        ("auth.sitecorecloud.io", 443, "*", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("::1", 443, "::1", True),
        ("vault.internal", 8200, "vault.internal:8200", True),
        ("vault.internal", 8201, "vault.internal:8200", False),
        ("vault.internal", 8200, " other , vault.internal ", True),
        ("vault.internal", 8200, "", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, expected: bool) -> None:
    """NO_PROXY as curl and Go read it: names with subdomains, optional leading dot, *, IPs and CIDRs, ports."""
    assert bypassed(host, port, no_proxy) is expected


@given(st.text(max_size=300), st.text(max_size=60), st.integers(0, 65535))
def test_no_proxy_never_raises_and_star_always_bypasses(no_proxy: str, host: str, port: int) -> None:
    """Whatever the variable holds, matching never raises; `*` anywhere in the list bypasses every host."""
    bypassed(host, port, no_proxy)
    assert bypassed(host, port, no_proxy + ",*")


# ---- config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"proxy": "http://user:pw-123@proxy:3128"}, "proxy_auth_file"),
        ({"proxy": "https://proxy:3128"}, "http://host:port"),
        ({"proxy": "socks5://proxy:1080"}, "http://host:port"),
        ({"proxy_auth_file": "/etc/proxy.auth"}, 'proxy is "none"'),
        ({"proxy": "env", "proxy_auth_file": "/a", "proxy_auth_credential": "b"}, "not both"),
        ({"required_claims": {"tenant": 3}}, "required string value"),
        ({"proxy_url": "http://proxy:3128"}, "unknown key"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file = '/nonexistent/ca.pem': cannot read the file"),
        ({"ca_file": "/etc/hostname"}, "ca_file = '/etc/hostname': not a PEM CA bundle"),
    ],
)
def test_bad_egress_config_is_refused(
    settings: dict[str, Any], message: str, auth: LocalAuthServer, tmp_path: Path, secret_file: Path
) -> None:
    """Each mistake is a ConfigError naming what to do; a password in a proxy URL is never echoed back."""
    path = tmp_path / "config.toml"
    lines = [profile_toml("main", auth, secret_file, [{"path": str(tmp_path / "t.jwt")}])]
    for key, value in settings.items():
        rendered = (
            "{ " + ", ".join(f'"{k}" = {v!r}' for k, v in value.items()) + " }"
            if isinstance(value, dict)
            else f'"{value}"'
        )
        lines.insert(0, "")
        lines[-1] = lines[-1].replace("[[profiles.main.sinks]]", f"{key} = {rendered}\n[[profiles.main.sinks]]")
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path, environ={})
    assert "pw-123" not in str(caught.value)


# ---- stores and etcd -------------------------------------------------------------------------------------------
async def start_tls(server: Any, ca: PrivateCA) -> None:
    """Start one of the fake stores (tests/fakestores.py) over HTTPS under the test CA."""
    from aiohttp import web

    server.runner = web.AppRunner(server.app)
    await server.runner.setup()
    await web.TCPSite(server.runner, "127.0.0.1", 0, ssl_context=ca.server_context()).start()
    server.url = f"https://127.0.0.1:{server.runner.addresses[0][1]}"


async def test_store_sinks_and_etcd_go_through_their_own_proxy(
    proxies: Callable[..., Any], tmp_path: Path, auth: LocalAuthServer, secret_file: Path, ca: PrivateCA
) -> None:
    """A vault_kv sink with proxy + proxy_auth_file, a kubernetes_secret sink with proxy = "env", and [fleet] with
    a proxy URL, all parsed from TOML: each one's HTTPS goes through its own tinyproxy (Basic auth for Vault), TLS
    verified inside the tunnel against the store's ca_file."""
    from edge_token.core.token import Token
    from edge_token.fleet.etcd import Etcd, EtcdUnavailable
    from edge_token.sinks import build_sink
    from fakestores import FakeEtcdEcho, FakeKubernetes, FakeVault

    vault, k8s, etcd = FakeVault(), FakeKubernetes(), FakeEtcdEcho(lambda name, password: "no")
    try:
        for server in (vault, k8s, etcd):
            await start_tls(server, ca)
        guarded = await proxies(auth=(PROXY_USER, PROXY_PASSWORD))
        open_proxy = await proxies()
        sa_token = tmp_path / "sa.token"
        sa_token.write_text("sa-token-1")
        sinks = [
            {"type": "vault_kv", "address": vault.url, "path": "edge-token/p", "token_env": "VAULT_TOKEN",
             "ca_file": str(ca.ca_file), "proxy": guarded.url, "proxy_auth_file": str(proxy_auth_file(tmp_path))},
            {"type": "kubernetes_secret", "secret_name": "edge-token", "namespace": "apps", "api_url": k8s.url,
             "token_file": str(sa_token), "ca_file": str(ca.ca_file), "proxy": "env"},
        ]  # fmt: skip
        path = tmp_path / "config.toml"
        fleet = f'[fleet]\netcd_endpoints = ["{etcd.url}"]\nca_file = "{ca.ca_file}"\nproxy = "{open_proxy.url}"\n'
        path.write_text(fleet + profile_toml("main", auth, secret_file, sinks))
        path.chmod(0o600)
        config = load_config(path, environ={})
        environ = {"VAULT_TOKEN": "root-token", "HTTPS_PROXY": open_proxy.url}
        claims = {"exp": 2_000_000_000, "iat": 1_999_990_000}
        token = Token(jwt="a.b.c", claims=claims, received_at=1_999_990_000.0, lifetime=10_000.0, scope=None)
        async with make_session() as session:
            for sink_config in config.profiles["main"].sinks:
                assert await build_sink(sink_config, session, None, environ).write(token) is True
            assert config.fleet is not None
            with pytest.raises(EtcdUnavailable, match="401"):  # the fake refuses; reaching it is the point
                await Etcd(config.fleet, session).call("/v3/kv/range", {"key": "a2V5"})
        assert vault.current("secret", "edge-token/p") is not None and k8s.secrets
        assert [line for line in guarded.requests() if line.startswith(f"CONNECT {vault.url[8:]} ")]
        assert not any("Proxy-Authorization" in headers for _, _, headers in vault.requests)  # only the proxy saw it
        k8s_port, etcd_port = k8s.url.rsplit(":", 1)[1], etcd.url.rsplit(":", 1)[1]
        assert {line.split()[1] for line in open_proxy.requests()} == {
            f"127.0.0.1:{k8s_port}",
            f"127.0.0.1:{etcd_port}",
        }
    finally:
        for server in (vault, k8s, etcd):
            await server.stop()


async def test_once_through_a_proxy_never_shows_the_proxy_password(
    live_auth: LocalAuthServer, proxies: Callable[..., Any], tmp_path: Path, secret_file: Path, ca: PrivateCA
) -> None:
    """`edge-token once` as a real process, through a Basic-auth tinyproxy: with the right password exit 0; with a
    wrong one exit 77 naming the proxy. Neither password appears in any encoding in stdout or stderr (JSON logs)."""
    import os
    import sys

    from leakscan import leaks

    await live_auth.stop()
    await live_auth.start(tls=ca.server_context())
    proxy = await proxies(auth=(PROXY_USER, PROXY_PASSWORD))
    wrong = "wr0ng-pa55-7e6f5d4c"
    outputs = []
    for password, code in ((PROXY_PASSWORD, 0), (wrong, EX_NOPERM)):
        sink = {"path": str(tmp_path / f"{code}.jwt")}
        settings = {"proxy": proxy.url, "proxy_auth_file": str(proxy_auth_file(tmp_path, password)),
                    "ca_file": str(ca.ca_file)}  # fmt: skip
        config = tmp_path / "config.toml"
        config.write_text(
            '[daemon]\nlog_format = "json"\n' + profile_toml("main", live_auth, secret_file, [sink], **settings)
        )
        config.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_TOKEN_")}
        exit_code, stdout, stderr = await run_child(
            sys.executable, "-m", "edge_token", "once", "--timeout", "5", "-c", str(config), env=env
        )
        text = stdout.decode() + stderr.decode()
        assert exit_code == code, text
        outputs.append(text)
    assert f"proxy 127.0.0.1:{proxy.port} rejected the proxy credentials" in outputs[1]
    assert (
        leaks("\n".join(outputs), [PROXY_PASSWORD, wrong, f"{PROXY_USER}:{PROXY_PASSWORD}", f"{PROXY_USER}:{wrong}"])
        == []
    )
