"""Composition root: builds the shared parts from a Config and runs `once` (the daemon lives in daemon.py).

Nothing here decides policy or does protocol work; it wires session, JWKS caches and renewers together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from edge_token.core.clock import Clock
from edge_token.core.errors import ConfigError, EdgeTokenError, PermanentError
from edge_token.core.outcome import RenewalOutcome
from edge_token.core.policy import TokenState
from edge_token.core.record import Record
from edge_token.core.settings import Config, Egress, ProfileConfig
from edge_token.net.http import make_session
from edge_token.observe.events import log_outcome
from edge_token.provider.jwks import JwksCache
from edge_token.provider.verify import Rules, rules_for, verifies
from edge_token.renewer import Renewer
from edge_token.secrets import SecretCache
from edge_token.sinks import Sink, build_sink

Sleep = Callable[[float], Awaitable[None]]


class Parts:
    """The shared runtime parts: one session, one JWKS cache per URL, one renewer per profile."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        clock: Clock,
        log: Any,
        *,
        environ: Mapping[str, str],
        rng: random.Random | None = None,
        on_secret: Callable[[str], None] | None = None,
        jwks_on_fetch: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.config, self.session, self.clock, self.log = config, session, clock, log
        self.environ, self.rng, self.on_secret = environ, rng or random.Random(), on_secret
        self._jwks_on_fetch = jwks_on_fetch
        self.jwks: dict[tuple[str, Egress], JwksCache] = {}
        self.secrets = SecretCache(environ)

    def jwks_for(self, profile: ProfileConfig) -> JwksCache:
        """The JWKS cache for this profile's URL and way out (proxy, CAs), shared by every profile with both alike:
        profiles behind different proxies or CAs must not share a fetch."""
        key = (profile.jwks_url, profile.egress)
        cache = self.jwks.get(key)
        if cache is None:
            cache = JwksCache(
                profile.jwks_url,
                self.session,
                self.clock,
                refresh_seconds=self.config.daemon.jwks_refresh_seconds,
                min_refetch_seconds=self.config.daemon.jwks_min_refetch_seconds,
                timeout_seconds=profile.timeout_seconds,
                rng=self.rng,
                on_fetch=self._jwks_on_fetch,
                egress_settings=profile.egress,
                environ=self.environ,
            )
            self.jwks[key] = cache
        return cache

    def renewer(self, profile: ProfileConfig, *, sinks: list[Sink] | None = None, **kwargs: Any) -> Renewer:
        """A renewer for the profile over the shared session, JWKS cache and secret cache, with its sinks (those
        of its config unless `sinks` are given: `check --online` and `inspect --verify` write nowhere)."""
        jwks = self.jwks_for(profile)
        if sinks is None:
            clock, rules = self.clock, list[Rules]()

            async def verify(jwt: str) -> bool:  # a store keeps another writer's newer token only if it verifies
                if not rules:  # built at the first use: only secret stores ask, and most sinks are files
                    rules.append(rules_for(profile))
                return await verifies(jwt, jwks.key_set, rules[0], clock.time())

            sinks = [build_sink(s, self.session, self.on_secret, self.environ, self.log, verify) for s in profile.sinks]
        return Renewer(
            profile,
            self.session,
            jwks,
            self.clock,
            self.log,
            environ=self.environ,
            sinks=sinks,
            rng=self.rng,
            on_secret=self.on_secret,
            secrets=self.secrets,
            **kwargs,
        )


class OnceResult(Record):
    """How `once` ended for one profile."""

    profile: str
    outcome: RenewalOutcome | None
    error: EdgeTokenError | None  # None: every sink holds a verified token

    @property
    def exit_code(self) -> int:
        """0 when every sink holds a verified token, else the failure's sysexits code."""
        return 0 if self.error is None else self.error.exit_code


async def obtain(renewer: Renewer, clock: Clock, deadline: float, sleep: Sleep) -> OnceResult:
    """Make one profile's sinks hold a verified token: adopt a FRESH one, else renew with bounded retries."""
    name = renewer.profile.name
    outcome = await renewer.adopt()
    if outcome is not None:
        log_outcome(renewer.log, outcome)
        if renewer.state() is TokenState.FRESH:
            return _settled(name, outcome)
    while True:
        outcome = await renewer.renew()
        log_outcome(renewer.log, outcome)
        if outcome.error is None or isinstance(outcome.error, PermanentError | ConfigError):  # retrying won't fix it
            break
        delay = renewer.next_attempt_at() - clock.time()
        if clock.monotonic() + delay > deadline:
            break
        await sleep(max(0.0, delay))
    if outcome.error is not None and renewer.state() is TokenState.STALE:
        # the previous token is still valid: the sinks hold a verified token, so this is success with a warning
        renewer.log.warning("token.kept_stale", message=str(outcome.error))
        return _settled(name, outcome, ignore_error=True)
    return _settled(name, outcome)


def _settled(name: str, outcome: RenewalOutcome, ignore_error: bool = False) -> OnceResult:
    if outcome.error is not None and not ignore_error:
        return OnceResult(name, outcome, outcome.error)
    if outcome.sink_errors:
        first = next(iter(outcome.sink_errors.values()))
        return OnceResult(name, outcome, first)
    return OnceResult(name, outcome, None)


async def run_once(
    config: Config,
    clock: Clock,
    log: Any,
    *,
    environ: Mapping[str, str],
    profiles: list[str] | None = None,
    timeout: float = 60.0,
    sleep: Sleep = asyncio.sleep,
    on_secret: Callable[[str], None] | None = None,
) -> list[OnceResult]:
    """`edge-token once`: every selected profile concurrently, each bounded by `timeout` seconds of retries."""
    names = profiles or list(config.profiles)
    deadline = clock.monotonic() + timeout
    async with make_session() as session:
        parts = Parts(config, session, clock, log, environ=environ, on_secret=on_secret)
        renewers = [parts.renewer(config.profiles[name]) for name in names]
        results = await asyncio.gather(*(obtain(r, clock, deadline, sleep) for r in renewers))
    return list(results)


def exit_code(results: list[OnceResult]) -> int:
    """The first failed profile's sysexits code (config order), 0 if all succeeded."""
    for result in results:
        if result.error is not None:
            return result.error.exit_code
    return 0
