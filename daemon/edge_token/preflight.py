"""`edge-token check`: everything `run` would fail on at start, found before it starts (DESIGN invariant 7).

Loading the config already refuses a malformed file. What a valid file can still point at, and `run` would only
discover while running, is checked here with the same operations the daemon uses, as the user running the check
(`check --as USER` forks a child as that user; the shipped unit's `ExecStartPre=` already runs as the service
user, in the service's sandbox):

- each client secret (and store credential file) is readable, non-empty and not world-readable: `SecretSource.read`;
- each file sink's directory exists, is not one others may rename in, holds no non-regular file at the sink's
  path, and lets us create, chown and remove a file there, exactly as the atomic write does (a probe file with
  the atomic writer's temp name, removed at once; a leftover is cleaned at start). Outside a unit, a missing
  directory under /run, /var/lib... is only noted: systemd creates it (RuntimeDirectory=) when the unit starts;
- each TLS file (store `ca_file`) loads as a CA bundle, each store token file is readable;
- the listen address can be bound (or is held by the running daemon of this same config: a reload is fine);
- each `on_update` program exists and is executable, found the way the hook runner finds it;
- the process could make itself non-dumpable (`run` only warns: `check` is where a deployment gate stops on it).

Each problem names the key path and what to do, and carries the exit code `check` ends with.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_token.config.trust import parse_listen
from edge_token.core.errors import EX_CANTCREAT, EX_CONFIG, ConfigError, SinkError
from edge_token.core.settings import SA_DIR, Config, KubernetesSecretOptions, SecretSource, SinkConfig, VaultKvOptions
from edge_token.hardening import dumpable_warning
from edge_token.net.tls import client_context
from edge_token.observe.hooks import hook_environment
from edge_token.secrets import read_secret
from edge_token.sinks.atomicfile import check_directory, describe_os_error, not_regular, temp_name


@dataclass(frozen=True)
class Problem:
    """One thing `run` would fail on: where (file: key path), what is wrong and what to do, the exit code."""

    where: str
    message: str
    exit_code: int = EX_CONFIG

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class Note:
    """Something `check` could not judge here (said, not failed)."""

    where: str
    message: str


def preflight(
    config: Config, environ: Mapping[str, str], profiles: list[str] | None = None, *, dumpable: str | None = None
) -> list[Problem | Note]:
    """Every problem (and note) for the selected profiles, in config order: the process itself first (`dumpable`:
    why it could not make itself non-dumpable, hardening.py), then listen, then each profile."""
    found: list[Problem | Note] = [Problem("hardening.dumpable", dumpable_warning(dumpable))] if dumpable else []
    found += _listen(config)
    for name, profile in config.profiles.items():
        if profiles and name not in profiles:
            continue
        where = f"{config.path}: profiles.{name}"
        found += _secret(f"{where}.{_secret_key(profile.secret.kind)}", profile.secret, environ)
        for index, sink in enumerate(profile.sinks):
            found += _sink(f"{where}.sinks[{index}]", sink, environ)
    if config.fleet is not None and config.fleet.password is not None:
        found += _secret(f"{config.path}: fleet.password_file", config.fleet.password, environ, "etcd password")
    return found


def _secret_key(kind: str) -> str:
    return {"file": "client_secret_file", "env": "client_secret_env", "credential": "client_secret_credential"}.get(
        kind, "client_secret"
    )


def _secret(
    where: str, source: SecretSource, environ: Mapping[str, str], what: str = "client secret"
) -> Iterator[Problem | Note]:
    if source.kind == "credential" and not environ.get("CREDENTIALS_DIRECTORY"):
        # only systemd provides it (LoadCredential=); the unit's ExecStartPre= check sees it, a shell does not
        yield Note(where, f"credential {source.ref!r} not checked: $CREDENTIALS_DIRECTORY is set only under systemd "
                   "(the unit's ExecStartPre=edge-token check checks it)")  # fmt: skip
        return
    try:
        read_secret(source, environ, what)
    except ConfigError as exc:
        fix = {
            "file": "; create it (mode 0600, readable by the service user) or fix the path",
            "env": "; set it in the service's environment",
            "credential": "; check LoadCredential= in the unit",
        }.get(source.kind, "")
        text = str(exc)
        yield Problem(where, text + (fix if "cannot read" in text or "is not set" in text or "empty" in text else ""))


def _sink(where: str, sink: SinkConfig, environ: Mapping[str, str]) -> Iterator[Problem | Note]:
    if sink.path is not None:
        yield from _file_sink(where, sink, environ)
    if isinstance(sink.store, KubernetesSecretOptions):
        yield from _kubernetes(where, sink.store, environ)
    if isinstance(sink.store, VaultKvOptions):
        if sink.store.token is not None:
            key = "token_file" if sink.store.token.kind == "file" else "token_env"
            yield from _store_secret(f"{where}.{key}", sink.store.token, environ, "Vault token")
        if sink.store.secret_id is not None:
            yield from _store_secret(f"{where}.secret_id_file", sink.store.secret_id, environ, "Vault secret_id")
        yield from _ca_file(f"{where}.ca_file", sink.store.ca_file, explicit=True)
    if sink.on_update:
        yield from _program(f"{where}.on_update", sink, environ)


def _store_secret(where: str, source: SecretSource, environ: Mapping[str, str], what: str) -> Iterator[Problem]:
    """A store's credential: read as the sink will; at run time its failure is the sink's (73)."""
    for item in _secret(where, source, environ, what):
        if isinstance(item, Problem):
            yield Problem(item.where, item.message, EX_CANTCREAT)


def _kubernetes(where: str, store: KubernetesSecretOptions, environ: Mapping[str, str]) -> Iterator[Problem]:
    """What the Kubernetes sink reads before its first call: the API address, namespace, token and CA."""
    if store.api_url is None and not environ.get("KUBERNETES_SERVICE_HOST"):
        yield Problem(f"{where}.api_url", "not running in a cluster ($KUBERNETES_SERVICE_HOST unset); set api_url",
                      EX_CANTCREAT)  # fmt: skip
    if store.namespace is None:
        yield from _readable(f"{where}.namespace", SA_DIR / "namespace", "the pod's namespace file", False)
    yield from _readable(f"{where}.token_file", store.token_file, "the service-account token",
                         explicit=store.token_file != SA_DIR / "token")  # fmt: skip
    yield from _ca_file(f"{where}.ca_file", store.ca_file, explicit=store.ca_file != SA_DIR / "ca.crt")


def _file_sink(where: str, sink: SinkConfig, environ: Mapping[str, str]) -> Iterator[Problem | Note]:
    """Create, chown and remove a probe file in the sink's directory: what the atomic write will do."""
    if sink.path is None:
        return  # not a file sink: nothing to probe on disk
    path, directory = sink.path, sink.path.parent
    key = f"{where}.path"
    try:
        info = directory.stat()
    except OSError as exc:
        if exc.errno == errno.ENOENT and _systemd_creates(directory) and not environ.get("INVOCATION_ID"):
            yield Note(key, f"{directory} does not exist yet; fine if the unit creates it (RuntimeDirectory=, "
                       "StateDirectory=): the unit's ExecStartPre= check runs after that and checks it")  # fmt: skip
            return
        fix = "create it (systemd: RuntimeDirectory=/StateDirectory=) or fix path" if exc.errno == errno.ENOENT else ""
        yield Problem(key, f"directory {directory} of {path}: {exc.strerror}; {fix or 'fix path'}", EX_CANTCREAT)
        return
    if not stat.S_ISDIR(info.st_mode):
        yield Problem(key, f"{directory} (the directory of {path}) is not a directory; fix path", EX_CANTCREAT)
        return
    try:  # the same refusals as step 0 of the atomic write: a directory others may rename in, a non-regular target
        check_directory(directory, info)
        existing = os.lstat(path)
    except SinkError as exc:
        yield Problem(key, str(exc), EX_CANTCREAT)
        return
    except OSError:
        existing = None  # absent, or a directory we cannot search: the probe below says which
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        yield Problem(key, str(not_regular(path, existing)), EX_CANTCREAT)
        return
    probe = directory / temp_name(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, sink.mode)
    except OSError as exc:
        yield Problem(key, describe_os_error(exc, path) + _as_whom(), EX_CANTCREAT)
        return
    try:
        if sink.uid >= 0 or sink.gid >= 0:
            os.fchown(fd, sink.uid, sink.gid)
    except OSError as exc:
        yield Problem(f"{where}.owner", describe_os_error(exc, path) + "; remove owner/group from the sink or run "
                      "as root", EX_CANTCREAT)  # fmt: skip
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass  # a leftover probe has the atomic writer's temp name: the daemon removes it at start


SYSTEMD_BASES = tuple(map(Path, ("/run", "/var/lib", "/var/cache", "/var/log", "/etc")))


def _systemd_creates(directory: Path) -> bool:
    """True if the nearest existing ancestor is where systemd creates a unit's directories at start: a missing
    /run/edge-token is the unit's RuntimeDirectory= before its first start, not a typo. Outside a unit ($INVOCATION_ID
    unset) `check` cannot see the unit, so it says so instead of failing; inside, the directory must exist."""
    for ancestor in directory.parents:
        if ancestor.exists():
            return ancestor in SYSTEMD_BASES
    return False


def _as_whom() -> str:
    uid = os.geteuid()
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f" (checked as {name}, uid {uid})"


def _readable(where: str, path: Path, what: str, explicit: bool) -> Iterator[Problem]:
    try:
        with path.open("rb") as handle:
            empty = not handle.read(1)
    except OSError as exc:
        fix = "fix the path" if explicit else "run inside the cluster, or set api_url, namespace and token_file"
        yield Problem(where, f"cannot read {what} {path}: {exc.strerror}; {fix}", EX_CANTCREAT)
        return
    if empty:
        yield Problem(where, f"{what} {path} is empty", EX_CANTCREAT)


def _ca_file(where: str, path: Path | None, explicit: bool) -> Iterator[Problem]:
    if path is None or (not explicit and not path.exists()):
        return  # the default in-cluster CA: absent outside a pod, and then the system CAs are used (kubernetes.py)
    try:
        client_context("", path)  # the builder `run` uses (net/tls.py): never blocks on a FIFO, bounded
    except ConfigError as exc:
        yield Problem(where, f"{exc}; fix ca_file", EX_CANTCREAT)


def _program(where: str, sink: SinkConfig, environ: Mapping[str, str]) -> Iterator[Problem]:
    """The hook's program, looked up as `run_on_update` will: absolute, or in the PATH its environment gets."""
    program = sink.on_update[0]
    search = hook_environment(sink, "check", environ)["PATH"]
    found = program if os.path.isabs(program) else shutil.which(program, path=search)
    if found is None:
        yield Problem(where, f"{program!r} is not found in PATH={search}; give its absolute path")
    elif not os.path.isfile(found):
        yield Problem(where, f"{found} does not exist or is not a file; fix on_update[0]")
    elif not os.access(found, os.X_OK):
        yield Problem(where, f"{found} is not executable{_as_whom()}; chmod +x {found} or fix on_update[0]")


def _listen(config: Config) -> Iterator[Problem | Note]:
    """Bind the listen address like the daemon will, then let it go at once."""
    listen = config.daemon.listen
    if not listen:
        return
    where = f"{config.path}: daemon.listen"
    host, port = parse_listen(listen, where)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        yield Problem(where, f"{listen!r}: {host!r} does not resolve ({exc.strerror}); use an IP address")
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's TCPSite does
        try:
            sock.bind(address)
            return
        except OSError as exc:
            error = exc
    if error.errno == errno.EADDRINUSE and _our_daemon_listens(host, port, config.path):
        yield Note(where, f"{listen!r} is held by the running edge-token of this config (fine for a reload; "
                   "a restart frees it first)")  # fmt: skip
        return
    hints = {
        errno.EADDRINUSE: "the port is already in use by another process; choose another port (or stop it)",
        errno.EADDRNOTAVAIL: 'the address is not on this host; use one of its addresses, 127.0.0.1 or ""',
        errno.EACCES: "ports below 1024 need privileges; use a port above 1024",
    }
    yield Problem(where, f"cannot listen on {listen!r}: {hints.get(error.errno or 0, error.strerror)}")


#: /status is about 330 bytes a profile: 64 MiB is ~200,000 profiles (1 MiB, the old cap, ended near 3,000, and
#: `check` before a reload then called the daemon's own listen address taken)
MAX_STATUS_BYTES = 64 << 20


def _our_daemon_listens(host: str, port: int, config_path: Path) -> bool:
    """True if an edge-token daemon serving this same config file answers /status at host:port."""
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    shown = "[::1]" if host == "::" else shown
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy from the environment
        with opener.open(f"http://{shown}:{port}/status", timeout=2) as answer:
            status = json.loads(answer.read(MAX_STATUS_BYTES))
    except (OSError, ValueError):
        return False
    config = status.get("daemon", {}).get("config") if isinstance(status, dict) else None
    return isinstance(config, str) and os.path.realpath(config) == os.path.realpath(config_path)
