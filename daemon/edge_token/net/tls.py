"""TLS client contexts from configured PEM files, failing as configuration errors that name the key.

Used twice on purpose: by config loading (so `edge-token check` refuses a missing, unreadable or malformed
`ca_file`/`cert_file`/`key_file` with exit 78) and by the client that uses the context at run time (a file
removed or broken after `check` is still exit 78 with the key named, never a traceback).
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from edge_token.core.errors import ConfigError


def client_context(
    where: str, ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | None:
    """The verifying client context for these files (None when none is set). `where`: e.g. "config.toml: fleet"."""
    if key_file is not None and cert_file is None:
        raise ConfigError(f"{where}.key_file: set cert_file too (key_file is the private key of the client cert)")
    if ca_file is None and cert_file is None:
        return None
    for key, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None:
            _readable(where, key, path)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"{where}.ca_file = {str(ca_file)!r}: not a PEM CA certificate ({_reason(exc)})") from None
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"{where}.cert_file = {str(cert_file)!r}: cannot load the client certificate and key "
                f"({_reason(exc)}); both must be PEM, the key unencrypted and matching the certificate"
            ) from None
    return context


def regular_file(path: Path) -> bool:
    """True if `path` is a regular file (following links). Checked before OpenSSL opens a PEM file: a FIFO there
    would block the opening thread, which is the event loop, forever (and with it SIGTERM)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # let the open report the real error (missing, permission denied...)


def _readable(where: str, key: str, path: Path) -> None:
    if not regular_file(path):
        raise ConfigError(f"{where}.{key} = {str(path)!r}: not a regular file; point it at a PEM file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where}.{key} = {str(path)!r}: cannot read the file: {reason}") from None


def _no_password() -> str:
    # an encrypted key would make OpenSSL prompt on the terminal; refuse instead
    raise ValueError("the key is encrypted")


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:120]
