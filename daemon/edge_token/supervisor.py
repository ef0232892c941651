"""Per-profile lifecycle: the only owner of "what runs next" for every profile.

Invariants (each proven by tests/test_supervisor.py, a stateful property test):
- one cycle at a time per profile; a trigger that comes while one runs becomes one rerun after it;
- when no cycle runs, every profile has exactly one scheduled next run, never sooner than `MIN_RUN_GAP`
  from now (a deliberate trigger runs at once, without the scheduler); a removed profile has none;
- a reload that changes a profile swaps its renewer *in the same slot*, so a cycle in flight can never leave
  the new renewer without a run (the old design lost it: the profile then stayed expired, silently);
- an exception anywhere in a cycle becomes a classified outcome with backoff, never a lost schedule;
- each new token fires the rotation callback exactly once, as soon as a sink holds it; adopted, retried or
  inherited tokens never do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from edge_token.core.clock import Clock
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.core.token import Token
from edge_token.renewer import Renewer

#: a cycle's work for one renewer: appends its outcomes (so they survive an exception part-way)
Step = Callable[[Renewer, bool, list[RenewalOutcome]], Awaitable[None]]
#: seconds until the profile must run again for reasons outside the renewer (fleet polling), or None
Poll = Callable[[str], float | None]
SinkRetry = Callable[[Renewer], float | None]


class JobScheduler(Protocol):
    """What the supervisor and the JWKS refresh jobs need of a scheduler (scheduler.Scheduler, or a manual one)."""

    def at(self, job_id: str, when: float, func: Callable[[], Any]) -> None:
        """Run `func` once at epoch time `when`, replacing the job with that id."""

    def cancel(self, job_id: str) -> None:
        """Drop the job (nothing if there is none)."""

    def next_run(self, job_id: str) -> float | None:
        """Epoch time of the job's next run, or None."""

    def every(self, job_id: str, seconds: float, func: Callable[[], Any], jitter: float = 0.0) -> None:
        """Run `func` every `seconds` (jitter only delays)."""


class Slot:
    """One profile's place: its renewer (swapped on reload), the cycle in flight and a pending rerun."""

    __slots__ = ("announced", "inherit", "name", "renewer", "rerun", "task")

    def __init__(self, name: str, renewer: Renewer) -> None:
        self.name = name
        self.renewer = renewer
        self.task: asyncio.Task[None] | None = None
        self.rerun: bool | None = None  # force flag of a trigger that arrived during a cycle; None: no rerun
        self.announced: str | None = None  # fingerprint of the last token announced to the rotation callback
        self.inherit: Renewer | None = None  # reload changed only sinks: the renewer whose token the new one takes over


def job_id(name: str) -> str:
    """The scheduler's job id of a profile's one next run."""
    return f"profile:{name}"


class Supervisor:
    """Runs each profile's cycles and decides its one next run."""

    def __init__(
        self,
        scheduler: JobScheduler,
        clock: Clock,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        step: Step,
        *,
        next_run_at: Callable[[float, float, float | None, float | None], float],
        sink_retry_in: SinkRetry,
        poll_in: Poll = lambda _name: None,
        log: Any,
        observe: Callable[[Renewer, list[RenewalOutcome], float | None], None] = lambda *_: None,
        on_rotated: Callable[[str, Token], None] | None = None,
    ) -> None:
        self.scheduler, self.clock, self._spawn, self._step = scheduler, clock, spawn, step
        self._next_run_at, self._sink_retry_in, self._poll_in = next_run_at, sink_retry_in, poll_in
        self._observe, self._on_rotated, self._log = observe, on_rotated, log
        self.slots: dict[str, Slot] = {}
        self.stopping = False

    # ---- membership ---------------------------------------------------------------------------------------
    def add(self, name: str, renewer: Renewer) -> None:
        """A new profile: its first cycle starts now."""
        self.slots[name] = Slot(name, renewer)
        self.trigger(name)

    def replace(self, name: str, renewer: Renewer, inherit: bool) -> None:
        """A changed profile: the new renewer takes the slot; its first cycle runs now or right after the one in
        flight. With `inherit` (only the sinks changed) it takes over the token the old renewer holds *when that
        first cycle starts* (a renewal in flight may bring a newer one): no request, each new sink written once."""
        slot = self.slots[name]
        if not inherit:  # `announced` stays: a token the old renewer announced is never announced again
            slot.inherit = None
        elif slot.renewer.current is not None or slot.inherit is None:
            slot.inherit = slot.renewer  # else the old renewer never ran: keep inheriting from the one before it
        slot.renewer.retired = True  # its cycle in flight writes none of the old sinks (the new config may give
        slot.renewer = renewer  # one to another profile); a token it still gets is what `inherit` takes over
        self.trigger(name)

    def remove(self, name: str) -> None:
        """A removed profile: no next run; a cycle in flight finishes without scheduling anything, and from its
        next step on requests no token and writes no sink (its renewers are retired, as `replace` retires the one
        it swaps out)."""
        slot = self.slots.pop(name, None)
        if slot is not None:
            self.scheduler.cancel(job_id(name))
            for renewer in (slot.renewer, slot.inherit):
                if renewer is not None:
                    renewer.retired = True

    # ---- runs ---------------------------------------------------------------------------------------------
    def trigger(self, name: str, force: bool = False) -> None:
        """Run the profile's cycle now (a deliberate immediate run), or once right after the one in flight."""
        slot = self.slots.get(name)
        if slot is None or self.stopping:
            return
        if slot.task is not None:
            slot.rerun = bool(slot.rerun) or force
            return
        slot.task = self._spawn(self._cycle(slot, force))

    def stop(self) -> None:
        """No new cycles, no new schedules (cycles in flight finish; the caller drains them)."""
        self.stopping = True

    async def idle(self) -> None:
        """Wait until no cycle runs (tests; shutdown drains through the task set instead)."""
        while running := [slot.task for slot in self.slots.values() if slot.task is not None]:
            await asyncio.wait(running)

    async def _cycle(self, slot: Slot, force: bool) -> None:
        renewer, source, slot.inherit = slot.renewer, slot.inherit, None
        outcomes: list[RenewalOutcome] = []
        started, mono = self.clock.time(), self.clock.monotonic()
        if source is not None and source.current is not None and renewer.current is None:
            renewer.take(source.current)
            renewer.last_success_at = source.last_success_at
        try:
            await self._step(renewer, force, outcomes)
        except Exception as exc:  # the step's own parts never raise; anything else is a bug, classified
            outcomes.append(renewer.crashed(exc, started, mono))
        finally:
            slot.task = None
            self._after(slot, renewer, outcomes)

    def _after(self, slot: Slot, renewer: Renewer, outcomes: list[RenewalOutcome]) -> None:
        """Decide the one next run (or the rerun) of this slot, then report."""
        member = self.slots.get(slot.name) is slot
        live = member and not self.stopping
        when = self._schedule(slot) if live and slot.renewer is renewer else None
        rerun, slot.rerun = slot.rerun, None
        if live and (rerun is not None or slot.renewer is not renewer):
            self.trigger(slot.name, force=bool(rerun))  # the reload's renewer, or the trigger that came meanwhile
        try:
            if member:  # a removed profile's series are gone; do not bring them back
                self._observe(renewer, outcomes, when)
            if not self.stopping:  # also a token a retired renewer wrote before the reload took it away: it landed
                self._announce(slot, renewer, outcomes)
        except Exception:  # an observer's bug must not cost the profile its schedule (already set above)
            self._log.exception("observer.crashed", profile=slot.name)

    def _schedule(self, slot: Slot) -> float:
        renewer, now = slot.renewer, self.clock.time()
        when = self._next_run_at(now, renewer.next_attempt_at(), self._sink_retry_in(renewer), self._poll_in(slot.name))
        self.scheduler.at(job_id(slot.name), when, lambda: self.trigger(slot.name))
        return when

    def _announce(self, slot: Slot, renewer: Renewer, outcomes: list[RenewalOutcome]) -> None:
        """Fire the rotation callback once per new token, as soon as any sink holds it."""
        token = renewer.current
        if token is None or token.fingerprint == slot.announced:
            return
        for outcome in outcomes:
            if outcome.result is Result.ADOPTED and outcome.token is token:
                slot.announced = token.fingerprint  # what the sinks already held: consumers have it
                return
        if len(renewer.pending_sinks) == len(renewer.sinks):
            return  # no sink holds it yet: announce when one does
        slot.announced = token.fingerprint
        if self._on_rotated is not None:
            self._on_rotated(slot.name, token)
