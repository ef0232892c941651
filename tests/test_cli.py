"""The real `edge-token` process: exit codes, one clear line per failure, and nothing secret printed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from cliproc import edge_token
from conftest import CLIENT_SECRET, OTHER_CLIENT, OTHER_SECRET, profile_toml
from daemonproc import DaemonProcess
from edge_token.localauth import LocalAuthServer

pytestmark = pytest.mark.usefixtures("live_auth")


def write_config(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, **settings: object) -> Path:
    path = tmp_path / "config.toml"
    sinks = [{"path": str(tmp_path / "token.jwt")}, {"path": str(tmp_path / "token.env"), "format": "env"}]
    path.write_text('[daemon]\nlog_format = "json"\n' + profile_toml("main", auth, secret_file, sinks, **settings))
    return path


async def test_once_writes_a_verified_token_and_logs_json(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`edge-token once` exits 0, writes both formats (0600), and its JSON log lines carry no secret or JWT."""
    code, out, err = await edge_token("once", "-c", str(write_config(tmp_path, auth, secret_file)))
    assert code == 0, err
    token = (tmp_path / "token.jwt").read_text()
    assert token.count(".") == 2
    assert (tmp_path / "token.env").read_text() == f"EDGE_TOKEN={token}\n"
    assert oct((tmp_path / "token.jwt").stat().st_mode & 0o777) == "0o600"
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert "token.renewed" in events
    assert CLIENT_SECRET not in out + err and token not in out + err and token.split(".")[1] not in err


async def test_once_exit_codes_and_messages(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> None:
    """Rejected credentials exit 77 and a config error 78, each with one clear line naming the cause."""
    secret_file.write_text("wrong-secret")
    code, _, err = await edge_token("once", "-c", str(write_config(tmp_path, auth, secret_file)))
    assert code == 77
    assert "edge-token: profile main: credentials rejected" in err
    assert "wrong-secret" not in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.x]\nclient_id = 1\n")
    code, _, err = await edge_token("once", "-c", str(bad))
    assert code == 78 and "profiles.x.client_id" in err


async def test_check_summarises_without_the_secret(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> None:
    """`check` lists profiles, sinks and secret sources; `--online` fetches a token without writing it."""
    config = write_config(tmp_path, auth, secret_file)
    code, out, _ = await edge_token("check", "-c", str(config))
    assert code == 0 and "main: client_id client-a, secret from file" in out and CLIENT_SECRET not in out
    code, out, err = await edge_token("check", "--online", "-c", str(config))
    assert code == 0, err
    assert "online OK" in out and not (tmp_path / "token.jwt").exists()


async def test_inspect_decodes_and_verifies_without_printing_the_signature(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`inspect` shows header, claims and time left; `--verify` checks it against the profile."""
    config = write_config(tmp_path, auth, secret_file)
    assert (await edge_token("once", "-c", str(config)))[0] == 0
    token = (tmp_path / "token.env").read_text()
    code, out, err = await edge_token("inspect", "--verify", "-c", str(config), str(tmp_path / "token.env"))
    assert code == 0, err
    report = json.loads(out)
    assert report["claims"]["azp"] == "client-a" and report["verified"] is True
    assert 0 < report["seconds_left"] <= 1000
    assert token.strip().rsplit(".", 1)[1] not in out
    forged = auth.mint(auth.claims_for("client-a", "https://api.sitecorecloud.io"), {"kid": "x"},
                       key=RSAKey.generate_key(2048))  # fmt: skip
    code, _, err = await edge_token("inspect", "--verify", "-c", str(config), "-", stdin=forged.encode())
    assert code == 65 and "unknown kid" in err
    code, _, err = await edge_token("inspect", "-", stdin=b"not a token")
    assert code == 65 and "no JWT found" in err


def two_profiles(tmp_path: Path, auth: LocalAuthServer, secret_file: Path, daemon: str = "") -> Path:
    """Profiles `web` (client-a) and `api` (client-b), each with its own secret and sink."""
    path = tmp_path / "two.toml"
    other_secret = tmp_path / "other.secret"
    other_secret.write_text(OTHER_SECRET)
    other_secret.chmod(0o600)
    web = profile_toml("web", auth, secret_file, [{"path": str(tmp_path / "web.jwt")}])
    api = profile_toml("api", auth, other_secret, [{"path": str(tmp_path / "api.jwt")}], client_id=OTHER_CLIENT)
    path.write_text(f'[daemon]\nlog_format = "json"\n{daemon}\n' + web + api)
    path.chmod(0o600)
    return path


async def test_inspect_verify_with_any_number_of_profiles(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """With several profiles, `inspect --verify` says which accept the token (no --profile needed);
    `--profile web` selects web as in every command (it was iterated as 'w', 'e', 'b'), and a profile that
    refuses the token gives 65 with its reason."""
    config = two_profiles(tmp_path, auth, secret_file)
    assert (await edge_token("once", "--profile", "web", "-c", str(config)))[0] == 0
    token = str(tmp_path / "web.jwt")
    code, out, err = await edge_token("inspect", "--verify", "-c", str(config), token)
    assert code == 0, err
    assert json.loads(out)["verified_by"] == ["web"]
    code, out, err = await edge_token("inspect", "--verify", "-c", str(config), "--profile", "web", token)
    assert code == 0, err
    assert json.loads(out)["verified"] is True
    code, out, err = await edge_token("inspect", "--verify", "-c", str(config), "--profile", "api", token)
    assert code == 65 and "profile api: token rejected" in err
    assert json.loads(out)["verified"] is False
    code, _, err = await edge_token("inspect", "--verify", "-c", str(config), "--profile", "nope", token)
    assert code == 78 and "no profile 'nope'" in err


async def test_check_online_is_a_clean_summary_in_the_configured_format(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`check --online` with log_format json: every stderr line is JSON, none claims token.renewed, no Python
    repr on stdout, nothing written, and the summary names what was checked."""
    config = two_profiles(tmp_path, auth, secret_file)
    code, out, err = await edge_token("check", "--online", "-c", str(config))
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines()]  # raises if a line is not JSON
    names = [event["event"] for event in events]
    assert "token.renewed" not in names and "sink.written" not in names
    assert names.count("check.token_verified") == 2 and all(e["written"] is False for e in events if "written" in e)
    assert "Token(" not in out and "fingerprint=" not in out
    assert "web: online OK" in out and "api: online OK" in out and "not written" in out
    assert not (tmp_path / "web.jwt").exists() and not (tmp_path / "api.jwt").exists()
    assert CLIENT_SECRET not in out + err and OTHER_SECRET not in out + err


async def test_console_logs_show_times_as_iso_8601_and_json_keeps_numbers(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`expires_at` in a console line reads 2026-…Z; the same event in JSON carries the epoch number."""
    config = two_profiles(tmp_path, auth, secret_file)
    config.write_text(config.read_text().replace('log_format = "json"', 'log_format = "console"'))
    code, _, err = await edge_token("once", "--profile", "web", "-c", str(config))
    assert code == 0, err
    line = next(line for line in err.splitlines() if "token.renewed" in line)
    stamp = line.split("expires_at=", 1)[1].split()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", stamp), line
    (tmp_path / "web.jwt").unlink()
    config.write_text(config.read_text().replace('log_format = "console"', 'log_format = "json"'))
    code, _, err = await edge_token("once", "--profile", "web", "-c", str(config))
    renewed = next(json.loads(line) for line in err.splitlines() if "token.renewed" in line)
    assert isinstance(renewed["expires_at"], float)


@pytest.mark.parametrize("command", ["run", "exec", "once", "check", "inspect", "local-auth", "demo"])
async def test_help_shows_defaults_and_the_config_variable(command: str) -> None:
    """Every --help names EDGE_TOKEN_CONFIG and shows each option's default; `once` says it runs no hooks;
    --profile reads the same everywhere it exists."""
    code, out, _ = await edge_token(command, "--help", env={"COLUMNS": "200"})
    assert code == 0
    assert "EDGE_TOKEN_CONFIG" in out
    defaults = {
        "run": ["(default: /etc/edge-token/config.toml)"],
        "exec": ["(default: none)", "(default: HUP)", "(default: 60.0)"],
        "once": ["(default: 60.0)"],
        "check": ["(default: /etc/edge-token/config.toml)"],
        "inspect": ["(default: /etc/edge-token/config.toml)"],
        "local-auth": ["(default: 127.0.0.1)", "(default: 8400)", "(default: 3600.0)", "(default: local-client)"],
        "demo": ["(default: edge-token-demo)", "(default: 20.0)", "(default: 45.0)"],
    }[command]
    for default in defaults:
        assert default in out, out
    if command == "once":
        assert "does not run on_update hooks" in out
    if "--profile" in out:
        assert "only this profile (repeatable; default: every profile)" in out


async def test_check_as_an_unprivileged_user_finds_what_root_would_miss(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """Root can read and write everything; `check --as nobody` judges the files as the service user would:
    an owner-only secret and an owner-only sink directory are refused, naming the key and the user."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # nobody must reach tmp_path itself (pytest's base is 0700)
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)
    config = tmp_path / "as.toml"
    config.write_text(
        '[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret_file, [{"path": str(private / "t.jwt")}])
    )
    config.chmod(0o644)
    code, out, err = await edge_token("check", "-c", str(config))
    assert code == 0, err
    code, out, err = await edge_token("check", "--as", "nobody", "-c", str(config))
    assert code == 78, err
    assert "profiles.main.client_secret_file" in err and "Permission denied" in err
    assert "profiles.main.sinks[0].path" in err and "checked as nobody" in err
    assert CLIENT_SECRET not in out + err
    code, _, err = await edge_token("check", "--as", "no-such-user-x", "-c", str(config))
    assert code == 78 and "no such user" in err


async def test_check_accepts_a_listen_address_held_by_its_own_running_daemon(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    """Checking before a reload: the port is held by the daemon of this very config, which is fine (a note);
    held by anything else, it is the error `run` would exit 78 with."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = two_profiles(tmp_path, auth, secret_file, daemon=f'listen = "127.0.0.1:{port}"')
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    await daemon.wait_for("http.listening")
    code, out, err = await edge_token("check", "-c", str(config))
    assert code == 0, err
    assert "held by the running edge-token of this config" in out
    other = tmp_path / "other.toml"
    other.write_text(config.read_text())
    other.chmod(0o600)
    code, _, err = await edge_token("check", "-c", str(other))
    assert code == 78 and "daemon.listen" in err and "already in use" in err


async def test_exec_timeout_bounds_the_wait_for_an_unreachable_provider(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`exec --timeout S` gives up after about S seconds of retries (like `once`), exits 69 naming token_url,
    and never starts the command; the default stays 60 s (shown in --help)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = write_config(tmp_path, auth, secret_file, token_url=f"http://127.0.0.1:{closed}/oauth/token")
    marker = tmp_path / "started"
    began = time.monotonic()
    code, _, err = await edge_token("exec", "--timeout", "2", "-c", str(config), "--", "/bin/touch", str(marker))
    elapsed = time.monotonic() - began
    assert code == 69, err
    assert "check token_url" in err and not marker.exists()
    assert 1.0 <= elapsed < 12, elapsed  # retried for ~2 s (not once, not the default 60 s), plus start-up


async def test_check_by_hand_accepts_the_runtime_directory_the_unit_creates(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """/run/NAME missing before the unit's first start is what RuntimeDirectory= creates: by hand `check` notes it
    (exit 0); inside the unit ($INVOCATION_ID set, after systemd made it) the same absence is the sink error."""
    missing = Path(f"/run/edge-token-check-test-{os.getpid()}")
    assert not missing.exists()
    config = tmp_path / "run.toml"
    config.write_text(
        '[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret_file, [{"path": str(missing / "t.jwt")}])
    )
    config.chmod(0o600)
    code, out, err = await edge_token("check", "-c", str(config), env={"INVOCATION_ID": ""})
    assert code == 0, err
    assert f"{missing} does not exist yet" in out and "RuntimeDirectory=" in out
    code, _, err = await edge_token("check", "-c", str(config), env={"INVOCATION_ID": "0123abcd"})
    assert code == 73 and "profiles.main.sinks[0].path" in err and "create it" in err


async def test_once_runs_each_selected_profile_once_and_exits_in_config_order(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path
) -> None:
    """`--profile web` given three times is one request and one write (not three concurrent ones to one sink);
    with two failing profiles selected in any argv order the exit code is the first failure in config order."""
    config = two_profiles(tmp_path, auth, secret_file)
    code, _, err = await edge_token("once", "-c", str(config), "--profile", "web", "--profile", "web",
                                    "--profile=web")  # fmt: skip
    assert code == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert auth.token_requests == 1 and events.count("token.renewed") == 1, events
    assert not (tmp_path / "api.jwt").exists()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    # web (first in the file): credentials rejected, 77; api: provider unreachable, 69
    (tmp_path / "web.jwt").unlink()
    secret_file.write_text("wrong-secret")
    head, _, tail = config.read_text().rpartition(auth.token_url)  # api's, the last one in the file
    config.write_text(f"{head}http://127.0.0.1:{closed}/oauth/token{tail}")
    for order in (["api", "web"], ["web", "api"], ["api", "web", "api", "web"]):
        argv = [word for name in order for word in ("--profile", name)]
        code, _, err = await edge_token("once", "-c", str(config), "--timeout", "0", *argv)
        assert code == 77, (order, err)
        assert err.count("edge-token: profile web:") == 1 and err.count("edge-token: profile api:") == 1, err


@pytest.mark.parametrize("command", ["once", "exec"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
async def test_a_timeout_that_is_not_finite_seconds_is_a_usage_error(
    tmp_path: Path, auth: LocalAuthServer, secret_file: Path, command: str, value: str
) -> None:
    """`--timeout nan` retried forever against a provider that is down (no deadline comparison with NaN is true),
    `inf` likewise, and a negative one meant nothing: each is a usage error (exit 2, argparse's code for every
    bad argument) naming the option, before any request."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = write_config(tmp_path, auth, secret_file, token_url=f"http://127.0.0.1:{closed}/oauth/token")
    spelled = [f"--timeout={value}"] if value.startswith("-") else ["--timeout", value]
    argv = [command, "-c", str(config), *spelled]
    if command == "exec":
        argv += ["--", "/bin/true"]
    code, _, err = await asyncio.wait_for(edge_token(*argv), 20)
    assert code == 2, err
    assert "argument --timeout: must be a finite number of seconds, 0 or more" in err and repr(value) in err, err
