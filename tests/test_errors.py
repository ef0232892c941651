"""Every documented error, through the real command: the exit code, what is wrong (the file, key or URL) and what
to do, and never a library's internals.

One table, one real child process per row, real files, real loopback servers (the bundled auth server, a
closed port, a TLS server with a certificate nobody trusts). A row is (command, expected sysexits code, phrases
that must appear on stderr, phrases that must not).
"""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cliproc import edge_token
from conftest import profile_toml
from faultyauth import Fault, FaultyAuthServer

pytestmark = pytest.mark.usefixtures("live_auth")

INTERNALS = ("ssl:default", "ClientConnectorError", "Connect call failed", "Traceback", "TOMLDecodeError", "Errno")


@dataclass
class Env:
    """What a row may build on: a directory, the auth server, a working secret file, a closed port, a TLS URL."""

    tmp: Path
    auth: FaultyAuthServer
    secret: Path
    closed_port: int
    tls_url: str
    held: list[socket.socket] = field(default_factory=list)

    def config(self, sinks: list[dict[str, Any]] | None = None, daemon: str = 'listen = ""', **settings: Any) -> str:
        """A one-profile config ("main") pointing at the auth server, with overrides; returns its path."""
        sinks = sinks if sinks is not None else [{"path": str(self.tmp / "token.jwt")}]
        path = self.tmp / "config.toml"
        body = profile_toml("main", self.auth, self.secret, sinks, **settings)
        body = "".join(line for line in body.splitlines(True) if not line.endswith(' = "None"\n'))  # key=None: unset
        path.write_text(f'[daemon]\nlog_format = "json"\n{daemon}\n' + body)
        path.chmod(0o600)
        return str(path)

    def raw(self, text: str) -> str:
        path = self.tmp / "raw.toml"
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    def file(self, name: str, text: str, mode: int = 0o600) -> str:
        path = self.tmp / name
        path.write_text(text)
        path.chmod(mode)
        return str(path)

    def busy_port(self) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self.held.append(sock)
        return int(sock.getsockname()[1])


VALID = '[profiles.main]\nclient_id = "a"\nclient_secret_file = "s"\n[[profiles.main.sinks]]\npath = "t.jwt"\n'


def _once(e: Env, **settings: Any) -> list[str]:
    return ["once", "--timeout", "0", "-c", e.config(**settings)]


def _check(e: Env, **settings: Any) -> list[str]:
    return ["check", "-c", e.config(**settings)]


Build = Callable[[Env], list[str]]
ROWS: dict[str, tuple[Build, int, tuple[str, ...]]] = {
    # ---- configuration (78): the file, the key path, the fix -------------------------------------------------
    "config file missing": (lambda e: ["check", "-c", str(e.tmp / "nope.toml")], 78,
                            ("nope.toml", "cannot read the config file", "No such file", "EDGE_TOKEN_CONFIG")),
    "TOML: unquoted octal mode": (lambda e: ["check", "-c", e.raw(VALID + "mode = 0600\n")], 78,
                                  ("line 6", "'mode = 0600'", 'quote the mode, mode = "0600"')),
    "TOML: unquoted string": (lambda e: ["check", "-c", e.raw(VALID + "format = json\n")], 78,
                              ("line 6", 'strings must be quoted: format = "json"')),
    "TOML: a key twice": (lambda e: ["check", "-c", e.raw(VALID + 'path = "u.jwt"\n')], 78,
                          ("line 6", "may appear once")),
    "TOML: unclosed list": (lambda e: ["check", "-c", e.raw(VALID + 'on_update = ["/bin/true",\n')], 78,
                            ("end of file", "close the list")),
    "unknown key: nearest suggested": (lambda e: _check(e, audiance="x"), 78,
                                       ("unknown key 'profiles.main.audiance'", "did you mean 'audience'?")),
    "unknown sink key: nearest suggested": (
        lambda e: _check(e, sinks=[{"path": str(e.tmp / "t.jwt"), "fromat": "json"}]), 78,
        ("profiles.main.sinks[0].fromat", "did you mean 'format'?")),
    "unknown profile": (lambda e: ["once", "--profile", "nope", "-c", e.config()], 78, ("no profile 'nope'", "main")),
    "secret file missing": (lambda e: _check(e, client_secret_file=str(e.tmp / "gone.secret")), 78,
                            ("profiles.main.client_secret_file", "gone.secret", "No such file", "create it")),
    "secret file empty": (lambda e: _check(e, client_secret_file=e.file("empty.secret", "\n")), 78,
                          ("profiles.main.client_secret_file", "is empty")),
    "secret variable unset": (lambda e: _check(e, client_secret_env="EDGE_TEST_NEVER_SET", client_secret_file=None),
                              78, ("profiles.main.client_secret_env", "EDGE_TEST_NEVER_SET is not set",
                                   "set it in the service's environment")),
    "hook not executable": (lambda e: _check(e, sinks=[{"path": str(e.tmp / "t.jwt"),
                                                        "on_update": [e.file("hook.sh", "#!/bin/sh\n", 0o644)]}]),
                            78, ("profiles.main.sinks[0].on_update", "is not executable", "chmod +x")),
    "hook not found": (lambda e: _check(e, sinks=[{"path": str(e.tmp / "t.jwt"), "on_update": ["no-such-prog-x"]}]),
                       78, ("profiles.main.sinks[0].on_update", "not found in PATH", "absolute path")),
    "listen address in use": (lambda e: _check(e, daemon=f'listen = "127.0.0.1:{e.busy_port()}"'), 78,
                              ("daemon.listen", "already in use", "choose another port")),
    "store CA file not PEM": (
        lambda e: _check(e, sinks=[{"type": "vault_kv", "address": "https://127.0.0.1:1", "path": "x/y",
                                    "token_file": e.file("vt", "hvs.x"), "ca_file": e.file("ca.pem", "nope")}]),
        73, ("profiles.main.sinks[0].ca_file", "PEM CA bundle", "fix ca_file")),
    "store token file missing": (
        lambda e: _check(e, sinks=[{"type": "kubernetes_secret", "secret_name": "t", "api_url": "https://127.0.0.1:1",
                                    "namespace": "apps", "token_file": str(e.tmp / "sa-token")}]),
        73, ("profiles.main.sinks[0].token_file", "cannot read the service-account token", "fix the path")),
    "store outside a cluster without api_url": (
        lambda e: _check(e, sinks=[{"type": "kubernetes_secret", "secret_name": "t", "namespace": "apps",
                                    "token_file": e.file("sa", "x")}]),
        73, ("profiles.main.sinks[0].api_url", "not running in a cluster", "set api_url")),
    # ---- sinks (73) ----------------------------------------------------------------------------------------
    "sink directory missing (check)": (lambda e: _check(e, sinks=[{"path": str(e.tmp / "no" / "t.jwt")}]), 73,
                                       ("profiles.main.sinks[0].path", "No such file", "create it")),
    "sink path is a directory (check)": (lambda e: _check(e, sinks=[{"path": str(e.tmp)}]), 73,
                                         ("profiles.main.sinks[0].path", "is a directory")),
    "sink directory missing (once)": (lambda e: _once(e, sinks=[{"path": str(e.tmp / "no" / "t.jwt")}]), 73,
                                      ("profile main", "cannot write", "create it")),
    # ---- input files (66) and verification (65) -------------------------------------------------------------
    "inspect: file missing": (lambda e: ["inspect", str(e.tmp / "missing.jwt")], 66,
                              ("cannot read", "missing.jwt", "No such file", "- for stdin")),
    "inspect: no JWT in the file": (lambda e: ["inspect", e.file("x.jwt", "hello")], 65, ("no JWT found",)),
    "token fails verification (issuer)": (lambda e: _once(e, issuer="https://other.example/"), 65,
                                          ("profile main", "issuer")),
    # ---- the provider: unavailable (69), answered nonsense (76), refused us (77) ----------------------------
    "token_url: connection refused": (lambda e: _once(e, token_url=f"http://127.0.0.1:{e.closed_port}/oauth/token"),
                                      69, ("http://127.0.0.1:{port}/oauth/token", "connection refused",
                                           "check token_url")),
    "token_url: name does not resolve": (lambda e: _once(e, token_url="https://edge-token-test.invalid/oauth/token"),
                                         69, ("edge-token-test.invalid", "does not resolve", "check token_url")),
    "token_url: untrusted TLS certificate": (lambda e: _once(e, token_url=e.tls_url), 69,
                                             ("is not trusted", "check token_url", "CA certificates")),
    "token_url: no answer in time": (lambda e: _slow(e), 69,
                                     ("did not answer within 0.3s", "timeout_seconds", "check token_url")),
    "token_url: 404": (lambda e: _once(e, token_url=e.auth.base_url + "/no/such/path"), 76,
                       ("answered 404", "check token_url")),
    "credentials rejected": (lambda e: _once(e, client_secret_file=e.file("wrong.secret", "wrong")), 77,
                             ("credentials rejected", "check client_id, the client secret and audience")),
    "jwks_url: connection refused": (lambda e: _once(e, jwks_url=f"http://127.0.0.1:{e.closed_port}/jwks.json"), 69,
                                     ("http://127.0.0.1:{port}/jwks.json", "connection refused", "check jwks_url")),
    "jwks_url: 404": (lambda e: _once(e, jwks_url=e.auth.base_url + "/no/jwks.json"), 76,
                      ("/no/jwks.json answered HTTP 404", "not a key set", "check jwks_url")),
    "jwks_url: an HTML page": (lambda e: _jwks_fault(e, Fault(200, b"<html>login</html>")), 76,
                               ("is an HTML page", "check jwks_url")),
    "jwks_url: JSON without keys": (lambda e: _jwks_fault(e, Fault(200, {"issuer": "x"})), 76,
                                    ('"keys" list', "check jwks_url")),
    "jwks_url: 503": (lambda e: _jwks_fault(e, Fault(503, b"busy")), 69, ("answered HTTP 503", "will retry")),
}  # fmt: skip


def _jwks_fault(e: Env, fault: Fault) -> list[str]:
    e.auth.jwks_faults.extend([fault] * 3)  # the fetch and its one unknown-kid refetch both see it
    return _once(e)


def _slow(e: Env) -> list[str]:
    e.auth.token_faults.append(Fault(200, {}, delay=3.0))
    return _once(e, timeout_seconds=0.3)


async def _empty_answer(request: web.Request) -> web.Response:
    return web.json_response({})


@pytest.fixture
async def untrusted_tls(tmp_path: Path) -> AsyncIterator[str]:
    """An HTTPS server on loopback whose self-signed certificate no CA vouches for."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.pem", tmp_path / "tls.key")
    app = web.Application()
    app.router.add_post("/oauth/token", _empty_answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/oauth/token"
    await runner.cleanup()


@pytest.mark.parametrize("row", list(ROWS))
async def test_every_error_says_what_and_what_to_do(
    row: str, tmp_path: Path, auth: FaultyAuthServer, secret_file: Path, untrusted_tls: str
) -> None:
    """Each documented failure: its sysexits code, the key/file/URL and the fix on stderr, no library internals,
    no secret."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = Env(tmp_path, auth, secret_file, closed_port, untrusted_tls)
    build, expected_code, phrases = ROWS[row]
    try:
        code, _out, err = await edge_token(*build(env))
    finally:
        for sock in env.held:
            sock.close()
    for phrase in phrases:
        assert phrase.replace("{port}", str(closed_port)) in err, f"{row}: {phrase!r} missing from {err!r}"
    for internal in INTERNALS:
        assert internal not in err, f"{row}: {internal!r} in {err!r}"
    assert secret_file.read_text().strip() not in err
    assert code == expected_code, err
