"""`check` before a reload recognises the running daemon of the same config on the listen address by its /status,
however many profiles that /status lists (it read 1 MiB: above ~3,000 profiles the body was cut, did not parse,
and the daemon's own address was reported as taken by another process)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from edge_token.preflight import _our_daemon_listens


@pytest.mark.parametrize("profiles", [10, 10_000])
async def test_the_running_daemon_is_recognised_whatever_its_size(tmp_path: Path, profiles: int) -> None:
    config = tmp_path / "edge-token.toml"
    config.write_text("")
    entry = {"state": "fresh", "ready": True, "expires_at": 2e9, "last_error": None, "fingerprint": "0" * 12}
    body = json.dumps({"profiles": {f"profile-{i}": entry for i in range(profiles)}, "daemon": {"config": str(config)}})

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await asyncio.to_thread(_our_daemon_listens, "127.0.0.1", port, config)
        assert not await asyncio.to_thread(_our_daemon_listens, "127.0.0.1", port, tmp_path / "other.toml")
    finally:
        await runner.cleanup()
