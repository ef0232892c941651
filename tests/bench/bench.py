"""edge-token benchmark: prints a table of medians, each figure next to its reference from the same run.

    python tests/bench/bench.py                 # everything (about 5 minutes)
    python tests/bench/bench.py --quick         # fewer runs and 20 s idle windows (about 1.5 minutes)
    python tests/bench/bench.py --only cold,scrape

Runs against the bundled auth server on loopback (in this process, so its CPU share can be reported).
Not part of the test suite: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from edge_token.localauth import LocalAuthServer

CLIENT, SECRET = "bench-client", "bench-secret-0123456789"
ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, value: str, reference: str, verdict: str = "") -> None:
    ROWS.append((what, value, reference, verdict))
    print(f"  {what}: {value}  [{reference}] {verdict}", flush=True)


def config_text(work: Path, server: LocalAuthServer, profiles: int, listen: str = "", **settings: Any) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    lines = [f'[daemon]\nlog_format = "json"\nlog_level = "warning"\nlisten = "{listen}"\n']
    for i in range(profiles):
        lines.append(
            f'[profiles.p{i}]\nclient_id = "{CLIENT}"\nclient_secret_file = "{work / "secret"}"\n'
            f'token_url = "{server.token_url}"\nissuer = "{server.issuer}"\njwks_url = "{server.jwks_url}"\n{extra}'
            f'[[profiles.p{i}.sinks]]\npath = "{work / "tokens" / f"p{i}.jwt"}"\n'
        )
    return "".join(lines)


def setup(work: Path, server: LocalAuthServer, profiles: int, **kwargs: Any) -> Path:
    shutil.rmtree(work / "tokens", ignore_errors=True)
    (work / "tokens").mkdir(parents=True)
    (work / "secret").write_text(SECRET)
    path = work / f"config-{profiles}.toml"
    path.write_text(config_text(work, server, profiles, **kwargs))
    return path


FLOOR_A = """
import json, os, sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
body = json.dumps({"grant_type": "client_credentials", "client_id": %(client)r, "client_secret": %(secret)r,
                   "audience": "https://api.sitecorecloud.io"}).encode()
req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
token = json.load(urllib.request.urlopen(req))["access_token"]
tmp = out + ".tmp"
with open(tmp, "w") as f:
    f.write(token); f.flush(); os.fsync(f.fileno())
os.replace(tmp, out)
"""

FLOOR_B = """
import asyncio, os, sys, time
import aiohttp
from joserfc import jwt
from joserfc.jwk import KeySet
url, jwks_url, out, iss = sys.argv[1:5]
async def main():
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"grant_type": "client_credentials", "client_id": %(client)r,
                "client_secret": %(secret)r, "audience": "https://api.sitecorecloud.io"}) as r:
            token = (await r.json())["access_token"]
        async with s.get(jwks_url) as r:
            keys = KeySet.import_key_set(await r.json())
    claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
    assert claims["iss"] == iss and claims["exp"] > time.time()
    tmp = out + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, token.encode()); os.fsync(fd); os.close(fd)
    os.replace(tmp, out)
asyncio.run(main())
"""


async def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE, env=env)  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


async def cold_start(work: Path, server: LocalAuthServer, runs: int) -> None:
    print("1. cold start of `edge-token once` (process start -> verified token on disk -> exit)", flush=True)
    config = setup(work, server, 1)
    out = str(work / "tokens" / "p0.jwt")
    scripts = {}
    for name, text in (("a", FLOOR_A), ("b", FLOOR_B)):
        scripts[name] = work / f"floor_{name}.py"
        scripts[name].write_text(textwrap.dedent(text % {"client": CLIENT, "secret": SECRET}))
    argvs = {
        "once": [sys.executable, "-m", "edge_token", "once", "-c", str(config)],
        "a": [sys.executable, str(scripts["a"]), server.token_url, out],
        "b": [sys.executable, str(scripts["b"]), server.token_url, server.jwks_url, out, server.issuer],
    }
    times: dict[str, list[float]] = {k: [] for k in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():  # interleaved, so drift affects all alike
            Path(out).unlink(missing_ok=True)
            times[name].append(await timed(argv))
    med = {k: statistics.median(v) for k, v in times.items()}
    row("floor (a) stdlib POST + write, no verification", f"{med['a'] * 1000:.0f} ms", "context")
    row("floor (b) aiohttp + joserfc: POST, JWKS, verify, write", f"{med['b'] * 1000:.0f} ms", "target base")
    ratio = med["once"] / med["b"]
    row("edge-token once", f"{med['once'] * 1000:.0f} ms = {ratio:.2f}x floor (b)", "target <= 1.15x",
        "OK" if ratio <= 1.15 else f"MISSED by {ratio - 1.15:.2f}x")  # fmt: skip
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "edge_token", "once", "-c", str(config)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    top: list[tuple[int, str]] = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if cumulative.isdigit() and not name.startswith(" "):
                top.append((int(cumulative), name))
    modules = {name.strip() for _, name in top}
    print("   top import costs (cumulative):",
          ", ".join(f"{n.strip()} {c / 1000:.0f} ms" for c, n in sorted(top, reverse=True)[:8]))  # fmt: skip
    print("   `once` imports apscheduler:", "apscheduler" in modules or any(m.startswith("apscheduler") for m in modules),
          "| prometheus_client:", any(m.startswith("prometheus_client") for m in modules),
          "| edge_token.httpserver:", "edge_token.httpserver" in modules)  # fmt: skip


def proc_stats(pid: int) -> dict[str, float]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "cpu": (int(fields[11]) + int(fields[12])) / tick,
        "wakeups": float(status["voluntary_ctxt_switches"]) + float(status["nonvoluntary_ctxt_switches"]),
        "hwm_kib": float(status["VmHWM"].split()[0]),
        "rss_kib": float(status["VmRSS"].split()[0]),
    }


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_token", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def wait_files(directory: Path, count: int, timeout: float = 120) -> float:
    start = time.perf_counter()
    while sum(1 for _ in directory.iterdir()) < count:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"only {sum(1 for _ in directory.iterdir())} of {count} tokens after {timeout}s")
        await asyncio.sleep(0.01)
    return time.perf_counter() - start


async def stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), 30)


async def idle_and_memory(work: Path, server: LocalAuthServer, seconds: float) -> None:
    print(f"2-3. idle cost over {seconds:g} s between renewals, and memory", flush=True)
    floor = subprocess.run(
        [sys.executable, "-c", "import aiohttp, joserfc.jwt, structlog, prometheus_client, apscheduler.schedulers."
         "asyncio, resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    floor_mib = int(floor.stdout) / 1024
    row(
        "import-only floor (aiohttp, joserfc, structlog, prometheus-client, APScheduler)",
        f"{floor_mib:.1f} MiB",
        "reference",
    )
    peak: dict[int, float] = {}
    for profiles in (1, 1000):
        config = setup(work, server, profiles, listen="127.0.0.1:0")
        daemon = await start_daemon(config)
        await wait_files(work / "tokens", profiles)
        await asyncio.sleep(2)  # let the start-up burst settle
        before = proc_stats(daemon.pid)
        await asyncio.sleep(seconds)
        after = proc_stats(daemon.pid)
        await stop(daemon)
        cpu_share = (after["cpu"] - before["cpu"]) / seconds * 100
        wakeups = (after["wakeups"] - before["wakeups"]) / seconds * 60
        target = 0.1 if profiles == 1 else 1.0
        row(f"idle CPU, {profiles} profile(s)", f"{cpu_share:.3f} % of a core, {wakeups:.0f} wake-ups/min",
            f"target <= {target} %", "OK" if cpu_share <= target else "MISSED")  # fmt: skip
        peak[profiles] = after["hwm_kib"] / 1024
    ratio = peak[1] / floor_mib
    row("peak RSS, 1 profile", f"{peak[1]:.1f} MiB = {ratio:.2f}x floor", "target <= 1.15x",
        "OK" if ratio <= 1.15 else f"MISSED by {ratio - 1.15:.2f}x")  # fmt: skip
    added = peak[1000] - peak[1]
    row("peak RSS, 1,000 profiles", f"{peak[1000]:.1f} MiB (+{added:.1f} MiB)", "target +<= 30 MiB",
        "OK" if added <= 30 else "MISSED")  # fmt: skip


async def fill_and_scrape(work: Path, server: LocalAuthServer) -> None:
    print("4-5. fill time for 1,000 profiles, and /metrics with 1,000 profiles", flush=True)
    config = setup(work, server, 1000, listen="127.0.0.1:0")
    requests_before = server.token_requests
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    daemon = await start_daemon(config)
    took = await wait_files(work / "tokens", 1000)
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    daemon_cpu = proc_stats(daemon.pid)["cpu"]
    sent = server.token_requests - requests_before
    row("fill 1,000 empty sinks (fsync'd)", f"{took:.2f} s, {sent} token requests",
        "target <= 5 s and exactly 1,000", "OK" if took <= 5 and sent == 1000 else "MISSED")  # fmt: skip
    row("  CPU during fill", f"daemon {daemon_cpu:.2f} s (incl. start-up), auth server {server_cpu:.2f} s", "context")
    port = await listen_port(daemon.pid)
    latencies = []
    async with aiohttp.ClientSession() as http:
        for _ in range(60):
            start = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                body = await response.read()
            latencies.append(time.perf_counter() - start)
    await stop(daemon)
    median = statistics.median(latencies[10:]) * 1000
    row("/metrics with 1,000 profiles", f"{median:.1f} ms median ({len(body) // 1024} KiB)", "target <= 50 ms",
        "OK" if median <= 50 else "MISSED")  # fmt: skip


async def listen_port(pid: int) -> int:
    """The daemon's listening port, from /proc/net/tcp (it binds 127.0.0.1:0)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and parts[9] in inodes:
            return int(parts[1].split(":")[1], 16)
    raise RuntimeError("no listening socket found")


async def freshness(work: Path, server: LocalAuthServer, seconds: float) -> None:
    print(f"6. freshness over {seconds:g} s with 6 s tokens (refresh_at 0.8, jitter 0.05)", flush=True)
    server.ttl = 6
    config = setup(work, server, 1, leeway_seconds=1)
    daemon = await start_daemon(config)
    path = work / "tokens" / "p0.jwt"
    await wait_files(work / "tokens", 1)
    worst, reads, end = 1.0, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        token = path.read_text()
        claims = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "==="))
        worst = min(worst, (claims["exp"] - time.time()) / (claims["exp"] - claims["iat"]))
        reads += 1
        await asyncio.sleep(0.01)
    await stop(daemon)
    server.ttl = 3600
    row(
        "minimum remaining lifetime seen in the sink",
        f"{worst:.3f} of lifetime ({reads} reads)",
        "expected near 1 - 0.8 - 0.05 = 0.15 (minus 1 s rounding of iat/exp on 6 s tokens)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="cold,idle,fill,fresh")
    args = parser.parse_args()
    runs, idle = (3, 20.0) if args.quick else (9, 60.0)
    only = set(args.only.split(","))

    async def run() -> None:
        server = LocalAuthServer({CLIENT: SECRET}, ttl=3600)
        await server.start()
        work = Path(tempfile.mkdtemp(prefix="edge-token-bench-"))
        try:
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("cold", lambda: cold_start(work, server, runs)),
                ("idle", lambda: idle_and_memory(work, server, idle)),
                ("fill", lambda: fill_and_scrape(work, server)),
                ("fresh", lambda: freshness(work, server, 30 if args.quick else 60)),
            ]
            for name, step in steps:
                if name in only:
                    await step()
        finally:
            await server.stop()
            shutil.rmtree(work, ignore_errors=True)

    print(f"edge-token benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    # an installed package has compiled bytecode; an editable checkout under PYTHONDONTWRITEBYTECODE would not,
    # and every start would pay for compiling our modules: compile them once, like `pip install` does
    import compileall

    import edge_token

    compileall.compile_dir(str(Path(edge_token.__file__).parent), quiet=1)
    asyncio.run(run())
    print("\n| measurement | result | reference / target | |\n|---|---|---|---|")
    for what, value, reference, verdict in ROWS:
        print(f"| {what} | {value} | {reference} | {verdict} |")


if __name__ == "__main__":
    main()
