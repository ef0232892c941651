"""The shipped deployment files stay consistent with the code: the Kubernetes example and the systemd units."""

from __future__ import annotations

from pathlib import Path

import yaml

from edge_token.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_kubernetes_example_carries_a_valid_config(tmp_path: Path) -> None:
    """The ConfigMap's config.toml loads; init container runs `once`, sidecar `run` with both probes."""
    documents = list(yaml.safe_load_all((ROOT / "config/kubernetes/edge-token.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    config = load_config(path, environ={})
    assert config.profiles["production"].sinks[0].path == Path("/var/run/edge-token/token.jwt")
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    init, sidecar = pod["initContainers"]
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
