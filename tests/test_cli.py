"""The real `edge-token` process: exit codes, one clear line per failure, and nothing secret printed."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey

from conftest import CLIENT_SECRET, profile_toml
from edge_token.localauth import LocalAuthServer

pytestmark = pytest.mark.usefixtures("live_auth")


async def edge_token(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m edge_token ARGS` as a child while this loop keeps serving the auth server."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_token", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
