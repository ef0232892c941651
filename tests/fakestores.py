"""Small in-process servers that implement the documented contracts of the Kubernetes Secrets API and the
HashiCorp Vault KV v2 + AppRole + token APIs, as far as the sinks use them. Not real servers: the README says
which behaviours were checked only against these contracts."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web


class Server:
    def __init__(self) -> None:
        self.app = web.Application()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def start(self) -> str:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path, dict(request.headers)))


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }
    return web.json_response(body, status=code)


class FakeKubernetes(Server):
    """/api/v1/namespaces/{ns}/secrets[/{name}]: GET, POST (create), PUT (replace, resourceVersion-checked)."""

    def __init__(self, token: str = "sa-token-1", namespaces: tuple[str, ...] = ("apps",)) -> None:
        super().__init__()
        self.tokens = {token}
        self.namespaces = set(namespaces)
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 100
        self.forbidden = False
        self.failures: list[int] = []  # statuses to answer next, whatever the request
        self.interfere: list[dict[str, str]] = []  # before the next PUT lands, another writer stores these data
        self.echo: Callable[[str, str], str] | None = None  # set: a refused token is quoted back (leak tests)
        self.app.router.add_route("*", "/api/v1/namespaces/{ns}/secrets", self.collection)
        self.app.router.add_route("*", "/api/v1/namespaces/{ns}/secrets/{name}", self.item)

    def _auth(self, request: web.Request) -> web.Response | None:
        self.record(request)
        if self.failures:
            return status(self.failures.pop(0), "InternalError", "injected")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            if self.echo is not None:  # a hostile or buggy API server quoting the credential back
                return status(500, "InternalError", f"token {self.echo('system:serviceaccount', token)} is invalid")
            return status(401, "Unauthorized", "Unauthorized")
        if self.forbidden:
            return status(403, "Forbidden", 'secrets is forbidden: User "system:serviceaccount:apps:x" cannot')
        return None

    def _store(self, ns: str, secret: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        secret["metadata"]["resourceVersion"] = str(self.version)
        secret["metadata"]["namespace"] = ns
        self.secrets[(ns, secret["metadata"]["name"])] = secret
        return secret

    def value(self, ns: str, name: str, key: str = "token") -> str:
        return base64.b64decode(self.secrets[(ns, name)]["data"][key]).decode()

    async def collection(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        ns = request.match_info["ns"]
        if request.method != "POST":
            return status(405, "MethodNotAllowed", "")
        if ns not in self.namespaces:
            return status(404, "NotFound", f'namespaces "{ns}" not found')
        secret = await request.json()
        name = secret.get("metadata", {}).get("name")
        if (ns, name) in self.secrets:
            return status(409, "AlreadyExists", f'secrets "{name}" already exists')
        return web.json_response(self._store(ns, secret), status=201)

    async def item(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        key = (request.match_info["ns"], request.match_info["name"])
        if request.method == "GET":
            if key not in self.secrets:
                return status(404, "NotFound", f'secrets "{key[1]}" not found')
            return web.json_response(self.secrets[key])
        if request.method != "PUT":
            return status(405, "MethodNotAllowed", "")
        if key not in self.secrets:
            return status(404, "NotFound", f'secrets "{key[1]}" not found')
        if self.interfere:
            current = self.secrets[key]
            current["data"].update(self.interfere.pop(0))
            self._store(key[0], current)
        secret = await request.json()
        if secret.get("metadata", {}).get("resourceVersion") != self.secrets[key]["metadata"]["resourceVersion"]:
            return status(409, "Conflict", "the object has been modified; please apply your changes to the latest")
        return web.json_response(self._store(key[0], secret))


class FakeEtcdEcho(Server):
    """An etcd v3 JSON gateway that refuses everything (401) and quotes the credentials it was sent back."""

    def __init__(self, echo: Callable[[str, str], str]) -> None:
        super().__init__()
        self.echo = echo
        self.app.router.add_post("/v3/{path:.*}", self.refuse)

    async def refuse(self, request: web.Request) -> web.Response:
        self.record(request)
        body = await request.json()
        said = self.echo(
            str(body.get("name", "")), str(body.get("password") or request.headers.get("Authorization", ""))
        )
        return web.json_response({"error": f"authentication failed: {said}", "code": 16}, status=401)


class FakeVault(Server):
    """KV v2 at /v1/{mount}/data/{path} (GET, POST with cas), AppRole login, token renew-self."""

    def __init__(self, mounts: tuple[str, ...] = ("secret",)) -> None:
        super().__init__()
        self.mounts = set(mounts)
        self.tokens: dict[str, float] = {"root-token": 10**9}  # token -> lease seconds
        self.approles: dict[str, str] = {}  # role_id -> secret_id
        self.lease = 3600
        self.kv: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.logins = 0
        self.renewals = 0
        self.interfere: list[dict[str, Any]] = []  # another writer stores this just before our next write
        self.echo: Callable[[str, str], str] | None = None  # set: refused credentials are quoted back (leak tests)
        self.app.router.add_post("/v1/auth/approle/login", self.login)
        self.app.router.add_post("/v1/auth/token/renew-self", self.renew)
        self.app.router.add_route("*", "/v1/{mount}/data/{path:.*}", self.data)

    @staticmethod
    def errors(code: int, *messages: str) -> web.Response:
        return web.json_response({"errors": list(messages)}, status=code)

    def current(self, mount: str, path: str) -> dict[str, Any] | None:
        versions = self.kv.get((mount, path))
        return versions[-1] if versions else None

    async def login(self, request: web.Request) -> web.Response:
        self.record(request)
        body = await request.json()
        if self.approles.get(body.get("role_id")) != body.get("secret_id"):
            if self.echo is not None:
                return self.errors(
                    400, f"invalid secret ID {self.echo(str(body.get('role_id')), str(body.get('secret_id')))}"
                )
            return self.errors(400, "invalid role or secret ID")
        self.logins += 1
        token = "hvs." + secrets.token_hex(12)
        self.tokens[token] = self.lease
        return web.json_response({"auth": {"client_token": token, "lease_duration": self.lease, "renewable": True}})

    async def renew(self, request: web.Request) -> web.Response:
        self.record(request)
        token = request.headers.get("X-Vault-Token", "")
        if token not in self.tokens:
            return self.errors(403, "permission denied")
        self.renewals += 1
        return web.json_response({"auth": {"client_token": token, "lease_duration": self.lease, "renewable": True}})

    async def data(self, request: web.Request) -> web.Response:
        self.record(request)
        mount, path = request.match_info["mount"], request.match_info["path"]
        if request.headers.get("X-Vault-Token") not in self.tokens:
            if self.echo is not None:  # Vault's own wording is "invalid token"; a proxy may quote the header
                return self.errors(400, f"invalid token {self.echo('vault', request.headers.get('X-Vault-Token', ''))}")
            return self.errors(403, "permission denied")
        if mount not in self.mounts:
            return self.errors(404, f'no handler for route "{mount}/data/{path}". route entry not found.')
        versions = self.kv.setdefault((mount, path), [])
        if request.method == "GET":
            if not versions:
                return self.errors(404)
            return web.json_response({"data": {"data": versions[-1], "metadata": {"version": len(versions)}}})
        if request.method != "POST":
            return self.errors(405)
        if self.interfere:
            versions.append(self.interfere.pop(0))
        body = await request.json()
        cas = body.get("options", {}).get("cas")
        if cas is not None and cas != len(versions):
            return self.errors(400, "check-and-set parameter did not match the current version")
        versions.append(body["data"])
        return web.json_response({"data": {"version": len(versions)}})
