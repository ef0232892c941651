"""Chaos soak: the real daemon against a provider that fails 30 % of the time, with readers checking every read.

Short by default (about 40 s); `EDGE_TOKEN_SOAK=1` runs 10 minutes. Figures are printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc.jwk import RSAKey

from conftest import CLIENT_ID, CLIENT_SECRET, FIGURES, SOAK, profile_toml
from daemonproc import DaemonProcess
from faultyauth import Fault, FaultyAuthServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]
TESTS = Path(__file__).resolve().parent
LIFETIME, REFRESH_AT, FAULT_RATE = 4, 0.5, 0.3
AUTH_TTL = LIFETIME  # conftest.live_auth


def chaos(auth: FaultyAuthServer, rng: random.Random, stranger: RSAKey) -> list[tuple[str, Fault | None]]:
    """The menu of token-endpoint faults (built lazily per request so minted tokens carry current times)."""
    good = auth.claims_for(CLIENT_ID, "https://api.sitecorecloud.io")
    now = int(auth.now())
    return [
        ("500", Fault(500, b"oops")),
        ("503", Fault(503, {"error": "temporarily_unavailable"})),
        ("429", Fault(429, b"slow down", {"Retry-After": "1"})),
        ("timeout", Fault(200, {}, delay=1.0)),
        ("reset", Fault(reset=True)),
        ("truncated", Fault(200, b'{"access_token": "eyJhbGciOi')),
        ("bad_signature", Fault(200, access_token=auth.mint(good, {"kid": auth.signing_key.kid}, key=stranger))),
        ("wrong_audience", Fault(200, access_token=auth.mint({**good, "aud": "https://elsewhere"}))),
        ("expired", Fault(200, access_token=auth.mint({**good, "iat": now - 100, "exp": now - 10}))),
        ("unknown_kid", Fault(200, access_token=auth.mint(good, {"kid": "rogue"}, key=stranger))),
    ]


async def test_chaos_soak(auth: FaultyAuthServer, tmp_path: Path, secret_file: Path) -> None:
    """Zero bad reads, zero expired reads while the provider answered, ~1 request per rotation, flat resources,
    and no secret or token in anything the daemon emitted (logs, /metrics, /status, hook children)."""
    duration = 600.0 if SOAK else 40.0
    rng = random.Random(20261128)
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    injected: dict[str, int] = {}
    turns = itertools.count(rng.randrange(100))
    jwks_down: list[float] = []  # when the JWKS failed: new keys could not be learnt, so new tokens not verified

    def token_chaos() -> Fault | None:
        if rng.random() >= FAULT_RATE:
            return None
        menu = chaos(auth, rng, stranger)
        name, fault = menu[next(turns) % len(menu)]  # every kind in turn: the run covers them all, not by luck
        injected[name] = injected.get(name, 0) + 1
        return fault

    def jwks_chaos() -> Fault | None:
        if rng.random() >= FAULT_RATE:
            return None
        injected["jwks_outage"] = injected.get("jwks_outage", 0) + 1
        jwks_down.append(time.time())
        return rng.choice([Fault(503, b"down"), Fault(200, b"<html>"), Fault(200, {"keys": []})])

    auth.token_chaos, auth.jwks_chaos = token_chaos, jwks_chaos
    hook_dump = tmp_path / "hooks.jsonl"
    hook = [sys.executable, "-c", "import json, os\nproc = lambda n: open(f'/proc/self/{n}', 'rb').read().decode()\n"
            f"open({str(hook_dump)!r}, 'a').write(json.dumps([proc('cmdline'), proc('environ')]) + '\\n')"]  # fmt: skip
    sinks: list[dict[str, Any]] = [
        {"path": str(tmp_path / "a.jwt"), "on_update": hook},
        {"path": str(tmp_path / "b.jwt")},
    ]
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = "127.0.0.1:0"\njwks_min_refetch_seconds = 1\n'
        + profile_toml("main", auth, secret_file, sinks, refresh_at=REFRESH_AT, leeway_seconds=1, timeout_seconds=0.5)
    )
    daemon = await DaemonProcess(config).start()
    address = (await daemon.wait_for("http.listening"))["address"]
    readers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(TESTS / "reader.py"),
            str(tmp_path / name),
            auth.jwks_url,
            auth.issuer,
            "https://api.sitecorecloud.io",
            CLIENT_ID,
            str(duration),
            stdout=asyncio.subprocess.PIPE,
        )
        for name in ("a.jwt", "a.jwt", "b.jwt")
    ]
    await asyncio.sleep(5)  # warm-up before the resource baseline
    assert daemon.process is not None
    start_rss, start_fds = resources(daemon.process.pid)
    rotations, deadline = 0, time.monotonic() + duration - 5
    while time.monotonic() < deadline:  # rotate the provider's key every ~8 s, retiring the old one 4 s later
        await asyncio.sleep(4)
        auth.rotate_key() if rotations % 2 == 0 else auth.retire_old_keys()
        rotations += 1
    end_rss, end_fds = resources(daemon.process.pid)
    results = [json.loads((await reader.communicate())[0]) for reader in readers]
    async with aiohttp.ClientSession() as http:
        emitted = [
            await (await http.get(f"http://{address}{path}")).text() for path in ("/metrics", "/status", "/readyz")
        ]
    assert await daemon.stop() == 0

    reads = sum(r["reads"] for r in results)
    bad = sum(sum(r["bad"].values()) for r in results)
    expired = [t for r in results for t in r["expired_at"]]
    # an expired read is the daemon's fault only if, in the stale window before it, the provider issued a good
    # token and its JWKS answered (without the JWKS a token signed by a new key cannot be verified)
    window = LIFETIME * (1 - REFRESH_AT) + 1

    def provider_up(t: float) -> bool:
        good = any(t - window <= g <= t - 0.2 for g in auth.good_issue_times)
        return good and not any(t - window <= j <= t for j in jwks_down)

    unexcused = [t for t in expired if provider_up(t)]
    renewed = daemon.count("token.renewed")
    per_rotation = (auth.token_requests - daemon.count("token.renewal_failed")) / max(renewed, 1)
    FIGURES["chaos soak"] = {
        "seconds": int(duration), "reads checked": reads, "bad reads": bad, "expired reads (provider or JWKS down)":
        len(expired) - len(unexcused), "expired reads (provider up)": len(unexcused), "rotations": renewed,
        "token requests": auth.token_requests, "failed attempts": daemon.count("token.renewal_failed"),
        "requests per rotation (failed excluded)": round(per_rotation, 2),
        "faults injected": sum(injected.values()), "RSS MiB start/end": f"{start_rss:.1f}/{end_rss:.1f}",
        "fds start/end": f"{start_fds}/{end_fds}",
    }  # fmt: skip
    assert reads > 1000 and bad == 0, results
    assert not unexcused, f"{len(unexcused)} expired reads while the provider issued good tokens, {unexcused[:3]}..."
    assert renewed >= duration / LIFETIME and per_rotation <= 1.3
    assert len(injected) >= 8  # most fault kinds actually happened (in turn, so only a very short run misses some)
    assert end_rss - start_rss < 15 and abs(end_fds - start_fds) <= 3

    hooks = [json.loads(line) for line in hook_dump.read_text().splitlines()]
    haystack = "\n".join([*daemon.raw, *emitted, *(cmdline + environ for cmdline, environ in hooks)])
    assert hooks and CLIENT_SECRET not in haystack
    leaks = [token for token in auth.issued if token.split(".")[2] in haystack]
    assert leaks == []
    FIGURES["secret leak scan"] = {"log lines": len(daemon.raw), "hook children": len(hooks), "tokens searched":
                                   len(auth.issued), "hits": 0}  # fmt: skip
    daemon.send(signal.SIGTERM) if daemon.returncode is None else None


def resources(pid: int) -> tuple[float, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))
