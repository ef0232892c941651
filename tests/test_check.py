"""`check` is the gate (DESIGN invariant 7): for any combination of broken start-up inputs, `check` reports
exactly the broken keys, and each part of the daemon that meets one of them at run time fails on it — and on
nothing else.

Property (Hypothesis over every subset of FAULTS): reported(config) == {key of each injected fault}, and for each
fault kind, the daemon's own operation (secret read, atomic sink write, on_update hook, HTTP listener, store TLS
context) fails if and only if that fault was injected. So check has no false alarms and no blind spots, judged by
the code `run` executes, not by a second opinion.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import socket
import tempfile
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from edge_token.config import load_config
from edge_token.core.errors import ConfigError, EdgeTokenError
from edge_token.core.settings import Config
from edge_token.observe.hooks import run_on_update
from edge_token.observe.httpserver import HealthSource, start_http
from edge_token.observe.metrics import Metrics
from edge_token.preflight import Problem, preflight
from edge_token.secrets import read_secret
from edge_token.sinks.atomicfile import write_atomic
from edge_token.sinks.storehttp import trust

# fault -> the key path check must name
FAULTS = {
    "secret missing": "profiles.p.client_secret_file",
    "secret empty": "profiles.p.client_secret_file",
    "sink directory missing": "profiles.p.sinks[0].path",
    "sink directory is a file": "profiles.p.sinks[0].path",
    "sink path is a directory": "profiles.p.sinks[0].path",
    "sink path is a symlink": "profiles.p.sinks[0].path",
    "sink directory writable by others": "profiles.p.sinks[0].path",
    "hook not executable": "profiles.p.sinks[0].on_update",
    "hook missing": "profiles.p.sinks[0].on_update",
    "listen in use": "daemon.listen",
    "store CA not PEM": "profiles.p.sinks[1].ca_file",
}
EXCLUSIVE = [  # faults of the same input: at most one of each group at a time
    {"secret missing", "secret empty"},
    {
        "sink directory missing",
        "sink directory is a file",
        "sink path is a directory",
        "sink path is a symlink",
        "sink directory writable by others",
    },
    {"hook not executable", "hook missing"},
]


@st.composite
def fault_sets(draw: st.DrawFn) -> frozenset[str]:
    chosen = set(draw(st.sets(st.sampled_from(sorted(FAULTS)))))
    for group in EXCLUSIVE:
        extra = sorted(chosen & group)[1:]
        chosen -= set(extra)
    return frozenset(chosen)


def build(root: Path, faults: frozenset[str], busy_port: int, free_port: int) -> Config:
    """A config whose inputs are broken exactly as `faults` says."""
    secret = root / "client.secret"
    if "secret missing" not in faults:
        secret.write_text("\n" if "secret empty" in faults else "s3cret\n")
        secret.chmod(0o600)
    sink_dir = root / "tokens"
    if "sink directory is a file" in faults:
        sink_dir.write_text("not a directory")
    elif "sink directory missing" not in faults:
        sink_dir.mkdir()
        sink_dir.chmod(0o777 if "sink directory writable by others" in faults else 0o700)
    target = sink_dir / "t.jwt"
    if "sink path is a directory" in faults:
        target.mkdir()
    if "sink path is a symlink" in faults:
        target.symlink_to(root / "elsewhere.jwt")
    hook = root / "hook.sh"
    if "hook missing" not in faults:
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o644 if "hook not executable" in faults else 0o755)
    ca = root / "ca.pem"
    ca.write_text("garbage" if "store CA not PEM" in faults else _system_ca())
    port = busy_port if "listen in use" in faults else free_port
    config = root / "config.toml"
    config.write_text(f"""[daemon]
listen = "127.0.0.1:{port}"
[profiles.p]
client_id = "c"
client_secret_file = "{secret}"
[[profiles.p.sinks]]
path = "{target}"
on_update = ["{hook}"]
[[profiles.p.sinks]]
type = "vault_kv"
address = "https://127.0.0.1:1"
path = "x/y"
token_env = "VAULT_TOKEN"
ca_file = "{ca}"
""")
    config.chmod(0o600)
    return load_config(config, environ={})


@functools.cache
def _system_ca() -> str:
    """One small self-signed CA certificate in PEM (any valid bundle will do)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-token test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def runtime_failures(config: Config) -> set[str]:
    """Which inputs the daemon's own code fails on (each operation as `run` performs it)."""
    profile = config.profiles["p"]
    file_sink, store_sink = profile.sinks
    failed: set[str] = set()
    try:
        read_secret(profile.secret, {})
    except ConfigError:
        failed.add("profiles.p.client_secret_file")
    assert file_sink.path is not None
    try:
        write_atomic(file_sink.path, b"a.b.c", file_sink.mode)
    except (EdgeTokenError, OSError):
        failed.add("profiles.p.sinks[0].path")
    status = asyncio.run(run_on_update(file_sink, "p", {"PATH": "/usr/bin:/bin"}, structlog.get_logger("t")))
    if status != 0:
        failed.add("profiles.p.sinks[0].on_update")
    assert store_sink.store is not None
    try:
        trust(store_sink.store.ca_file, "store")
    except EdgeTokenError:
        failed.add("profiles.p.sinks[1].ca_file")
    if not asyncio.run(_listens(config.daemon.listen)):
        failed.add("daemon.listen")
    return failed


async def _listens(listen: str) -> bool:
    source = HealthSource(list, lambda: True, lambda body: body)
    try:
        runner, _ = await start_http(listen, Metrics(CollectorRegistry()), source)
    except ConfigError:
        return False
    await runner.cleanup()
    return True


def _ports() -> tuple[socket.socket, int]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))  # bound, not listening: a connect is refused at once (check's /status probe)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    return busy, free


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=fault_sets())
def test_check_reports_exactly_what_run_fails_on(faults: frozenset[str]) -> None:
    """check's problems are exactly the injected faults' keys, and `run`'s own operations fail exactly there."""
    busy, free = _ports()
    try:
        with tempfile.TemporaryDirectory() as directory:
            config = build(Path(directory), faults, busy.getsockname()[1], free)
            found = preflight(config, {"VAULT_TOKEN": "hvs.x"})
            reported = {problem.where.split(": ", 1)[1] for problem in found if isinstance(problem, Problem)}
            expected = {FAULTS[fault] for fault in faults}
            assert reported == expected, [str(p) for p in found]
            assert not list(Path(directory).rglob("*.edge-token-tmp")), "the probe file was left behind"
            assert runtime_failures(config) == expected
    finally:
        busy.close()
