"""The shipped deployment files stay consistent with the code: the Kubernetes example and the systemd units."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge_token.config import load_config

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("edge-token.service", "edge-token@.service")


def test_kubernetes_example_carries_a_valid_config(tmp_path: Path) -> None:
    """The ConfigMap's config.toml loads; a private token directory is made, `once` fills it, the sidecar `run`s
    with both probes."""
    documents = list(yaml.safe_load_all((ROOT / "config/kubernetes/edge-token.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    config = load_config(path, environ={})
    assert config.profiles["production"].sinks[0].path == Path("/var/run/edge-token/tokens/token.jwt")
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    token_dir, init, sidecar = pod["initContainers"]
    # the emptyDir is world-writable (refused as a sink directory): a private subdirectory is made first
    assert token_dir["command"] == [
        "install",
        "-d",
        "-m",
        "0750",
        str(config.profiles["production"].sinks[0].path.parent),
    ]
    assert init["args"][0] == "once" and sidecar["args"][0] == "run"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert next(v for v in pod["volumes"] if v["name"] == "tokens")["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": "1Mi",
    }


def test_systemd_units_use_notify_watchdog_and_credentials() -> None:
    """Both units: Type=notify, a watchdog, reload by SIGHUP, no restart on config errors, a credential."""
    for name in ("edge-token.service", "edge-token@.service"):
        lines = set((ROOT / "systemd" / name).read_text().splitlines())
        for expected in ("Type=notify", "RestartPreventExitStatus=78", "Restart=on-failure",
                         "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
                         "ProtectSystem=strict", "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service"):  # fmt: skip
            assert expected in lines, (name, expected)
        assert any(line.startswith("WatchdogSec=") for line in lines)
        assert any(line.startswith("LoadCredential=") for line in lines)


def unit_settings(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line)]  # type: ignore[misc]


def test_units_and_readme_snippets_have_no_trailing_comments() -> None:
    """systemd allows comments only on their own line: `After=x.service  # note` depends on a unit named "#".
    Invariant over every setting in the shipped units and every ini snippet in the README."""
    texts = [(name, (ROOT / "systemd" / name).read_text()) for name in UNITS]
    texts += [("README ini block", m) for m in re.findall(r"```ini\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]
    assert len(texts) > len(UNITS), "the README shows a unit snippet"
    for name, text in texts:
        for key, value in unit_settings(text):
            assert not re.search(r"\s[#;]", value), (name, key, value)


def test_units_run_as_the_static_user_with_one_runtime_directory_each() -> None:
    """No DynamicUser (it hides a preserved RuntimeDirectory from readers), no ExecStartPre (a failing one restarts
    forever despite RestartPreventExitStatus=78), distinct, non-nested runtime directories, an fd hard limit."""
    runtime = {}
    for name in UNITS:
        settings = dict(unit_settings((ROOT / "systemd" / name).read_text()))
        assert "DynamicUser" not in settings and "ExecStartPre" not in settings, name
        assert (settings["User"], settings["Group"]) == ("edge-token", "edge-token-readers"), name
        assert settings["ExecStart"].startswith("/usr/local/bin/edge-token run -c /etc/edge-token/"), name
        assert re.fullmatch(r"\d+:\d+", settings["LimitNOFILE"]), name
        runtime[name] = settings["RuntimeDirectory"]
    assert runtime == {"edge-token.service": "edge-token", "edge-token@.service": "edge-token-%i"}
    sysusers = [line.split() for line in (ROOT / "systemd/edge-token.sysusers.conf").read_text().splitlines()]
    entries = {(fields[0], fields[1]) for fields in sysusers if fields and not fields[0].startswith("#")}
    assert {("g", "edge-token-readers"), ("u", "edge-token")} <= entries
    assert ["m", "edge-token", "edge-token-readers"] in sysusers


def test_containerfile_user_and_group_agree() -> None:
    """USER uid:gid is exactly the user and group the image creates (useradd --system alone picks another gid)."""
    lines = (ROOT / "Containerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#")).replace("\\\n", " ")
    uid, gid = re.search(r"^USER (\d+):(\d+)$", text, re.M).groups()  # type: ignore[union-attr]
    useradd = re.search(r"useradd ([^&\n]*)", text).group(1)  # type: ignore[union-attr]
    groupadd = re.search(r"groupadd ([^&\n]*)", text).group(1)  # type: ignore[union-attr]
    assert f"--uid {uid}" in useradd and f"--gid {gid}" in useradd
    assert f"--gid {gid}" in groupadd


def test_readme_install_block_names_only_shipped_files() -> None:
    """The install block the real-systemd test runs refers to files that exist in the repository."""
    block = re.search(r"<!-- system-test: install -->\n```\w*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    for path in re.findall(r"(?<![/\w])((?:systemd|config)/[\w.@-]+)", block.group(1)):
        assert (ROOT / path).is_file(), path


# ---- PID 1 in a container: SIGTERM must stop every command ---------------------------------------------------
UNREACHABLE = """[profiles.p]
client_id = "x"
client_secret_file = "secret"
token_url = "http://127.0.0.1:9/oauth/token"
issuer = "http://127.0.0.1:9/"
jwks_url = "http://127.0.0.1:9/.well-known/jwks.json"
[[profiles.p.sinks]]
path = "token.jwt"
"""
PID1_COMMANDS = {
    # command line, a line it prints once it is in its steady state (then SIGTERM must still work)
    "local-auth": (["local-auth", "--port", "0", "--client-secret-file", "{dir}/la.secret"], "local-auth: issuer"),
    "once": (["once", "-c", "{dir}/c.toml", "--timeout", "600"], "token.renewal_failed"),
    "exec": (["exec", "-c", "{dir}/c.toml", "--", "sleep", "600"], "token.renewal_failed"),
    "run": (["run", "-c", "{dir}/c.toml"], "token.renewal_failed"),
    "demo": (["demo", "--dir", "{dir}/demo", "--duration", "0"], "token.renewed"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(PID1_COMMANDS))
def test_every_long_running_command_stops_on_sigterm_as_pid1(tmp_path: Path, command: str) -> None:
    """As PID 1 of a PID namespace (a container) a signal without a handler is ignored by the kernel: each
    command must still exit promptly on SIGTERM, not wait for the runtime's SIGKILL."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a PID namespace")
    (tmp_path / "c.toml").write_text(UNREACHABLE)
    (tmp_path / "secret").write_text("s3cret-value")
    (tmp_path / "secret").chmod(0o600)
    argv, ready = PID1_COMMANDS[command]
    args = [a.format(dir=tmp_path) for a in argv]
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "edge_token", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        output = b""
        deadline = time.monotonic() + 30
        while ready.encode() not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([process.stdout], [], [], 1)[0]:
                output += os.read(process.stdout.fileno(), 65536)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        pid1 = int(children[0])  # the namespace's PID 1 as seen from here
        os.kill(pid1, signal.SIGTERM)
        code = process.wait(timeout=10)
        assert code in (0, 128 + signal.SIGTERM), (code, output.decode(errors="replace"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
