"""TOML file -> frozen, validated runtime config.

The file format is a public contract (see README "Configuration"). Every problem is reported as a
`ConfigError` naming the file, the key path (`profiles.production.sinks[0].mode`) and what is expected.
Unknown keys are rejected so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edge_token.config.profiles import parse_daemon, parse_fleet, parse_profile
from edge_token.config.table import Table
from edge_token.config.trust import check_trusted_file
from edge_token.core import scrub
from edge_token.core.errors import ConfigError
from edge_token.core.settings import Config, ProfileConfig

if TYPE_CHECKING:
    import tomllib as toml
else:
    # tomllib is tomli 2.0, vendored; tomli's own wheel is compiled (mypyc): a 1,000-profile config parses in ~26 ms
    # instead of ~53, a quarter of what a fill did before its first request. Pinned below 2.4 (pyproject.toml): from
    # 2.4 tomli reads TOML 1.1, and a config must not mean one thing here and another where tomllib reads it
    try:
        import tomli as toml
    except ImportError:  # a packager that left it out: the same parser and TOML version, slower
        import tomllib as toml

# patterns of the error path only: compiled (and cached by `re`) when a file has a syntax error, not at every start
INLINE_SECRET_KEY = r"(?i)secret(?!_file|_env|_credential)|password(?!_file)|^\s*token\s*$"

TOML_LINE = r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)"

MAX_CONFIG_BYTES = 4 * 1024 * 1024


def toml_problem(file: Path, text: str, exc: toml.TOMLDecodeError) -> str:
    """A TOML syntax error as an operator can act on it: the line quoted, and the fix for the usual mistakes."""
    reason = re.sub(TOML_LINE, "", str(exc)).strip()
    found = re.search(TOML_LINE, str(exc))
    lines = text.splitlines()
    if found and found.group(1):
        number, where = int(found.group(1)), f"line {found.group(1)}, column {found.group(2)}"
    else:  # "at end of document": the last line with something on it is where it went wrong
        number = max((i + 1 for i, line in enumerate(lines) if line.strip()), default=0)
        where = f"end of file (line {number})"
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    key, equals, _ = line.partition("=")
    if equals and re.search(INLINE_SECRET_KEY, key):  # never quote a secret, even one no one has read yet
        line = f"{key.strip()} = {scrub.REDACTED}"
    quoted = line.strip()[:160]
    hint = _toml_hint(line, reason)
    return scrub.scrub_text(f"{file}: {where}: not valid TOML ({reason.lower()}): {quoted!r}; {hint}")


def _toml_hint(line: str, reason: str) -> str:
    """The fix for the mistakes people actually make in this file."""
    if "twice" in reason or "overwrite" in reason:
        return "each key and each [table] may appear once; every [[profiles.NAME.sinks]] adds another sink"
    key, equals, value = line.partition("=")
    key, value = key.strip(), value.strip()
    if equals and re.fullmatch(r"0[0-7]+", value):
        return f'TOML numbers have no leading zero: quote the mode, {key} = "{value}"'
    if equals and re.fullmatch(r"""[A-Za-z_./:~-][^"'\[{]*""", value) and value not in ("true", "false"):
        return f'strings must be quoted: {key} = "{value}"'
    if equals and value.startswith('"') and "\\" in value:
        return "inside double quotes a backslash starts an escape: use single quotes, or double each backslash"
    if line.strip().startswith("[") and not line.strip().endswith("]"):
        return "a table header needs its closing bracket: [profiles.NAME] or [[profiles.NAME.sinks]]"
    if equals and value.startswith(("[", "{")) and value.count(value[0]) > value.count("]" if value[0] == "[" else "}"):
        return "close the list or inline table on the same line (lists may span lines only inside [ ])"
    return 'one key = value per line; strings are quoted ("..."), lists are [...], tables are [profiles.NAME]'


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError with the file and key path on any problem."""
    file = Path(path)
    environ = os.environ if environ is None else environ
    try:
        with file.open("rb") as handle:
            info = os.fstat(handle.fileno())
            check_trusted_file(file, info, "config file")
            file_private = not info.st_mode & 0o044
            text = handle.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except OSError as exc:
        fix = "; give -c the right path (or set $EDGE_TOKEN_CONFIG)" if exc.errno == errno.ENOENT else ""
        raise ConfigError(f"{file}: cannot read the config file: {exc.strerror}{fix}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(toml_problem(file, text, exc)) from None
    except RecursionError:  # the parser recurses per level of nesting: a config is never this deep
        raise ConfigError(f"{file}: arrays or tables nested hundreds of levels deep; is it the right file?") from None
    root = Table(data, "", file)
    daemon = parse_daemon(root.table("daemon"))
    fleet = parse_fleet(root.table("fleet"))
    profiles_table = root.table("profiles")
    profiles: dict[str, ProfileConfig] = {}
    # the EDGE_TOKEN_<PROFILE>_* overrides, read once rather than five lookups per profile in os.environ
    overrides = {key: value for key, value in environ.items() if key.startswith("EDGE_TOKEN_")}
    for name in profiles_table.data:
        profiles[name] = parse_profile(name, profiles_table.table(name), overrides, file_private)
    root.finish()
    if not profiles:
        raise ConfigError(f"{file}: no profiles; add a [profiles.NAME] table (see config/local.toml)")
    seen: dict[str, str] = {}
    for profile in profiles.values():
        for sink in profile.sinks:
            if sink.name in seen:
                raise ConfigError(
                    f"{file}: sink {sink.name} is used by both {seen[sink.name]} and profiles.{profile.name}; "
                    "every sink needs its own destination"
                )
            seen[sink.name] = f"profiles.{profile.name}"
    return Config(path=file, daemon=daemon, profiles=profiles, fleet=fleet)


def check_selected(config: Config, names: Iterable[str] | None) -> Config:
    """`config`, once every --profile name is one of its profiles: at start (else exit 78) and at each reload (else
    the reload is refused: taking one away would leave the daemon keeping fewer tokens fresh, or none)."""
    for name in names or ():
        if name not in config.profiles:
            raise ConfigError(
                f"{config.path}: no profile {name!r} (have: {', '.join(config.profiles)}); --profile names it"
            )
    return config
