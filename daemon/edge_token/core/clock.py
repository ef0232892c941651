"""Time, injected: everything that needs "now" receives a Clock so tests can drive it exactly."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for token expiry (epoch seconds) and monotonic time for measuring durations."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks of this machine."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
