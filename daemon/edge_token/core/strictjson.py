"""JSON as we accept it from the network: the one parse of every network body (token endpoint, JWKS, secret stores,
etcd) and of JWT headers and claims.

- No duplicate member names: with two `access_token`, `alg` or `expires_at_unix` members, which one did the
  other side mean? Python's json keeps the last one silently; we refuse the document instead.
- No NaN / Infinity / -Infinity (not JSON; they would compare false with everything, e.g. an expiry), and no
  number that only becomes one when parsed (1e400).
- Bounded: at most MAX_BYTES (the HTTP layer reads less than that anyway) and MAX_DEPTH levels of nesting (no
  body we read nests beyond ~10; Python's own limit surfaces as RecursionError, which is not a ValueError).
Every refusal is a `JsonDefect` (a ValueError), so a caller catches exactly one thing, and its message names the
defect (`a member name appears twice`, `NaN, which is not JSON`, `nested deeper than 32 levels`, ...) without
quoting the document: callers put it after their own "what" (`malformed JWT header: a member name appears twice`).
Nothing the sender chose is shown, not even a member name or an error's position: an echoing server could spell a
secret with them (an attack did, a 32-character chunk per answer, reversed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32
KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


class JsonDefect(ValueError):
    """A document we refuse; the message names the defect and never quotes the document."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise JsonDefect("a member name appears twice")  # which one is the sender's text: not shown
            seen.add(name)
    return result


def _no_constant(name: str) -> Any:
    raise JsonDefect(f"{name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: valid JSON text, but Infinity once parsed
        raise JsonDefect("a number too large for a float")
    return value


def kind(value: Any) -> str:
    """What a parsed document is, for "a JSON array, not an object" messages."""
    return KINDS.get(type(value), "a number")


class StrictDecoder(json.JSONDecoder):
    """A JSONDecoder with the member and constant rules above (joserfc accepts it as `decoder_cls`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(object_pairs_hook=_unique_members, parse_constant=_no_constant, parse_float=_finite_float)
        super().__init__(**kwargs)


#: one decoder for every parse: `json.loads(..., cls=...)` built a decoder and its scanner per call (~5 µs, three
#: times per renewal). A decoder keeps no state between documents (its scanner's memo is emptied after each).
_DECODER = StrictDecoder()
#: ...and its scanner, called as `JSONDecoder.decode` and `raw_decode` call it (two Python frames a parse, three
#: parses a renewal): leading and trailing whitespace skipped, "Expecting value" and "Extra data" as they say them
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]  # (untyped)
#: json.decoder.WHITESPACE, what JSON calls whitespace (it matches anywhere, if only nothing: never None)
_SPACE: Callable[[str, int], re.Match[str]] = re.compile(r"[ \t\n\r]*").match  # type: ignore[assignment]


def loads(raw: str | bytes) -> Any:
    """Parse strictly; JsonDefect (a ValueError) naming what is wrong with anything ambiguous, invalid, too large
    or nested too deeply."""
    if len(raw) > MAX_BYTES:
        raise JsonDefect(f"more than {MAX_BYTES} bytes of JSON")
    try:
        # UTF-8 only (json.loads would also take UTF-16 and UTF-32 bytes)
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if text.startswith("\ufeff"):  # json.loads named this; the shared decoder alone would say "Expecting value"
            raise JsonDefect("a byte order mark (BOM) before the JSON; send UTF-8 without one")
        try:
            value, end = _SCAN(text, _SPACE(text, 0).end())
        except StopIteration:
            raise JsonDefect("invalid JSON syntax (Expecting value)") from None
        if _SPACE(text, end).end() != len(text):
            raise JsonDefect("invalid JSON syntax (Extra data)")
    except JsonDefect:
        raise
    except RecursionError:
        raise JsonDefect(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:  # its msg is a fixed text; no position (the sender chooses it: a channel)
        raise JsonDefect(f"invalid JSON syntax ({exc.msg})") from None
    except UnicodeDecodeError:
        raise JsonDefect("not UTF-8 text") from None
    except ValueError as exc:  # int()'s digit limit (4300), and whatever json may raise one day
        digits = "integer string conversion" in str(exc)
        raise JsonDefect("an integer with too many digits" if digits else "a value that cannot be read") from None
    if text.count("{") + text.count("[") > MAX_DEPTH:  # fewer brackets cannot nest deeper: no walk (most documents)
        check_depth(value)
    return value


def check_depth(value: Any) -> None:
    """Walk a parsed document without recursion; JsonDefect beyond MAX_DEPTH levels (also for documents another
    parser read with `StrictDecoder`, which has no depth rule: joserfc's JWT payloads)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
                    raise JsonDefect(f"nested deeper than {MAX_DEPTH} levels")
                pending.append((child, depth + 1))
