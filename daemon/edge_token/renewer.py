"""One profile's steps: adopt what the sinks hold, or fetch -> verify -> write every sink -> report.

The renewer makes no scheduling decisions and never raises: every step returns a frozen `RenewalOutcome`
(anything unforeseen becomes an `InternalError` outcome) and keeps the numbers the policy needs (the jittered
renewal point of the held token, the failure count, when a failed renewal may be retried). The caller (the
`once` command or the daemon's supervisor) asks `next_attempt_at()` when to come back. It reports nothing itself:
observers read the outcome (observe/events.py writes the log lines); it logs only the diagnostics a step alone can
give (why a sink's token was not adopted, a lifetime mismatch, an internal error's rate-limited traceback).

Long because every step (adopt, renew, accept, retry the sinks) keeps the same per-profile state and ends in
the same outcome bookkeeping; split apart, each part would reach into the others' state.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from edge_token.core.clock import Clock
from edge_token.core.errors import (
    ConfigError,
    CredentialsRejected,
    EdgeTokenError,
    InternalError,
    SinkError,
    TransientError,
)
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.core.policy import RefreshSettings, TokenState, next_attempt_at, refresh_due_at, token_state
from edge_token.core.ratelimit import RateLimit
from edge_token.core.settings import ProfileConfig
from edge_token.core.token import Token
from edge_token.provider.jwks import JwksCache
from edge_token.provider.oauth import request_token
from edge_token.provider.verify import rules_for, verify_token
from edge_token.secrets import SecretCache, read_secret
from edge_token.sinks import Sink

if TYPE_CHECKING:
    from edge_token.core.health import ProfileStatus


__all__ = ["RenewalOutcome", "Renewer", "Result"]

LIFETIME_MISMATCH_SECONDS = 120.0
DUE_SLACK = 0.001  # timers may fire a hair before a float due time (microsecond datetimes)
TRACEBACK_EVERY_SECONDS = 300.0  # an internal error's traceback is logged at most this often per profile


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
        sinks: Sequence[Sink],
        rng: random.Random | None = None,
        on_written: Callable[[str, Sink, Token], None] | None = None,
        on_secret: Callable[[str], None] | None = None,
        secrets: SecretCache | None = None,
    ) -> None:
        self.profile = profile
        self._secrets = secrets or SecretCache(environ)
        self.sinks: list[Sink] = list(sinks)  # built by the composition root (app.Parts), one per sink table
        self.settings = RefreshSettings(
            refresh_at=profile.refresh_at, jitter=profile.jitter, retry_max=profile.retry_max_seconds
        )
        self.rules = rules_for(profile)
        self._session, self._jwks, self._clock, self._environ = session, jwks, clock, environ
        self._rng = rng or random.Random()
        self._on_written, self._on_secret = on_written, on_secret
        self.log = log.bind(profile=profile.name)
        self.current: Token | None = None
        self.due_at: float | None = None  # the held token's renewal point, jittered once when it arrived
        self.retry_at: float | None = None  # set while a failed renewal waits for its retry
        self.pending_sinks: set[str] = set()  # sinks that do not hold `current` yet
        self.failures = 0  # consecutive failed renewals
        self.sink_failures = 0  # consecutive write rounds with at least one failed sink
        self.sink_errors: dict[str, SinkError] = {}  # the latest error of each sink that does not hold `current`
        self.last_outcome: RenewalOutcome | None = None
        self.last_error: EdgeTokenError | None = None  # of the latest renewal; None after a success
        self.last_success_at: float | None = None
        self._traceback_at = -float("inf")
        #: a reload removed the profile or gave it a new renewer: a cycle still in flight requests nothing more and
        #: writes no sink (another profile of the new config may own the file now; the operator took this one away)
        self.retired = False

    # ---- what the policy needs --------------------------------------------------------------------------
    def state(self) -> TokenState:
        """FRESH, STALE or EXPIRED: the held token's state now (no token: EXPIRED)."""
        return token_state(self.current, self._clock.time(), self.settings)

    def renewal_due(self, now: float) -> bool:
        """Renew now? While a failed renewal waits, only once its backoff is over; otherwise with no token, or at
        the held token's jittered renewal point. Exactly these, so a job that fires early (a fleet poll, a sink
        retry) never renews ahead of the backoff or of a FRESH token's due time, and a job that fires on time
        always does: no busy loop before the due time, no missed jitter, no storm."""
        if self.retry_at is not None:
            return now + DUE_SLACK >= self.retry_at
        return self.current is None or self.due_at is None or now + DUE_SLACK >= self.due_at

    def next_attempt_at(self) -> float:
        """When this profile next needs a renewal attempt (in the past or now: it is due now)."""
        if self.retry_at is not None:
            return self.retry_at
        if self.current is None or self.due_at is None:
            return self._clock.time()
        return self.due_at

    def ready(self, state: TokenState | None = None) -> bool:
        """An unexpired verified token held in every sink (what /readyz and READY=1 wait for); `state`: `state()`
        already taken now, by a caller that needs both."""
        if self.current is None or self.pending_sinks:
            return False
        return (state or self.state()) is not TokenState.EXPIRED

    def take(self, token: Token) -> None:
        """Hold `token` (new, adopted, received or inherited): fix its jittered renewal point once, mark every sink
        as not holding it yet."""
        self.current = token
        self.due_at = refresh_due_at(token, self.settings, self._rng)
        self.retry_at = None
        self.pending_sinks = {sink.name for sink in self.sinks}

    def status(self, next_attempt_at: float | None) -> ProfileStatus:
        """The operator-facing snapshot (no token, no secret)."""
        from edge_token.core.health import NO_TOKEN_YET, ProfileStatus, state_name  # daemon only: lean `once`

        token, state = self.current, self.state()
        return ProfileStatus(
            profile=self.profile.name,
            state=state_name(state, self.last_error),
            expired=state is TokenState.EXPIRED,
            expires_at=token.exp if token else None,
            last_success_at=self.last_success_at,
            next_attempt_at=next_attempt_at,
            last_error=self.last_error,
            sinks={sink.name: self._sink_problem(sink.name, NO_TOKEN_YET) for sink in self.sinks},
            kid=token.kid if token else None,
            fingerprint=token.fingerprint if token else None,
        )

    def unready(self) -> dict[str, Any] | None:
        """This profile's /readyz entry, None when it is ready: exactly what `health.readiness` makes of `status()`
        (state, and the sinks named failing), without building the status. A fill's first probe finds every profile
        unready: 1,000 full snapshots, Python's indenting JSON encoder and the walk over them were ~2,000 bytecodes
        a profile, a tenth of what the fill itself spends on one (issue 15)."""
        from edge_token.core.health import NO_TOKEN_YET, state_name  # daemon only: lean `once`

        state = self.state()
        if self.ready(state):
            return None
        problems = ((sink.name, self._sink_problem(sink.name, NO_TOKEN_YET)) for sink in self.sinks)
        failing = [name for name, problem in problems if problem is not None and problem != NO_TOKEN_YET]
        return {"state": state_name(state, self.last_error), "sinks_failing": failing}

    def _sink_problem(self, name: str, no_token: str) -> str | None:
        if self.current is None:
            error = self.sink_errors.get(name)
            return str(error) if error else no_token
        if name not in self.pending_sinks:
            return None
        error = self.sink_errors.get(name)
        return str(error) if error else "not written yet"

    # ---- steps ------------------------------------------------------------------------------------------
    async def adopt(self) -> RenewalOutcome | None:
        """Adopt the best verified token already in the sinks (no token request); None if there is none."""
        started, mono = self._clock.time(), self._clock.monotonic()
        seen: dict[str, Token | None] = {}
        for sink in self.sinks:
            try:
                jwt = await sink.read()
            except Exception as exc:  # a sink we cannot read back holds nothing we could adopt
                self.log.info("token.adoption_skipped", sink=sink.name, reason=f"unreadable ({type(exc).__name__})")
                continue
            if jwt is None or jwt in seen:
                continue
            try:
                seen[jwt] = await verify_token(jwt, self._jwks.key_set, self.rules, self._clock.time())
            except EdgeTokenError as exc:
                seen[jwt] = None
                self.log.info("token.adoption_skipped", sink=sink.name, reason=str(exc))
            except Exception as exc:
                seen[jwt] = None
                self._internal(InternalError.wrap(exc, "verifying a token read back from a sink"), exc)
        candidates = [token for token in seen.values() if token is not None]
        if not candidates:
            return None
        self.take(max(candidates, key=lambda token: token.expires_at))
        self.last_success_at = self._clock.time()
        written, changed, errors = await self.write_pending()
        return self._finish(Result.ADOPTED, started, mono, None, written=written, changed=changed, sink_errors=errors)

    async def renew(self) -> RenewalOutcome:
        """Request, verify and write a new token. Failures leave `current` and every sink untouched."""
        started, mono = self._clock.time(), self._clock.monotonic()
        requested = False
        try:
            # re-read when the file changed, and always after a rejection: a rotated secret heals without a restart
            fresh = isinstance(self.last_error, CredentialsRejected)
            secret = (
                self._secrets.read(self.profile.secret, fresh)
                if self._secrets
                else read_secret(self.profile.secret, self._environ)
            )
            if self._on_secret is not None:
                self._on_secret(secret)  # the log redactor learns it before anything could echo it
            # no keys loaded: a token now would be thrown away (and cost quota); keys due for refresh: refreshed first
            if not self._jwks.fresh:
                await self._jwks.key_set(None)
            if self.retired:  # taken away by a reload while the keys were fetched: nothing to request for
                raise TransientError("the profile was removed or changed by a reload; no token requested")
            requested = True  # counted even if what follows raises: the provider may have issued a token
            answer = await request_token(self._session, self.profile, secret, self._clock, self._environ)
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
            # a ConfigError (TLS file, proxy credentials) stops the request before anything is sent
            return self._failed(exc, started, mono, requested and not isinstance(exc, ConfigError))
        except Exception as exc:
            error = InternalError.wrap(exc, "renewing")
            self._internal(error, exc)
            return self._failed(error, started, mono, requested)
        if answer.expires_in is not None and abs(answer.expires_in - token.lifetime) > LIFETIME_MISMATCH_SECONDS:
            self.log.warning("token.lifetime_mismatch", expires_in=answer.expires_in, lifetime=token.lifetime)
        self.failures, self.last_error = 0, None
        self.last_success_at = self._clock.time()
        self.take(token)
        written, changed, errors = await self.write_pending()
        return self._finish(
            Result.NEW_TOKEN, started, mono, None, requested=True, written=written, changed=changed,
            sink_errors=errors, rate_limit=answer.rate_limit,
        )  # fmt: skip

    def _failed(self, exc: EdgeTokenError, started: float, mono: float, requested: bool) -> RenewalOutcome:
        self.failures += 1
        self.last_error = exc
        now = self._clock.time()
        self.retry_at = next_attempt_at(now, self.current, exc, self.failures, self.settings, self._rng)
        limits = exc.rate_limit if isinstance(exc, TransientError) else None
        return self._finish(Result.FAILED, started, mono, exc, requested=requested, rate_limit=limits)

    def crashed(self, exc: BaseException, started: float, mono: float) -> RenewalOutcome:
        """An exception escaped a step's caller (e.g. the fleet step): classify it and back off like any failure."""
        error = InternalError.wrap(exc, "running a renewal cycle")
        self._internal(error, exc)
        return self._failed(error, started, mono, requested=False)

    def _internal(self, error: InternalError, exc: BaseException) -> None:
        """Log a bug with its traceback, at most once per TRACEBACK_EVERY_SECONDS per profile (no log storm)."""
        now = self._clock.monotonic()
        if now - self._traceback_at >= TRACEBACK_EVERY_SECONDS:
            self._traceback_at = now
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=12))
            self.log.error("internal_error", message=str(error), traceback=trace)
        else:
            self.log.error("internal_error", message=str(error))

    async def accept(self, jwt: str) -> RenewalOutcome | None:
        """Take a token another daemon obtained (fleet mode): verified exactly like our own, written only if it
        outlives the one we hold. None when it is not newer; an outcome with the error when it is refused."""
        started, mono = self._clock.time(), self._clock.monotonic()
        try:
            token = await verify_token(jwt, self._jwks.key_set, self.rules, self._clock.time())
        except EdgeTokenError as exc:
            return self._finish(Result.FAILED, started, mono, error=exc, from_fleet=True)
        except Exception as exc:
            error = InternalError.wrap(exc, "verifying a token from the fleet store")
            self._internal(error, exc)
            return self._finish(Result.FAILED, started, mono, error=error, from_fleet=True)
        if self.current is not None and token.exp <= self.current.exp:
            return None
        self.failures, self.last_error = 0, None
        self.last_success_at = self._clock.time()
        self.take(token)
        written, changed, errors = await self.write_pending()
        return self._finish(
            Result.RECEIVED, started, mono, None, written=written, changed=changed, sink_errors=errors, from_fleet=True
        )

    async def write_pending(self) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, SinkError]]:
        """Write `current` to every sink that does not hold it yet; sinks fail independently. (Written, changed,
        failed): a sink that already held the token is written but not changed, and runs no hook."""
        token = self.current
        if token is None:
            return (), (), {}
        written: list[str] = []
        changed_sinks: list[str] = []
        errors: dict[str, SinkError] = {}
        for sink in self.sinks:
            if self.retired:  # also between two sinks: a reload may take the profile away while one is written
                break
            if sink.name not in self.pending_sinks:
                continue
            try:
                changed = await sink.write(token)
            except Exception as exc:
                error = exc if isinstance(exc, SinkError) else _sink_bug(sink.name, exc)
                errors[sink.name] = self.sink_errors[sink.name] = error
                continue
            self.pending_sinks.discard(sink.name)
            self.sink_errors.pop(sink.name, None)
            written.append(sink.name)
            if changed:
                changed_sinks.append(sink.name)
                if self._on_written is not None:
                    self._on_written(self.profile.name, sink, token)
        self.sink_failures = self.sink_failures + 1 if errors else 0
        return tuple(written), tuple(changed_sinks), errors

    async def retry_sinks(self) -> RenewalOutcome:
        """Retry only the sinks that failed, with the token already held: no token request."""
        started, mono = self._clock.time(), self._clock.monotonic()
        written, changed, errors = await self.write_pending()
        return self._finish(
            Result.SINKS_RETRIED, started, mono, None, written=written, changed=changed, sink_errors=errors
        )

    def _finish(
        self,
        result: Result,
        started: float,
        mono: float,
        error: EdgeTokenError | None,
        *,
        requested: bool = False,
        written: tuple[str, ...] = (),
        changed: tuple[str, ...] = (),
        sink_errors: dict[str, SinkError] | None = None,
        rate_limit: RateLimit | None = None,
        from_fleet: bool = False,
    ) -> RenewalOutcome:
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
            next_attempt_at=self.next_attempt_at(),
            rate_limit=rate_limit,
            sinks_changed=changed,
            failures=self.failures,
            state=self.state()._value_,  # the enum's value without its `value` property (two calls a renewal)
            from_fleet=from_fleet,
        )
        self.last_outcome = outcome
        return outcome


def _sink_bug(name: str, exc: BaseException) -> SinkError:
    """A sink raised something it should have classified: still a sink failure, retried on the sink timer."""
    return SinkError(f"{name}: unexpected {type(exc).__name__} while writing; the previous content is kept")
