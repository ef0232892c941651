"""One path for the data (issue 13): the TLS builder, the strict JSON parse and the JWT shape are each one
implementation now, so every caller keeps the same guarantees. Each test runs its property over EVERY caller:
config loading, the profile's egress (token endpoint, JWKS), etcd, both secret stores and `check`."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import RSAKey

from conftest import CLIENT_ID, CLIENT_SECRET, FakeClock, profile_toml, run_child
from edge_token.config import load_config
from edge_token.core import strictjson
from edge_token.core.errors import ConfigError, EdgeTokenError, JwksError, ProtocolError, SinkError
from edge_token.core.settings import (
    Egress,
    FleetConfig,
    KubernetesSecretOptions,
    SecretSource,
    SinkConfig,
    VaultKvOptions,
)
from edge_token.core.token import Token
from edge_token.fleet.etcd import Etcd, EtcdUnavailable
from edge_token.localauth import LocalAuthServer
from edge_token.net import egress
from edge_token.net.http import make_session
from edge_token.net.tls import MAX_PEM_BYTES
from edge_token.preflight import Problem, preflight
from edge_token.provider.jwks import JwksCache
from edge_token.provider.oauth import parse_token_answer
from edge_token.provider.verify import Rules, verify_token
from edge_token.sinks.kubernetes import KubernetesSecretSink
from edge_token.sinks.vault import VaultKvSink
from egressparts import PrivateCA, make_ca
from faultyauth import FaultyAuthServer
from unprivileged import as_user

JWKS_KEY = RSAKey.generate_key(2048, parameters={"kid": "one-path"}).as_dict(private=False)
NEW_TOKEN = Token(jwt="eyJh.eyJuZXc.sig", claims={"exp": 2e9}, received_at=2e9 - 1000, lifetime=1000)


class Scripted:
    """A loopback HTTP(S) server answering every request with `answer(method, path) -> (status, body text)`; each
    connection is closed after its answer, so every request is a new TLS handshake."""

    def __init__(self, answer: Callable[[str, str], tuple[int, str]], tls: Any = None) -> None:
        self.answer, self.tls = answer, tls
        self.requests: list[tuple[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        status, text = self.answer(request.method, request.path)
        response = web.Response(status=status, text=text, content_type="application/json")
        response.force_close()
        return response

    async def __aenter__(self) -> Scripted:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [(m, path) for m, path in self.requests if m in ("PUT", "POST") and not path.endswith("/range")]


@dataclass
class Env:
    tmp: Path
    auth: LocalAuthServer
    secret_file: Path
    session: aiohttp.ClientSession
    clock: FakeClock
    environ: dict[str, str] = field(default_factory=lambda: {"VT": "vault-token"})

    def sa_token(self) -> Path:
        path = self.tmp / "sa-token"
        path.write_text("sa-token-1\n")
        return path


@pytest.fixture
async def env(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, clock: FakeClock) -> AsyncIterator[Env]:
    async with make_session() as session:
        yield Env(tmp_path, auth, secret_file, session, clock)


def vault(env: Env, url: str, ca: Path | None) -> VaultKvSink:
    options = VaultKvOptions(address=url, path="edge-token/p", token=SecretSource("env", "VT"), ca_file=ca)
    return VaultKvSink(SinkConfig(type="vault_kv", store=options), options, env.session, environ=env.environ)


def kubernetes(env: Env, url: str, ca: Path | None) -> KubernetesSecretSink:
    options = KubernetesSecretOptions(
        secret_name="edge-token", namespace="apps", api_url=url, token_file=env.sa_token(), ca_file=ca
    )
    sink = SinkConfig(type="kubernetes_secret", store=options)
    return KubernetesSecretSink(sink, options, env.session, environ=env.environ)


def jwks_cache(env: Env, url: str, ca: Path | None) -> JwksCache:
    return JwksCache(url, env.session, env.clock, egress_settings=Egress(ca_file=ca), environ={})


def fleet(url: str, ca: Path | None) -> FleetConfig:
    return FleetConfig(etcd_endpoints=(url,), ca_file=ca, timeout_seconds=5)


# ---- 1. every caller of the TLS builder refuses the same bad files, at once -----------------------------------


def fifo(path: Path) -> Path:
    os.mkfifo(path, 0o600)
    return path


def oversized(path: Path) -> Path:
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * MAX_PEM_BYTES + b"\n-----END CERTIFICATE-----\n")
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "a FIFO": (fifo, "not a regular file"),
    "an oversized file": (oversized, "larger than"),
    "a missing file": (lambda path: path, "cannot read the file"),
}


async def refused_by_config_profile(env: Env, ca: Path) -> str:
    path = env.tmp / "profile.toml"
    path.write_text(
        profile_toml("main", env.auth, env.secret_file, [{"path": str(env.tmp / "t.jwt")}], ca_file=str(ca))
    )
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return str(caught.value)


async def refused_by_config_fleet(env: Env, ca: Path) -> str:
    path = env.tmp / "fleet.toml"
    path.write_text(
        f'[fleet]\netcd_endpoints = ["http://127.0.0.1:1"]\nca_file = "{ca}"\n'
        + profile_toml("main", env.auth, env.secret_file, [{"path": str(env.tmp / "t.jwt")}])
    )
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return str(caught.value)


async def refused_by_egress(env: Env, ca: Path) -> str:
    with pytest.raises(ConfigError) as caught:  # what the token request and the JWKS fetch ask before sending
        egress.route(Egress(ca_file=ca), "https://127.0.0.1:1/token", {})
    return str(caught.value)


async def refused_by_etcd(env: Env, ca: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        Etcd(fleet("https://127.0.0.1:1", ca), env.session)
    return str(caught.value)


async def refused_by_store(env: Env, ca: Path, make: Callable[[Env, str, Path | None], Any]) -> str:
    async with Scripted(lambda _m, _p: (200, "{}")) as server:
        with pytest.raises(SinkError) as caught:
            await make(env, server.url, ca).write(NEW_TOKEN)
        assert server.requests == []  # refused before anything was sent, nothing written
    return str(caught.value)


async def refused_by_check(env: Env, ca: Path) -> str:
    path = env.tmp / "check.toml"
    sinks = [
        {"type": "vault_kv", "address": "https://127.0.0.1:1", "path": "x/y", "token_env": "VT", "ca_file": str(ca)}
    ]
    path.write_text(profile_toml("main", env.auth, env.secret_file, sinks))
    path.chmod(0o600)
    problems = [p for p in preflight(load_config(path, environ={}), env.environ) if isinstance(p, Problem)]
    assert [p.where.rpartition(": ")[2] for p in problems] == ["profiles.main.sinks[0].ca_file"], problems
    return str(problems[0])


TLS_CALLERS: dict[str, tuple[Callable[[Env, Path], Awaitable[str]], str]] = {
    "config: profile ca_file": (refused_by_config_profile, "profiles.main.ca_file"),
    "config: fleet ca_file": (refused_by_config_fleet, "fleet.ca_file"),
    "egress at run time (token, JWKS)": (refused_by_egress, "ca_file"),
    "etcd client": (refused_by_etcd, "fleet.ca_file"),
    "vault_kv sink": (lambda env, ca: refused_by_store(env, ca, vault), "ca_file"),
    "kubernetes_secret sink": (lambda env, ca: refused_by_store(env, ca, kubernetes), "ca_file"),
    "check (preflight)": (refused_by_check, "ca_file"),
}


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
@pytest.mark.parametrize("caller", sorted(TLS_CALLERS))
async def test_every_tls_caller_refuses_a_fifo_an_oversized_or_a_missing_ca_file_at_once(
    env: Env, caller: str, bad: str
) -> None:
    """Invariant, for every caller of the one builder: a ca_file that is a FIFO, larger than MAX_PEM_BYTES or
    missing is refused within a second with an error naming the key and the problem; never a block (a FIFO),
    never megabytes parsed on the event loop, never a silent fall-back to the system trust (a missing file)."""
    make, expected = BAD_FILES[bad]
    ca = make(env.tmp / "ca.pem")
    refuse, key = TLS_CALLERS[caller]
    # Safety net only: should a caller block opening the FIFO, a writer appears after 10 s and frees it, so the
    # test fails on the time below instead of hanging the suite.
    rescue = threading.Timer(10, _open_for_writing, (ca,))
    rescue.start()
    started = time.monotonic()
    try:
        message = await refuse(env, ca)
    finally:
        rescue.cancel()
    assert time.monotonic() - started < 5, f"{caller} blocked on {bad}"
    assert key in message and expected in message, message


def _open_for_writing(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# ---- 2. every TLS caller uses a renewed CA bundle at its next request -----------------------------------------


async def probe_etcd(env: Env, url: str, ca: Path, state: dict[str, Any]) -> bool:
    if "client" not in state:
        state["client"] = Etcd(fleet(url, ca), env.session)
    try:
        await state["client"].get("k")
    except EtcdUnavailable:
        return False
    return True


async def probe_vault(env: Env, url: str, ca: Path, state: dict[str, Any]) -> bool:
    if "client" not in state:
        state["client"] = vault(env, url, ca)
    sink = state["client"]
    return await sink.read() == "a.b.c"  # type: ignore[no-any-return]


async def probe_kubernetes(env: Env, url: str, ca: Path, state: dict[str, Any]) -> bool:
    if "client" not in state:
        state["client"] = kubernetes(env, url, ca)
    sink = state["client"]
    return await sink.read() == "a.b.c"  # type: ignore[no-any-return]


async def probe_jwks(env: Env, url: str, ca: Path, state: dict[str, Any]) -> bool:
    if "client" not in state:
        state["client"] = jwks_cache(env, url, ca)
    cache = state["client"]
    try:
        await cache.refresh()
    except JwksError:
        return False
    return cache.last_error is None


GOOD_BODY = json.dumps({
    "header": {"revision": "7"}, "kvs": [],  # etcd range
    "data": {"data": {"token": "a.b.c"}, "metadata": {"version": 1}, "token": base64.b64encode(b"a.b.c").decode()},
    "keys": [JWKS_KEY],
})  # fmt: skip
PROBES = {"etcd": probe_etcd, "vault_kv": probe_vault, "kubernetes_secret": probe_kubernetes, "jwks": probe_jwks}


@pytest.mark.parametrize("caller", sorted(PROBES))
async def test_every_tls_caller_uses_a_renewed_ca_bundle_at_its_next_request(env: Env, caller: str) -> None:
    """The server's certificate is re-issued by a new CA and ca_file is replaced with the new bundle: the same
    client object (no restart) fails while it still holds the old bundle, and succeeds at the next request after
    the replacement (the builder's cache is keyed by file version)."""
    old, new = make_ca(env.tmp / "old", "old CA"), make_ca(env.tmp / "new", "new CA")
    ca = env.tmp / "ca.pem"
    ca.write_bytes(old.ca_file.read_bytes())
    server_tls = old.server_context()
    probe, state = PROBES[caller], dict[str, Any]()
    async with Scripted(lambda _m, _p: (200, GOOD_BODY), server_tls) as server:
        assert await probe(env, server.url, ca, state)
        server_tls.load_cert_chain(str(new.cert_file), str(new.key_file))  # the server renews under the new CA
        assert not await probe(env, server.url, ca, state)  # still the old bundle: refused, verification is on
        replace(ca, new)
        assert await probe(env, server.url, ca, state)


def replace(ca: Path, new: PrivateCA) -> None:
    staged = ca.with_suffix(".new")
    staged.write_bytes(new.ca_file.read_bytes())
    os.replace(staged, ca)  # as cert-manager / a package update does: a new file under the same name


# ---- 3. every network body goes through the one strict parse ---------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BASE_BODIES: dict[str, dict[str, Any]] = {
    "jwks": {"keys": [JWKS_KEY]},
    "etcd": {"header": {"revision": "7"}, "kvs": [{"key": b64("k"), "value": b64("v"), "mod_revision": "7"}]},
    "vault_kv": {"data": {"data": {"token": "old", "expires_at_unix": 1}, "metadata": {"version": 1}}},
    "kubernetes_secret": {"kind": "Secret", "metadata": {"name": "edge-token", "resourceVersion": "5"},
                          "data": {"token": b64("old")}},
    "token endpoint": {"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 3600},
}  # fmt: skip
HOSTILE = {
    "a duplicate member": '"note": 1, "note": 2',
    "NaN": '"note": NaN',
    "Infinity": '"note": -Infinity',
    "a number that overflows to Infinity": '"note": 1e400',
    "nesting 40 deep": '"note": ' + "[" * 40 + "]" * 40,
}
NAMED = {  # what each refusal's message must say (strictjson's wording, after the caller's own "what")
    "a duplicate member": "a member name appears twice",
    "NaN": "NaN, which is not JSON",
    "Infinity": "-Infinity, which is not JSON",
    "a number that overflows to Infinity": "a number too large for a float",
    "nesting 40 deep": "nested deeper than 32 levels",
}


def spoiled(document: dict[str, Any], hostile: str | None) -> str:
    text = json.dumps(document)
    return text if hostile is None else "{" + HOSTILE[hostile] + ", " + text[1:]


async def body_refusal(env: Env, caller: str, text: str) -> str | None:
    """None if `caller` took this body as its answer; else the message of its own classified error, with nothing
    written or adopted."""
    if caller == "token endpoint":
        try:
            parse_token_answer(text.encode(), "application/json", 0.0)
        except ProtocolError as exc:
            return str(exc)
        return None
    async with Scripted(lambda _m, _p: (200, text)) as server:
        try:
            if caller == "jwks":
                cache = jwks_cache(env, server.url + "/jwks.json", None)
                await cache.refresh()
                assert cache.kids
                return None
            if caller == "etcd":
                assert (await Etcd(fleet(server.url, None), env.session).get("k")).value == "v"
                return None
            sink = (vault if caller == "vault_kv" else kubernetes)(env, server.url, None)
            assert await sink.write(NEW_TOKEN)
            return None
        except (JwksError, EtcdUnavailable, SinkError) as exc:
            assert server.writes == []  # an ambiguous answer is never the basis of a write
            return str(exc)


@pytest.mark.parametrize("hostile", [None, *sorted(HOSTILE)])
@pytest.mark.parametrize("caller", sorted(BASE_BODIES))
async def test_every_network_body_is_parsed_strictly(env: Env, caller: str, hostile: str | None) -> None:
    """Invariant, for every network body the daemon reads: the plain answer is accepted; the same answer with a
    duplicate member, NaN/Infinity or nesting beyond strictjson.MAX_DEPTH is refused with the caller's own error
    class (JwksError, EtcdUnavailable, SinkError, ProtocolError), a message that names the defect, and nothing is
    written or adopted."""
    refusal = await body_refusal(env, caller, spoiled(BASE_BODIES[caller], hostile))
    if hostile is None:
        assert refusal is None
    else:
        assert refusal is not None and NAMED[hostile] in refusal, refusal


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, key=st.text(max_size=5), depth=st.integers(0, 40))
def test_strict_json_round_trips_unambiguous_documents_and_refuses_ambiguous_ones(
    value: Any, key: str, depth: int
) -> None:
    """Property: any JSON document parses to what was serialised; the same with one member name repeated in an
    object at any depth is refused; nesting is accepted up to MAX_DEPTH levels and refused beyond."""
    wrapped = "[" * depth + json.dumps(value) + "]" * depth
    levels = depth + _depth(value)
    if levels <= strictjson.MAX_DEPTH:
        assert strictjson.loads(wrapped) == json.loads(wrapped)
    else:
        with pytest.raises(ValueError, match="nested deeper"):
            strictjson.loads(wrapped)
    duplicated = "[" * depth + "{" + f"{json.dumps(key)}: 1, {json.dumps(key)}: {json.dumps(value)}" + "}" + "]" * depth
    with pytest.raises(ValueError):
        strictjson.loads(duplicated)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# ---- 4. one JWT shape ------------------------------------------------------------------------------------------


async def test_a_token_with_a_trailing_newline_is_malformed_before_any_key_is_consulted(
    auth: LocalAuthServer,
) -> None:
    """A `$` anchor let a final newline through the shape check; the signature check then failed, which counts as
    a suspect key and refetches the JWKS. One fullmatch pattern (core/token.py) refuses it as malformed first."""
    token = auth.mint(auth.claims_for("client", "aud"))
    asked: list[bool] = []

    async def keys(_kid: str | None, suspect: bool = False) -> Any:
        asked.append(suspect)
        raise AssertionError("the key set must not be consulted for a malformed token")

    rules = Rules(issuer=auth.issuer, audience="aud", client_id="client")
    with pytest.raises(EdgeTokenError) as caught:
        await verify_token(token + "\n", keys, rules, auth.now())
    assert getattr(caught.value, "reason", None) == "malformed" and asked == []


# ---- 5. the builder's reading works where the daemon really runs: unprivileged and non-dumpable ----------------


async def test_an_unprivileged_non_dumpable_once_trusts_its_ca_file(public_dir: Path, secret_file: Path) -> None:
    """`once` as `nobody` (hardened: PR_SET_DUMPABLE 0, which makes /proc/self root-owned) against an HTTPS provider
    under a private CA: the builder hands OpenSSL the file it opened through /proc/self/fd, and that works for a
    non-dumpable, unprivileged process too (the kernel always lets a process reach its own descriptors)."""
    nobody = pwd.getpwnam("nobody")
    ca = make_ca(public_dir / "ca")
    for path in (ca.ca_file, public_dir / "ca"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    server = FaultyAuthServer({CLIENT_ID: CLIENT_SECRET}, ttl=1000, now=time.time)
    await server.start(tls=ca.server_context())
    try:
        sinks, secret = public_dir / "out", public_dir / "client.secret"
        sinks.mkdir(mode=0o700)
        secret.write_text(secret_file.read_text())
        secret.chmod(0o600)
        config = public_dir / "config.toml"
        config.write_text(
            '[daemon]\nlisten = ""\n'
            + profile_toml("main", server, secret, [{"path": str(sinks / "t.jwt")}], ca_file=str(ca.ca_file))
        )
        config.chmod(0o600)
        for path in (sinks, secret, config):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        argv = as_user(nobody.pw_uid, nobody.pw_gid, sys.executable, "-m", "edge_token", "once", "-c", str(config))
        code, _out, err = await run_child(*argv)
        assert code == 0, err.decode()
        assert (sinks / "t.jwt").read_text() == server.issued[-1]
    finally:
        await server.stop()


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(' \t\n\r[]{}:,"0123.e-tru\\fals', max_size=24)
    | st.builds(
        lambda v, a, b: a + json.dumps(v) + b,
        json_values,
        st.sampled_from(["", " ", "\n\t", "x", "1", " {}"]),
        st.sampled_from(["", " \r\n", "x", " 1", ",", "]"]),
    )
)
def test_strict_json_reads_any_text_as_json_does_or_names_why_not(text: str) -> None:
    """Property: for any text, the strict parse (the decoder's scanner called directly, whitespace skipped around
    it) answers what `json.loads` answers, or refuses what it refuses with its reason ("Expecting value", "Extra
    data", ...); beyond it, only what strictjson refuses on its own (a repeated name, nesting too deep)."""
    try:
        expected: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        with pytest.raises(ValueError, match=re.escape(f"invalid JSON syntax ({exc.msg})")):
            strictjson.loads(text)
        return
    try:
        assert strictjson.loads(text) == expected
    except strictjson.JsonDefect as exc:
        assert "twice" in str(exc) or "nested" in str(exc), exc
