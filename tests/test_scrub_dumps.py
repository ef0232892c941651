"""Encodings that spread a secret or a JWT over several words (found by an outside attack): a hex dump
(`68 76 73 2e ...`, as a proxy or store may quote a header) and HTML numeric entities (`&#101;&#121;...`, split
into one-character words at each `;`). No word decodes to anything long; the whole text does."""

from __future__ import annotations

import html
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_token.core.scrub import JWT, Scrubber
from edge_token.net import http
from leakscan import leaks

JWT_TEXT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xIn0.c2lnbmF0dXJlc2ln"
secrets_st = st.text(string.ascii_letters + string.digits + "-._~:/+=", min_size=8, max_size=40)
context_st = st.text(string.ascii_letters + " :", max_size=30)


def dump(text: str, separator: str, upper: bool) -> str:
    pairs = [f"{byte:02X}" if upper else f"{byte:02x}" for byte in text.encode()]
    return separator.join(pairs)


@settings(max_examples=150, deadline=None)
@given(secret=secrets_st, separator=st.sampled_from([" ", ":", "-", "."]), upper=st.booleans(), before=context_st)
def test_a_secret_as_a_hex_dump_is_cut(secret: str, separator: str, upper: bool, before: str) -> None:
    scrubber = Scrubber()
    scrubber.register(secret)
    out = scrubber.scrub_text(f"{before} token {dump(secret, separator, upper)} denied")
    assert secret not in out
    for run in out.split():
        assert leaks(run, [secret]) == []
    compact = out.replace(" ", "").replace(":", "").replace("-", "").replace(".", "")
    assert secret.encode().hex() not in compact.lower()


@settings(max_examples=60, deadline=None)
@given(prefix=context_st, decimal=st.booleans())
def test_a_jwt_as_html_entities_is_cut(prefix: str, decimal: bool) -> None:
    entities = "".join(f"&#{ord(c)};" if decimal else f"&#x{ord(c):x};" for c in JWT_TEXT)
    out = http.sanitize(f"{prefix} store said: {entities}", (), 100_000)
    assert JWT.search(html.unescape(out)) is None, out[:120]


def test_ordinary_hex_and_entities_are_left_alone() -> None:
    scrubber = Scrubber()
    scrubber.register("an-unrelated-secret-value")
    for text in ("mac 00:1a:2b:3c:4d:5e is up", "fingerprint 3f 2a 91 0c 7e", "Tom &amp; Jerry &#8212; fine"):
        assert scrubber.scrub_text(text) == text
