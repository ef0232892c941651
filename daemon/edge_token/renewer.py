"""One profile's cycle: adopt what the sinks hold, or fetch -> verify -> write every sink -> report.

The renewer makes no scheduling decisions: it returns a frozen `RenewalOutcome` and the caller (the `once`
command or the daemon's scheduler) asks the pure policy when to go next. Metrics, logs and health are fed from
the outcome, not from code sprinkled through the pipeline.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from edge_token.clock import Clock
from edge_token.config import ProfileConfig
from edge_token.errors import EdgeTokenError, SinkError, VerificationError
from edge_token.jwks import JwksCache
from edge_token.oauth import request_token
from edge_token.policy import RefreshSettings, TokenState, next_attempt_at, token_state
from edge_token.sinks import Sink, build_sink
from edge_token.token import Token
from edge_token.verify import Rules, verify_token

if TYPE_CHECKING:
    from edge_token.health import ProfileStatus

LIFETIME_MISMATCH_SECONDS = 120.0


@dataclass(frozen=True)
class RenewalOutcome:
    """What one attempt did. Handed to logs, metrics, health and the scheduler; never holds a secret."""

    profile: str
    result: str  # success | adopted | transient | jwks | rejected | protocol | invalid_token | config | sink
    started_at: float
    duration: float
    token: Token | None  # the token the profile holds after this attempt (new, adopted or previous)
    error: EdgeTokenError | None = None
    requested: bool = False  # a token request went to the provider (the quota-relevant count)
    sinks_written: tuple[str, ...] = ()
    sink_errors: Mapping[str, SinkError] = field(default_factory=dict)
    next_attempt_at: float | None = None

    @property
    def ok(self) -> bool:
        """The profile holds a verified token and every sink has it."""
        return self.error is None and not self.sink_errors


class Renewer:
    """Keeps one profile's sinks holding a verified token."""

    def __init__(
        self,
        profile: ProfileConfig,
        session: aiohttp.ClientSession,
        jwks: JwksCache,
        clock: Clock,
        log: Any,
        *,
        environ: Mapping[str, str],
        sinks: Sequence[Sink] | None = None,
        rng: random.Random | None = None,
        on_written: Callable[[str, Sink, Token], None] | None = None,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        self.profile = profile
        self.sinks: list[Sink] = (
            list(sinks) if sinks is not None else [build_sink(s, session, on_secret, environ) for s in profile.sinks]
        )
        self.settings = RefreshSettings(
            refresh_at=profile.refresh_at, jitter=profile.jitter, retry_max=profile.retry_max_seconds
        )
        self.rules = Rules(
            issuer=profile.issuer,
            audience=profile.audience,
            client_id=profile.client_id,
            algorithms=profile.algorithms,
            leeway=profile.leeway_seconds,
        )
        self._session, self._jwks, self._clock, self._environ = session, jwks, clock, environ
        self._rng = rng or random.Random()
        self._on_written, self._on_secret = on_written, on_secret
        self.log = log.bind(profile=profile.name)
        self.current: Token | None = None
        self.pending_sinks: set[str] = set()  # sinks that do not hold `current` yet
        self.failures = 0  # consecutive failed renewals
        self.sink_failures = 0  # consecutive write rounds with at least one failed sink
        self.sink_errors: dict[str, SinkError] = {}  # the latest error of each sink that does not hold `current`
        self.last_outcome: RenewalOutcome | None = None
        self.last_error: EdgeTokenError | None = None  # of the latest renewal; None after a success
        self.last_success_at: float | None = None

    def state(self) -> TokenState:
        return token_state(self.current, self._clock.time(), self.settings)

    def status(self, next_attempt_at: float | None) -> ProfileStatus:
        """The operator-facing snapshot (no token, no secret)."""
        from edge_token.health import ProfileStatus, state_name  # daemon only: keep `once` start-up lean

        token = self.current
        return ProfileStatus(
            profile=self.profile.name,
            state=state_name(self.state(), self.last_error),
            expires_at=token.exp if token else None,
            last_success_at=self.last_success_at,
            next_attempt_at=next_attempt_at,
            last_error=self.last_error,
            sinks={sink.name: self._sink_problem(sink.name) for sink in self.sinks},
            kid=token.kid if token else None,
            fingerprint=token.fingerprint if token else None,
        )

    def _sink_problem(self, name: str) -> str | None:
        if name not in self.pending_sinks:
            return None
        error = self.sink_errors.get(name)
        return str(error) if error else "not written yet"

    async def adopt(self) -> RenewalOutcome | None:
        """Adopt the best verified token already in the sinks (no token request); None if there is none."""
        started, mono = self._clock.time(), self._clock.monotonic()
        seen: dict[str, Token | None] = {}
        for sink in self.sinks:
            jwt = await sink.read()
            if jwt is None or jwt in seen:
                continue
            try:
                seen[jwt] = await verify_token(jwt, self._jwks.key_set, self.rules, self._clock.time())
            except EdgeTokenError as exc:
                seen[jwt] = None
                self.log.info("token.adoption_skipped", sink=sink.name, reason=str(exc))
        candidates = [token for token in seen.values() if token is not None]
        if not candidates:
            return None
        self.current = max(candidates, key=lambda token: token.expires_at)
        self.last_success_at = self._clock.time()
        self.pending_sinks = {sink.name for sink in self.sinks}
        written, errors = await self.write_pending()
        self.log.info(
            "token.adopted",
            fingerprint=self.current.fingerprint,
            expires_at=self.current.expires_at,
            state=self.state().value,
        )
        return self._finish("adopted", started, mono, error=None, written=written, sink_errors=errors)

    async def renew(self) -> RenewalOutcome:
        """Request, verify and write a new token. Failures leave `current` and every sink untouched."""
        started, mono = self._clock.time(), self._clock.monotonic()
        requested = False
        try:
            secret = self.profile.secret.read(self._environ)  # re-read every time: a rotated secret heals
            if self._on_secret is not None:
                self._on_secret(secret)  # the log redactor learns it before anything could echo it
            requested = True
            answer = await request_token(self._session, self.profile, secret, self._clock)
            token = await verify_token(
                answer.access_token,
                self._jwks.key_set,
                self.rules,
                self._clock.time(),
                received_at=answer.received_at,
                expires_in=answer.expires_in,
                scope=answer.scope,
            )
        except EdgeTokenError as exc:
            self.failures += 1
            self.last_error = exc
            result = exc.reason if isinstance(exc, VerificationError) else exc.kind
            self.log.warning(
                "token.renewal_failed",
                error=exc.kind,
                reason=result,
                message=str(exc),
                failures=self.failures,
                state=self.state().value,
            )
            return self._finish(exc.kind, started, mono, error=exc, requested=requested)
        if answer.expires_in is not None and abs(answer.expires_in - token.lifetime) > LIFETIME_MISMATCH_SECONDS:
            self.log.warning("token.lifetime_mismatch", expires_in=answer.expires_in, lifetime=token.lifetime)
        self.failures, self.last_error = 0, None
        self.last_success_at = self._clock.time()
        self.current = token
        self.pending_sinks = {sink.name for sink in self.sinks}
        written, errors = await self.write_pending()
        self.log.info(
            "token.renewed",
            fingerprint=token.fingerprint,
            expires_at=token.expires_at,
            lifetime=round(token.lifetime, 3),
        )
        return self._finish("success", started, mono, None, requested=True, written=written, sink_errors=errors)

    async def accept(self, jwt: str) -> RenewalOutcome | None:
        """Take a token another daemon obtained (fleet mode): verified exactly like our own, written only if it
        outlives the one we hold. None when it is not newer; an outcome with the error when it is refused."""
        started, mono = self._clock.time(), self._clock.monotonic()
        try:
            token = await verify_token(jwt, self._jwks.key_set, self.rules, self._clock.time())
        except EdgeTokenError as exc:
            self.log.warning("fleet.token_rejected", reason=getattr(exc, "reason", exc.kind), message=str(exc))
            return self._finish("store_rejected", started, mono, error=exc)
        if self.current is not None and token.exp <= self.current.exp:
            return None
        self.current, self.last_error = token, None
        self.last_success_at = self._clock.time()
        self.pending_sinks = {sink.name for sink in self.sinks}
        written, errors = await self.write_pending()
        self.log.info("fleet.token_received", fingerprint=token.fingerprint, expires_at=token.expires_at)
        return self._finish("received", started, mono, None, written=written, sink_errors=errors)

    async def write_pending(self) -> tuple[tuple[str, ...], dict[str, SinkError]]:
        """Write `current` to every sink that does not hold it yet; sinks fail independently."""
        token = self.current
        if token is None:
            return (), {}
        written: list[str] = []
        errors: dict[str, SinkError] = {}
        for sink in self.sinks:
            if sink.name not in self.pending_sinks:
                continue
            try:
                changed = await sink.write(token)
            except SinkError as exc:
                errors[sink.name] = self.sink_errors[sink.name] = exc
                self.log.error("sink.write_failed", sink=sink.name, message=str(exc))
                continue
            self.pending_sinks.discard(sink.name)
            self.sink_errors.pop(sink.name, None)
            written.append(sink.name)
            if changed:
                self.log.info("sink.written", sink=sink.name, fingerprint=token.fingerprint)
                if self._on_written is not None:
                    self._on_written(self.profile.name, sink, token)
        self.sink_failures = self.sink_failures + 1 if errors else 0
        return tuple(written), errors

    async def retry_sinks(self) -> RenewalOutcome:
        """Retry only the sinks that failed, with the token already held: no token request."""
        started, mono = self._clock.time(), self._clock.monotonic()
        written, errors = await self.write_pending()
        return self._finish("sink" if errors else "success", started, mono, None, written=written, sink_errors=errors)

    def _finish(
        self,
        result: str,
        started: float,
        mono: float,
        error: EdgeTokenError | None,
        *,
        requested: bool = False,
        written: tuple[str, ...] = (),
        sink_errors: dict[str, SinkError] | None = None,
    ) -> RenewalOutcome:
        now = self._clock.time()
        if error is None and self.current is not None:
            when = next_attempt_at(now, self.current, None, 0, self.settings, self._rng)
        else:
            when = next_attempt_at(now, self.current, error, max(self.failures, 1), self.settings, self._rng)
        outcome = RenewalOutcome(
            profile=self.profile.name,
            result=result,
            started_at=started,
            duration=self._clock.monotonic() - mono,
            token=self.current,
            error=error,
            requested=requested,
            sinks_written=written,
            sink_errors=sink_errors or {},
            next_attempt_at=when,
        )
        self.last_outcome = outcome
        return outcome
