"""/metrics /healthz /readyz /status on the daemon's own event loop (aiohttp AppRunner + TCPSite).

No endpoint reveals a token. Bodies are JSON; /status passes the same redaction as the logs.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from edge_token.config import parse_listen
from edge_token.errors import ConfigError
from edge_token.health import ProfileStatus, readiness
from edge_token.metrics import Metrics


class HealthSource:
    """What the HTTP server asks the daemon: callables, so the server holds no daemon state."""

    def __init__(
        self,
        statuses: Callable[[], list[ProfileStatus]],
        alive: Callable[[], bool],
        scrub: Callable[[Any], Any],
        daemon: Callable[[], dict[str, Any]] = dict,
        ready: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
    ) -> None:
        self.statuses, self.alive, self.scrub, self.daemon = statuses, alive, scrub, daemon
        self.readiness = ready or (lambda: readiness(self.statuses()))


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=2, sort_keys=True) + "\n", status=status, content_type="application/json"
    )


def build_app(metrics: Metrics, source: HealthSource) -> web.Application:
    app = web.Application()

    async def metrics_handler(request: web.Request) -> web.Response:
        body, headers = metrics.exposition(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )
        return web.Response(body=body, headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        ok = source.alive()
        return _json({"alive": ok}, 200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready, details = source.readiness()
        return _json(source.scrub(details), 200 if ready else 503)

    async def status(request: web.Request) -> web.Response:
        body = {"profiles": {s.profile: s.to_json() for s in source.statuses()}, "alive": source.alive()}
        body["daemon"] = source.daemon()
        return _json(source.scrub(body))

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app


async def start_http(listen: str, metrics: Metrics, source: HealthSource) -> tuple[web.AppRunner, str]:
    """Bind and serve; returns the runner and the bound "host:port". A bind failure is a ConfigError."""
    host, port = parse_listen(listen, "[daemon] listen")
    runner = web.AppRunner(build_app(metrics, source), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        hint = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"[daemon] listen = {listen!r}: cannot listen: {hint}") from None
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
    return runner, f"{shown}:{bound[1]}"
