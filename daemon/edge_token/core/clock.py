"""Time, injected: everything that needs "now" receives a Clock so tests can drive it exactly."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for token expiry (epoch seconds) and monotonic time for measuring durations."""

    def time(self) -> float:
        """Wall time (epoch seconds): token expiry and renewal points."""

    def monotonic(self) -> float:
        """Monotonic seconds: intervals that must not jump with the wall clock."""


class SystemClock:
    """The real clocks of this machine."""

    def time(self) -> float:
        """time.time()."""
        return time.time()

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()
