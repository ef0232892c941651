"""Validating one TOML table: typed getters that name the key path, unknown keys rejected with a suggestion, and
the field parsers the profile, sink and fleet tables share (URLs, modes, owners, paths, egress)."""

from __future__ import annotations

import functools
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edge_token.config.trust import is_loopback_host
from edge_token.core.errors import ConfigError
from edge_token.core.settings import DIRECT, Egress, SecretSource
from edge_token.net.egress import check_proxy_url

# compiled by re when first used (most configs name no variable); always with fullmatch: `$` would also match
# before a final newline, and accept "EDGE_TOKEN\n" as a variable name
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"

T = TypeVar("T")


class Table:
    """A TOML table being validated: typed getters that name the key path, and unknown-key detection."""

    def __init__(self, data: Mapping[str, Any], where: str, file: Path) -> None:
        self.data, self.where, self.file = data, where, file
        self.used: set[str] = set()  # not `set[str]()`: a generic alias call, ~1 µs a table, two tables a profile

    def path(self, key: str) -> str:
        """The dotted key path of `key` in this table, for messages."""
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str) -> ConfigError:
        """The error for a bad value: file, key path, what was expected, what was found."""
        return ConfigError(f"{self.file}: {self.path(key)}: expected {expected}, got {self.data.get(key)!r}")

    def get(self, key: str, kind: type[T], default: T, expected: str) -> T:
        """The value of `key` if it has the `kind` (ints are accepted as floats, bools never as numbers), else
        `default`."""
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(key, expected)
        return value

    # text() and number() are read ~25 times per profile: the message is built only for a value that is wrong

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str | None:
        """A non-empty string (one of `choices`, if given), or `default` when the key is absent."""
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, str) and value and (not choices or value in choices):
            return value
        raise self.fail(key, f"one of {', '.join(map(repr, choices))}" if choices else "a non-empty string")

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """A number within [low, high] (ints accepted, bools never; NaN and infinities fail the bounds), or
        `default` when the key is absent."""
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
            return float(value)  # compared first: float() of a 400-digit TOML integer would overflow
        raise self.fail(key, f"a number from {low:g} to {high:g}")

    def table(self, key: str) -> Table:
        """A sub-table (empty if absent)."""
        value = self.get(key, dict, {}, "a table")
        return Table(value, self.path(key), self.file)

    def only(self, known: frozenset[str]) -> None:
        """Reject unknown keys first, so a misspelt required key is reported as the typo it is."""
        self.used |= known
        self.finish()

    def finish(self) -> None:
        """Reject any key nobody read, suggesting the closest valid one."""
        unknown = sorted(self.data.keys() - self.used)
        if unknown:
            where = self.where or "the top level"
            import difflib  # only on this error path: ~1 ms of every start (issue 15, cold once)

            close = difflib.get_close_matches(unknown[0], sorted(self.used), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(sorted(self.used))}"
            raise ConfigError(f"{self.file}: unknown key {self.path(unknown[0])!r} in {where}; {hint}")


def url_setting(table: Table, key: str, default: str) -> str:
    """An https:// URL (http:// only for loopback), or `default`."""
    value = table.text(key, default)
    if value is None:
        raise table.fail(key, "a URL")
    return checked_url(table, key, value)


def checked_url(table: Table, key: str, value: str) -> str:
    """`value` if it is an https:// URL (http:// only for a loopback host) without user info or fragment: tokens and
    secrets never travel in clear."""
    problem, host = url_problem(value)
    if problem == "malformed":
        raise table.fail(key, "an https:// URL (http:// only for a loopback host) without user info or fragment")
    if problem == "plain http":
        raise ConfigError(
            f"{table.file}: {table.path(key)}: plain http:// is refused for {host!r} (tokens and secrets would "
            "travel unencrypted); use https://, or a loopback address for local testing"
        )
    return value


@functools.lru_cache(maxsize=1024)
def url_problem(value: str) -> tuple[str | None, str | None]:
    """(None, host) for a usable URL, ("malformed", None), or ("plain http", host) for http:// to a host that is
    not loopback. Cached: a thousand profiles usually share one token URL and one JWKS URL."""
    parts = urlsplit(value)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "malformed", None
    if not host or parts.username or parts.password or parts.fragment or parts.scheme not in ("https", "http"):
        return "malformed", None
    if parts.scheme == "http" and not is_loopback_host(host):
        return "plain http", host
    return None, host


def file_mode(table: Table, key: str) -> int:
    """An octal file mode that nobody but the owner (and group, for reading) can use: a token file is a credential."""
    table.used.add(key)
    if key not in table.data:
        return 0o600
    raw = table.data[key]
    expected = 'an octal mode string such as "0600" or "0640" (not writable by group or others)'
    if isinstance(raw, str) and re.fullmatch(r"0?[0-7]{3}", raw):
        mode = int(raw, 8)
    elif isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0o777:
        mode = raw
    else:
        raise table.fail(key, expected)
    if mode & 0o022 or not mode & stat.S_IRUSR:
        raise table.fail(key, expected)
    return mode


def owner_id(table: Table, key: str, lookup: Callable[[str], int]) -> int:
    """A user or group name (looked up now, so a typo fails `check`) or numeric id; -1 when unset."""
    value = table.data.get(key)
    table.used.add(key)
    if value is None:
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value:
        try:
            return lookup(value)
        except KeyError:
            raise ConfigError(f"{table.file}: {table.path(key)}: no such {key} {value!r} on this system") from None
    raise table.fail(key, f"a {key} name or a numeric id")


def string_list(table: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of non-empty strings, or `default`."""
    value = table.get(key, list, list(default), "a list of non-empty strings")
    if not all(isinstance(item, str) and item for item in value):
        raise table.fail(key, "a list of non-empty strings")
    return tuple(value)


PROXY_KEYS = frozenset({"proxy", "proxy_auth_file", "proxy_auth_credential"})


def string_table(table: Table, key: str) -> dict[str, str]:
    """A table of string values (labels, annotations)."""
    value = table.get(key, dict, {}, "a table of strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise table.fail(key, "a table of strings")
    return dict(value)


def optional_path(table: Table, key: str, default: Path | None) -> Path | None:
    """A path, or `default` when the key is absent. Relative paths are relative to the config file, like every path
    in it (the daemon's working directory under systemd is /)."""
    text = table.text(key, None)
    return absolute_path(table, Path(text)) if text else default


def file_ref(table: Table, text: str) -> str:
    """A file path given as text (a secret file), relative to the config file like every path in it."""
    return str(absolute_path(table, Path(text)))


def absolute_path(table: Table, path: Path | None) -> Path | None:
    """`path` resolved against the config file's directory, like every relative path in the file."""
    return path if path is None or path.is_absolute() else table.file.parent / path


def ca_bundle(table: Table) -> Path | None:
    """A profile's `ca_file`, loaded once now so a typo or a non-PEM file fails `check` and the start (exit 78)."""
    path = absolute_path(table, optional_path(table, "ca_file", None))
    if path is not None:
        from edge_token.net.tls import client_context  # only for a ca_file (issue 15: `once` without one skips it)

        client_context(f"{table.file}: {table.where}", path)  # the one builder (net/tls.py), as `run` uses it
    return path


def egress_setting(table: Table, ca_file: Path | None) -> Egress:
    """`proxy` ("none" default, "env", or "http://host:port") and its credentials file or systemd credential."""
    setting = table.text("proxy", "none") or "none"
    if setting not in ("none", "env"):
        setting = check_proxy_url(setting, f"{table.file}: {table.path('proxy')}")
    auth_file, auth_credential = table.text("proxy_auth_file", None), table.text("proxy_auth_credential", None)
    if auth_file and auth_credential:
        raise ConfigError(f"{table.file}: {table.where}: set proxy_auth_file or proxy_auth_credential, not both")
    auth = None
    if auth_file or auth_credential:
        if setting == "none":
            raise ConfigError(f'{table.file}: {table.where}: proxy credentials are set but proxy is "none"; set proxy')
        auth = SecretSource("file", str(absolute_path(table, Path(auth_file)))) if auth_file else None
        auth = auth or SecretSource("credential", auth_credential or "")
    if setting == "none" and auth is None and ca_file is None:
        return DIRECT  # equal to a new Egress(); shared, as a thousand profiles' JWKS cache key
    return Egress(proxy=setting, proxy_auth=auth, ca_file=ca_file)
