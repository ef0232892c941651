"""Test helper: the encodings a secret travels in, and an attacker's search for a secret in emitted text.

Written apart from `edge_token.core.scrub` on purpose: the search decodes whatever it finds (percent, HTML, JSON
backslash escapes, base64 at every offset in both alphabets, hex; two levels deep) the way someone reading the
log would, so a test using it does not grade the scrubber by the scrubber's own rules.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus


def _basic(client_id: str, secret: str) -> str:
    return base64.b64encode(f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _mixed_hex(text: str) -> str:
    flip = [False]

    def one(match: re.Match[str]) -> str:
        flip[0] = not flip[0]
        return match.group().lower() if flip[0] else match.group()

    return re.sub(r"%[0-9A-F]{2}", one, text)


def _form_body(client_id: str, secret: str) -> str:
    return f"grant_type=client_credentials&client_id={quote_plus(client_id)}&client_secret={quote_plus(secret)}"


def _json_body(client_id: str, secret: str) -> str:
    return json.dumps({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})


#: name -> (client id, secret) -> the text a server could echo. Every form the README promises to cut.
ENCODINGS: dict[str, Callable[[str, str], str]] = {
    "raw": lambda i, s: s,
    "quote": lambda i, s: quote(s, safe=""),
    "quote default safe": lambda i, s: quote(s),
    "quote_plus": lambda i, s: quote_plus(s),
    "quote lower hex": lambda i, s: _lower_hex(quote(s, safe="")),
    "quote_plus lower hex": lambda i, s: _lower_hex(quote_plus(s)),
    "quote mixed hex": lambda i, s: _mixed_hex(quote(s, safe="")),
    "json escaped": lambda i, s: json.dumps(s)[1:-1],
    "json escaped, non-ascii kept": lambda i, s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json escaped slash": lambda i, s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "json unicode escapes": lambda i, s: "".join(f"\\u{ord(c):04x}" for c in s),
    "html": lambda i, s: html.escape(s),
    "basic header": lambda i, s: "Basic " + _basic(i, s),
    "basic pair urlsafe unpadded": lambda i, s: base64.urlsafe_b64encode(f"{i}:{s}".encode()).decode().rstrip("="),
    "base64": lambda i, s: base64.b64encode(s.encode()).decode(),
    "base64 unpadded": lambda i, s: base64.b64encode(s.encode()).decode().rstrip("="),
    "base64 urlsafe": lambda i, s: base64.urlsafe_b64encode(s.encode()).decode(),
    "base64 of the form body": lambda i, s: base64.b64encode(_form_body(i, s).encode()).decode(),
    "base64 of the json body": lambda i, s: base64.b64encode(_json_body(i, s).encode()).decode(),
    "form body": _form_body,
    "json body": _json_body,
    "json body, escaped again": lambda i, s: json.dumps(_json_body(i, s))[1:-1],
    "percent-encoded basic header": lambda i, s: quote("Basic " + _basic(i, s), safe=""),
    "hex": lambda i, s: s.encode().hex(),
    "base64 of base64": lambda i, s: base64.b64encode(base64.b64encode(s.encode())).decode(),
}


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1) or match.group(2)
        return chr(int(code, 16)) if code else match.group(3)

    return re.sub(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|(.))", one, text, flags=re.S)


def _decodings(text: str) -> Iterable[str]:
    yield unquote(text)
    yield unquote_plus(text)
    yield html.unescape(text)
    yield _unescape(text)
    for run in re.findall(r"[A-Za-z0-9+/_-]{4,}", text):
        standard = run.replace("-", "+").replace("_", "/")
        for offset in range(4):
            piece = standard[offset:]
            piece = piece[: len(piece) - 1] if len(piece) % 4 == 1 else piece
            try:
                yield base64.b64decode(piece + "=" * (-len(piece) % 4)).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                pass
    for run in re.findall(r"[0-9a-fA-F]{6,}", text):
        for offset in (0, 1):
            piece = run[offset:]
            yield bytes.fromhex(piece[: len(piece) - len(piece) % 2]).decode("utf-8", "replace")


def views(text: str, depth: int = 2) -> Iterable[str]:
    """`text` and everything it decodes to, `depth` levels deep."""
    yield text
    if depth:
        for decoded in _decodings(text):
            if decoded != text:
                yield from views(decoded, depth - 1)


def leaks(haystack: str, secrets: Iterable[str]) -> list[str]:
    """The secrets someone could read out of `haystack`, by looking or by decoding (empty: no leak)."""
    wanted = [s for s in secrets if s]
    found: set[str] = set()
    for line in haystack.splitlines() or [haystack]:
        for piece in [line, *re.split(r"[\s\"'<>(){}\[\],;|`]+", line)]:
            for view in views(piece):
                found.update(s for s in wanted if s in view)
    return sorted(found)


class Echoes:
    """A hostile server's echo: each call renders the credential in the next encoding of ENCODINGS (cycling),
    so N calls cover N encodings. `used` records which ones were served."""

    def __init__(self) -> None:
        self.names = sorted(ENCODINGS)
        self.used: list[str] = []

    def __call__(self, client_id: str, secret: str) -> str:
        name = self.names[len(self.used) % len(self.names)]
        self.used.append(name)
        return ENCODINGS[name](client_id, secret)


def request_credentials(raw: bytes, headers: Mapping[str, str]) -> tuple[str, str]:
    """(client id, secret) of a token request, however it was sent (Basic header, JSON or form body)."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Basic "):
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return unquote(user), unquote(password)
    if raw.lstrip().startswith(b"{"):
        body = json.loads(raw)
        return str(body.get("client_id", "")), str(body.get("client_secret", ""))
    form = dict(parse_qsl(raw.decode()))
    return form.get("client_id", ""), form.get("client_secret", "")


def echoing_provider(echoes: Echoes) -> Callable[[bytes, Mapping[str, str]], dict[str, str]]:
    """The body of an OAuth error that quotes the client's own secret back, in the next encoding."""

    def answer(raw: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        client_id, secret = request_credentials(raw, headers)
        return {"error": "invalid_client", "error_description": echoes(client_id, secret) + " is not valid"}

    return answer
