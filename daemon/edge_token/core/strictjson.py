"""JSON as we accept it from the network: the one parse of every network body (token endpoint, JWKS, secret stores,
etcd) and of JWT headers and claims.

- No duplicate member names: with two `access_token`, `alg` or `expires_at_unix` members, which one did the
  other side mean? Python's json keeps the last one silently; we refuse the document instead.
- No NaN / Infinity / -Infinity (not JSON; they would compare false with everything, e.g. an expiry), and no
  number that only becomes one when parsed (1e400).
- Bounded: at most MAX_BYTES (the HTTP layer reads less than that anyway) and MAX_DEPTH levels of nesting (no
  body we read nests beyond ~10; Python's own limit surfaces as RecursionError, which is not a ValueError).
Every refusal is a ValueError (UnicodeDecodeError is one), so a caller catches exactly one thing.
"""

from __future__ import annotations

import json
from typing import Any

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: valid JSON text, but Infinity once parsed
        raise ValueError("a number too large for a float")
    return value


class StrictDecoder(json.JSONDecoder):
    """A JSONDecoder with the member and constant rules above (joserfc accepts it as `decoder_cls`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(object_pairs_hook=_unique_members, parse_constant=_no_constant, parse_float=_finite_float)
        super().__init__(**kwargs)


def loads(raw: str | bytes) -> Any:
    """Parse strictly; ValueError on anything ambiguous, invalid, too large or nested too deeply."""
    if len(raw) > MAX_BYTES:
        raise ValueError(f"more than {MAX_BYTES} bytes of JSON")
    try:
        value = json.loads(raw, cls=StrictDecoder)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    """Walk the parsed document without recursion; ValueError beyond MAX_DEPTH levels."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
                    raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
                pending.append((child, depth + 1))
