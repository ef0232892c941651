"""One scrubber for every form a secret travels in: the log redactor, error messages, /status and the CLI use it.

A secret we send reaches a server raw (JSON body), percent-encoded (form body, `quote` or `quote_plus`, either
hex case), inside base64 (HTTP Basic `quote(id):quote(secret)`, or any larger blob) or JSON-escaped; a server
that echoes our request may hand any of those back in an error, and we must not print it. Three layers:

1. **Known forms, cut surgically.** At registration each secret is expanded into its text forms (raw, `quote`
   with and without `/` safe, `quote_plus`, upper and lower hex, JSON-escaped with and without `\\/`, HTML) and,
   for each text form, the base64 characters that depend on the secret alone at each of the three byte
   alignments a secret can have inside a larger base64 blob (standard and URL-safe alphabets). A found base64
   core takes its whole base64 run with it, so no padding or neighbouring bits of the secret stay behind.
2. **One JWT pattern** (`JWT`), also used by the logs: any compact JWS/JWE-shaped string.
3. **Fail closed on what decodes to a secret.** Every suspicious word is decoded (percent, HTML, backslash
   escapes, base64 at all four offsets, hex; two levels deep, so base64 of a percent-encoded body counts); a
   word whose decoding holds a secret or a JWT is cut whole, and a text that still decodes to a secret as a
   whole is replaced entirely. This catches encodings nobody listed (mixed-case hex, `\\u0073`, double
   encodings) at the price of over-redacting a hostile server's message, which is the right trade.

Secrets are registered **process-wide** (`register`): `SecretSource.read` registers every configured secret as
it is read (client secrets, Vault tokens, AppRole secret_ids, etcd passwords), and `httpcall.exchange`
registers every credential it sends (Kubernetes service-account tokens, Vault client tokens obtained at login).
A registry passed around would have to reach every place text is produced (aiohttp exception strings, the
CLI's last-resort error print); one missed path would be a leak. The registry only grows, bounded to the
`MAX_SECRETS` most recently used, so rotating Vault client tokens cannot grow it forever.

Long because the three layers share one registry and its memos, and each layer's decoding rules must match
the others' exactly: split apart, they would drift.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote, unquote_plus

REDACTED = "[REDACTED]"
REDACTED_TEXT = "[REDACTED: this text held an encoded secret]"
#: compact JWS/JWE: a base64url JSON header (`{"`, `{ "`, `{\n` encode as eyJ / eyA / ew…), then payload parts
JWT = re.compile(r"e[wy][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.?[A-Za-z0-9_-]*")
JWT_MIN_CHARS = 11  # the shortest text `JWT` can match: e, [wy], six characters, a dot, two characters
MEMO_SIZE = 16384  # remembered words (the memo is dropped whole when full, and on every register)
#: remembered texts: the names and sink paths of 10,000 profiles and more (each renewal logs them again; dropped,
#: each path cost a full scrub, ~25 µs), bounded by their total size too (a server's varying messages cannot
#: make it hold more than MEMO_CHARS of text)
MEMO_TEXTS, MEMO_CHARS = 65536, 2 * 1024 * 1024
MEMO_TEXT = 512  # longer texts (whole lines, bodies) are scrubbed every time
MIN_SECRET = 4  # shorter values would cut ordinary words out of every line; refuse such secrets instead
MIN_CORE = 6  # a base64 core shorter than this matches ordinary text too often to be worth cutting
MAX_SECRETS = 64

_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
_URLSAFE = str.maketrans("+/", "-_")
_TO_STANDARD = str.maketrans("-_", "+/")
_WORD = re.compile(r"[^\s\"'<>(){}\[\],;|`]+")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{6,}=*")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{6,}")
_DUMP = re.compile(r"[0-9A-Fa-f]{2}(?:[ :.-][0-9A-Fa-f]{2}){3,}")  # a hex dump: `68 76 73 2e`, `68:76:73:2e`
_DUMP_SEPARATORS = re.compile(r"[ :.-]")
_BACKSLASH = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2})|(.))", re.S)
_PERCENT = re.compile(r"%[0-9A-F]{2}")
#: what any decoding `_views` makes needs: an escape's first character, six base64 characters (hex runs are base64
#: characters too) or the start of a hex dump. Text without any has no decoding, so `_views` need not look
_DECODABLE = re.compile(r"[%+&\\]|[A-Za-z0-9+/_-]{6}|[0-9A-Fa-f]{2}[ :.-][0-9A-Fa-f]{2}")


def text_forms(secret: str) -> set[str]:
    """Every textual form the secret can take in a request we send (or a server's echo of it)."""
    forms = {secret, html_escape(secret), html_escape(secret, quote=False)}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="/")):
        forms |= {encoded, _PERCENT.sub(lambda m: m.group().lower(), encoded)}
    for escaped in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        twice = json.dumps(escaped)[1:-1]  # a JSON body quoted inside another JSON string
        forms |= {escaped, escaped.replace("/", "\\/"), twice, twice.replace("/", "\\/")}
    return {form for form in forms if len(form) >= MIN_SECRET}


def html_escape(text: str, quote: bool = True) -> str:
    """`html.escape`, without importing `html` where nothing is unescaped: that import loads `html.entities`, a
    2,000-entry table, about 1.3 ms of every cold `once` (issue 15). tests/test_once_imports.py pins the two
    to the same answers."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;").replace("'", "&#x27;") if quote else text


def base64_cores(form: str) -> set[str]:
    """The base64 characters fixed by `form` alone, wherever it starts in a larger encoded blob.

    Base64 packs 3 bytes into 4 characters, so text starting at byte offset k of a blob is encoded three
    different ways (k mod 3). For each, the characters whose 6 bits all come from `form` are the same whatever
    surrounds it: those are what to look for.
    """
    data = form.encode()
    cores: set[str] = set()
    for lead in range(3):
        encoded = base64.b64encode(b"\0" * lead + data).decode()
        first, last = -(-8 * lead // 6), 8 * (lead + len(data)) // 6  # chars wholly inside the form's bits
        core = encoded[first:last]
        if len(core) >= MIN_CORE:
            cores |= {core, core.translate(_URLSAFE)}
    return cores


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """Grow a base64 core to its whole run (and padding), so no bits of the secret's edges stay behind."""
    while start > 0 and text[start - 1] in _B64_CHARS:
        start -= 1
    while end < len(text) and (text[end] in _B64_CHARS or text[end] == "="):
        end += 1
    return start, end


def _cut(text: str, spans: list[tuple[int, int]], label: str = REDACTED) -> str:
    if not spans:
        return text
    out, position = [], 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        out.append(text[position : max(start, position)])
        if start >= position:
            out.append(label)
        position = end
    out.append(text[position:])
    return "".join(out)


def _unescape_backslashes(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1) or match.group(2)
        return chr(int(code, 16)) if code else match.group(3)

    return _BACKSLASH.sub(one, text)


def _b64_views(run: str) -> Iterable[str]:
    """A base64 run decoded from each of its four possible character offsets (both alphabets)."""
    standard = run.translate(_TO_STANDARD)
    for offset in range(4):
        piece = standard[offset:].rstrip("=")
        piece = piece[: len(piece) - 1] if len(piece) % 4 == 1 else piece  # a lone 6 bits: not a byte
        piece += "=" * (-len(piece) % 4)  # padding stripped or never sent: restore it
        if len(piece) >= 4:
            try:  # `b64decode(piece, validate=True)` without its two Python frames (4 calls a run, first scrubs)
                yield binascii.a2b_base64(piece, strict_mode=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):  # a non-ASCII character is a ValueError, as in b64decode
                continue


def _views(text: str, depth: int = 2, runs: bool = True) -> Iterable[str]:
    """What `text` could mean once decoded: each decoding that changes it, and the decodings of those.

    `runs=False` skips decoding the base64 and hex runs of `text` itself (not of its decodings): for a whole
    line whose every word was already checked, where those runs cannot span two words."""
    found: list[str] = []
    if "%" in text or "+" in text:
        found += [unquote(text), unquote_plus(text)]
    if "&" in text:
        import html  # only here: see html_escape

        found.append(html.unescape(text))
    if "\\" in text:
        found.append(_unescape_backslashes(text))
    for match in _B64_RUN.finditer(text) if runs else ():
        found += _b64_views(match.group())
    for match in _HEX_RUN.finditer(text) if runs else ():
        run = match.group()
        found += [bytes.fromhex(run[i : len(run) - (len(run) - i) % 2]).decode("utf-8", "replace") for i in (0, 1)]
    for match in _DUMP.finditer(text):  # also across words: a dump's bytes are split by spaces
        found.append(bytes.fromhex(_DUMP_SEPARATORS.sub("", match.group())).decode("utf-8", "replace"))
    for view in found:
        if view != text:
            yield view
            if depth > 1 and _DECODABLE.search(view):  # most views of a base64 run are binary noise, without any
                yield from _views(view, depth - 1)


def longest_view(word: str) -> int:
    """An upper bound on the length of every decoding `_views(word)` yields, found without decoding anything.

    No decoding lengthens text: percent, HTML and backslash escapes each stand for fewer characters than they
    take, and a decoded byte is at most one character. Without `%`, `+`, `&` or `\\` in the word, the only
    decodings are those of its base64 and hex runs (a hex run lies inside a base64 run, and decodes to half its
    length), and the decodings of a decoding are shorter still. A base64 run of r characters decodes (from any
    offset, `_b64_views`) to at most 3 * r // 4 bytes, one character less when r % 4 == 1 (a lone 6 bits is
    dropped). A hex dump of d characters (`68 76 73`) decodes to (d + 1) // 3 bytes."""
    if "%" in word or "+" in word or "&" in word or "\\" in word:
        return len(word)
    longest = max(map(len, _B64_RUN.findall(word)), default=0)
    dump = max(map(len, _DUMP.findall(word)), default=0)
    return max((longest - (longest % 4 == 1)) * 3 // 4, (dump + 1) // 3)


def _holds(view: str, raw: tuple[str, ...]) -> bool:
    """Does `view` hold a registered secret or a JWT? A plain loop: the nested generator expressions it replaced
    cost twice as much, paid for every view of every first scrub (a fill scrubs each sink's name once)."""
    for secret in raw:
        if secret in view:
            return True
    return JWT.search(view) is not None


def _betrays(word: str, raw: tuple[str, ...], memo: dict[str, bool], shortest: int = 0) -> bool:
    """Does some decoding of `word` hold a secret or a JWT? Memoized per registry state: log lines and /status
    repeat the same words (keys, event names, profile and sink names) all day. Words that change with every
    line (timestamps, fingerprints, numbers) are answered by `longest_view` alone when every decoding they could
    have is shorter than `shortest` (the shortest registered secret, or a JWT): nothing that short can hold one."""
    known = memo.get(word)
    if known is None:
        if shortest and longest_view(word) < shortest:
            return False
        known = False
        for view in _views(word):
            if _holds(view, raw):
                known = True
                break
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[word] = known
    return known


class Plain(str):
    """Text this process made from nothing a secret or a token can be in: the hex digits of a hash (a token's
    fingerprint). Scrubbers pass it unread. Each token has its own, so scrubbing it cost a full pass per line, and
    its memo entries pushed out the names and paths that do repeat. Never wrap text that came from outside."""

    __slots__ = ()


class Scrubber:
    """A registry of secrets and the functions that cut them (in any form) and JWTs out of text."""

    def __init__(self, max_secrets: int = MAX_SECRETS) -> None:
        self._max = max_secrets
        self._lock = threading.Lock()
        self._secrets: OrderedDict[str, tuple[tuple[str, bool], ...]] = OrderedDict()
        self._patterns: tuple[tuple[str, bool], ...] = ()  # (form, is a base64 core), rebuilt on change
        self._raw: tuple[str, ...] = ()
        self._texts: dict[str, str] = {}  # short text -> scrubbed, under the current registry
        #: `_texts` to read (a miss is a `scrub_text` call): texts already scrubbed under the current registry, and
        #: their scrubbed form. Replaced, not changed, when a secret is registered: take it anew for each use. An
        #: attribute, not a property: the redactor reads it for every line
        self.known: Mapping[str, str] = self._texts
        self._texts_chars = 0  # the characters `_texts` holds (keys)
        self._words: dict[str, bool] = {}  # word -> some decoding of it betrays a secret or a JWT
        self._newest: str | None = None  # the secret registered or refreshed last (the end of the LRU order)

    def register(self, secret: str) -> None:
        """Cut this value (and every encoding of it) from all text scrubbed from now on."""
        if secret == self._newest:  # already the most recently used (each renewal registers its secret): no change
            return
        secret = secret.strip()
        if len(secret) < MIN_SECRET:
            return
        with self._lock:
            if secret in self._secrets:
                self._secrets.move_to_end(secret)
                self._newest = secret
                return
            forms = text_forms(secret)
            cores = {core for form in forms for core in base64_cores(form)}
            self._secrets[secret] = tuple((form, False) for form in forms) + tuple((core, True) for core in cores)
            while len(self._secrets) > self._max:
                self._secrets.popitem(last=False)
            self._patterns = tuple(p for patterns in self._secrets.values() for p in patterns)
            self._raw = tuple(self._secrets)
            self._texts, self._words = {}, {}  # answers given under the old registry may now be wrong
            self.known = self._texts
            self._newest = secret  # only now that it is cut: a registration that raised leaves it unregistered
            self._texts_chars = 0

    def scrub_text(self, text: str) -> str:
        """`text` with every registered secret (in every form) and every JWT replaced by [REDACTED]."""
        if type(text) is Plain:
            return text
        if len(text) > MEMO_TEXT:
            return self._scrub_text(text)
        memo = self._texts  # this registry state's memo: `register` swaps in a new one, never edits it
        known = memo.get(text)  # field values repeat (names, states, paths): one scrub per registry state
        if known is None:
            known = self._scrub_text(text)
            if len(memo) >= MEMO_TEXTS or self._texts_chars >= MEMO_CHARS:
                memo.clear()
                self._texts_chars = 0
            memo[text] = known
            self._texts_chars += len(text)
        return known

    def _scrub_text(self, text: str) -> str:
        patterns, raw = self._patterns, self._raw  # one consistent snapshot (register swaps whole tuples)
        spans: list[tuple[int, int]] = []
        for form, is_core in patterns:
            start = text.find(form)
            while start != -1:
                span = _widen(text, start, start + len(form)) if is_core else (start, start + len(form))
                spans.append(span)
                start = text.find(form, span[1])
        text = JWT.sub(REDACTED, _cut(text, spans))
        return self._fail_closed(text, raw)

    def _fail_closed(self, text: str, raw: tuple[str, ...]) -> str:
        shortest = min(JWT_MIN_CHARS, min(map(len, raw), default=JWT_MIN_CHARS))  # no shorter decoding holds one
        if longest_view(text) < shortest:
            return text  # nor can any word of it: a word's decodings are never longer than the whole text's bound
        memo, spans = self._words, []
        for match in _WORD.finditer(text):
            word = match.group()
            # a word that is the whole text passed the bound just above: `_betrays` need not compute it again
            if len(word) >= MIN_SECRET and _betrays(word, raw, memo, 0 if len(word) == len(text) else shortest):
                spans.append(match.span())
        text = _cut(text, spans)
        # what no single word shows: a secret or a JWT spread over several (a hex dump, HTML entities split at `;`)
        if any(_holds(view, raw) for view in _views(text, runs=False)):
            return REDACTED_TEXT
        return text

    def scrub(self, value: Any) -> Any:
        """Scrub every string in a JSON-like structure (dict keys included); other values pass unchanged."""
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {self.scrub(key): self.scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(item) for item in value]
        return value

    @property
    def generation(self) -> object:
        """Replaced (a new object) whenever the registry changes: a cache of text scrubbed under one generation
        is valid only while `generation` is still that object (observe/statusbody.py compares with `is`)."""
        return self._raw

    def reach(self) -> int:
        """How far past a cut point a registered secret's longest encoding can extend (an astral character is 12
        characters as JSON `\\uXXXX\\uXXXX`, 16 inside base64): text cut at `limit + reach()` before scrubbing, and at
        `limit` after, loses no cut a full scrub would make before `limit`."""
        return 16 * max((len(secret) for secret in self._raw), default=0) + 64

    def __contains__(self, secret: str) -> bool:
        return secret.strip() in self._secrets


class ScrubbingStream:
    """A text stream wrapper that scrubs each complete line before it reaches the real stream.

    Installed over sys.stdout and sys.stderr by the CLI, so every line the process prints is scrubbed, whoever
    prints it (a command, the exec wrapper, a library): `print` writes the text and the newline separately, so
    lines are buffered until complete (or flushed) and scrubbed whole.
    """

    def __init__(self, stream: TextIO, scrubber: Scrubber | None = None) -> None:
        self._stream, self._scrubber = stream, scrubber or SECRETS
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        """Buffer `text`; every line it completes is scrubbed and written."""
        with self._lock:
            lines = (self._pending + text).split("\n")
            self._pending = lines.pop()
            if lines:
                self._stream.write("".join(self._scrubber.scrub_text(line) + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        """Scrub and write what is buffered (an unfinished line too), then flush the real stream."""
        with self._lock:
            if self._pending:
                self._stream.write(self._scrubber.scrub_text(self._pending))
                self._pending = ""
            self._stream.flush()

    @property
    def underlying(self) -> TextIO:
        """The real stream: for a writer whose every line is already scrubbed field by field (the log pipeline)."""
        return self._stream

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding...: the real stream's
        return getattr(self._stream, name)


#: The process's registry (see the module docstring for why it is process-wide).
SECRETS = Scrubber()
register = SECRETS.register
scrub_text = SECRETS.scrub_text
scrub = SECRETS.scrub
reach = SECRETS.reach
