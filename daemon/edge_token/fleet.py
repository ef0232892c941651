"""Fleet mode: many daemons share one token per profile through etcd, so a fleet makes one token request per
rotation instead of one per host.

- etcd is spoken to through its v3 JSON gateway (`/v3/kv/*`, `/v3/lease/*`) over the daemon's one aiohttp
  session: no extra dependency, and this module is imported only when `[fleet]` is configured.
- Election per profile, one lease per daemon: each daemon grants one lease (TTL `lease_ttl_seconds`) and keeps it
  alive; leadership of a profile is the key `<prefix>/<profile>/leader`, created-if-absent under that lease in a
  transaction. Per-profile leaders spread the token requests over the fleet; one lease keeps keep-alive traffic
  at one call per daemon however many profiles there are. A dead or partitioned leader's lease expires, its keys
  vanish, and the next daemon to try wins.
- The leader publishes each verified token to `<prefix>/<profile>/token` with a compare-and-swap on the
  revision it last saw, so a deposed leader can never overwrite a newer token.
- Every daemon, leader or not, reads the token key and **verifies** what it finds (the store is not trusted)
  before writing it to its own sinks. Followers poll it every `poll_seconds`.
- etcd unreachable: every daemon acts alone (renews its own token) and rejoins when etcd answers again.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from edge_token import egress, scrub
from edge_token.config import FleetConfig
from edge_token.errors import EdgeTokenError
from edge_token.oauth import read_limited, sanitize

LEADER, FOLLOWER, STANDALONE = "leader", "follower", "standalone"
MAX_ETCD_BYTES = 256 * 1024


class EtcdUnavailable(EdgeTokenError):
    """No etcd endpoint answered (or none accepted our request)."""

    kind = "etcd"


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


@dataclass(frozen=True)
class Stored:
    """A value read from etcd with the revision that last changed it (0 when the key is absent)."""

    value: str | None
    mod_revision: int


class Etcd:
    """A minimal etcd v3 client over the JSON gateway, failing over across endpoints."""

    def __init__(self, config: FleetConfig, session: aiohttp.ClientSession) -> None:
        self.config, self._session = config, session
        self._preferred = 0
        self._auth_token: str | None = None
        self._tls: ssl.SSLContext | bool = True
        if config.ca_file or config.cert_file:
            context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            if config.cert_file:
                context.load_cert_chain(str(config.cert_file), str(config.key_file) if config.key_file else None)
            self._tls = context

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        endpoints = self.config.etcd_endpoints
        last = "no endpoint"
        for offset in range(len(endpoints)):
            index = (self._preferred + offset) % len(endpoints)
            try:
                answer = await self._post(endpoints[index], path, body)
            except (OSError, aiohttp.ClientError, TimeoutError, EdgeTokenError, ValueError) as exc:
                last = f"{endpoints[index]}: {sanitize(exc, (), 120)}"
                continue
            self._preferred = index
            return answer
        raise EtcdUnavailable(f"etcd unavailable ({last})")

    async def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": self._auth_token} if self._auth_token else {}
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        via = egress.route(self.config.egress, endpoint, os.environ)  # [fleet] proxy (egress.py)
        async with self._session.post(
            f"{endpoint}{path}", json=body, headers=headers, timeout=timeout, ssl=self._tls, allow_redirects=False,
            proxy=via.proxy, proxy_headers=via.proxy_headers,
        ) as response:  # fmt: skip
            raw = await read_limited(response, MAX_ETCD_BYTES, "etcd answer")
            if response.status == 401 and self.config.username and path != "/v3/auth/authenticate":
                await self._authenticate(endpoint)
                return await self._post(endpoint, path, body)
            if response.status != 200:
                # scrub the whole answer, then truncate: cutting first could leave half an echoed password behind
                raise EtcdUnavailable(f"etcd answered {response.status}: {sanitize(raw.decode('utf-8', 'replace'))}")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("etcd answer is not an object")
        return data

    async def _authenticate(self, endpoint: str) -> None:
        assert self.config.password is not None
        password = self.config.password.read(os.environ, "etcd password")
        answer = await self._post(
            endpoint, "/v3/auth/authenticate", {"name": self.config.username, "password": password}
        )
        self._auth_token = str(answer.get("token", ""))
        scrub.register(self._auth_token)  # a credential like the password: an echo of it is cut everywhere

    async def grant(self, ttl: float) -> str:
        answer = await self.call("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})
        return str(answer["ID"])

    async def keepalive(self, lease: str) -> bool:
        """True while the lease lives (etcd answers TTL <= 0 or no TTL for an expired one)."""
        answer = await self.call("/v3/lease/keepalive", {"ID": lease})
        return int((answer.get("result") or {}).get("TTL", 0)) > 0

    async def revoke(self, lease: str) -> None:
        await self.call("/v3/lease/revoke", {"ID": lease})

    async def get(self, key: str) -> Stored:
        answer = await self.call("/v3/kv/range", {"key": b64(key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            return Stored(None, 0)
        value = base64.b64decode(kvs[0].get("value", "")).decode("utf-8", errors="replace")
        return Stored(value, int(kvs[0].get("mod_revision", 0)))

    async def create_if_absent(self, key: str, value: str, lease: str) -> Stored:
        """Create `key` bound to `lease` unless it exists; returns what the key holds afterwards."""
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}],
            "failure": [{"request_range": {"key": b64(key)}}],
        })  # fmt: skip
        if answer.get("succeeded"):
            return Stored(value, int(answer["header"]["revision"]))
        kvs = ((answer.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
        if not kvs:
            return Stored(None, 0)
        return Stored(base64.b64decode(kvs[0].get("value", "")).decode(errors="replace"), int(kvs[0]["mod_revision"]))

    async def put_if_revision(self, key: str, value: str, mod_revision: int) -> int | None:
        """Put only if the key still has `mod_revision` (0: only if absent); the new revision, or None."""
        compare = (
            {"key": b64(key), "target": "CREATE", "create_revision": "0"}
            if mod_revision == 0
            else {"key": b64(key), "target": "MOD", "mod_revision": str(mod_revision)}
        )
        answer = await self.call("/v3/kv/txn", {
            "compare": [compare], "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        })  # fmt: skip
        return int(answer["header"]["revision"]) if answer.get("succeeded") else None


class Fleet:
    """This daemon's membership: one lease, a role per profile, and the shared token keys."""

    def __init__(self, config: FleetConfig, session: aiohttp.ClientSession, log: Any) -> None:
        self.config = config
        self.etcd = Etcd(config, session)
        self.log = log
        self.node = config.node_name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease: str | None = None
        self.roles: dict[str, str] = {}
        self.leadership_changes: dict[str, int] = {}
        self.seen_revision: dict[str, int] = {}

    def key(self, profile: str, name: str) -> str:
        return f"{self.config.key_prefix.rstrip('/')}/{profile}/{name}"

    async def keepalive(self) -> None:
        """Keep the lease alive (called every lease_ttl/3); a lost lease is replaced at the next role check."""
        if self.lease is None:
            return
        try:
            if not await self.etcd.keepalive(self.lease):
                self.log.warning("fleet.lease_lost", node=self.node)
                self.lease = None
        except EtcdUnavailable:
            pass  # role checks will notice and go standalone

    async def role(self, profile: str) -> str:
        """leader, follower, or standalone (etcd unreachable); tries to become leader if nobody is."""
        try:
            if self.lease is None:
                self.lease = await self.etcd.grant(self.config.lease_ttl_seconds)
            held = await self.etcd.create_if_absent(self.key(profile, "leader"), self.node, self.lease)
            role = LEADER if held.value == self.node else FOLLOWER
        except EtcdUnavailable as exc:
            role = STANDALONE
            if self.roles.get(profile) != STANDALONE:
                self.log.warning("fleet.standalone", profile=profile, message=str(exc))
        previous = self.roles.get(profile)
        if previous != role:
            self.roles[profile] = role
            self.leadership_changes[profile] = self.leadership_changes.get(profile, 0) + (LEADER in (previous, role))
            self.log.info("fleet.role", profile=profile, role=role, previous=previous, node=self.node)
        return role

    async def read_token(self, profile: str) -> Stored:
        stored = await self.etcd.get(self.key(profile, "token"))
        self.seen_revision[profile] = stored.mod_revision
        return stored

    async def publish(self, profile: str, jwt: str) -> bool:
        """CAS-publish a verified token on the revision we last saw; False if someone published meanwhile."""
        revision = await self.etcd.put_if_revision(self.key(profile, "token"), jwt, self.seen_revision.get(profile, 0))
        if revision is None:
            self.log.info("fleet.publish_conflict", profile=profile)
            await self.read_token(profile)
            return False
        self.seen_revision[profile] = revision
        return True

    async def leave(self) -> None:
        """Revoke the lease at shutdown so another daemon takes over at once, not after lease_ttl."""
        if self.lease is not None:
            try:
                await self.etcd.revoke(self.lease)
            except EtcdUnavailable:
                pass
