"""One profile's cycle as the supervisor runs it: adopt what the sinks hold (first cycle only), the fleet step,
then renew when due (or forced), else retry the sinks that do not hold the token yet.

The supervisor decides *when* a cycle runs; this decides *what* it does, and how soon failed sinks or the fleet
want the next look. Concurrency is bounded here (`max_concurrent_renewals`), so a fill of N profiles keeps at
most that many token requests in flight.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from edge_token.core.clock import Clock
from edge_token.core.outcome import RenewalOutcome
from edge_token.core.policy import backoff_delay
from edge_token.renewer import Renewer

if TYPE_CHECKING:
    from edge_token.fleet.coordinator import FleetStep

SINK_RETRY_MAX_SECONDS = 30.0


class Cycle:
    """The work of one cycle, shared by every profile (the renewer carries the per-profile state)."""

    def __init__(self, clock: Clock, rng: random.Random, concurrency: int) -> None:
        self.clock, self.rng = clock, rng
        self.fleet: FleetStep | None = None  # set when [fleet] is configured
        self._semaphore = asyncio.Semaphore(concurrency)

    async def step(self, renewer: Renewer, force: bool, outcomes: list[RenewalOutcome]) -> None:
        """One cycle's work; every renewer step returns an outcome and never raises."""
        async with self._semaphore:
            if renewer.retired:  # removed by a reload while this cycle waited for its turn
                return
            if renewer.last_outcome is None and renewer.current is None:
                adopted = await renewer.adopt()
                outcomes += [adopted] if adopted else []
            fleet = self.fleet
            role = await fleet.step(renewer, outcomes) if fleet is not None else None
            if role == "follower":
                pass  # the leader requests; we only read, verify and write what it publishes
            elif renewer.retired:  # removed while it adopted or took its fleet step
                pass
            elif force or renewer.renewal_due(self.clock.time()):
                outcomes.append(await renewer.renew())
                if fleet is not None and role == "leader" and outcomes[-1].error is None and not renewer.retired:
                    await fleet.publish(renewer)
            elif renewer.pending_sinks:
                outcomes.append(await renewer.retry_sinks())

    def sink_retry_in(self, renewer: Renewer) -> float | None:
        """Failed sinks are retried on their own short backoff, without a token request."""
        if not renewer.pending_sinks or renewer.current is None:
            return None
        return backoff_delay(max(1, renewer.sink_failures), self.rng, cap=SINK_RETRY_MAX_SECONDS)

    def poll_in(self, name: str) -> float | None:
        """How soon fleet mode wants to look at the shared token again (None outside fleet mode)."""
        return self.fleet.poll_in(name) if self.fleet is not None else None
