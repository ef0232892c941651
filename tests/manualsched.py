"""A scheduler that runs jobs only when a test says so: a small real implementation of the daemon's scheduler
interface (`at`, `every`, `cancel`, `next_run`, `start`, `shutdown`, `wakeup`, `running`) driven by a fake clock.

`due(now)` pops and runs every one-shot job whose time has come (interval jobs are recorded but never fire:
tests drive JWKS refreshes explicitly). It also records every time a job was *scheduled* at, and when, so tests
can assert that no run was ever scheduled in the past.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ManualScheduler:
    now: Callable[[], float]
    jobs: dict[str, tuple[float, Callable[[], Any]]] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)
    scheduled: list[tuple[str, float, float]] = field(default_factory=list)  # (job, when, now at scheduling)
    fired: list[tuple[str, float]] = field(default_factory=list)  # (job, now when it ran)
    running: bool = False

    def start(self) -> None:
        self.running = True

    def shutdown(self) -> None:
        self.running = False

    def wakeup(self) -> None:
        pass

    def at(self, job_id: str, when: float, func: Callable[[], Any]) -> None:
        self.scheduled.append((job_id, when, self.now()))
        self.jobs[job_id] = (when, func)

    def every(self, job_id: str, seconds: float, func: Callable[[], Any], jitter: float = 0.0) -> None:
        self.intervals[job_id] = seconds

    def cancel(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def next_run(self, job_id: str) -> float | None:
        job = self.jobs.get(job_id)
        return job[0] if job is not None else None

    def next_due(self) -> float | None:
        return min((when for when, _ in self.jobs.values()), default=None)

    def due(self) -> int:
        """Run every one-shot job due at now(); returns how many ran."""
        now = self.now()
        ready = sorted((when, job_id) for job_id, (when, _) in self.jobs.items() if when <= now)
        for _, job_id in ready:
            _, func = self.jobs.pop(job_id)
            self.fired.append((job_id, now))
            func()
        return len(ready)
