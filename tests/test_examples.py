"""The shipped example configs stay valid as the config format evolves."""

from __future__ import annotations

from pathlib import Path

from edge_token.config import load_config
from edge_token.core.settings import SITECORE_ISSUER

CONFIG = Path(__file__).resolve().parent.parent / "config"


def test_sitecore_example_is_valid(tmp_path: Path) -> None:
    """sitecore.example.toml loads with Sitecore's endpoints."""
    profile = load_config(CONFIG / "sitecore.example.toml", environ={}).profiles["production"]
    assert profile.issuer == SITECORE_ISSUER
    assert [sink.format for sink in profile.sinks] == ["raw", "env"]
    assert profile.sinks[0].mode == 0o640


def test_local_example_points_at_the_bundled_server() -> None:
    """local.toml talks to local-auth's default port with a secret file beside it."""
    profile = load_config(CONFIG / "local.toml", environ={}).profiles["local"]
    assert profile.token_url == "http://127.0.0.1:8400/oauth/token"
    assert profile.secret.ref == str(CONFIG / "local.secret")
