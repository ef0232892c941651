"""The HashiCorp Vault KV v2 sink: {token, expires_at, expires_at_unix, token_type} at MOUNT/data/PATH.

- Writes use check-and-set (`options.cas` = the version we read, 0 when absent), so concurrent writers cannot
  regress the value; a value with a later expiry than ours is left alone.
- Auth: a Vault token from a file or an environment variable (re-read each time), or AppRole
  (`role_id` + `secret_id_file`): the client token is cached, renewed (renew-self) when a third of its lease is
  left, and re-obtained by logging in again when renewal fails or Vault answers 403.
- `namespace` is sent as X-Vault-Namespace (Vault Enterprise / HCP).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from edge_token.core.errors import ConfigError, SinkError
from edge_token.core.settings import SinkConfig, VaultKvOptions
from edge_token.core.strictnum import finite, whole
from edge_token.core.token import Token
from edge_token.net.http import sanitize
from edge_token.secrets import read_secret
from edge_token.sinks.store import Held, Verifier, write_never_regress
from edge_token.sinks.storehttp import Answer, call

MAX_VERSION = 2**53  # Vault versions are JSON integers; anything beyond is not one
MAX_EPOCH = 10**11  # about year 5138: beyond any real expiry


class VaultKvSink:
    """A Vault KV v2 secret, written with check-and-set and never replaced by an older token."""

    noun = "the secret"

    def __init__(
        self,
        config: SinkConfig,
        options: VaultKvOptions,
        session: aiohttp.ClientSession,
        on_secret: Callable[[str], None] | None = None,
        environ: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        verify: Verifier | None = None,
    ) -> None:
        self.config, self.options, self.name = config, options, config.name
        self._verify = verify  # the profile's verification: what the store holds counts as newer only if it passes
        self._session, self._on_secret, self._monotonic = session, on_secret, monotonic
        self._environ = os.environ if environ is None else environ
        self._client_token: str | None = None  # AppRole: cached client token
        self._lease_ends = 0.0
        self._lease = 0.0
        self._renewable = False

    # ---- auth ------------------------------------------------------------------------------------------
    def _secret(self, value: str) -> str:
        if self._on_secret is not None:
            self._on_secret(value)
        return value

    async def _vault_token(self, fresh_login: bool = False) -> str:
        if self.options.token is not None:
            try:
                return self._secret(read_secret(self.options.token, self._environ, "Vault token"))
            except ConfigError as exc:
                raise SinkError(f"{self.name}: {exc}") from None
        now = self._monotonic()
        if self._client_token and not fresh_login:
            if now < self._lease_ends - self._lease / 3:
                return self._client_token
            if self._renewable and now < self._lease_ends and await self._renew_self():
                return self._client_token
        return await self._approle_login()

    async def _approle_login(self) -> str:
        if self.options.role_id is None or self.options.secret_id is None:
            raise SinkError(f"{self.name}: set token_file, token_env, or role_id + secret_id_file")
        try:
            secret_id = self._secret(read_secret(self.options.secret_id, self._environ, "AppRole secret_id"))
        except ConfigError as exc:
            raise SinkError(f"{self.name}: {exc}") from None
        url = f"{self.options.address}/v1/auth/{self.options.approle_mount}/login"
        answer = await self._call("POST", url, None, {"role_id": self.options.role_id, "secret_id": secret_id})
        auth = (answer.body or {}).get("auth") if answer.status == 200 else None
        if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
            raise SinkError(f"{self.name}: AppRole login failed ({answer.status}): check role_id and secret_id")
        self._adopt_lease(auth)
        return str(auth["client_token"])

    async def _renew_self(self) -> bool:
        if self._client_token is None:
            return False
        answer = await self._call("POST", f"{self.options.address}/v1/auth/token/renew-self", self._client_token, {})
        auth = (answer.body or {}).get("auth") if answer.status == 200 else None
        if isinstance(auth, dict) and isinstance(auth.get("client_token"), str):
            self._adopt_lease(auth)
            return True
        return False

    def _adopt_lease(self, auth: dict[str, Any]) -> None:
        self._client_token = self._secret(auth["client_token"])
        lease = auth.get("lease_duration")
        self._lease = finite(lease, 1, 10**9) or 3600.0
        self._lease_ends = self._monotonic() + self._lease
        self._renewable = bool(auth.get("renewable"))

    # ---- plumbing --------------------------------------------------------------------------------------
    async def _call(self, method: str, url: str, token: str | None, body: Any = None) -> Answer:
        headers = {"Accept": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        if self.options.namespace:
            headers["X-Vault-Namespace"] = self.options.namespace
        return await call(
            self._session, method, url, what=f"{self.name}: Vault", headers=headers, body=body,
            timeout=self.options.timeout_seconds, ca_file=self.options.ca_file,
            secrets=tuple(t for t in (token,) if t), egress_settings=self.options.egress, environ=self._environ,
        )  # fmt: skip

    @property
    def _data_url(self) -> str:
        return f"{self.options.address}/v1/{self.options.mount}/data/{self.options.path}"

    async def _authorized(self, method: str, body: Any = None) -> Answer:
        """Call the data URL; with AppRole, log in again once on 403 (a revoked or expired client token)."""
        answer = await self._call(method, self._data_url, await self._vault_token(), body)
        if answer.status == 403 and self.options.role_id is not None:
            answer = await self._call(method, self._data_url, await self._vault_token(fresh_login=True), body)
        return answer

    def _error(self, answer: Answer, action: str) -> SinkError:
        errors = (answer.body or {}).get("errors") or []
        said = sanitize("; ".join(str(e) for e in errors), (), 160) if isinstance(errors, list) else ""
        mount, path = self.options.mount, self.options.path
        if answer.status == 403:
            need = "create and update" if action == "write" else "read"
            hint = f"permission denied: the Vault policy needs {need} on {mount}/data/{path}"
        elif answer.status == 404 or "no handler for route" in said:
            hint = f"no KV v2 engine mounted at {mount!r}: check mount (and the namespace)"
        elif answer.status == 400:
            hint = f"Vault refused the request: {said}"
        else:
            hint = f"Vault answered {answer.status} {said or answer.defect or ''}; will retry"
        return SinkError(f"{self.name}: cannot {action}: {hint}")

    # ---- Sink protocol ---------------------------------------------------------------------------------
    async def read(self) -> str | None:
        """The token the secret holds, or None."""
        try:
            answer = await self._authorized("GET")
        except SinkError:
            return None
        data = _kv(answer).get("data") if answer.status == 200 else None
        token = data.get("token") if isinstance(data, dict) else None
        return token if isinstance(token, str) else None

    async def write(self, token: Token) -> bool:
        """Put the token in Vault unless it holds a newer one; False if it already held this token."""
        return await write_never_regress(self, token, self._verify)

    async def held(self) -> Held:
        """The secret's current value and its raw metadata.version (a soft-deleted secret answers 404 with one)."""
        current = await self._authorized("GET")
        if current.status == 200 and current.body is None:
            raise self._error(current, "read")  # 200 but no unambiguous JSON object: we cannot know what it holds
        kv = _kv(current)
        metadata: dict[str, Any] = kv["metadata"] if isinstance(kv.get("metadata"), dict) else {}
        if current.status == 200:
            existing: dict[str, Any] = kv["data"] if isinstance(kv.get("data"), dict) else {}
            stored = existing.get("token")
            return Held(stored if isinstance(stored, str) else None, _number(existing.get("expires_at_unix")),
                        metadata.get("version", 0))  # fmt: skip
        if current.status != 404 or "no handler for route" in str((current.body or {}).get("errors")):
            raise self._error(current, "read")
        return Held(None, 0.0, metadata.get("version", 0))

    async def write_if_unchanged(self, held: Held, token: Token) -> bool:
        """Write with check-and-set on the version read (0: create only if absent); a cas mismatch is False."""
        version = whole(held.version, 0, MAX_VERSION)
        if version is None:
            raise SinkError(f"{self.name}: Vault answered a metadata.version that is not a version number")
        value = {
            "token": token.jwt,
            "token_type": token.token_type,
            "expires_at": datetime.fromtimestamp(token.exp, UTC).isoformat(timespec="seconds"),
            "expires_at_unix": int(token.exp),
        }
        written = await self._authorized("POST", {"options": {"cas": version}, "data": value})
        if written.status in (200, 204):
            return True
        if written.status == 400 and "check-and-set" in str((written.body or {}).get("errors")):
            return False  # someone wrote in between: re-read and decide again
        raise self._error(written, "write")


def _kv(answer: Answer) -> dict[str, Any]:
    data = (answer.body or {}).get("data")
    return data if isinstance(data, dict) else {}


def _number(value: object) -> float:
    """A stored expiry; anything that is not a plausible epoch time counts as none (so garbage cannot block us)."""
    return finite(value, 0, MAX_EPOCH) or 0.0
