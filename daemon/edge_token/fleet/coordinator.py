"""Fleet mode's part of a profile's cycle: learn our role, take a newer verified token from etcd, publish ours.

Imported only when `[fleet]` is configured. Tokens from the store are verified exactly like our own
(`Renewer.accept`) and written only if they outlive what we hold; the leader publishes only a token that outlives
what the store holds. etcd trouble never fails a cycle: the daemon then works standalone for that profile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_token.core.outcome import RenewalOutcome
from edge_token.core.policy import TokenState
from edge_token.fleet.etcd import FOLLOWER, LEADER, STANDALONE, EtcdUnavailable
from edge_token.fleet.membership import Fleet
from edge_token.observe.metrics import Metrics
from edge_token.renewer import Renewer


class FleetStep:
    """One daemon's side of the shared token, per profile."""

    def __init__(self, fleet: Fleet, metrics: Metrics, log: Any, configured: Callable[[str], bool]) -> None:
        self.fleet, self.metrics, self.log = fleet, metrics, log
        #: whether a profile is still configured: every await on etcd may span a reload that removed the profile, and
        #: its metrics must not bring back the series `Metrics.forget` dropped (as the supervisor does for `observe`)
        self.configured = configured

    async def step(self, renewer: Renewer, outcomes: list[RenewalOutcome]) -> str:
        """Our role for the profile (leader, follower, standalone), after taking a newer token from the store and,
        as leader, publishing ours if it outlives the stored one (or the store held garbage)."""
        name = renewer.profile.name
        role = await self.fleet.role(name)
        if not self.configured(name):  # removed while we waited on etcd: our claim may have followed the resignation
            await self.fleet.forget(name)
            return FOLLOWER  # as a follower the cycle requests nothing more for a profile that is gone
        self.metrics.fleet_role(name, role)
        if role == STANDALONE:
            return role
        try:
            stored = await self.fleet.read_token(name)
        except EtcdUnavailable:
            return STANDALONE
        held = renewer.current
        if stored.value and (held is None or stored.value != held.jwt):
            outcome = await renewer.accept(stored.value)  # verified like our own; None if not newer
            if outcome is not None:
                outcomes.append(outcome)
                if self.configured(name):
                    self.metrics.fleet_event(name, "rejected" if outcome.error else "received")
        held = renewer.current
        if (
            role == LEADER
            and held is not None
            and held.jwt != stored.value
            and renewer.state() is not TokenState.EXPIRED
        ):
            await self.publish(renewer)
        return role

    async def publish(self, renewer: Renewer) -> None:
        """Put our token in the store (compare-and-swap in fleet.py); a failure only logs: we stay standalone."""
        name, token = renewer.profile.name, renewer.current
        if token is None:
            return
        try:
            if await self.fleet.publish(name, token.jwt):
                if self.configured(name):
                    self.metrics.fleet_event(name, "published")
                self.log.info("fleet.published", profile=name, fingerprint=token.fingerprint)
        except EtcdUnavailable as exc:
            self.log.warning("fleet.publish_failed", profile=name, message=str(exc))

    def poll_in(self, name: str) -> float:
        """Followers and leaders watch the shared key; a standalone daemon retries etcd to rejoin the fleet."""
        poll = self.fleet.config.poll_seconds
        if self.fleet.roles.get(name) == STANDALONE:
            poll = max(poll, self.fleet.config.lease_ttl_seconds)
        return poll
