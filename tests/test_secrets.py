"""Secrets stay secret: every encoding scrubbed everywhere, trusted config files, a non-dumpable daemon, local-auth.

The echo tests use the bundled auth server (a queued `Fault(echo=...)` answers with whatever the callback makes
of the real request) and the fake stores; the leak search (`leakscan.leaks`) decodes what it reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import CLIENT_SECRET, profile_toml, run_child
from daemonproc import DaemonProcess
from edge_token import config as config_module
from edge_token.config.trust import listen_exposure
from edge_token.core.errors import ConfigError
from edge_token.core.scrub import JWT, MAX_SECRETS, Scrubber
from edge_token.core.settings import SecretSource
from edge_token.net import http
from edge_token.observe import logs
from edge_token.secrets import read_secret
from fakestores import FakeEtcdEcho, FakeKubernetes, FakeVault
from faultyauth import Fault, FaultyAuthServer
from leakscan import ENCODINGS, Echoes, echoing_provider, leaks
from unprivileged import as_user, secret_in_environment

SECRET_CHARS = string.ascii_letters + string.digits + "-._~:/+%= \"\\&<>?#@!$'()*,;"
ID_CHARS = string.ascii_letters + string.digits + "-._:@"
secrets_st = st.text(SECRET_CHARS, min_size=8, max_size=48).filter(lambda s: s.strip() == s)
ids_st = st.text(ID_CHARS, min_size=1, max_size=30)
context_st = st.text(string.printable, max_size=40)


def through_log_redactor(secret: str, text: str) -> str:
    redactor = logs.Redactor()
    redactor.add_secret(secret)
    return str(redactor(None, "info", {"event": "token.renewal_failed", "message": text})["message"])


def through_sanitize(secret: str, text: str) -> str:
    return http.sanitize(text, (secret,), limit=100_000)


def through_scrubber(secret: str, text: str) -> str:
    scrubber = Scrubber()
    scrubber.register(secret)
    return scrubber.scrub_text(text)


CONSUMERS = {"log redactor": through_log_redactor, "http.sanitize": through_sanitize, "Scrubber": through_scrubber}


# ---- the scrubber, as a property ----------------------------------------------------------------------------
@pytest.mark.parametrize("consumer", CONSUMERS.values(), ids=CONSUMERS.keys())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=secrets_st,
    client_id=ids_st,
    encoding=st.sampled_from(sorted(ENCODINGS)),
    before=context_st,
    after=context_st,
    cut=st.integers(0, 5),
)
def test_every_encoding_of_a_secret_is_cut(
    consumer: object, secret: str, client_id: str, encoding: str, before: str, after: str, cut: int
) -> None:
    """Whatever encoding a server echoes our secret in, and whatever surrounds it (text, or more of a base64
    blob starting at any of the three byte alignments), no decoding of the scrubbed text shows the secret."""
    assert callable(consumer)
    echoed = ENCODINGS[encoding](client_id, secret)
    text = f"{before}invalid_client: {echoed}{after}"
    out = consumer(secret, text)
    assert leaks(out, [secret]) == [], (encoding, text, out)
    # the secret inside a larger base64 blob, `cut` bytes into it: every alignment
    blob = __import__("base64").b64encode((before[:cut] + echoed + after).encode()).decode()
    assert leaks(consumer(secret, f"said {blob} ok"), [secret]) == [], (encoding, blob)


@settings(max_examples=200, deadline=None)
@given(text=st.text(string.printable, max_size=300), seed=st.integers(0, 2**32))
def test_text_without_secrets_is_left_alone(text: str, seed: int) -> None:
    """Precision: with unrelated secrets registered, ordinary text (no JWT shape) passes unchanged."""
    assume(JWT.search(text) is None)
    rng = random.Random(seed)
    scrubber = Scrubber()
    for _ in range(5):
        scrubber.register("".join(rng.choice(string.ascii_letters + string.digits) for _ in range(24)))
    assert scrubber.scrub_text(text) == text


def test_realistic_messages_are_left_alone() -> None:
    """The daemon's own messages, with the test secret registered, are not mangled."""
    scrubber = Scrubber()
    scrubber.register("s3cret-a-7f9c2e1d")
    for message in (
        "credentials rejected by 127.0.0.1:8400 (401 access_denied: Unauthorized); check client_id, the client "
        "secret and audience",
        "vault_kv:secret/edge-token/production: cannot write: permission denied: the Vault policy needs create",
        "file:/run/edge-token/production.jwt: cannot write: [Errno 28] No space left on device",
        "token endpoint auth.sitecorecloud.io did not answer within 10s",
    ):
        assert scrubber.scrub_text(message) == message


def test_registry_is_bounded_and_keeps_the_recent_secrets() -> None:
    """Rotating credentials (Vault client tokens) cannot grow the registry forever; a re-used one stays."""
    scrubber = Scrubber()
    scrubber.register("client-secret-kept")
    for index in range(MAX_SECRETS + 10):
        scrubber.register(f"hvs.rotating-token-{index:04d}")
        scrubber.register("client-secret-kept")  # re-read on every attempt
    assert "client-secret-kept" in scrubber and f"hvs.rotating-token-{MAX_SECRETS + 9:04d}" in scrubber
    assert "hvs.rotating-token-0000" not in scrubber


def test_structures_are_scrubbed_by_value_not_by_key() -> None:
    """/status bodies: a sink named kubernetes_secret:… is a name, kept; a secret anywhere in a value is cut."""
    redactor = logs.Redactor(Scrubber())
    redactor.add_secret("hvs.vault-token-xyz")
    body = {"profiles": {"p": {"sinks": {"kubernetes_secret:apps/app#token": {"ok": True, "error": None}}}},
            "x": ["said aHZzLnZhdWx0LXRva2VuLXh5eg=="]}  # fmt: skip
    scrubbed = redactor.scrub(body)
    assert scrubbed["profiles"]["p"]["sinks"] == {"kubernetes_secret:apps/app#token": {"ok": True, "error": None}}
    assert leaks(json.dumps(scrubbed), ["hvs.vault-token-xyz"]) == []


# ---- trusted config files -----------------------------------------------------------------------------------
NOBODY = 65534
MINIMAL = """
[profiles.production]
client_id = "abc"
client_secret_file = "/etc/edge-token/production.secret"
[[profiles.production.sinks]]
path = "/run/edge-token/production.jwt"
"""


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A root-owned 0755 directory for config files (tmp_path itself is root's 0700)."""
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755)
    return directory


def write_config(directory: Path, mode: int = 0o600, text: str = MINIMAL) -> Path:
    path = directory / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_token", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o660])
def test_a_config_file_others_can_write_is_refused(confdir: Path, mode: int) -> None:
    """A group/other-writable config file is refused with exit 78, naming the file and the chmod that fixes it
    (anyone able to edit it could add an on_update command that runs as the daemon)."""
    path = write_config(confdir, mode)
    with pytest.raises(ConfigError) as caught:
        config_module.load_config(path, environ={})
    message = str(caught.value)
    assert str(path) in message and "writable by group or others" in message and f"chmod go-w {path}" in message
    done = cli("check", "-c", str(path))
    assert done.returncode == 78 and "writable by group or others" in done.stderr


def test_a_config_file_owned_by_another_user_is_refused(confdir: Path) -> None:
    """A config file owned by another (non-root) user is refused: they could chmod it and edit it."""
    path = write_config(confdir, 0o644)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=rf"{path}: refusing the config file: it is owned by uid {NOBODY}"):
        config_module.load_config(path, environ={})
    os.chown(path, 0, NOBODY)  # root-owned, group nogroup, not group-writable: fine
    assert config_module.load_config(path, environ={}).profiles


@pytest.mark.parametrize(
    ("mode", "owner", "refused"),
    [(0o777, 0, True), (0o775, 0, True), (0o1777, 0, False), (0o755, NOBODY, True), (0o755, 0, False)],
)
def test_a_directory_above_the_config_others_control_is_refused(
    confdir: Path, mode: int, owner: int, refused: bool
) -> None:
    """A writable directory (without the sticky bit) or one owned by another user lets them swap the file."""
    inner = confdir / "edge-token"
    inner.mkdir()
    path = write_config(inner)
    os.chown(inner, owner, 0)
    inner.chmod(mode)
    if not refused:
        assert config_module.load_config(path, environ={}).profiles
        return
    with pytest.raises(ConfigError, match=rf"{path}: refusing the config file: its directory {inner} ") as caught:
        config_module.load_config(path, environ={})
    assert f"chmod go-w {inner}" in str(caught.value)


def test_a_symlink_into_an_untrusted_directory_is_refused(confdir: Path, tmp_path: Path) -> None:
    """The path after symlinks is checked too: a trusted link to a file in a writable directory is refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    target = write_config(shared)
    shared.chmod(0o777)
    link = confdir / "config.toml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=f"its directory {shared} is writable by group or others"):
        config_module.load_config(link, environ={})


@pytest.mark.parametrize(
    ("file_mode", "dir_mode", "refused"),
    [(0o644, 0o755, True), (0o604, 0o711, True), (0o644, 0o700, False), (0o640, 0o755, False), (0o600, 0o755, False)],
)
def test_a_secret_file_every_user_can_read_is_refused(
    public_dir: Path, file_mode: int, dir_mode: int, refused: bool
) -> None:
    """Refused only when every local user can really read it (o+r, and o+x on every directory above): a 0644
    file in a 0700 directory (a credentials directory) or a 0640 group-shared file is fine."""
    secrets_dir = public_dir / "secrets"
    secrets_dir.mkdir()
    secret = secrets_dir / "client.secret"
    secret.write_text("a-real-secret-value\n")
    secret.chmod(file_mode)
    secrets_dir.chmod(dir_mode)
    source = SecretSource("file", str(secret))
    if not refused:
        assert read_secret(source, {}) == "a-real-secret-value"
        return
    with pytest.raises(ConfigError, match=rf"client secret: {secret} is readable by every local user") as caught:
        read_secret(source, {})
    assert f"chmod o-r {secret}" in str(caught.value)


# ---- listen ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("listen", "exposed"),
    [("127.0.0.1:9464", False), ("[::1]:9464", False), ("localhost:9464", False), ("", False),
     ("0.0.0.0:9464", True), ("[::]:9464", True), ("10.1.2.3:9464", True), ("monitor.example:9464", True)],
)  # fmt: skip
def test_a_non_loopback_listen_is_named_as_an_exposure(listen: str, exposed: bool) -> None:
    """Loopback is quiet; anything else gets a warning naming /status and what it reveals."""
    warning = listen_exposure(listen)
    if not exposed:
        assert warning is None
        return
    assert warning is not None and "/status" in warning and repr(listen) in warning and "127.0.0.1" in warning


# ---- local-auth -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_local_auth_refuses_an_empty_secret_file(tmp_path: Path, content: str) -> None:
    """An empty or whitespace-only secret file stops local-auth with exit 78 and says why, instead of serving
    tokens to any client that sends no secret."""
    path = tmp_path / "client.secret"
    path.write_text(content)
    try:
        done = cli("local-auth", "--port", "0", "--client-secret-file", str(path), timeout=15)
    except subprocess.TimeoutExpired:  # subprocess.run killed it: it was serving
        pytest.fail("local-auth started serving with an empty client secret")
    assert done.returncode == 78, done
    assert f"the client secret file {path} is empty" in done.stderr and "issuer" not in done.stdout


def test_local_auth_server_refuses_empty_secrets() -> None:
    """The Python API refuses an empty or blank client secret as well."""
    for blank in ("", "  "):
        with pytest.raises(ValueError, match="empty secret"):
            FaultyAuthServer({"client": blank})


def test_local_auth_generates_a_missing_secret_file(tmp_path: Path) -> None:
    """A missing file is still created with a random secret, mode 0600 (as before)."""
    from edge_token.localauth import load_client_secret

    path = tmp_path / "new.secret"
    secret = load_client_secret(path)
    assert len(secret) >= 32 and path.stat().st_mode & 0o777 == 0o600 and path.read_text() == secret


def run_as_nobody(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


async def read_environ_as_nobody(pid: int) -> tuple[int, bytes, bytes]:
    reader = await asyncio.create_subprocess_exec(
        *run_as_nobody(sys.executable, "-c", f"import sys; sys.stdout.buffer.write(open('/proc/{pid}/environ', 'rb').read())"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(reader.communicate(), 20)
    assert reader.returncode is not None
    return reader.returncode, out, err


# ---- a non-dumpable daemon --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_same_uid_processes_cannot_read_the_daemons_environment(
    auth: FaultyAuthServer, public_dir: Path, daemons: list[DaemonProcess]
) -> None:
    """The daemon (as nobody, secret in client_secret_env) is non-dumpable: another process of the same uid
    cannot read /proc/PID/environ. The control, a plain process of that uid with the same variable, can be
    read by the same reader: the test would see a leak if there were one."""
    config, env = secret_in_environment(public_dir, auth)
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    daemon.process = await asyncio.create_subprocess_exec(
        *as_user(NOBODY, NOBODY, sys.executable, "-m", "edge_token", "run", "-c", str(config)),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    daemon._reader = asyncio.create_task(daemon._read())
    control = await asyncio.create_subprocess_exec(*run_as_nobody("sleep", "60"), env=env)
    try:
        await daemon.wait_for("token.renewed")
        code, environ, err = await read_environ_as_nobody(control.pid)
        assert code == 0 and CLIENT_SECRET.encode() in environ, err  # the reader works, and would see it
        code, environ, err = await read_environ_as_nobody(daemon.process.pid)
        assert code != 0 and b"PermissionError" in err and CLIENT_SECRET.encode() not in environ
    finally:
        control.kill()
        await control.wait()
    assert await daemon.stop() == 0


# ---- echoes, end to end: the CLI ------------------------------------------------------------------------------
COMBOS = [(method, fmt) for method in ("client_secret_basic", "client_secret_post") for fmt in ("json", "form")]


def leaky_secret(index: int) -> str:
    """A secret whose encodings all differ from it: '/', '+', ':', '%', space, '&', '<', quotes, non-ASCII."""
    return f"S3cr/t+{index:02d}:p%q z&r<s>'\"é!{index}"


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """The real CLI as a child (asyncio: the in-process servers must keep answering while it runs)."""
    argv = (sys.executable, "-m", "edge_token", *args)
    code, out, err = await run_child(*argv, env={**os.environ, **(env or {})}, timeout=timeout)
    return code, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.usefixtures("live_auth")
async def test_once_and_check_never_print_a_secret_the_provider_echoes(auth: FaultyAuthServer, tmp_path: Path) -> None:
    """A provider quoting the client secret back in its error, in every encoding (one profile per encoding, all
    four auth method x body format combinations): `once`, `check --online` and `exec` (which cannot start its
    command) print and log none of them.
    Before the scrubber, the base64 (Basic) and percent-encoded forms reached stderr."""
    secrets: list[str] = []
    text = '[daemon]\nlog_format = "json"\n'
    for index in range(len(ENCODINGS)):
        secret, client = leaky_secret(index), f"client-{index}"
        secrets.append(secret)
        auth.clients[client] = secret
        secret_file = tmp_path / f"{index}.secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        method, fmt = COMBOS[index % len(COMBOS)]
        sinks = [{"path": str(tmp_path / f"{index}.jwt")}]
        text += profile_toml(f"p{index}", auth, secret_file, sinks, auth_method=method, request_format=fmt)
        text = text.replace('client_id = "client-a"', f'client_id = "{client}"')
    config = tmp_path / "config.toml"
    config.write_text(text)
    for command in (["once", "--timeout", "5"], ["check", "--online"], ["exec", "--", "true"]):
        echoes = Echoes()
        auth.token_faults.extend(Fault(401, echo=echoing_provider(echoes)) for _ in secrets)
        code, out, err = await run_cli(command[0], "-c", str(config), *command[1:])
        assert code == 77, (command, err[-2000:])
        assert sorted(echoes.used) == sorted(ENCODINGS)  # every encoding was served once
        assert "credentials rejected" in err and err.count("p1") >= 1
        assert leaks(out + err, secrets) == [], (command, [line for line in err.splitlines() if "p1" in line][:3])


@pytest.mark.usefixtures("live_auth")
async def test_store_credentials_echoed_back_are_never_printed(
    auth: FaultyAuthServer, tmp_path: Path, secret_file: Path
) -> None:
    """Vault (token and AppRole secret_id) and Kubernetes (service-account token) quoting the credential back
    in their errors, one encoding per sink: `once` prints and logs none of them (it exits 73)."""
    vault, kube, echoes = FakeVault(), FakeKubernetes(), Echoes()
    vault.echo = kube.echo = echoes
    vault.approles["role-1"] = "the-right-secret-id"
    await vault.start()
    await kube.start()
    vault_token, secret_id, sa_token = "hvs.CAESIJ/leaky+vault:token%1", "wrong/secret+id:%2 é", "sa-opaque/+:token%3"
    (tmp_path / "secret_id").write_text(secret_id)
    (tmp_path / "secret_id").chmod(0o600)
    (tmp_path / "sa-token").write_text(sa_token)
    sinks: list[dict[str, object]] = []
    for index in range(len(ENCODINGS) // 3 + 1):
        sinks.append({"type": "vault_kv", "address": vault.url, "path": f"app/{index}", "token_env": "LEAK_VAULT"})
        sinks.append({"type": "vault_kv", "address": vault.url, "path": f"role/{index}", "role_id": "role-1",
                      "secret_id_file": str(tmp_path / "secret_id")})  # fmt: skip
        sinks.append({"type": "kubernetes_secret", "secret_name": f"s{index}", "namespace": "apps",
                      "api_url": kube.url, "token_file": str(tmp_path / "sa-token")})  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nlog_format = "json"\n' + profile_toml("main", auth, secret_file, sinks))
    try:
        code, out, err = await run_cli("once", "--timeout", "5", "-c", str(config), env={"LEAK_VAULT": vault_token})
    finally:
        await vault.stop()
        await kube.stop()
    assert code == 73, err[-2000:]
    assert set(echoes.used) == set(ENCODINGS)
    assert leaks(out + err, [vault_token, secret_id, sa_token]) == [], err[-3000:]


# ---- the leak scan: every surface of a running daemon, and exec's child ----------------------------------------
DUMP = (
    "import json, os, sys\n"
    "record = {'env': dict(os.environ), 'argv': sys.argv, 'cmdline': open('/proc/self/cmdline').read()}\n"
    "open(sys.argv[1], 'a').write(json.dumps(record) + '\\n')\n"
)


async def http_get(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_nothing_a_running_daemon_emits_holds_a_secret_in_any_encoding(
    auth: FaultyAuthServer, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """One profile per encoding against a provider that echoes its secret in that encoding, Vault and
    Kubernetes sinks echoing their tokens, an etcd echoing the fleet password; then every profile renews and
    a hook runs. No log line, /metrics, /status, /readyz, /healthz, hook environment or hook command line holds
    any client secret, store token, etcd password or issued token."""
    vault, kube, etcd_echoes, store_echoes = FakeVault(), FakeKubernetes(), Echoes(), Echoes()
    vault.echo = kube.echo = store_echoes
    etcd = FakeEtcdEcho(etcd_echoes)
    for server in (vault, kube, etcd):
        await server.start()
    vault_token, sa_token, etcd_password = "hvs.CAES/leaky+vault:tok%en", "sa/opaque+token:%x", "etcd/pass+word:%é"
    (tmp_path / "sa-token").write_text(sa_token)
    (tmp_path / "etcd-password").write_text(etcd_password)
    (tmp_path / "etcd-password").chmod(0o600)
    hooks = tmp_path / "hooks.jsonl"
    text = (
        f'[daemon]\nlog_format = "json"\nlisten = "127.0.0.1:0"\n[fleet]\netcd_endpoints = ["{etcd.url}"]\n'
        f'username = "edge"\npassword_file = "{tmp_path / "etcd-password"}"\npoll_seconds = 0.3\n'
    )
    secrets, env = [vault_token, sa_token, etcd_password], {"LEAK_VAULT": vault_token}
    for index in range(len(ENCODINGS)):
        secret, client = leaky_secret(index), f"client-{index}"
        secrets.append(secret)
        auth.clients[client] = secret
        env[f"LEAK_SECRET_{index}"] = secret
        method, fmt = COMBOS[index % len(COMBOS)]
        sinks: list[dict[str, object]] = [
            {"path": str(tmp_path / f"{index}.jwt"), "on_update": [sys.executable, "-c", DUMP, str(hooks)]}
        ]
        if index == 0:
            sinks.append({"type": "vault_kv", "address": vault.url, "path": "app", "token_env": "LEAK_VAULT"})
            sinks.append({"type": "kubernetes_secret", "secret_name": "app", "namespace": "apps", "api_url": kube.url,
                          "token_file": str(tmp_path / "sa-token")})  # fmt: skip
        block = profile_toml(f"p{index}", auth, Path("/unused"), sinks, auth_method=method, request_format=fmt,
                             refresh_at=0.5, retry_max_seconds=1)  # fmt: skip
        text += block.replace('client_secret_file = "/unused"', f'client_secret_env = "LEAK_SECRET_{index}"').replace(
            'client_id = "client-a"', f'client_id = "{client}"'
        )
    config = tmp_path / "config.toml"
    config.write_text(text)
    echoes = Echoes()
    auth.token_faults.extend(Fault(401, echo=echoing_provider(echoes)) for _ in range(len(ENCODINGS)))
    try:
        daemon = await DaemonProcess(config, env=env).start()
        daemons.append(daemon)
        address = (await daemon.wait_for("http.listening"))["address"]
        await daemon.wait_for("token.renewal_failed", count=len(ENCODINGS), timeout=30)
        await daemon.wait_for("fleet.standalone")
        emitted = [await http_get(f"http://{address}{path}") for path in ("/metrics", "/status", "/readyz", "/healthz")]
        daemon.send(signal.SIGUSR1)  # past the long back-off of refused credentials: everyone renews, hooks run
        await daemon.wait_for("token.renewed", count=len(ENCODINGS), timeout=30)
        await daemon.wait_for("sink.write_failed", count=2)
        emitted += [await http_get(f"http://{address}{path}") for path in ("/metrics", "/status", "/readyz")]
        assert await daemon.stop() == 0
    finally:
        for server in (vault, kube, etcd):
            await server.stop()
    assert sorted(echoes.used) == sorted(ENCODINGS) and store_echoes.used and etcd_echoes.used
    hook_records = hooks.read_text().splitlines()
    assert len(hook_records) >= len(ENCODINGS)
    haystack = "\n".join([*emitted, *daemon.raw, *hook_records])
    assert leaks(haystack, secrets) == []
    for token in auth.issued:
        assert token not in haystack and token.split(".")[2] not in haystack
    status = json.loads(emitted[1])["profiles"]["p1"]
    assert status["last_error"] == {"class": "rejected", "reason": None}  # no provider text in /status


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
@pytest.mark.parametrize("store", ["none", "vault"])
async def test_exec_child_environment_and_command_line_hold_no_secret(
    auth: FaultyAuthServer, tmp_path: Path, store: str
) -> None:
    """`edge-token exec`: the child's environment and command line hold no client secret and no store token."""
    vault = FakeVault()
    vault_token = "hvs.CAES/exec+vault:tok%en"
    vault.tokens[vault_token] = 10**9
    await vault.start()
    sinks: list[dict[str, object]] = [{"path": str(tmp_path / "t.jwt")}]
    if store == "vault":
        sinks.append({"type": "vault_kv", "address": vault.url, "path": "app", "token_env": "LEAK_VAULT"})
    block = profile_toml("main", auth, Path("/unused"), sinks)
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = ""\n'
        + block.replace('client_secret_file = "/unused"', 'client_secret_env = "LEAK_CLIENT_SECRET"')
    )
    record = tmp_path / "child.jsonl"
    env = {"LEAK_CLIENT_SECRET": CLIENT_SECRET, **({"LEAK_VAULT": vault_token} if store == "vault" else {})}
    try:
        code, out, err = await run_cli(
            "exec", "-c", str(config), "--", sys.executable, "-c", DUMP, str(record), env=env, timeout=30
        )
    finally:
        await vault.stop()
    assert code == 0, err[-2000:]
    assert leaks("\n".join([out, err, record.read_text()]), [CLIENT_SECRET, vault_token]) == []


@settings(max_examples=100, deadline=None)
@given(secret=secrets_st, encoding=st.sampled_from(sorted(ENCODINGS)), position=st.integers(100, 300))
def test_a_long_message_is_cut_without_leaving_part_of_a_secret(secret: str, encoding: str, position: int) -> None:
    """sanitize bounds its work on a 64 KiB error body and its output to `limit`, yet an encoded secret that
    straddles the limit leaves no prefix behind (scrubbed before the final cut)."""
    echoed = ENCODINGS[encoding]("client", secret)
    text = "x" * position + " " + echoed + " " + "y " * 32_000
    out = http.sanitize(text, (secret,), limit=200)
    assert len(out) <= 203 and leaks(out, [secret]) == []
    tail = out.removesuffix("...")
    forms = {ENCODINGS[name]("client", secret) for name in ("raw", "quote", "quote_plus", "json escaped", "base64")}
    partial = [tail[-k:] for k in range(4, 40) if any(form.startswith(tail[-k:]) for form in forms)]
    assert not partial, (encoding, out)


def test_an_on_update_program_others_can_change_is_refused(confdir: Path, tmp_path: Path) -> None:
    """An absolute on_update program owned by another user (or in a directory they can write) would run as the
    daemon: refused like a writable config file. A root-owned program in a root-owned directory is fine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(mode=0o755)
    program = bin_dir / "reload-app"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = MINIMAL + f'on_update = ["{program}", "now"]\n'
    assert config_module.load_config(write_config(confdir, text=text), environ={}).profiles
    os.chown(program, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=rf"profiles.production.sinks\[0\].on_update: {program}: refusing") as caught:
        config_module.load_config(write_config(confdir, text=text), environ={})
    assert f"uid {NOBODY}" in str(caught.value)
    os.chown(program, 0, 0)
    bin_dir.chmod(0o777)
    with pytest.raises(ConfigError, match=f"its directory {bin_dir} is writable by group or others"):
        config_module.load_config(write_config(confdir, text=text), environ={})


@pytest.mark.slow
@pytest.mark.usefixtures("live_auth")
async def test_a_daemon_listening_on_every_interface_warns(
    auth: FaultyAuthServer, tmp_path: Path, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    """listen = 0.0.0.0 starts, and logs one http.exposed warning naming the address and /status."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = "0.0.0.0:0"\n'
        + profile_toml("main", auth, secret_file, [{"path": str(tmp_path / "t.jwt")}])
    )
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    await daemon.wait_for("token.renewed")
    warning = await daemon.wait_for("http.exposed", timeout=2)
    assert "0.0.0.0" in warning["message"] and "/status" in warning["message"]
    assert await daemon.stop() == 0


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_exception_text_is_scrubbed_in_both_log_formats(log_format: str) -> None:
    """A traceback whose message carries an echoed secret (base64 here) is scrubbed in JSON and console logs:
    the console renderer must get the traceback as text the redactor has already seen."""
    import base64
    import io

    import structlog

    stream = io.StringIO()
    redactor = logs.configure(log_format, "info", stream)
    secret = "console/secret+value:1"
    redactor.add_secret(secret)
    try:
        raise RuntimeError("server said Basic " + base64.b64encode(f"id:{secret}".encode()).decode())
    except RuntimeError:
        structlog.get_logger("t").exception("job.failed")
    assert "RuntimeError" in stream.getvalue() and leaks(stream.getvalue(), [secret]) == [], stream.getvalue()


@settings(max_examples=100, deadline=None)
@given(secret=secrets_st, encoding=st.sampled_from(sorted(ENCODINGS)), cuts=st.lists(st.integers(0, 200), max_size=4))
def test_printed_lines_are_scrubbed_however_they_are_written(secret: str, encoding: str, cuts: list[int]) -> None:
    """The CLI's stdout/stderr wrapper: a line written in pieces (print writes text and newline apart) is
    scrubbed whole; a partial line is scrubbed on flush."""
    import io

    from edge_token.core.scrub import ScrubbingStream

    scrubber = Scrubber()
    scrubber.register(secret)
    target = io.StringIO()
    stream = ScrubbingStream(target, scrubber)
    line = f"edge-token: profile p: said {ENCODINGS[encoding]('client', secret)} to us\nand a tail {secret}"
    points = sorted({min(cut, len(line)) for cut in cuts})
    for start, end in zip([0, *points], [*points, len(line)], strict=True):
        stream.write(line[start:end])
    stream.flush()
    assert target.getvalue().count("\n") == 1 and leaks(target.getvalue(), [secret]) == []
