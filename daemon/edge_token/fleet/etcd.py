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
- This module is the etcd client; `membership.py` is the daemon's side (the one lease, a role per profile).
- Bounded whatever etcd answers: a 401 triggers at most one re-authentication and one retry per request (etcd
  rejecting a fresh auth token is `EtcdAuthRejected`, counted in `Etcd.auth_rejections`), and any answer of an
  unexpected shape is `EtcdUnavailable`, never a KeyError/TypeError escaping into the renewal cycle.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from edge_token.core import scrub, strictjson
from edge_token.core.errors import EdgeTokenError
from edge_token.core.settings import FleetConfig
from edge_token.net import egress
from edge_token.net.http import exchange, sanitize
from edge_token.net.tls import client_context
from edge_token.secrets import read_secret

LEADER, FOLLOWER, STANDALONE = "leader", "follower", "standalone"
AUTHENTICATE = "/v3/auth/authenticate"
MAX_ETCD_BYTES = 256 * 1024


class EtcdUnavailable(EdgeTokenError):
    """No etcd endpoint answered (or none accepted our request)."""

    kind = "etcd"


class EtcdAuthRejected(EtcdUnavailable):
    """etcd refused our user/password, or rejected the auth token it had just issued (401 after re-auth)."""

    kind = "etcd_auth"


class EtcdLeaseNotFound(EtcdUnavailable):
    """etcd no longer has the lease we used (expired or revoked): an answer of the cluster, not of one endpoint."""

    kind = "etcd_lease"


#: etcd's error for a lease it does not have (rpctypes.ErrLeaseNotFound, gRPC NotFound: HTTP 404 at the gateway)
LEASE_NOT_FOUND = "etcdserver: requested lease not found"

_REVISION = re.compile(r"[0-9]{1,20}")


def _number(value: Any) -> int:
    """A revision/TTL/lease field: etcd's JSON gateway sends int64 as decimal strings. Strict: ASCII digits only
    (int() would take "١٢" or 10,000-digit strings), optionally negative (an expired lease's TTL is -1)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _REVISION.fullmatch(text.removeprefix("-")):
        raise ValueError("not an int64")
    return int(text)


@contextmanager
def _answer_shape(what: str) -> Iterator[None]:
    """Turn a malformed etcd answer into EtcdUnavailable: the store is not trusted to send what we expect."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        detail = str(exc) if isinstance(exc, strictjson.JsonDefect) else type(exc).__name__  # names, never quotes
        raise EtcdUnavailable(f"etcd answered {what} of an unexpected shape ({detail})") from None


def b64(value: str | bytes) -> str:
    """etcd's JSON gateway carries keys and values base64-encoded."""
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
        #: re-authentications attempted, and how many of them etcd answered with a rejection (for metrics)
        self.authentications = 0
        self.auth_rejections = 0
        self._tls_files = (config.ca_file, config.cert_file, config.key_file)
        client_context("fleet", *self._tls_files)  # now: a missing or broken file fails the start (exit 78), key named

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one gateway call, trying each endpoint once from the last one that worked; one re-authentication on a
        rejected token. EtcdUnavailable when none answers."""
        endpoints = self.config.etcd_endpoints
        last = "no endpoint"
        rejected = False
        for offset in range(len(endpoints)):
            index = (self._preferred + offset) % len(endpoints)
            try:
                answer: dict[str, Any] = await self._post(endpoints[index], path, body)
            except EtcdLeaseNotFound:
                raise  # every member would say the same
            except (OSError, aiohttp.ClientError, TimeoutError, EdgeTokenError, ValueError) as exc:
                rejected = rejected or isinstance(exc, EtcdAuthRejected)
                last = f"{endpoints[index]}: {sanitize(exc, (), 160)}"
                continue
            self._preferred = index
            return answer
        raise (EtcdAuthRejected if rejected else EtcdUnavailable)(f"etcd unavailable ({last})")

    async def _post(self, endpoint: str, path: str, body: dict[str, Any], *, reauthenticated: bool = False) -> Any:
        """One request; on a 401 (our auth token expired) re-authenticate once and retry once, never more."""
        headers = {"Authorization": self._auth_token} if self._auth_token else {}
        # the shared exchange (net/http.py): bounded body, [fleet] proxy, timeout, failures as EtcdUnavailable;
        # the TLS files through the one cached builder, so a renewed CA or client certificate is used at once
        status, raw = await exchange(
            self._session, "POST", f"{endpoint}{path}", what="etcd", error=EtcdUnavailable,
            limit=MAX_ETCD_BYTES, timeout=self.config.timeout_seconds, headers=headers, body=body,
            tls=client_context("fleet", *self._tls_files),
            secrets=tuple(filter(None, (self._auth_token, body.get("password")))),
            via=egress.route(self.config.egress, endpoint, os.environ), key="fleet.etcd_endpoints",
        )  # fmt: skip
        if status == 401 and self.config.username and path != AUTHENTICATE:
            if reauthenticated:
                self.auth_rejections += 1
                self._auth_token = None
                raise EtcdAuthRejected(
                    "etcd rejected the auth token it had just issued (401 after re-authenticating); check the "
                    "etcd user's roles and the fleet username/password_file"
                )
            await self._authenticate(endpoint)
            return await self._post(endpoint, path, body, reauthenticated=True)
        if status == 404 and LEASE_NOT_FOUND.encode() in raw:
            raise EtcdLeaseNotFound("etcd no longer has this daemon's lease (expired or revoked)")
        if status != 200:
            if path == AUTHENTICATE:
                self.auth_rejections += 1
                raise EtcdAuthRejected(f"etcd refused the fleet username/password (HTTP {status})")
            # scrub the whole answer, then truncate: cutting first could leave half an echoed password behind
            raise EtcdUnavailable(f"etcd answered {status}: {sanitize(raw.decode('utf-8', 'replace'))}")
        with _answer_shape("an answer"):
            data = strictjson.loads(raw)  # the one strict parse of network bodies (duplicates, NaN, depth)
            if not isinstance(data, dict):
                raise strictjson.JsonDefect(f"{strictjson.kind(data)}, not a JSON object")
        return data

    async def _authenticate(self, endpoint: str) -> None:
        if self.config.password is None:
            raise EtcdAuthRejected("etcd asks for authentication but fleet.password_file is not set")
        self.authentications += 1
        password = read_secret(self.config.password, os.environ, "etcd password")
        answer = await self._post(endpoint, AUTHENTICATE, {"name": self.config.username, "password": password})
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            self.auth_rejections += 1
            raise EtcdAuthRejected("etcd answered the authentication without a token")
        self._auth_token = token
        scrub.register(token)  # a credential like the password: an echo of it is cut everywhere

    async def grant(self, ttl: float) -> str:
        """A new lease of `ttl` seconds; its id."""
        answer = await self.call("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})
        with _answer_shape("a lease grant"):
            return str(_number(answer["ID"]))

    async def keepalive(self, lease: str) -> bool:
        """True while the lease lives (etcd answers TTL <= 0 or no TTL for an expired one)."""
        answer = await self.call("/v3/lease/keepalive", {"ID": lease})
        with _answer_shape("a lease keep-alive"):
            return _number((answer.get("result") or {}).get("TTL", 0)) > 0

    async def revoke(self, lease: str) -> None:
        """End a lease now (leaving the fleet): its keys go with it."""
        await self.call("/v3/lease/revoke", {"ID": lease})

    async def get(self, key: str) -> Stored:
        """The value at `key` and the revision that last changed it."""
        answer = await self.call("/v3/kv/range", {"key": b64(key)})
        with _answer_shape("a range"):
            kvs = answer.get("kvs") or []
            if not kvs:
                return Stored(None, 0)
            return Stored(_value(kvs[0]), _number(kvs[0].get("mod_revision", 0)))

    async def create_if_absent(self, key: str, value: str, lease: str) -> Stored:
        """Create `key` bound to `lease` unless it exists; returns what the key holds afterwards."""
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}],
            "failure": [{"request_range": {"key": b64(key)}}],
        })  # fmt: skip
        with _answer_shape("a transaction"):
            if answer.get("succeeded"):
                return Stored(value, _number(answer["header"]["revision"]))
            kvs = ((answer.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
            if not kvs:
                return Stored(None, 0)
            return Stored(_value(kvs[0]), _number(kvs[0]["mod_revision"]))

    async def delete_if_value(self, key: str, value: str) -> bool:
        """Delete `key` only while it holds `value` (our node name in a leader key); True if it was deleted."""
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "VALUE", "value": b64(value)}],
            "success": [{"request_delete_range": {"key": b64(key)}}],
        })  # fmt: skip
        with _answer_shape("a transaction"):
            return bool(answer.get("succeeded"))

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
        with _answer_shape("a transaction"):
            return _number(answer["header"]["revision"]) if answer.get("succeeded") else None


def _value(kv: dict[str, Any]) -> str:
    return base64.b64decode(kv.get("value", ""), validate=True).decode("utf-8", errors="replace")
