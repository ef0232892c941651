"""JSON as we accept it from the network: no duplicate member names, no NaN/Infinity.

Ambiguity is how parsers get confused: with two `access_token` or `alg` members, which one did the other side
mean? Python's json keeps the last one silently; we refuse the document instead.
"""

from __future__ import annotations

import json
from typing import Any


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class StrictDecoder(json.JSONDecoder):
    """A JSONDecoder with the rules above (joserfc accepts it as `decoder_cls`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(object_pairs_hook=_unique_members, parse_constant=_no_constant)
        super().__init__(**kwargs)


def loads(raw: str | bytes) -> Any:
    """Parse strictly; ValueError (or UnicodeDecodeError / RecursionError) on anything ambiguous or invalid."""
    return json.loads(raw, cls=StrictDecoder)
