"""Metrics, health endpoints and alert rules, proven with real promtool and a real Prometheus server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from conftest import CLIENT_SECRET, profile_toml
from daemonproc import DaemonProcess
from edge_token import __version__
from edge_token.provider.verify import decode_unverified
from faultyauth import Fault, FaultyAuthServer
from promsample import sample

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]
RULES = Path(__file__).resolve().parent.parent / "config" / "prometheus"


def need(tool: str) -> str:
    """The path of a real tool; CI installs it (`.ci/run`), so there a missing tool is a failure, not a skip."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (apt-get install prometheus)")
        pytest.skip(f"{tool} is not installed (apt-get install prometheus)")
    return path


@pytest.fixture
def write(tmp_path: Path, auth: FaultyAuthServer, secret_file: Path) -> Callable[..., Path]:
    def make(listen: str = "127.0.0.1:0", sinks: list[dict[str, Any]] | None = None, **settings: Any) -> Path:
        sinks = sinks or [{"path": str(tmp_path / "token.jwt")}]
        text = f'[daemon]\nlog_format = "json"\nlisten = "{listen}"\n'
        text += profile_toml("main", auth, secret_file, sinks, **{"leeway_seconds": 1, **settings})
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(config: Path, daemons: list[DaemonProcess]) -> tuple[DaemonProcess, str]:
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    listening = await daemon.wait_for("http.listening")
    return daemon, f"http://{listening['address']}"


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str, str]:
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def claims_of(token: str) -> dict[str, Any]:
    return decode_unverified(token)[1]


async def test_endpoints_report_a_healthy_profile(
    auth: FaultyAuthServer,
    write: Callable[..., Path],
    daemons: list[DaemonProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """/healthz, /readyz, /status and /metrics (text and OpenMetrics) once the token is written."""
    daemon, base = await start(write(), daemons)
    await daemon.wait_for("token.renewed")
    token = (tmp_path / "token.jwt").read_text()
    exp = claims_of(token)["exp"]
    assert (await get(http, base + "/healthz"))[0] == 200
    code, _, body = await get(http, base + "/readyz")
    assert code == 200 and json.loads(body)["ready"] is True
    code, _, body = await get(http, base + "/status")
    main = json.loads(body)["profiles"]["main"]
    assert main["state"] == "fresh" and main["expires_at"] == exp and main["sinks"][f"file:{tmp_path}/token.jwt"]["ok"]
    assert main["last_error"] is None and len(main["fingerprint"]) == 12
    code, kind, text = await get(http, base + "/metrics")
    assert code == 200 and kind.startswith("text/plain")
    assert sample(text, "edge_token_token_expiry_timestamp_seconds", profile="main") == exp
    assert sample(text, "edge_token_refresh_total", profile="main", result="success") == 1
    assert sample(text, "edge_token_token_requests_total", profile="main") == 1
    assert sample(text, "edge_token_token_state", profile="main", state="fresh") == 1
    assert sample(text, "edge_token_token_state", profile="main", state="stale") == 0
    assert sample(text, "edge_token_sink_healthy", profile="main", sink=f"file:{tmp_path}/token.jwt") == 1
    assert sample(text, "edge_token_jwks_keys", url=auth.jwks_url) == 1
    assert sample(text, "edge_token_build_info", version=__version__) == 1
    code, kind, text = await get(http, base + "/metrics", Accept="application/openmetrics-text")
    assert kind.startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")


async def test_readyz_names_what_is_not_ready(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], http: aiohttp.ClientSession
) -> None:
    """With the provider refusing us, /readyz is 503 and /status says credentials_rejected with the reason."""
    auth.token_faults.extend(
        Fault(401, {"error": "access_denied", "error_description": "Unauthorized"}) for _ in range(9)
    )
    daemon, base = await start(write(), daemons)
    await daemon.wait_for("token.renewal_failed")
    code, _, body = await get(http, base + "/readyz")
    assert code == 503 and json.loads(body)["not_ready"]["main"]["state"] == "credentials_rejected"
    main = json.loads((await get(http, base + "/status"))[2])["profiles"]["main"]
    assert main["last_error"] == {"class": "rejected", "reason": None}  # no provider free text (README "Security")
    assert main["next_attempt_at"] > time.time() + 600  # the long back-off for refused credentials


async def test_port_in_use_is_a_config_error(write: Callable[..., Path], daemons: list[DaemonProcess]) -> None:
    """A listen address already taken fails the start with exit 78 and says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = await DaemonProcess(write(listen=f"127.0.0.1:{port}")).start()
        daemons.append(daemon)
        code = await daemon.wait()
    assert code == 78
    assert any("already in use" in line for line in daemon.raw)


async def test_promtool_accepts_a_real_scrape(
    write: Callable[..., Path], daemons: list[DaemonProcess], http: aiohttp.ClientSession
) -> None:
    """`promtool check metrics` passes on the daemon's real /metrics (after successes and failures)."""
    promtool = need("promtool")
    daemon, base = await start(write(), daemons)
    await daemon.wait_for("token.renewed")
    text = (await get(http, base + "/metrics"))[2]
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
    # counters kept by other parts are exported too: our own scrapes were accepted connections
    assert (sample(text, "edge_token_http_connections_total", result="accepted") or 0) >= 1
    assert sample(text, "edge_token_notify_dropped_total") == 0


def test_shipped_alert_rules_check_and_unit_test() -> None:
    """The shipped rules pass `promtool check rules` and their own `promtool test rules` unit tests."""
    promtool = need("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES / "edge-token.rules.yml")], capture_output=True, text=True, check=False
    )
    shipped = sum(
        len(group["rules"]) for group in yaml.safe_load((RULES / "edge-token.rules.yml").read_text())["groups"]
    )
    assert check.returncode == 0 and f"SUCCESS: {shipped} rules found" in check.stdout, check.stdout + check.stderr
    tested = (RULES / "edge-token.rules.test.yml").read_text()
    untested = [r["alert"] for g in yaml.safe_load((RULES / "edge-token.rules.yml").read_text())["groups"]
                for r in g["rules"] if f"alertname: {r['alert']}" not in tested]  # fmt: skip
    assert untested == [], f"alert rules without a promtool test case: {untested}"
    test = subprocess.run(
        [promtool, "test", "rules", "edge-token.rules.test.yml"], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_real_prometheus_scrapes_the_daemon(
    write: Callable[..., Path], daemons: list[DaemonProcess], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A real Prometheus server scrapes the daemon: target up, and the expiry metric is the token's real exp."""
    prometheus = need("prometheus")
    daemon, base = await start(write(), daemons)
    await daemon.wait_for("token.renewed")
    token = (tmp_path / "token.jwt").read_text()
    exp = claims_of(token)["exp"]
    target = base.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(RULES / 'edge-token.rules.yml'))}]\n"
        f"scrape_configs:\n  - job_name: edge-token\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        up = value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (up != "1" or value is None):
            await asyncio.sleep(0.5)
            try:
                up = await query(http, api, 'up{job="edge-token"}')
                value = await query(http, api, 'edge_token_token_expiry_timestamp_seconds{profile="main"}')
            except aiohttp.ClientError:
                continue
        assert up == "1", "Prometheus never saw the target up"
        assert value is not None and float(value) == exp
    finally:
        server.terminate()
        server.wait(10)


async def query(http: aiohttp.ClientSession, api: str, promql: str) -> str | None:
    async with http.get(api, params={"query": promql}) as response:
        result = (await response.json())["data"]["result"]
    return result[0]["value"][1] if result else None


async def test_no_secret_or_token_leaks_anywhere(
    auth: FaultyAuthServer, write: Callable[..., Path], daemons: list[DaemonProcess], http: aiohttp.ClientSession
) -> None:
    """Through renewals and failures (including a server echoing the secret), nothing emitted holds a secret
    or any issued token: logs, /metrics, /status, /readyz."""
    auth.ttl = 2
    auth.token_faults.extend(
        [
            Fault(401, {"error": "access_denied", "error_description": f"bad secret {CLIENT_SECRET}"}),
        ]
    )
    daemon, base = await start(write(refresh_at=0.5, retry_max_seconds=1), daemons)
    await daemon.wait_for("token.renewal_failed")
    daemon.send(signal.SIGUSR1)  # skip the 15 min back-off of refused credentials
    await daemon.wait_for("token.renewed", count=2, timeout=20)
    auth.token_faults.extend(
        [
            Fault(503, {"error": "temporarily_unavailable", "error_description": CLIENT_SECRET}),
            Fault(200, access_token=auth.mint(auth.claims_for("client-b", "https://api.sitecorecloud.io"))),
        ]
    )
    await daemon.wait_for("token.renewed", count=4, timeout=20)
    emitted = [(await get(http, base + path))[2] for path in ("/metrics", "/status", "/readyz", "/healthz")]
    assert await daemon.stop() == 0
    emitted += daemon.raw
    haystack = "\n".join(emitted)
    assert len(auth.issued) >= 5
    assert CLIENT_SECRET not in haystack
    for token in auth.issued:
        assert token not in haystack and token.split(".")[2] not in haystack
    assert daemon.count("token.renewal_failed") >= 3
