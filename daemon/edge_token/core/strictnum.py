"""Numbers as we accept them from the network: ASCII digits, bounded length, bounded range.

Python is generous with numbers: `int("١٢٣")` is 123, `"²".isdigit()` is True but `int("²")` raises, an
integer of 5,000 digits raises ValueError, `float(10**400)` raises OverflowError and `float("1e400")` is
infinity. Each of those once escaped classification and turned a hostile header into a request storm. Every
number a server sends us goes through one of these functions, which return None for anything unusable, so the
caller decides (with a specific message) what a missing or bad value means. They never raise.
"""

from __future__ import annotations

import math

_ASCII_DIGITS = frozenset("0123456789")


def ascii_uint(text: object, max_digits: int = 12) -> int | None:
    """A non-negative integer written in ASCII digits only (no sign, no spaces inside), at most `max_digits`."""
    if not isinstance(text, str):
        return None
    text = text.strip(" \t")
    if not text or len(text) > max_digits or not set(text) <= _ASCII_DIGITS:
        return None
    return int(text)


def finite(value: object, low: float, high: float) -> float | None:
    """A JSON number (int or float, not bool) within [low, high], as float; None otherwise.

    Range is checked before any conversion, so a 400-digit integer never reaches `float()`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return float(value) if low <= value <= high else None
    return value if math.isfinite(value) and low <= value <= high else None


def whole(value: object, low: int, high: int) -> int | None:
    """A JSON integer (or an integral float such as 3.0) within [low, high]; None otherwise."""
    number = finite(value, low, high)
    if number is None or number != int(number):
        return None
    return int(number)
