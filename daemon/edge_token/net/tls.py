"""The one TLS client-context builder: CA bundle, client certificate and key from configured PEM files.

Every caller goes through `client_context` — config loading (so `edge-token check` refuses a missing, unreadable
or malformed file with exit 78, the key named), the profile's `ca_file` (egress), the secret stores and etcd — so
they all get the same guarantees:

- `ca_file` REPLACES the system trust: only its CAs verify the far end; without it, the system trust. Hostname
  checks always on.
- Never blocks: each file is opened O_NONBLOCK and its type checked on the open descriptor (a FIFO swapped in
  after any earlier check would otherwise block the opening thread — the event loop — forever, and SIGTERM with
  it). OpenSSL then reads that same open file through /proc/self/fd, never the path again.
- Bounded: a file over MAX_PEM_BYTES is refused before anything reads it.
- Cached per file version (path, device, inode, size, mtime, ctime of each file), so a renewed bundle or client
  certificate is picked up at the next request without a restart, and an unchanged one costs three stat calls.
"""

from __future__ import annotations

import functools
import os
import ssl
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from edge_token.core.errors import ConfigError

MAX_PEM_BYTES = 4 * 1024 * 1024  # the Debian CA bundle is ~220 KiB
_PROC_FD = Path("/proc/self/fd")
Version = tuple[str, int, int, int, int, int]  # path, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


class _Refused(Exception):
    """A file that cannot be used: (config key, problem); turned into a ConfigError naming the caller's key."""


def client_context(
    where: str, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | bool:
    """The verifying context for these files: True (the system trust, nothing to load) when none is set.

    `where` prefixes the key in messages, e.g. "config.toml: fleet" -> "config.toml: fleet.ca_file = '...': ...".
    ConfigError (exit 78) for a missing, unreadable, non-regular, oversized or malformed file."""
    prefix = f"{where}." if where else ""
    if key_file is not None and cert_file is None:
        raise ConfigError(f"{prefix}key_file: set cert_file too (key_file is the private key of the client cert)")
    if ca_file is None and cert_file is None:
        return True
    files = (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file))
    try:
        versions = tuple(_version(key, path) if path is not None else None for key, path in files)
        return _load(*versions)
    except _Refused as refused:
        key, problem = refused.args
        path = dict(files)[key]
        raise ConfigError(f"{prefix}{key} = {str(path)!r}: {problem}") from None


def _version(key: str, path: Path) -> Version:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _Refused(key, f"cannot read the file: {exc.strerror or type(exc).__name__}") from None
    _check(key, info)
    return str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _check(key: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _Refused(key, "not a regular file; point it at a PEM file")
    if info.st_size > MAX_PEM_BYTES:
        raise _Refused(key, f"larger than {MAX_PEM_BYTES} bytes; is it the right file?")


@contextmanager
def _opened(key: str, path: str) -> Iterator[str]:
    """A name under which OpenSSL reads the file we opened without blocking and checked on its descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Refused(key, f"cannot read the file: {exc.strerror or type(exc).__name__}") from None
    try:
        _check(key, os.fstat(fd))  # the path may name another file now than when it was stat'ed
        # /proc/self/fd/N re-opens this very inode (a regular file: no open of it can block). Without /proc (not
        # Linux, or a sandbox without it) the path is the only name left; the type was checked just above.
        yield str(_PROC_FD / str(fd)) if _PROC_FD.is_dir() else path
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=32)
def _load(ca: Version | None, cert: Version | None, key: Version | None) -> ssl.SSLContext:
    with ExitStack() as files:
        try:
            cafile = files.enter_context(_opened("ca_file", ca[0])) if ca else None
            context = ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _Refused(
                "ca_file", f"not a PEM CA bundle ({_reason(exc)}); give a PEM file of CA certificates"
            ) from None
        if cert is None:
            return context
        certfile = files.enter_context(_opened("cert_file", cert[0]))
        keyfile = files.enter_context(_opened("key_file", key[0])) if key else None
        try:
            context.load_cert_chain(certfile, keyfile, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _Refused(
                "cert_file",
                f"cannot load the client certificate and key ({_reason(exc)}); both must be PEM, the key "
                "unencrypted and matching the certificate",
            ) from None
    return context


def _no_password() -> str:
    # an encrypted key would make OpenSSL prompt on the terminal; refuse instead
    raise ValueError("the key is encrypted")


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:120]
