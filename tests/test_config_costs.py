"""Loading a config costs the same per profile whatever the count (issue 15: a 1,000-profile fill parsed its
config for ~150 ms): what profiles share is done once, not once per profile. Counted, never timed."""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SOAK
from edge_token.config import load_config
from edge_token.config.table import Table
from edge_token.core.errors import ConfigError


class CountingEnviron(Mapping[str, str]):
    """An environment that counts how often it is consulted (a lookup or one whole pass)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.data, self.reads = values, 0

    def __getitem__(self, key: str) -> str:
        self.reads += 1
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        self.reads += 1
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def write_profiles(path: Path, count: int, port: int) -> Path:
    """`count` profiles sharing one token URL and one JWKS URL (as a fleet of tenants of one provider does)."""
    common = (
        'client_id = "c"\nclient_secret_file = "/etc/edge-token/s"\n'
        f'token_url = "http://127.0.0.1:{port}/token"\njwks_url = "http://127.0.0.1:{port}/jwks"\n'
    )
    path.write_text(
        "".join(f'[profiles.p{i}]\n{common}[[profiles.p{i}.sinks]]\npath = "/run/t/p{i}.jwt"\n' for i in range(count))
    )
    path.chmod(0o600)
    return path


def load_counted(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, int]:
    """(profiles, URL parses, environment reads) of one load_config."""
    parses = 0

    def urlsplit(url: str) -> object:
        nonlocal parses
        parses += 1
        return urllib.parse.urlsplit(url)

    monkeypatch.setattr("edge_token.config.table.urlsplit", urlsplit)
    environ = CountingEnviron({"HOME": "/root", "EDGE_TOKEN_P1_CLIENT_ID": "other", "PATH": "/bin"})
    config = load_config(path, environ=environ)
    assert config.profiles["p1"].client_id == "other"  # the override is still read
    return len(config.profiles), parses, environ.reads


def test_what_profiles_share_is_checked_once_and_the_environment_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two profiles or five hundred: the shared URLs are parsed the same number of times (once each), and the
    environment is consulted the same number of times (one pass for the EDGE_TOKEN_<PROFILE>_* overrides)."""
    port = random.randrange(20000, 60000)  # URLs this process has not checked before
    small = load_counted(write_profiles(tmp_path / "small.toml", 2, port), monkeypatch)
    large = load_counted(write_profiles(tmp_path / "large.toml", 500, port + 1), monkeypatch)
    assert (small[0], large[0]) == (2, 500)
    assert small[1:] == large[1:], f"URL parses, environment reads: 2 profiles {small[1:]}, 500 profiles {large[1:]}"
    assert large[1] == 2  # the token URL and the JWKS URL


@settings(max_examples=5000 if SOAK else 300, deadline=None)
@given(
    value=st.integers() | st.integers(min_value=10**300, max_value=10**400) | st.floats() | st.booleans() | st.text(),
    bounds=st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)).map(sorted),
)
def test_a_number_setting_is_its_value_in_bounds_or_a_config_error(value: object, bounds: list[float]) -> None:
    """Any TOML value (a 400-digit integer too): the number as a float when it is a number within the bounds,
    else a ConfigError naming the key; never another exception (that would be an internal error, exit 70)."""
    low, high = bounds
    settings_table = Table({"leeway_seconds": value}, "profiles.p", Path("/etc/edge-token/config.toml"))
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric and low <= value <= high:  # type: ignore[operator]  # numeric: int or float
        assert settings_table.number("leeway_seconds", 1.0, low, high) == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ConfigError, match="profiles.p.leeway_seconds: expected a number from"):
            settings_table.number("leeway_seconds", 1.0, low, high)


def test_the_config_is_parsed_by_tomli_and_reads_as_tomllib_reads_it(tmp_path: Path) -> None:
    """The config parser is tomli (tomllib is tomli 2.0 vendored, pure Python; tomli's wheel is compiled: a
    1,000-profile file took ~53 ms, a third of what a fill did before its first request, and takes ~17), and a
    real config reads the same through both, values and errors alike."""
    import tomllib

    import edge_token.config as config

    parser = vars(config)["toml"]
    assert parser.__name__ == "tomli"
    text = write_profiles(tmp_path / "edge-token.toml", 200, 8080).read_text()
    assert parser.loads(text) == tomllib.loads(text)
    for broken in ("a = 1\na = 2\n", '[x]\nb = "open\n', "k = 0x\n", "x = [1, 2,\n"):
        with pytest.raises(tomllib.TOMLDecodeError) as stdlib:
            tomllib.loads(broken)
        with pytest.raises(parser.TOMLDecodeError) as ours:
            parser.loads(broken)
        assert str(ours.value) == str(stdlib.value)
