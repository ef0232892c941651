"""A consumer for soak tests: reads a token file in a tight loop and verifies every read independently.

    python tests/reader.py TOKEN_FILE JWKS_URL ISSUER AUDIENCE CLIENT_ID SECONDS

Verification is its own (joserfc + explicit claim checks), not edge-token's. Keys are fetched from the JWKS on
an unknown kid and never forgotten (a token signed by a retired key stays verifiable until it expires).
Prints one JSON object: reads, bad reads by reason, and the times of expired reads (for the harness to judge
whether the provider was reachable then).
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.request
from collections import Counter

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import DictKey, KeySet


def main() -> None:
    path, jwks_url, issuer, audience, client_id, seconds = sys.argv[1:7]
    known: dict[str, DictKey] = {}
    keys = KeySet([])

    def refresh() -> KeySet:
        try:
            with urllib.request.urlopen(jwks_url, timeout=2) as response:  # noqa: S310 - loopback test server
                for key in json.load(response).get("keys", []):
                    known[key["kid"]] = key
        except (OSError, ValueError, KeyError) as exc:  # the JWKS may be down on purpose: keep what we know
            del exc
        return KeySet.import_key_set({"keys": list(known.values())}) if known else KeySet([])

    keys = refresh()
    reads, bad, expired_at = 0, Counter[str](), []
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        try:
            with open(path, encoding="ascii") as handle:
                token = handle.read()
        except FileNotFoundError:
            time.sleep(0.005)
            continue  # not written yet: not a bad read
        reads += 1
        if token.count(".") != 2:
            bad["partial"] += 1
            continue
        try:
            part = token.split(".")[0]
            header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except Exception:
            header = {}
        for _ in range(20):  # the JWKS may be down on purpose: retry like a patient consumer would
            if header.get("kid") in known:
                break
            keys = refresh()
            time.sleep(0.05)
        try:
            claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            bad["unverifiable"] += 1
            continue
        aud = claims.get("aud")
        if claims.get("iss") != issuer or audience not in (aud if isinstance(aud, list) else [aud]):
            bad["wrong_issuer_or_audience"] += 1
        elif claims.get("azp") != client_id:
            bad["foreign_client"] += 1
        elif claims.get("exp", 0) <= time.time():
            expired_at.append(time.time())
        time.sleep(0.002)
    print(json.dumps({"reads": reads, "bad": dict(bad), "expired_at": expired_at}))


if __name__ == "__main__":
    main()
