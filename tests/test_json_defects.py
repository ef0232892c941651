"""A JWT header or payload, or a token answer, that is not acceptable JSON is refused with a message naming the actual
defect (a duplicate member, never which; NaN/Infinity, a number that overflows, nesting too deep, a body too big, not
UTF-8, bad syntax, not an object), never a blanket "not a JSON object", and never quoting the token or the body.

Hypothesis draws the defective document, and `expected` states independently what the message must say."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import KeySet, RSAKey

from edge_token.core import strictjson
from edge_token.core.errors import ProtocolError, VerificationError
from edge_token.core.strictjson import MAX_BYTES, MAX_DEPTH, JsonDefect
from edge_token.provider.oauth import parse_token_answer
from edge_token.provider.verify import Rules, decode_unverified, parse_header, verify_token

KEY = RSAKey.generate_key(2048, parameters={"kid": "defects"})
PLAIN = st.from_regex(r"[A-Za-z0-9_$-]{1,32}", fullmatch=True)  # member names a message may show
HIDDEN = st.from_regex(r"[A-Za-z0-9]{3,10}[.~/][A-Za-z0-9.]{3,10}", fullmatch=True) | st.from_regex(
    r"[A-Za-z0-9_$-]{33,40}", fullmatch=True
)  # names a message must not show: with a dot (a JWT has them) or other character, or too long
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(PLAIN, inner, max_size=2),
    max_leaves=4,
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def members(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object's text with exactly these members, in this order (duplicates kept)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v if isinstance(v, Raw) else json.dumps(v)}" for k, v in pairs) + "}"


class Raw(str):
    """A member value written into the document as it is (NaN, 1e400, nested text)."""


@st.composite
def defective(draw: st.DrawFn, object_expected: bool = True) -> tuple[bytes, str, list[str]]:
    """(a document, the phrase its refusal must contain, texts the refusal must not contain)."""
    base = draw(st.lists(st.tuples(PLAIN.filter(lambda k: k != "x"), VALUES), max_size=3, unique_by=lambda kv: kv[0]))
    kind = draw(st.sampled_from(["duplicate", "hidden duplicate", "constant", "overflow", "deep", "syntax",
                                 "utf8", "digits", "not an object"]))  # fmt: skip
    where = draw(st.integers(0, len(base)))
    hidden: list[str] = []
    if kind in ("duplicate", "hidden duplicate"):
        name = draw(PLAIN if kind == "duplicate" else HIDDEN)
        pairs: list[tuple[str, Any]] = [kv for kv in base if kv[0] != name]
        pairs[where:where] = [(name, draw(VALUES)), (name, draw(VALUES))]
        text = members(pairs)
        if draw(st.booleans()):  # the duplicate one level down instead
            text = members([("outer", Raw(text))])
        if kind == "hidden duplicate" or len(name) > 3:  # (a short plain name may occur in the message's own words)
            hidden.append(name)
        phrase = "a member name appears twice"  # never which: the sender chose it (an echo of our secret, reversed)
    elif kind == "constant":
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        text, phrase = members([*base, ("x", Raw(constant))]), f"{constant}, which is not JSON"
    elif kind == "overflow":
        text, phrase = members([*base, ("x", Raw(draw(st.sampled_from(["1e400", "-1e999", "2E+309"]))))]), "too large"
    elif kind == "deep":
        depth = draw(st.integers(MAX_DEPTH, 3000))
        text, phrase = members([*base, ("x", Raw("[" * depth + "]" * depth))]), f"nested deeper than {MAX_DEPTH}"
    elif kind == "syntax":
        whole = members(base) if base else '{"a": 1}'
        text, phrase = whole[: draw(st.integers(1, len(whole) - 1))], "invalid JSON syntax"
    elif kind == "utf8":
        return members([*base, ("x", "\x00")]).encode().replace(b"\\u0000", b"\xff"), "not UTF-8 text", hidden
    elif kind == "digits":
        text, phrase = members([*base, ("x", Raw("7" * draw(st.integers(4301, 6000))))]), "too many digits"
    else:
        value = draw(st.lists(VALUES, max_size=2) | st.text(max_size=5) | st.integers() | st.booleans() | st.none())
        names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null", int: "a number"}
        text, phrase = json.dumps(value), f"{names[type(value)]}, not a"
    return text.encode(), phrase, hidden


def refusal(token: str, check: Any) -> str:
    with pytest.raises(VerificationError) as caught:
        check(token)
    message = str(caught.value)
    assert caught.value.reason in ("malformed", "size"), message
    return message


def never_quotes(message: str, token: str, hidden: list[str]) -> None:
    assert token not in message
    assert not [part for part in token.split(".") if len(part) >= 8 and part in message], message
    assert not [name for name in hidden if name in message], message


@settings(max_examples=300, deadline=None)
@given(defective(), st.binary(min_size=8, max_size=40))
def test_a_defective_jwt_header_is_refused_naming_the_defect(doc: tuple[bytes, str, list[str]], sig: bytes) -> None:
    """Property: for any defective header, parse_header's refusal names the defect and quotes nothing."""
    raw, phrase, hidden = doc
    token = f"{b64(raw)}.{b64(b'{}')}.{b64(sig)}"
    if len(token) > 16 * 1024:
        return  # the size limit comes first (its own message, reason "size")
    message = refusal(token, parse_header)
    assert "malformed JWT header: " in message and phrase in message, (phrase, message)
    never_quotes(message, token, hidden)


@settings(max_examples=300, deadline=None)
@given(defective(), st.binary(min_size=8, max_size=40))
def test_a_defective_jwt_payload_is_refused_naming_the_defect(doc: tuple[bytes, str, list[str]], sig: bytes) -> None:
    """Property: the same for the payload, unverified (inspect) ..."""
    raw, phrase, hidden = doc
    token = b64(b'{"alg": "RS256"}') + f".{b64(raw)}.{b64(sig)}"
    if len(token) > 16 * 1024:
        return
    message = refusal(token, decode_unverified)
    assert "malformed JWT payload: " in message and phrase in message, (phrase, message)
    never_quotes(message, token, hidden)


@settings(max_examples=100, deadline=None)
@given(defective())
def test_a_signed_token_with_a_defective_payload_is_refused_naming_the_defect(
    doc: tuple[bytes, str, list[str]],
) -> None:
    """... and signed by the provider's own key, through verify_token (the signature is good, the payload is not)."""
    raw, phrase, hidden = doc
    token = jws.serialize_compact({"alg": "RS256", "kid": "defects"}, raw, KEY)
    if len(token) > 16 * 1024:
        return

    async def keys(_kid: str | None, _refresh: bool) -> KeySet:
        return KeySet([KEY])

    rules = Rules(issuer="https://issuer/", audience="aud", client_id="client", algorithms=("RS256",))
    message = refusal(token, lambda t: asyncio.run(verify_token(t, keys, rules, 1.8e9)))
    assert "malformed JWT payload: " in message and phrase in message, (phrase, message)
    never_quotes(message, token, hidden)


@settings(max_examples=300, deadline=None)
@given(defective())
def test_a_defective_token_answer_is_refused_naming_the_defect(doc: tuple[bytes, str, list[str]]) -> None:
    """Property: a 200 token answer of defective JSON is a ProtocolError naming the defect, quoting nothing."""
    raw, phrase, hidden = doc
    with pytest.raises(ProtocolError) as caught:
        parse_token_answer(raw, "application/json", 0.0)
    message = str(caught.value)
    assert "token answer" in message and phrase in message, (phrase, message)
    assert not [name for name in hidden if name in message], message
    assert "check token_url" in message


def test_a_token_answer_beyond_the_size_limit_says_so() -> None:
    """The one defect a JWT part cannot have (the token is capped at 16 KiB first): too big."""
    with pytest.raises(ProtocolError, match=f"more than {MAX_BYTES} bytes of JSON"):
        parse_token_answer(b"[" + b" " * MAX_BYTES + b"]", "application/json", 0.0)


@settings(max_examples=200, deadline=None)
@given(
    chunk=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=4, max_size=32),
    lines=st.integers(1, 200),
    columns=st.integers(1, 200),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-8-sig"]),
)
def test_nothing_the_sender_chose_reaches_a_refusal(chunk: str, lines: int, columns: int, encoding: str) -> None:
    """An echoing server spelling a secret into what the refusal would show (outside attack): a member name given
    twice (any name, a 32-character chunk of a secret), a syntax error placed at line ord(a) column ord(b), an
    invalid byte at a chosen offset. The refusal shows none of it; a body in UTF-16/32 or with a BOM is refused
    too (not UTF-8, as documented)."""
    echo = chunk[::-1]
    refusals = [
        json.dumps({echo: 1})[:-1] + f', "{echo}": 2}}',
        "{" + "\n" * (lines - 1) + " " * (columns - 1) + "x",
    ]
    for body in refusals:
        with pytest.raises(JsonDefect) as refused:
            strictjson.loads(body.encode())
        message = str(refused.value)
        assert echo not in message and not any(ch.isdigit() for ch in message.replace("UTF-8", "")), message
    with pytest.raises(JsonDefect) as refused:
        strictjson.loads(b'{"a": "' + b"x" * lines + b'\xff"}')
    assert not any(ch.isdigit() for ch in str(refused.value).replace("UTF-8", ""))
    if encoding != "utf-8":
        with pytest.raises(JsonDefect) as refused:
            strictjson.loads('{"a": 1}'.encode(encoding))
        assert ("byte order mark" if encoding == "utf-8-sig" else "not UTF-8") in str(refused.value)
