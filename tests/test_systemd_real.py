"""The README's systemd install, run verbatim under a real systemd 252 as PID 1 (systemd-nspawn, Debian 12).

Every promise of README "systemd" is checked against the real thing, not against `systemd-analyze` alone: the
install puts a working `edge-token` on PATH; `enable --now` returns only once the token is on disk, with the
documented STATUS=; a consumer written exactly as the README shows reads the token (file and env file) before
and after a restart; reload applies a config and a broken one keeps the running config; the watchdog restarts
a stopped daemon; a broken config at start leaves the unit failed without restarts; the main unit and two
instances run side by side; the encrypted credential works; error lines carry journald's err priority; enabled
units start at boot; the online exposure score is <= 1.5.

The container has loopback only: wheels are built on the host and the README's `pip install` is pointed at
them (PIP_NO_INDEX/PIP_FIND_LINKS); the provider is `edge-token local-auth` inside. One container serves the
module (booting is fast, installing is not); each test leaves the main unit running with the good config.
Needs root and `tests/system/prepare.sh` (README "systemd"); skipped otherwise, failed instead under CI=true.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import patch

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_token.core.scrub import Scrubber
from edge_token.observe import logs
from edge_token.observe.journal import PRIORITIES
from system.nspawn import Machine, unavailable_reason

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PORT = 8400
SOURCE = "/root/edge-token"
WHEELS = "/root/wheels"
CONFIG = "/etc/edge-token/config.toml"
TOKEN = "/run/edge-token/production.jwt"
ENV_FILE = "/run/edge-token/production.env"
PROVIDER = f'''client_id = "local-client"
token_url = "http://127.0.0.1:{PORT}/oauth/token"
issuer = "http://127.0.0.1:{PORT}/"
jwks_url = "http://127.0.0.1:{PORT}/.well-known/jwks.json"'''

LOCAL_AUTH_UNIT = f"""[Unit]
Description=test provider: the bundled local OAuth2 + JWKS server
Before=edge-token.service edge-token@a.service edge-token@b.service
[Service]
ExecStart=/usr/local/bin/edge-token local-auth --port {PORT} --client-secret-file /root/local.secret
ExecStartPost=/bin/bash -c 'until (: </dev/tcp/127.0.0.1/{PORT}) 2>/dev/null; do kill -0 $MAINPID; sleep 0.1; done'
[Install]
WantedBy=multi-user.target
"""

# What a consumer does with the token: prove it can read the file, that EnvironmentFile= gave it the same
# token, and who it ran as. Exit status says it all; the line lands in the journal for the test to read.
CONSUMER_SCRIPT = f"""#!/bin/sh
set -eu
token=$(cat {TOKEN})
[ -n "$token" ] && [ "$token" = "$SITECORE_EDGE_TOKEN" ]
echo "consumer-ok uid=$(id -u) groups=$(id -Gn | tr ' ' ,)"
"""


def readme_block(name: str) -> str:
    """The fenced block after `<!-- system-test: NAME -->` in the README: the test runs exactly that."""
    match = re.search(rf"<!-- system-test: {name} -->\n```\w*\n(.*?)```", README.read_text(), re.S)
    if match is None:
        raise AssertionError(f"README.md has no block marked <!-- system-test: {name} -->")
    return match.group(1)


def wait_for(machine: Machine, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll a condition until true (systemd state changes are asynchronous to us); on timeout show the journal."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            log = machine.run("journalctl --no-pager -n 40 -o short-monotonic", check=False).stdout
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; journal:\n{log}")
        time.sleep(0.1)


# ---- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"real-systemd test cannot run in CI: {reason}")
        pytest.skip(f"real-systemd test: {reason}")
    box = Machine()
    try:
        box.boot()
        yield box
    finally:
        box.cleanup()


@pytest.fixture(scope="module")
def installed(machine: Machine) -> dict[str, str]:
    """The README's install block, verbatim, in a copy of this checkout; the provider; the test's config."""
    source = machine.path(SOURCE)
    for part in ("pyproject.toml", "README.md"):
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / part, source / part)
    for part in ("daemon", "systemd", "config"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.secret", "*.jwt", "build")
        shutil.copytree(ROOT / part, source / part, ignore=ignore)
    # The container is offline: the host builds every wheel the install needs, the build backend included.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(machine.path(WHEELS)),
         str(source), "setuptools>=77"],
        check=True, timeout=600,
    )  # fmt: skip
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    machine.run(readme_block("install"), env=offline, cwd=SOURCE, timeout=600)

    secret = secrets.token_urlsafe(24)
    local_secret = machine.path("/root/local.secret")
    local_secret.write_text(secret)
    local_secret.chmod(0o600)
    machine.path("/etc/systemd/system/local-auth.service").write_text(LOCAL_AUTH_UNIT)
    consumer_script = machine.path("/usr/local/bin/consumer-check")
    consumer_script.write_text(CONSUMER_SCRIPT)
    consumer_script.chmod(0o755)
    machine.run("useradd --system --no-create-home app && systemctl daemon-reload && systemctl enable --now local-auth")
    # The documented config with the provider pointed at local-auth; written in place, so the owner and mode
    # the README's `install` gave it stay.
    config = machine.path(CONFIG)
    good = config.read_text().replace('client_id = "REPLACE-WITH-YOUR-CLIENT-ID"', PROVIDER)
    assert PROVIDER in good, "config/sitecore.example.toml no longer has the client_id placeholder"
    config.write_text(good)
    # A broken variant: refresh_at is a fraction of the lifetime (0.1 to 0.95).
    broken = re.sub(r"(?m)^refresh_at = 0\.8\b.*$", "refresh_at = 7", good)
    assert broken != good
    return {"secret": secret, "config": good, "broken": broken}


@pytest.fixture
def running(machine: Machine, installed: dict[str, str]) -> Iterator[dict[str, str]]:
    """The main unit active with the good config, before and after each test that uses it."""

    def ensure() -> None:
        machine.path(CONFIG).write_text(installed["config"])
        if (
            not machine.path("/etc/edge-token/production.secret").exists()
            and not machine.path("/etc/edge-token/production.cred").exists()
        ):
            machine.run(readme_block("start"), env={"SECRET": installed["secret"]})
        state = show(machine, "edge-token.service", "ActiveState")["ActiveState"]
        if state != "active":
            machine.run("systemctl reset-failed edge-token; systemctl start edge-token")

    ensure()
    yield installed
    ensure()


def show(machine: Machine, unit: str, *properties: str) -> dict[str, str]:
    out = machine.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def verify(machine: Machine, token: str = TOKEN, config: str = CONFIG) -> dict[str, object]:
    """`edge-token inspect --verify`: signature against the provider's JWKS, issuer, audience, expiry."""
    report: dict[str, object] = json.loads(machine.run(f"edge-token inspect --verify -c {config} {token}").stdout)
    assert report["verified"] is True, report
    return report


def exists(machine: Machine, path: str) -> bool:
    """Inside the container: /run is nspawn's own tmpfs, invisible in the overlay seen from the host."""
    return machine.run(f"test -e {path}", check=False).returncode == 0


def journal(machine: Machine, unit: str, *options: str) -> str:
    return machine.run(f"journalctl --no-pager -u {unit} " + " ".join(options)).stdout


# ---- assertions against the real systemd ---------------------------------------------------------------------
def test_readme_install_puts_a_working_edge_token_on_path(machine: Machine, installed: dict[str, str]) -> None:
    """`edge-token` on PATH is the venv's; the daemon user can read the documented config; groups are right."""
    assert machine.run("command -v edge-token").stdout.strip() == "/usr/local/bin/edge-token"
    assert machine.run("edge-token --version").stdout.startswith("edge-token ")
    assert machine.run(f"stat -c '%U:%G %a' {CONFIG} /etc/edge-token").stdout.split("\n")[:2] == [
        "root:edge-token-readers 640",
        "root:edge-token-readers 750",
    ]
    assert "edge-token-readers" in machine.run("id -Gn edge-token").stdout.split()
    # The unit's identity (User=edge-token, Group=edge-token-readers) can read and validate the config.
    machine.run(f"setpriv --reuid edge-token --regid edge-token-readers --clear-groups edge-token check -c {CONFIG}")


def test_enable_now_returns_only_once_the_token_is_on_disk(machine: Machine, installed: dict[str, str]) -> None:
    """README's start block: with the provider down the unit stays `activating` and writes nothing; once the
    provider is up `enable --now` returns, the token verifies, and STATUS= reads as documented."""
    machine.run("systemctl stop edge-token local-auth; rm -f /run/edge-token/*; systemctl reset-failed edge-token")
    start = machine.popen(readme_block("start"), env={"SECRET": installed["secret"]})
    try:
        wait_for(
            machine,
            lambda: (
                "token.renewal_failed" in journal(machine, "edge-token", "-o", "cat", "-n", "50")
                and show(machine, "edge-token", "ActiveState")["ActiveState"] == "activating"
            ),
            "edge-token activating with a failed first attempt",
        )
        assert start.poll() is None, "systemctl enable --now returned before the token was on disk"
        assert not exists(machine, TOKEN)
        machine.run("systemctl start local-auth")
        _, stderr = start.communicate(timeout=90)
        assert start.returncode == 0, stderr
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
    state = show(machine, "edge-token", "ActiveState", "StatusText", "UnitFileState")
    assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled"
    assert re.fullmatch(r"1/1 profiles fresh, next renewal \d\d:\d\dZ", state["StatusText"]), state["StatusText"]
    verify(machine)
    assert machine.run(f"stat -c '%U:%G %a' {TOKEN}").stdout.strip() == "edge-token:edge-token-readers 640"
    assert machine.run("stat -c '%F %U %a' /run/edge-token").stdout.strip() == "directory edge-token 755"


def test_readme_consumer_reads_the_token_before_and_after_a_restart(machine: Machine, running: dict[str, str]) -> None:
    """The README's consumer snippet, verbatim plus the app's own lines, as an unprivileged user."""
    unit = readme_block("consumer") + "Type=oneshot\nUser=app\nExecStart=/usr/local/bin/consumer-check\n"
    machine.path("/etc/systemd/system/consumer.service").write_text(unit)
    machine.run("systemctl daemon-reload")
    before = machine.run(f"cat {TOKEN}").stdout
    machine.run("systemctl start consumer")
    machine.run("systemctl restart edge-token")
    machine.run("systemctl start consumer")
    lines = [line for line in journal(machine, "consumer", "-o", "cat").splitlines() if "consumer-ok" in line]
    assert len(lines) == 2, lines
    uid = machine.run("id -u app").stdout.strip()
    assert all(f"uid={uid} " in line and "edge-token-readers" in line for line in lines)
    assert uid != "0"
    assert machine.run(f"cat {TOKEN}").stdout == before, "a still-fresh token is reused across a restart"


def test_reload_applies_a_config_and_a_broken_one_keeps_the_running_one(
    machine: Machine, running: dict[str, str]
) -> None:
    """`systemctl reload` adds a sink without a restart; a broken config on reload is refused at err priority."""
    pid = show(machine, "edge-token", "MainPID")["MainPID"]
    extra = (
        '\n[[profiles.production.sinks]]\npath = "/run/edge-token/production.json"\nformat = "json"\nmode = "0640"\n'
    )
    machine.path(CONFIG).write_text(running["config"] + extra)
    machine.run("systemctl reload edge-token")
    wait_for(machine, lambda: exists(machine, "/run/edge-token/production.json"), "the new sink after reload")
    machine.path(CONFIG).write_text(running["broken"])
    machine.run("systemctl reload edge-token")
    wait_for(
        machine,
        lambda: "config.reload_failed" in journal(machine, "edge-token", "-p", "err", "-o", "cat"),
        "config.reload_failed in journalctl -p err",
    )
    state = show(machine, "edge-token", "ActiveState", "MainPID", "StatusText")
    assert state["ActiveState"] == "active" and state["MainPID"] == pid
    assert "reload failed" in state["StatusText"]
    # journald took the priority from the `<3>` prefix and stripped it: the message is the JSON line itself.
    entries = [json.loads(line) for line in journal(machine, "edge-token", "-p", "err", "-o", "json").splitlines()]
    failed = [e for e in entries if "config.reload_failed" in e["MESSAGE"]]
    assert failed and all(e["PRIORITY"] == "3" for e in failed)
    assert json.loads(failed[-1]["MESSAGE"])["level"] == "error"
    assert "refresh_at" in failed[-1]["MESSAGE"]
    # Info lines stay info: nothing but errors at err.
    assert all(json.loads(e["MESSAGE"])["level"] in ("error", "critical") for e in entries if e["MESSAGE"][0] == "{")
    machine.path(CONFIG).write_text(running["config"])
    verify(machine)


def test_watchdog_restarts_a_stopped_daemon(machine: Machine, running: dict[str, str]) -> None:
    """SIGSTOP of the main PID: no WATCHDOG=1 pings, systemd aborts and restarts it; the token stays valid.

    A drop-in shortens WatchdogSec= to 4 s (the shipped 30 s works the same, only slower)."""
    dropin = machine.path("/etc/systemd/system/edge-token.service.d/test-watchdog.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=4s\nRestartSec=1s\n")
    try:
        machine.run("systemctl daemon-reload && systemctl restart edge-token")
        before = show(machine, "edge-token", "MainPID", "NRestarts")
        machine.run(f"kill -STOP {before['MainPID']}")
        wait_for(
            machine,
            lambda: (
                (s := show(machine, "edge-token", "ActiveState", "MainPID", "NRestarts"))["ActiveState"] == "active"
                and s["MainPID"] not in ("0", before["MainPID"])
            ),
            "a restart by the watchdog",
        )
        assert int(show(machine, "edge-token", "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
        assert "Watchdog timeout" in journal(machine, "edge-token", "-o", "cat")
        verify(machine)
    finally:
        dropin.unlink()
        machine.run("systemctl daemon-reload && systemctl restart edge-token")


def test_broken_config_at_start_fails_once_with_the_reason(machine: Machine, running: dict[str, str]) -> None:
    """Exit 78 from `run` itself: the unit goes straight to failed (never to auto-restart), reason visible."""
    machine.run("systemctl stop edge-token")
    machine.path(CONFIG).write_text(running["broken"])
    assert machine.run("systemctl start edge-token", check=False).returncode != 0
    state = show(machine, "edge-token", "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    status = machine.run("systemctl status --no-pager -n 20 edge-token", check=False).stdout
    assert f"{CONFIG}: profiles.production.refresh_at: expected a number" in status, status
    assert "refresh_at" in journal(machine, "edge-token", "-p", "err", "-o", "cat", "-n", "5")


def test_main_unit_and_two_instances_run_side_by_side(machine: Machine, running: dict[str, str]) -> None:
    """edge-token.service, edge-token@a and edge-token@b at once, each with its own runtime directory and
    tokens; stopping one instance leaves the others' tokens in place."""
    for name in ("a", "b"):
        config = (
            f'[daemon]\nlisten = ""\n[profiles.{name}]\n{PROVIDER}\nclient_secret_credential = "client-secret"\n'
            f'[[profiles.{name}.sinks]]\npath = "/run/edge-token-{name}/token.jwt"\nmode = "0640"\n'
        )
        machine.path(f"/root/{name}.toml").write_text(config)
        machine.run(
            f"install -m 0640 -g edge-token-readers /root/{name}.toml /etc/edge-token/{name}.toml\n"
            f'install -m 0600 /dev/stdin /etc/edge-token/{name}.secret <<<"$SECRET"',
            env={"SECRET": running["secret"]},
        )
    machine.run("systemctl enable --now edge-token@a edge-token@b")
    units = ("edge-token.service", "edge-token@a.service", "edge-token@b.service")
    assert [show(machine, u, "ActiveState")["ActiveState"] for u in units] == ["active"] * 3
    tokens = {name: machine.run(f"cat /run/edge-token-{name}/token.jwt").stdout for name in ("a", "b")} | {
        "main": machine.run(f"cat {TOKEN}").stdout
    }
    assert len(set(tokens.values())) == 3 and all(tokens.values())
    for name in ("a", "b"):
        verify(machine, f"/run/edge-token-{name}/token.jwt", f"/etc/edge-token/{name}.toml")
    machine.run("systemctl stop edge-token@a")
    assert not exists(machine, "/run/edge-token-a")
    assert machine.run(f"cat /run/edge-token-b/token.jwt {TOKEN}").stdout == tokens["b"] + tokens["main"]
    machine.run("systemctl start edge-token@a")
    assert show(machine, "edge-token@a", "ActiveState")["ActiveState"] == "active"


def test_readme_encrypted_credential(machine: Machine, running: dict[str, str]) -> None:
    """The README's `systemd-creds` block: the plain secret is gone and a new token is fetched with the
    decrypted one (the old token file is removed first, so the restart must ask the provider)."""
    machine.run(f"rm {TOKEN}")
    machine.run(readme_block("encrypt"))
    assert not machine.path("/etc/edge-token/production.secret").exists()
    assert show(machine, "edge-token", "ActiveState")["ActiveState"] == "active"
    assert "LoadCredentialEncrypted" in machine.run("systemctl cat edge-token").stdout
    verify(machine)


@pytest.mark.parametrize("unit", ["edge-token.service", "edge-token@a.service"])
def test_online_security_exposure_at_most_1_5(machine: Machine, installed: dict[str, str], unit: str) -> None:
    """The installed units verify cleanly and score <= 1.5 against the running systemd (not just offline)."""
    template = unit.replace("@a", "@")
    assert machine.run(f"systemd-analyze verify /etc/systemd/system/{template} 2>&1").stdout == ""
    out = machine.run(f"systemd-analyze security --no-pager {unit}").stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= 1.5, out
    print(f"{unit}: online exposure {match.group(1)}")


def test_enabled_units_start_at_boot(machine: Machine, running: dict[str, str]) -> None:
    """Power off, boot again: every enabled edge-token unit is active and its tokens are back in the fresh /run."""
    candidates = [f"edge-token@{name}.service" for name in ("a", "b")]
    enabled = machine.run(f"systemctl is-enabled {' '.join(candidates)}", check=False).stdout.split()
    instances = [unit for unit, state in zip(candidates, enabled, strict=True) if state == "enabled"]
    machine.poweroff()
    machine.boot()
    for unit in ("edge-token.service", *instances):
        assert show(machine, unit, "ActiveState")["ActiveState"] == "active", unit
    verify(machine)
    assert machine.run("systemctl show -p NRestarts edge-token").stdout.strip() == "NRestarts=0"


# ---- journald priorities, on the host (no container needed) --------------------------------------------------
LEVELS = st.sampled_from(["debug", "info", "warning", "error", "critical"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(level=LEVELS, message=st.text(max_size=40), stdlib=st.booleans(), journal_is_this_file=st.booleans())
def test_journal_lines_carry_their_level_as_syslog_priority(
    tmp_path: Path, level: str, message: str, stdlib: bool, journal_is_this_file: bool
) -> None:
    """Invariant: when stderr is the journal stream systemd announced, every line (structlog's and stdlib's,
    e.g. aiohttp's) starts with `<N>` for its level and the rest is the JSON line; otherwise no prefix at all."""
    with tempfile.TemporaryFile("w+", dir=tmp_path) as stream, tempfile.NamedTemporaryFile(dir=tmp_path) as other:
        info = os.fstat((stream if journal_is_this_file else other).fileno())
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            with patch.dict(os.environ, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}):
                # its own registry: a message another test registered as a secret (Hypothesis draws both from one
                # pool of constants; CI once drew "Scunthorpe" for each) would be cut, rightly, from this line
                logs.configure("json", "debug", stream=stream, redactor=logs.Redactor(Scrubber()))
            if stdlib:
                logging.getLogger("aiohttp.client").log(logging.getLevelName(level.upper()), "%s", message)
            else:
                getattr(structlog.get_logger("edge_token"), level)("probe", text=message)
        finally:
            root.handlers[:], _ = saved
            root.setLevel(saved[1])
            structlog.reset_defaults()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) == 1
    prefix = f"<{PRIORITIES[level]}>" if journal_is_this_file else ""
    assert lines[0].startswith(prefix + "{")
    record = json.loads(lines[0][len(prefix) :])
    assert record["level"] == level
    assert (record["event"] == message) if stdlib else (record["text"] == message)


def test_config_error_line_is_err_priority_only_on_the_journal(tmp_path: Path) -> None:
    """The one plain line `edge-token: <config error>` (exit 78) is `<3>`-prefixed under journald only."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.p]\nrefresh_at = 7\n")
    out = tmp_path / "stderr"
    with out.open("w") as stderr:
        info = os.fstat(stderr.fileno())
        for environ in ({}, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}):
            env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"} | environ
            code = subprocess.run(
                [sys.executable, "-m", "edge_token", "check", "-c", str(bad)], stderr=stderr, env=env, check=False
            ).returncode
            assert code == 78
    first, second = out.read_text().splitlines()
    assert first.startswith("edge-token: ") and second.startswith("<3>edge-token: ")
