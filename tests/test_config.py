"""Config loading: Sitecore defaults, overrides, and a specific error for every kind of bad input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_token.config import load_config
from edge_token.config.profiles import PROFILE_KEYS, SECRET_KEYS
from edge_token.config.trust import parse_listen
from edge_token.core.errors import ConfigError
from edge_token.core.settings import (
    SITECORE_AUDIENCE,
    SITECORE_ISSUER,
    SITECORE_JWKS_URL,
    SITECORE_TOKEN_URL,
    env_prefix,
)
from edge_token.secrets import read_secret

MINIMAL = """
[profiles.production]
client_id = "abc"
client_secret_file = "/etc/edge-token/production.secret"
[[profiles.production.sinks]]
path = "/run/edge-token/production.jwt"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_minimal_config_gets_sitecore_defaults(tmp_path: Path) -> None:
    """A profile with only id, secret and a sink talks to Sitecore with safe defaults."""
    config = load_config(write(tmp_path, MINIMAL), environ={})
    profile = config.profiles["production"]
    assert (profile.token_url, profile.audience, profile.issuer, profile.jwks_url) == (
        SITECORE_TOKEN_URL,
        SITECORE_AUDIENCE,
        SITECORE_ISSUER,
        SITECORE_JWKS_URL,
    )
    assert profile.algorithms == ("RS256",)
    assert profile.refresh_at == 0.8 and profile.request_format == "json"
    sink = profile.sinks[0]
    assert (sink.format, sink.mode, sink.path) == ("raw", 0o600, Path("/run/edge-token/production.jwt"))
    assert config.daemon.listen == "127.0.0.1:9464"
    assert profile.secret.describe() == "file /etc/edge-token/production.secret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + 'colour = "blue"\n', "unknown key 'profiles.production.sinks[0].colour'"),
        (MINIMAL.replace("client_id", "client_idd"), "unknown key 'profiles.production.client_idd'"),
        (MINIMAL + 'format = "yaml"\n', "profiles.production.sinks[0].format: expected one of 'raw', 'json', 'env'"),
        (MINIMAL + 'mode = "0666"\n', "profiles.production.sinks[0].mode"),
        (MINIMAL + 'mode = "rw"\n', "profiles.production.sinks[0].mode"),
        (MINIMAL + "mode = true\n", "profiles.production.sinks[0].mode"),
        (MINIMAL.replace("[[profiles.production.sinks]]", 'token_url = "http://example.com/t"\n[[profiles.production.sinks]]'), "plain http"),
        (MINIMAL.replace("[[profiles.production.sinks]]", 'jwks_url = "ftp://x/j"\n[[profiles.production.sinks]]'),
         "profiles.production.jwks_url: expected an https:// URL"),
        (MINIMAL.replace("[[profiles.production.sinks]]", 'token_url = "https://u:p@h/t"\n[[profiles.production.sinks]]'),
         "profiles.production.token_url"),
        (MINIMAL.replace("[[profiles.production.sinks]]", "refresh_at = 2\n[[profiles.production.sinks]]"),
         "profiles.production.refresh_at: expected a number from 0.1 to 0.95"),
        (MINIMAL.replace("[[profiles.production.sinks]]", 'refresh_at = "0.8"\n[[profiles.production.sinks]]'),
         "profiles.production.refresh_at"),
        (MINIMAL.replace("[[profiles.production.sinks]]", 'algorithms = ["HS256"]\n[[profiles.production.sinks]]'),
         "profiles.production.algorithms"),
        (MINIMAL.replace("[[profiles.production.sinks]]", 'algorithms = ["none"]\n[[profiles.production.sinks]]'),
         "profiles.production.algorithms"),
        (MINIMAL.replace('client_secret_file = "/etc/edge-token/production.secret"', ""), "client secret is missing"),
        (MINIMAL.replace("[[profiles", 'client_secret_env = "X"\n[[profiles'), "client secret is given more than once"),
        (MINIMAL.split("[[")[0], "add at least one [[profiles.production.sinks]]"),
        ("[daemon]\n", "no profiles"),
        ('[daemon]\nlisten = "9464"\n' + MINIMAL, "daemon.listen"),
        ('[daemon]\nlog_format = "xml"\n' + MINIMAL, "daemon.log_format"),
        (MINIMAL.replace("production]", '"prod uction"]').replace("production.sinks", '"prod uction".sinks'),
         "profile name"),
        # `$` in a pattern also matches before a final newline: names are matched whole
        (MINIMAL.replace("production]", '"production\\n"]').replace("production.sinks", '"production\\n".sinks'),
         "profile name"),
        (MINIMAL + 'format = "env"\nenv_name = "EDGE_TOKEN\\n"\n', "profiles.production.sinks[0].env_name"),
        (MINIMAL.replace('client_secret_file = "/etc/edge-token/production.secret"', 'client_secret_env = "SECRET\\n"'),
         "profiles.production.client_secret_env"),
        (MINIMAL + "[profiles.other]\nclient_id = \"b\"\nclient_secret_env = \"B\"\n"
         "[[profiles.other.sinks]]\npath = \"/run/edge-token/production.jwt\"\n", "is used by both"),
        (MINIMAL + 'signal = "HUP"\n', "set both signal and pid_file"),
        (MINIMAL + 'owner = "no-such-user-xyz"\n', "no such owner 'no-such-user-xyz'"),
        ("this is = not toml", "not valid TOML"),
        (MINIMAL + '[[profiles.production.sinks]]\ntype = "kubernetes_secret"\nsecret_name = "Bad_Name"\n',
         "profiles.production.sinks[1].secret_name: expected a Kubernetes object name"),
        (MINIMAL + '[[profiles.production.sinks]]\ntype = "kubernetes_secret"\nsecret_name = "t"\nformat = "raw"\n',
         "unknown key 'profiles.production.sinks[1].format'"),
        (MINIMAL + '[[profiles.production.sinks]]\ntype = "vault_kv"\naddress = "https://v:8200"\npath = "a"\n',
         "authenticate to Vault with exactly one of"),
        (MINIMAL + '[[profiles.production.sinks]]\ntype = "vault_kv"\naddress = "http://vault:8200"\npath = "a"\n'
         'token_env = "T"\n', "plain http:// is refused"),
        (MINIMAL + '[[profiles.production.sinks]]\ntype = "vault_kv"\naddress = "https://v"\npath = "../x"\n'
         'token_env = "T"\n', "profiles.production.sinks[1].path: expected a KV path"),
        (MINIMAL + '[[profiles.production.sinks]]\ntype = "s3"\n', "profiles.production.sinks[1].type: expected one of"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake is a ConfigError that names what is wrong (file, key path, expectation)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)
    assert caught.value.exit_code == 78


def test_store_sinks_parse(tmp_path: Path) -> None:
    """Kubernetes Secret and Vault KV sinks load with their defaults and get bounded, secret-free names."""
    text = MINIMAL + (
        '[[profiles.production.sinks]]\ntype = "kubernetes_secret"\nsecret_name = "edge-token"\n'
        'labels = { team = "web" }\n'
        '[[profiles.production.sinks]]\ntype = "vault_kv"\naddress = "https://vault:8200/"\n'
        'path = "edge/prod"\nrole_id = "r"\nsecret_id_file = "/etc/sid"\nnamespace = "ns1"\n'
    )
    sinks = load_config(write(tmp_path, text), environ={}).profiles["production"].sinks
    assert [s.name for s in sinks] == [
        "file:/run/edge-token/production.jwt",
        "kubernetes_secret:(pod namespace)/edge-token#token",
        "vault_kv:secret/edge/prod",
    ]
    assert sinks[1].store is not None and sinks[1].path is None
    assert sinks[2].store.address == "https://vault:8200"  # type: ignore[union-attr]


def test_fleet_section(tmp_path: Path) -> None:
    """[fleet] loads with defaults; plain http to a non-loopback etcd and an empty endpoint list are refused."""
    config = load_config(write(tmp_path, '[fleet]\netcd_endpoints = ["https://etcd-1:2379", "http://127.0.0.1:2379/"]\n'
                                          + MINIMAL), environ={})  # fmt: skip
    assert config.fleet is not None
    assert config.fleet.etcd_endpoints == ("https://etcd-1:2379", "http://127.0.0.1:2379")
    assert (config.fleet.lease_ttl_seconds, config.fleet.key_prefix) == (15.0, "/edge-token")
    assert load_config(write(tmp_path, MINIMAL), environ={}).fleet is None
    with pytest.raises(ConfigError, match="plain http"):
        load_config(write(tmp_path, '[fleet]\netcd_endpoints = ["http://etcd:2379"]\n' + MINIMAL), environ={})
    with pytest.raises(ConfigError, match="fleet.etcd_endpoints: expected a non-empty list"):
        load_config(write(tmp_path, "[fleet]\netcd_endpoints = []\n" + MINIMAL), environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_inline_secret_refused_in_group_readable_file(tmp_path: Path) -> None:
    """An inline secret is only accepted from a file nobody else can read."""
    text = MINIMAL.replace('client_secret_file = "/etc/edge-token/production.secret"', 'client_secret = "hunter22"')
    with pytest.raises(ConfigError, match="inline secret is refused") as caught:
        load_config(write(tmp_path, text, 0o644), environ={})
    assert "hunter22" not in str(caught.value)
    config = load_config(write(tmp_path, text, 0o600), environ={})
    assert read_secret(config.profiles["production"].secret, {}) == "hunter22"
    assert "hunter22" not in repr(config)


def test_environment_overrides_client_id_and_secret_source(tmp_path: Path) -> None:
    """EDGE_TOKEN_<PROFILE>_CLIENT_ID and _CLIENT_SECRET_* replace the file's values."""
    environ = {"EDGE_TOKEN_PRODUCTION_CLIENT_ID": "from-env", "EDGE_TOKEN_PRODUCTION_CLIENT_SECRET_ENV": "MY_SECRET"}
    profile = load_config(write(tmp_path, MINIMAL), environ=environ).profiles["production"]
    assert profile.client_id == "from-env"
    assert profile.secret.kind == "env"
    assert read_secret(profile.secret, {"MY_SECRET": " value \n"}) == "value"
    assert env_prefix("prod-eu.1") == "EDGE_TOKEN_PROD_EU_1_"


def test_secret_sources_report_where_they_failed(tmp_path: Path) -> None:
    """A secret that cannot be read names its source, never a value."""
    profile = load_config(write(tmp_path, MINIMAL), environ={}).profiles["production"]
    with pytest.raises(ConfigError, match="cannot read /etc/edge-token/production.secret"):
        read_secret(profile.secret, {})
    text = MINIMAL.replace('client_secret_file = "/etc/edge-token/production.secret"', 'client_secret_credential = "p"')
    credential = load_config(write(tmp_path, text), environ={}).profiles["production"].secret
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_secret(credential, {})
    (tmp_path / "p").write_text("from-credential\n")
    assert read_secret(credential, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-credential"
    (tmp_path / "p").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(credential, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_loopback_http_is_allowed_and_relative_sink_paths_resolve(tmp_path: Path) -> None:
    """http:// is fine for 127.0.0.1/localhost/[::1]; relative sink paths are relative to the config file."""
    text = MINIMAL.replace(
        "[[profiles.production.sinks]]",
        'token_url = "http://127.0.0.1:8400/oauth/token"\njwks_url = "http://[::1]:8400/jwks"\n'
        "[[profiles.production.sinks]]",
    ).replace('"/run/edge-token/production.jwt"', '"tokens/p.jwt"')
    profile = load_config(write(tmp_path, text), environ={}).profiles["production"]
    assert profile.token_url.startswith("http://127.0.0.1")
    assert profile.sinks[0].path == tmp_path / "tokens" / "p.jwt"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:80", ("::1", 80)), ("0.0.0.0:0", ("0.0.0.0", 0))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    """Listen addresses parse to host and port."""
    assert parse_listen(value, "x") == expected


@pytest.mark.parametrize("value", ["9464", "host:99999", "[::1]", ":"])
def test_parse_listen_rejects(value: str) -> None:
    """Unparseable listen addresses are config errors."""
    with pytest.raises(ConfigError):
        parse_listen(value, "x")


@st.composite
def misspelt_profile_keys(draw: st.DrawFn) -> tuple[str, str]:
    """(a valid profile key, that key with one character dropped or two neighbours swapped), not itself valid."""
    key = draw(st.sampled_from(sorted(k for k in PROFILE_KEYS if k != "sinks")))
    index = draw(st.integers(0, len(key) - 2))
    if draw(st.booleans()):
        typo = key[:index] + key[index + 1 :]
    else:
        typo = key[:index] + key[index + 1] + key[index] + key[index + 2 :]
    assume(typo != key and typo not in PROFILE_KEYS | SECRET_KEYS.keys())
    return key, typo


@settings(max_examples=150, deadline=None)
@given(pair=misspelt_profile_keys())
def test_a_misspelt_key_is_named_with_the_key_it_was_meant_to_be(pair: tuple[str, str]) -> None:
    """Any one-slip typo of a profile key (dropped letter, swapped neighbours) is refused, named by its path,
    and the nearest valid key is suggested: the one the operator meant."""
    key, typo = pair
    with tempfile.TemporaryDirectory() as directory:
        text = MINIMAL.replace("[[profiles", f'{typo} = "x"\n[[profiles')
        with pytest.raises(ConfigError) as caught:
            load_config(write(Path(directory), text), environ={})
    assert f"unknown key 'profiles.production.{typo}'" in str(caught.value)
    assert f"did you mean {key!r}?" in str(caught.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("mode = 0640", 'quote the mode, mode = "0640"'),
        ("format = env", 'strings must be quoted: format = "env"'),
        ('path = "/run/b.jwt"', "may appear once"),
        ("on_update = [", "close the list"),
    ],
)
def test_toml_syntax_errors_quote_the_line_and_the_fix(tmp_path: Path, line: str, expected: str) -> None:
    """A TOML syntax error names the file, the line (quoted) and the usual fix, never the parser's internals."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + line + "\n"), environ={})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'config.toml'}: ") and "line" in message
    assert repr(line.splitlines()[-1].strip()) in message and expected in message


def test_a_toml_error_never_quotes_a_secret_on_the_bad_line(tmp_path: Path) -> None:
    """A syntax error on an inline `client_secret` line names the line but not the secret (nothing has read it,
    so the process scrubber does not know it yet)."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + "client_secret = inline-s3cret-value-1234\n"), environ={})
    assert "inline-s3cret-value-1234" not in str(caught.value)
