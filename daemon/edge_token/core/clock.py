"""Time, injected: everything that needs "now" receives a Clock so tests can drive it exactly."""

from __future__ import annotations

from time import monotonic as _monotonic
from time import time as _time
from typing import Protocol


class Clock(Protocol):
    """Wall time for token expiry (epoch seconds) and monotonic time for measuring durations."""

    def time(self) -> float:
        """Wall time (epoch seconds): token expiry and renewal points."""

    def monotonic(self) -> float:
        """Monotonic seconds: intervals that must not jump with the wall clock."""


class SystemClock:
    """The real clocks of this machine: the C functions themselves (a renewal asks ~16 times; a method around each
    was 80 bytecodes of it)."""

    time = staticmethod(_time)
    monotonic = staticmethod(_monotonic)
