"""The Kubernetes Secret sink: the token in one key of a Secret, over the REST API, never a blind overwrite.

- Auth: the pod's service-account token, re-read on every call (projected tokens rotate), and its CA.
- Create if absent (POST); otherwise a conditional replace (PUT carrying the `resourceVersion` we read), so a
  concurrent writer makes us re-read (409) instead of being overwritten; a Secret holding a token that expires
  later than ours is left alone (another daemon got a newer one).
- The expiry is kept in the annotation `edge-token.io/expires-at` (UNIX seconds).

Minimal RBAC (README "Secret-store sinks"): get, create, update, patch on `secrets` with resourceNames [NAME].
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from edge_token.core.errors import SinkError
from edge_token.core.settings import SA_DIR, KubernetesSecretOptions, SinkConfig
from edge_token.core.strictnum import ascii_uint
from edge_token.core.token import Token
from edge_token.net.http import sanitize
from edge_token.sinks.store import Held, Verifier, write_never_regress
from edge_token.sinks.storehttp import Answer, call

EXPIRY_ANNOTATION = "edge-token.io/expires-at"


class KubernetesSecretSink:
    """One key of one Kubernetes Secret, written with optimistic concurrency and never replaced by an older token."""

    noun = "the Secret"

    def __init__(
        self,
        config: SinkConfig,
        options: KubernetesSecretOptions,
        session: aiohttp.ClientSession,
        on_secret: Callable[[str], None] | None = None,
        environ: Mapping[str, str] | None = None,
        verify: Verifier | None = None,
    ) -> None:
        self.config, self.options, self.name = config, options, config.name
        self._verify = verify  # the profile's verification: what the store holds counts as newer only if it passes
        self._session, self._on_secret = session, on_secret
        self._environ = os.environ if environ is None else environ

    # ---- plumbing --------------------------------------------------------------------------------------
    def _base_url(self) -> str:
        if self.options.api_url:
            return self.options.api_url.rstrip("/")
        host, port = self._environ.get("KUBERNETES_SERVICE_HOST"), self._environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise SinkError(f"{self.name}: not running in a cluster ($KUBERNETES_SERVICE_HOST unset): set api_url")
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    def _namespace(self) -> str:
        if self.options.namespace:
            return self.options.namespace
        try:
            return (SA_DIR / "namespace").read_text().strip()
        except OSError:
            raise SinkError(f"{self.name}: no namespace configured and {SA_DIR / 'namespace'} unreadable") from None

    def _token(self) -> str:
        try:
            token = self.options.token_file.read_text().strip()
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot read service-account token {self.options.token_file}: "
                            f"{exc.strerror}") from None  # fmt: skip
        if self._on_secret is not None:
            self._on_secret(token)
        return token

    def _ca_file(self) -> Path | None:
        """The configured CA bundle; the in-cluster default only where it exists (outside a pod, with api_url
        set, the system CAs verify the API server). A ca_file set in the config that is missing is an error."""
        default = SA_DIR / "ca.crt"
        return None if self.options.ca_file == default and not default.exists() else self.options.ca_file

    async def _call(self, method: str, url: str, body: Any = None) -> Answer:
        token = self._token()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return await call(
            self._session, method, url, what=f"{self.name}: Kubernetes API", headers=headers, body=body,
            timeout=self.options.timeout_seconds, ca_file=self._ca_file(), secrets=(token,),
            egress_settings=self.options.egress, environ=self._environ,
        )  # fmt: skip

    def _url(self, collection: bool = False) -> str:
        base = f"{self._base_url()}/api/v1/namespaces/{quote(self._namespace(), safe='')}/secrets"
        return base if collection else f"{base}/{quote(self.options.secret_name, safe='')}"

    def _error(self, answer: Answer, action: str) -> SinkError:
        message = sanitize((answer.body or {}).get("message", ""), (), 160)
        ns, name = self.options.namespace or "(pod namespace)", self.options.secret_name
        hints = {
            401: "the API server rejected the service-account token",
            403: f"permission denied: the service account needs get, create, update on secrets/{name} in {ns}",
            404: f"namespace {ns} not found",
            422: f"the API server refused the Secret: {message}",
        }
        said = message or answer.defect or ""  # the defect: a 200 whose body is not one JSON object
        hint = hints.get(answer.status) or f"API server answered {answer.status} {said}; will retry"
        return SinkError(f"{self.name}: cannot {action}: {hint}")

    # ---- Sink protocol ---------------------------------------------------------------------------------
    async def read(self) -> str | None:
        """The token the Secret holds, or None (absent, unreadable: adoption then requests a new one)."""
        try:
            answer = await self._call("GET", self._url())
        except SinkError:
            return None
        if answer.status != 200 or answer.body is None:
            return None
        return _decode((answer.body.get("data") or {}).get(self.options.key))

    async def write(self, token: Token) -> bool:
        """Put the token in the Secret unless it holds a newer one; False if it already held this token."""
        return await write_never_regress(self, token, self._verify)

    async def held(self) -> Held:
        """The Secret as it is now (its whole document is the version: the PUT carries its resourceVersion)."""
        current = await self._call("GET", self._url())
        if current.status == 404:
            return Held(None, 0.0, None)
        if current.status != 200 or current.body is None:
            raise self._error(current, "read the Secret")
        annotations = (current.body.get("metadata") or {}).get("annotations") or {}
        stored = (current.body.get("data") or {}).get(self.options.key)
        return Held(_decode(stored), _float(annotations.get(EXPIRY_ANNOTATION)), current.body)

    async def write_if_unchanged(self, held: Held, token: Token) -> bool:
        """Create the Secret if it was absent (409: someone created it meanwhile), else replace it carrying the
        resourceVersion we read (409: someone changed it meanwhile)."""
        encoded = base64.b64encode(token.jwt.encode()).decode()
        if not isinstance(held.version, dict):
            created = await self._call("POST", self._url(collection=True), self._new_secret(encoded, token))
            if created.status in (200, 201, 409):
                return created.status != 409
            raise self._error(created, "create the Secret")
        secret = held.version
        data = secret.get("data") or {}
        metadata = secret.setdefault("metadata", {})
        annotations = metadata.get("annotations") or {}
        secret["data"] = {**data, self.options.key: encoded}
        metadata["annotations"] = {**annotations, **self.options.annotations, EXPIRY_ANNOTATION: str(int(token.exp))}
        metadata["labels"] = {**(metadata.get("labels") or {}), **self.options.labels}
        replaced = await self._call("PUT", self._url(), secret)  # carries metadata.resourceVersion
        if replaced.status in (200, 409):
            return replaced.status == 200
        raise self._error(replaced, "update the Secret")

    def _new_secret(self, encoded: str, token: Token) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": self.options.secret_name,
                "labels": {"app.kubernetes.io/managed-by": "edge-token", **self.options.labels},
                "annotations": {**self.options.annotations, EXPIRY_ANNOTATION: str(int(token.exp))},
            },
            "data": {self.options.key: encoded},
        }


def _decode(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None


def _float(value: object) -> float:
    """The stored expiry annotation (ASCII epoch seconds); garbage counts as none, so it cannot block updates."""
    return float(ascii_uint(value, 11) or 0)
