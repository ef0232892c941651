"""edge-token benchmark: every figure beside a floor measured in the same run, the ratio, the goal, PASS/MISS.

    python tests/bench/bench.py            # the full run (10,000 profiles, 20 s tokens): about 4 minutes on 2 cores
    python tests/bench/bench.py --quick    # about 2 minutes on 2 cores: fewer rounds, no 10,000, 8 s tokens
    python tests/bench/bench.py --only once,fill     # sections: once, fill, scale, lifetimes, bytecodes

Real child processes (`python -m edge_token run -c CONFIG`, default log level, JSON log on a file as under
systemd), real fsync'd files in a temp directory, the bundled auth server on loopback in this process (token
requests counted there). Edge-token rounds and floor rounds alternate, so drift and the neighbours' load hit
both alike; medians are reported with their spread (min-max over rounds). Goals are those of issue 15.
Not part of the test suite: it measures, it does not assert (tests/test_bench_smoke.py keeps it working).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import io
import itertools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    Bench,
    Daemon,
    Figure,
    FillSplit,
    FloorServer,
    NotifySocket,
    Plan,
    Samples,
    TimedAuthServer,
    auth_server,
    cpu_seconds,
    filesystem,
    floor_argv,
    machine,
    peak_rss_mib,
    ratio_figure,
    sample_interleaved,
    verify_sinks,
    write_config,
)

FULL = Plan(
    "full",
    once_runs=21,
    fill_profiles=1000,
    fill_rounds=9,  # a round's ratio moves by ±15 % on a shared 2-core machine: the median of 5 flipped verdicts
    scrapes=50,
    scale_sizes=(1, 100),
    scale_rounds=5,
    big=10_000,
    ttl=20.0,
    lifetimes=3,
    lifetime_profiles=(1, 1000),
    cap=120.0,
    settle=60.0,
)
QUICK = Plan(
    "quick",
    once_runs=7,
    fill_profiles=1000,
    fill_rounds=2,
    scrapes=20,
    scale_sizes=(1, 100),
    scale_rounds=2,
    big=None,
    ttl=8.0,
    lifetimes=3,
    lifetime_profiles=(1, 1000),
    cap=45.0,
    settle=0.0,
)
GOAL_TTL = 20.0  # the CPU goals are for 20 s tokens
CPU_RATIO = 1.3  # CPU over lifetimes at 1,000 profiles: at most this times the paced floor (README: why a ratio)
REFRESH_AT, JITTER = 0.8, 0.05  # the daemon's defaults: renew uniformly in [0.75, 0.80] of the lifetime
ONCE_FORBIDDEN = ("structlog", "apscheduler", "prometheus_client")


# ---- one fill: the building block of the fill, restart, notify and scale figures -------------------------
@dataclass
class SizeResult:
    """Everything one profile count yields per round: fill time, CPU to readiness, memory, scrape time."""

    fill: Samples = field(default_factory=Samples)
    cpu: Samples = field(default_factory=Samples)  # daemon CPU seconds from spawn to ready
    idle_rss: Samples = field(default_factory=Samples)  # VmHWM half a second after ready, before any scrape
    rss: Samples = field(default_factory=Samples)  # VmHWM after the scrapes
    scrape: Samples = field(default_factory=Samples)  # per round: median of plan.scrapes scrapes
    requests: list[int] = field(default_factory=list)  # token requests per fill (the auth server's count)
    startup: Samples = field(default_factory=Samples)  # spawn to the first token request (FillSplit)
    per_profile: Samples = field(default_factory=Samples)  # seconds per profile mid-fill (FillSplit)
    body: bytes = b""
    content_type: str = ""

    def add_split(self, split: FillSplit | None) -> None:
        if split is not None:
            self.startup.add(split.startup)
            self.per_profile.add(split.per_profile)


async def fill_round(bench: Bench, server: TimedAuthServer, count: int, result: SizeResult, cap: float) -> Path:
    """Start a daemon on `count` empty sinks in one directory, time it to /readyz 200, then scrape /metrics;
    afterwards check every sink holds a valid token and count the token requests the fill made."""
    sinks = bench.fresh_dir(f"fill{count}")
    config, requests = write_config(bench, server, count, sinks), server.token_requests
    server.arrivals.clear()
    async with Daemon(bench, config, count) as daemon:
        took = await daemon.ready(cap)
        result.fill.add(took, cap)
        if took is None:
            print(f"    fill {count:,}: not ready after {cap:g} s ({len(daemon.holding):,} profiles held a token)")
            return config
        requests = server.token_requests - requests
        result.add_split(FillSplit.of(server.arrivals, daemon.started))
        result.cpu.add(daemon.cpu())
        await asyncio.sleep(0.5)
        result.idle_rss.add(daemon.peak_rss())
        times, result.body, result.content_type = await bench.scrape_times(
            await daemon.url("/metrics"), bench.plan.scrapes
        )
        result.scrape.add(times.median)
        result.rss.add(daemon.peak_rss())
    verify_sinks(server, sinks, count)
    result.requests.append(requests)
    late = " (seen by the fallback poll only: up to 2 s late)" if daemon.late_ready else ""
    print(f"    fill {count:,}: {took:.2f} s{late}, {requests:,} token requests, /metrics {times.median * 1000:.1f} ms")
    return config


async def floor_fill(bench: Bench, server: TimedAuthServer, count: int, split: SizeResult | None = None) -> float:
    """The floor of a fill: floor.py fill, spawn to "done" (every token verified and on disk); its start-up,
    throughput and CPU (every thread, start-up included: what it prints after "done") into `split`."""
    out = bench.fresh_dir(f"floor{count}")
    server.arrivals.clear()
    start = time.perf_counter()
    process = await bench.spawn(*floor_argv(server, bench, "fill", str(out), str(count)), stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), bench.plan.cap)
    took = time.perf_counter() - start
    await bench.stop(process)
    if line.split()[:1] != [b"done"]:
        raise RuntimeError(f"the floor fill failed: {line!r}")
    verify_sinks(server, out, count)
    if split is not None:
        split.add_split(FillSplit.of(server.arrivals, start))
        split.cpu.add(float(line.split()[1]))
    print(f"    floor fill {count:,}: {took:.2f} s")
    return took


# ---- figures ---------------------------------------------------------------------------------------------
async def cold_once(bench: Bench) -> None:
    """Cold `edge-token once` (no token on disk: request, verify, write) vs floor.py once, interleaved."""
    print(f"\ncold `once`: {bench.plan.once_runs} interleaved pairs (plus one warm-up pair)")
    edge, floor = Samples(), Samples()
    async with auth_server() as server:
        sinks = bench.fresh_dir("once")
        config, out = write_config(bench, server, 1, sinks), sinks / "p0.jwt"
        once = (sys.executable, "-m", "edge_token", "once", "-c", str(config))

        async def edge_round() -> None:
            out.unlink(missing_ok=True)
            edge.add(await bench.timed_run(*once))

        async def floor_round() -> None:
            out.unlink(missing_ok=True)
            floor.add(await bench.timed_run(*floor_argv(server, bench, "once", str(out))))

        await sample_interleaved(1, edge_round, floor_round)  # warm-up: page cache, bytecode
        edge.values.clear()
        floor.values.clear()
        await sample_interleaved(bench.plan.once_runs, edge_round, floor_round)
        imported = await once_imports(bench, config)
    bench.report.add(
        ratio_figure(
            "cold `once`, no token on disk (spawn → verified token written → exit)",
            edge,
            floor,
            1.05,
            unit="ms",
            scale=1000,
            digits=0,
            floor_name="aiohttp+joserfc script",
        )
    )
    found = [name for name in ONCE_FORBIDDEN if name in imported]
    bench.report.add(
        Figure(
            "libraries imported by `once`",
            ", ".join(found) or "none of them",
            goal="no " + ", ".join(ONCE_FORBIDDEN),
            ok=not found,
        )
    )


async def once_imports(bench: Bench, config: Path) -> set[str]:
    """Top-level packages `once` imports (python -X importtime; async: the auth server lives on our loop)."""
    process = await bench.spawn(
        sys.executable, "-X", "importtime", "-m", "edge_token", "once", "-c", str(config), stderr=subprocess.PIPE
    )
    _, err = await process.communicate()
    bench.children.discard(process)
    names = set()
    for line in err.decode(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


async def fill_restart_notify_metrics(bench: Bench) -> SizeResult:
    """Fill N profiles vs the floor fill; the same fill under NOTIFY_SOCKET; restart on FRESH tokens; /metrics
    at N vs a static body of the same size. Rounds: edge-token (fill, scrape, restart), floor, notify, floor scrape."""
    plan, count = bench.plan, bench.plan.fill_profiles
    print(
        f"\nfill {count:,} profiles: {plan.fill_rounds} rounds (edge-token fill + restart, floor fill, "
        "NOTIFY_SOCKET fill, static /metrics)"
    )
    edge, floor, restart, notify, static = SizeResult(), Samples(), Samples(), Samples(), Samples()
    floor_split = SizeResult()  # the floor fills' start-up and throughput (FillSplit)
    requests_at_restart: list[int] = []
    notify_ready, notify_messages = Samples(), Samples()
    async with auth_server() as server, contextlib.AsyncExitStack() as stack:
        static_server: FloorServer | None = None

        async def edge_round() -> None:
            nonlocal static_server
            config = await fill_round(bench, server, count, edge, plan.cap)
            before = server.token_requests
            async with Daemon(bench, config, count) as daemon:
                restart.add(await daemon.ready(plan.cap), plan.cap)
            requests_at_restart.append(server.token_requests - before)
            print(f"    restart: {restart.values[-1]:.2f} s, {requests_at_restart[-1]} token requests")
            if static_server is None and edge.body:
                body = bench.work / "metrics-body"
                body.write_bytes(edge.body)
                static_server = await stack.enter_async_context(
                    FloorServer(bench, "serve", str(body), edge.content_type)
                )

        async def floor_round() -> None:
            floor.add(await floor_fill(bench, server, count, floor_split))
            if static_server is not None:
                url = f"http://127.0.0.1:{static_server.port}/metrics"
                static.add((await bench.scrape_times(url, plan.scrapes))[0].median)

        async def notify_round() -> None:
            sinks = bench.fresh_dir(f"notify{count}")
            config = write_config(bench, server, count, sinks)
            with NotifySocket(config.with_suffix(".notify")) as sock:
                # as under the shipped unit: Type=notify, WatchdogSec=30s
                env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "30000000"}
                async with Daemon(bench, config, count, env=env) as daemon:
                    notify.add(await daemon.ready(plan.cap), plan.cap)
                    # READY=1 goes out before /readyz can answer 200, but the drain thread may not have read it
                    # yet: give it a moment (the time recorded is when the datagram was received, not now)
                    for _ in range(200):
                        if (ready_at := sock.first(b"READY=1")) is not None:
                            break
                        await asyncio.sleep(0.01)
                    notify_ready.add(None if ready_at is None else ready_at - daemon.started, plan.cap)
                    notify_messages.add(len(sock.messages))
            verify_sinks(server, sinks, count)
            print(f"    NOTIFY_SOCKET fill: {notify.values[-1]:.2f} s, {len(sock.messages)} notify messages")

        await sample_interleaved(plan.fill_rounds, edge_round, floor_round, notify_round)

    n = f"{count:,}"
    fill_figure = ratio_figure(
        f"fill {n} profiles, one sink directory → /readyz 200", edge.fill, floor, 1.3,
        floor_name="minimal fill, same libraries",
    )  # fmt: skip
    fill_figure.value += f"; token requests per fill {', '.join(f'{r:,}' for r in sorted(set(edge.requests)))}"
    bench.report.add(fill_figure)
    if edge.startup.values and floor_split.startup.values:
        startup, rate = edge.startup, edge.per_profile
        bench.report.add(
            Figure(
                "the fill, split at the auth server (context): start-up, spawn → first token request",
                startup.show("s", digits=3),
                floor_split.startup.show("s", digits=3),
                f"{startup.median / floor_split.startup.median:.2f}x",
            )
        )
        bench.report.add(
            Figure(
                "… and throughput: time per profile between the 10th and 90th percentile request (context)",
                rate.show("ms", 1000, 3),
                floor_split.per_profile.show("ms", 1000, 3),
                f"{rate.median / floor_split.per_profile.median:.2f}x",
            )
        )
    if edge.cpu.values and floor_split.cpu.values:
        # CPU, not time: on 2 cores shared with the auth server a fill is CPU-bound, so its time follows the CPU
        # it needs and the machine's speed; this ratio is what a slow machine stretches into the fill's
        bench.report.add(
            Figure(
                "… and CPU, spawn → ready, every thread (context)",
                edge.cpu.show("s", digits=2),
                floor_split.cpu.show("s", digits=2),
                f"{edge.cpu.median / floor_split.cpu.median:.2f}x",
            )
        )
    bench.report.add(
        ratio_figure(
            f"fill {n} with NOTIFY_SOCKET (systemd) vs without", notify, edge.fill, 1.1, floor_name="fill without"
        )
    )
    bench.report.add(
        Figure(
            "systemd during the NOTIFY_SOCKET fill (context)",
            f"READY=1 at {notify_ready.show('s')}; {notify_messages.show('datagrams', digits=0)} received",
        )
    )
    restart_figure = ratio_figure(
        f"restart with {n} FRESH tokens → /readyz 200", restart, edge.fill, 0.5, floor_name="fill"
    )
    restart_figure.value += f"; token requests {sum(requests_at_restart)}"
    restart_figure.goal += ", 0 requests"
    restart_figure.ok = bool(restart_figure.ok) and sum(requests_at_restart) == 0
    bench.report.add(restart_figure)
    if static.values:
        kib = len(edge.body) / 1024
        bench.report.add(
            ratio_figure(
                f"/metrics at {n} profiles ({kib:,.0f} KiB, median of {plan.scrapes})",
                edge.scrape,
                static,
                2.0,
                unit="ms",
                scale=1000,
                digits=1,
                floor_name="static body, bare aiohttp",
            )
        )
    return edge


async def scale_and_memory(bench: Bench, at_fill: SizeResult | None) -> None:
    """Fill time, cost per profile, peak RSS and scrape time at 1, 100, (1,000 from the fill figure) and 10,000
    profiles; idle memory of the 1-profile daemon vs the same libraries plus an idle aiohttp server."""
    plan = bench.plan
    sizes = plan.scale_sizes if at_fill is not None else (*plan.scale_sizes, plan.fill_profiles)
    print(
        f"\nscale {', '.join(f'{n:,}' for n in sizes)}: {plan.scale_rounds} rounds, interleaved with the "
        f"idle-memory floor" + (f"; then {plan.big:,} once" if plan.big else "")
    )
    results: dict[int, SizeResult] = defaultdict(SizeResult)
    idle_floor = Samples()
    async with auth_server() as server:

        async def edge_round() -> None:
            for count in sizes:
                await fill_round(bench, server, count, results[count], plan.cap)

        async def floor_round() -> None:
            async with FloorServer(bench, "idle") as idle:
                await asyncio.sleep(0.5)
                idle_floor.add(peak_rss_mib(idle.pid))

        await sample_interleaved(plan.scale_rounds, edge_round, floor_round)
        if plan.big:
            await fill_round(bench, server, plan.big, results[plan.big], plan.big_cap)
    if at_fill is not None:
        results[plan.fill_profiles] = at_fill
    bench.report.add_table(*scale_table(results))
    one = results[min(results)]
    bench.report.add(
        ratio_figure(
            "peak RSS of the idle daemon (1 profile)",
            one.idle_rss,
            idle_floor,
            1.1,
            unit="MiB",
            digits=1,
            floor_name="same libraries + idle aiohttp server",
        )
    )
    if not plan.big:
        bench.report.add(Figure("10,000 profiles: fill, memory, /metrics vs 1,000", "not run (full run only)"))
    elif plan.fill_profiles in results:
        big, base = results[plan.big], results[plan.fill_profiles]
        b, k = f"{plan.big:,}", f"{plan.fill_profiles:,}"
        bench.report.add(
            ratio_figure(f"fill {b} vs fill {k} (linear)", big.fill, base.fill, 11.0, floor_name=f"fill {k}")
        )
        limit = one.idle_rss.median + 150
        bench.report.add(
            Figure(
                f"peak RSS at {b} profiles",
                big.rss.show("MiB", digits=1),
                f"1 profile: {one.idle_rss.show('MiB', digits=1)}",
                "",
                f"≤ 1-profile + 150 MiB = {limit:.0f} MiB",
                ok=bool(big.rss.values) and big.rss.median <= limit,
            )
        )
        bench.report.add(
            ratio_figure(
                f"/metrics at {b} vs at {k}",
                big.scrape,
                base.scrape,
                10.0,
                unit="ms",
                scale=1000,
                digits=1,
                floor_name=f"at {k}",
            )
        )


def scale_table(results: dict[int, SizeResult]) -> tuple[list[str], list[list[str]]]:
    """Fill time, cost per added profile (beyond the fixed cost of the 1-profile start), peak RSS and scrape time
    per profile count: a super-linear step shows as a growing cost per added profile."""
    header = [
        "profiles",
        "fill → /readyz 200",
        "wall per added profile",
        "CPU per added profile",
        "peak RSS",
        "/metrics",
    ]
    base = results[min(results)]
    rows = []
    for count in sorted(results):
        result = results[count]
        if count == min(results) or not result.cpu.values:
            per_wall = per_cpu = "fixed cost" if count == min(results) else "not measured"
        else:
            per_wall = f"{(result.fill.median - base.fill.median) / (count - min(results)) * 1000:.2f} ms"
            per_cpu = f"{(result.cpu.median - base.cpu.median) / (count - min(results)) * 1000:.2f} ms"
        rows.append(
            [
                f"{count:,}",
                result.fill.show("s"),
                per_wall,
                per_cpu,
                result.rss.show("MiB", digits=1),
                result.scrape.show("ms", 1000, 1),
            ]
        )
    return header, rows


async def lifetimes(bench: Bench) -> None:
    """CPU over whole token lifetimes (after one lifetime of settling) for a small and a large daemon, side by
    side, each with its own auth server, and beside them their floor: floor.py pace, renewing as many tokens on
    the daemon's schedule (16 at a time, again at 75-80 % of each lifetime) with nothing else, with its own auth
    server. Its CPU per renewal in the same window, times the renewals a daemon made, is that daemon's floor.
    Then the renewal points of every profile from the daemons' logs."""
    plan = bench.plan
    window = plan.lifetimes * plan.ttl
    small, large = plan.lifetime_profiles
    print(
        f"\nlifetimes: {small:,} and {large:,} profiles side by side with the paced floor ({large:,} tokens), "
        f"{plan.ttl:g} s tokens, CPU over {plan.lifetimes} lifetimes ({window:g} s) from one lifetime after ready"
        + (f" and at least {plan.settle:g} s after the start" if plan.settle else "")
    )
    async with contextlib.AsyncExitStack() as stack:
        pairs: list[tuple[Daemon, TimedAuthServer]] = []
        for count in (small, large):
            server = await stack.enter_async_context(auth_server(plan.ttl))
            config = write_config(bench, server, count, bench.fresh_dir(f"life{count}"))
            pairs.append((await stack.enter_async_context(Daemon(bench, config, count)), server))
        floor_server = await stack.enter_async_context(auth_server(plan.ttl))
        write_config(bench, floor_server, 1, bench.fresh_dir("pacesecret"))  # writes the client secret
        argv = floor_argv(floor_server, bench, "pace", str(bench.fresh_dir("pace")), str(large), str(plan.ttl))
        receipts = bench.work / "pace-receipts"  # when each of its tokens arrived, written as it stops
        env = {"EDGE_TOKEN_BENCH_FLOOR_RECEIPTS": str(receipts)}
        pacer = await stack.enter_async_context(FloorServer(bench, *argv[2:], ready=b"started", env=env))
        for daemon, _ in pairs:
            if await daemon.ready(plan.cap) is None:
                raise RuntimeError(f"the {daemon.profiles:,}-profile daemon was not ready after {plan.cap:g} s")
        # one lifetime after readiness (the fill's burst of renewals has come round once), and not before
        # plan.settle seconds after the start (start-up costs are not the steady state)
        since_start = time.perf_counter() - min(d.started for d, _ in pairs)
        await asyncio.sleep(max(plan.ttl, plan.settle - since_start))
        print(f"    CPU window opens {time.perf_counter() - pairs[0][0].started:.0f} s after the start")
        counted = [(d.pid, s) for d, s in pairs] + [(pacer.pid, floor_server)]
        before = [(cpu_seconds(pid), s.token_requests, time.perf_counter()) for pid, s in counted]
        window_start, own_before = time.time(), own_cpu()
        await asyncio.sleep(window)
        after = [(cpu_seconds(pid), s.token_requests, time.perf_counter()) for pid, s in counted]
        own = (own_cpu() - own_before) / (time.time() - window_start) * 100
    daemons = [daemon for daemon, _ in pairs]
    (fcpu0, freq0, _), (fcpu1, freq1, _) = before[-1], after[-1]
    per_renewal = (fcpu1 - fcpu0) / max(1, freq1 - freq0)
    print(f"    paced floor: {freq1 - freq0:,} renewals, {per_renewal * 1000:.2f} ms CPU per renewal")
    scale = GOAL_TTL / plan.ttl  # shorter tokens renew proportionally more often
    note = "" if scale == 1 else f" (scaled to {plan.ttl:g} s tokens: x{scale:g})"
    for daemon, (cpu0, req0, t0), (cpu1, req1, t1) in zip(daemons, before[:2], after[:2], strict=True):
        share, renewals = (cpu1 - cpu0) / (t1 - t0) * 100, req1 - req0
        per = f"; {(cpu1 - cpu0) / renewals * 1000:.2f} ms CPU per renewal" if renewals else ""
        floor_share = per_renewal * renewals / (t1 - t0) * 100
        ratio = share / floor_share if floor_share > 0 else float("inf")
        floor = (
            f"the same renewals by the paced floor ({per_renewal * 1000:.2f} ms each): {floor_share:.3f} % of a core"
        )
        label = f"CPU over {plan.lifetimes} whole lifetimes, {daemon.profiles:,} profile(s), {plan.ttl:g} s tokens"
        value = f"{share:.3f} % of a core ({renewals:,} renewals{per})"
        if daemon.profiles == small:  # the goal: no idle cost (0.2 % of a core for one profile)
            goal, ok = f"≤ {0.2 * scale:g} %{note}", share <= 0.2 * scale
        else:  # the 2 % is below the floor of this work: judged as a ratio to it, like every other figure
            goal, ok = f"≤ {CPU_RATIO:g}x the floor (the issue asked 2 %{note}: README)", ratio <= CPU_RATIO
        bench.report.add(Figure(label, value, floor, f"{ratio:.2f}x", goal=goal, ok=ok))
    bench.report.add(
        Figure(
            "the auth servers (this process) during that window (context)",
            f"{own:.1f} % of a core: near 100 % they, not the daemon, would delay renewals",
        )
    )
    # every renewal point, the fill's burst coming round included, and those inside the CPU window: centred and
    # spread as the jitter makes them, the tail no later than the paced floor's over the same span (when the
    # machine cannot serve a burst on time, or stalls, the least code is late too)
    points = renewal_points(d.events("token.renewed") for d in daemons)
    floor_points = receipt_points(receipts, plan.ttl)
    for span, start in (("all", 0.0), ("inside the CPU window", window_start)):
        ours = [(at, point) for at, point in points if at >= start]
        floors = [(at, point) for at, point in floor_points if at >= start]
        floor_span = [point for _, point in floors]
        bench.report.add(
            freshness_figure(f"freshness: renewal points (fraction of lifetime), {span}", ours, floor_span)
        )
        bench.report.add(freshness_figure(f"… the paced floor's, {span} (context)", floors, judge=False))


BYTECODES = Path(__file__).parent / "bytecodes"  # its sitecustomize.py counts, when the environment asks


async def bytecodes(bench: Bench) -> None:
    """Python bytecodes per renewal, the daemon's and the paced floor's, counted over one lifetime after one of
    settling (every thread; bytecodes/sitecustomize.py). A count, where every other figure is a time: it does not
    drift with the machine, so a change's effect on the Python a renewal runs shows even when the times cannot
    tell it from noise. Context, no goal (a bytecode of our code costs what a bytecode of the floor's does only
    on average). Counting slows both processes down alike, hence 100 profiles."""
    plan = bench.plan
    count = min(100, plan.fill_profiles)
    prefix = str(bench.work / "bytecodes")
    env = {
        "EDGE_TOKEN_BENCH_BYTECODES": prefix,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BYTECODES), os.environ.get("PYTHONPATH")])),
    }
    print(f"\nbytecodes: {count:,} profiles and the paced floor, {plan.ttl:g} s tokens, counted over one lifetime")
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(auth_server(plan.ttl))
        config = write_config(bench, server, count, bench.fresh_dir("bytecodes"))
        daemon = await stack.enter_async_context(Daemon(bench, config, count, env=env))
        floor_server = await stack.enter_async_context(auth_server(plan.ttl))
        write_config(bench, floor_server, 1, bench.fresh_dir("bytecodessecret"))
        argv = floor_argv(floor_server, bench, "pace", str(bench.fresh_dir("bytecodespace")), str(count), str(plan.ttl))
        pacer = await stack.enter_async_context(FloorServer(bench, *argv[2:], ready=b"started", env=env))
        if await daemon.ready(plan.cap) is None:
            raise RuntimeError(f"the {count:,}-profile daemon was not ready after {plan.cap:g} s")
        await asyncio.sleep(plan.ttl)
        pids = (daemon.pid, pacer.pid)
        before = [await counted(prefix, pid, 0) for pid in pids]
        await asyncio.sleep(plan.ttl)
        after = [await counted(prefix, pid, 1) for pid in pids]
    # each snapshot's own `next()` added one to both counters
    per = [((a[0] - b[0] - 1) / (a[1] - b[1] - 1), a[1] - b[1] - 1) for b, a in zip(before, after, strict=True)]
    (ours, ours_writes), (floor, floor_writes) = per
    bench.report.add(
        Figure(
            f"Python bytecodes per renewal, {count:,} profiles (context: counted, not timed)",
            f"{ours:,.0f} ({ours_writes:,} renewals)",
            f"the paced floor: {floor:,.0f} ({floor_writes:,} renewals)",
            f"{ours / floor:.2f}x",
        )
    )


async def counted(prefix: str, pid: int, index: int) -> tuple[int, int]:
    """(bytecodes, writes) of process `pid` so far: its counter answers when asked through the file system."""
    Path(f"{prefix}.{pid}.go{index}").touch()
    answer = Path(f"{prefix}.{pid}.out{index}")
    for _ in range(600):
        if answer.exists():
            ops, writes = answer.read_text().split()
            return int(ops), int(writes)
        await asyncio.sleep(0.05)
    raise RuntimeError(f"process {pid} did not report its bytecode count (is bytecodes/sitecustomize.py loaded?)")


def own_cpu() -> float:
    """CPU seconds of this process (the in-process auth servers, mostly signing tokens)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def renewal_points(logs: Iterable[Iterable[dict[str, Any]]]) -> list[tuple[float, float]]:
    """Where each renewal landed, as a fraction of the previous token's lifetime, from `token.renewed` events:
    received = expires_at - lifetime, point = (received_new - received_prev) / lifetime_prev. Returns
    (received_new, point) pairs."""
    points = []
    for events in logs:
        received: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for event in events:
            lifetime = float(event["lifetime"])
            received[str(event["profile"])].append((float(event["expires_at"]) - lifetime, lifetime))
        for tokens in received.values():
            tokens.sort()
            points += [(new, (new - prev) / life) for (prev, life), (new, _) in itertools.pairwise(tokens)]
    return points


def receipt_points(path: Path, lifetime: float) -> list[tuple[float, float]]:
    """The paced floor's renewal points, as `renewal_points` makes the daemon's: from the time each of its tokens
    arrived (floor.py writes "file time" lines when it stops)."""
    received: dict[str, list[float]] = defaultdict(list)
    if not path.exists():  # killed, not stopped: no floor to compare with (the daemon is then judged alone)
        return []
    for line in path.read_text().splitlines():
        name, at = line.split()
        received[name].append(float(at))
    return [
        (new, (new - prev) / lifetime) for times in received.values() for prev, new in itertools.pairwise(sorted(times))
    ]


def _p99(points: list[float]) -> float:
    return points[min(len(points) - 1, round(0.99 * (len(points) - 1)))]


def freshness_figure(
    name: str, renewals: list[tuple[float, float]], floor: list[float] | None = None, judge: bool = True
) -> Figure:
    """The distribution of renewal points: none early, centred in the jitter window (median within 0.005 of its
    middle: a daemon late every time shows, however spread), spread across it (uniform jitter has a standard
    deviation of jitter/sqrt(12): a missing or collapsed jitter shows), and its tail (p99, latest) no later than
    0.81, or than the paced floor's own p99 and latest + 0.01 over the same span when the `floor`'s points are
    given: a burst the machine cannot serve on time, or a stall, delays the least code too."""
    low, high, spread, middle = REFRESH_AT - JITTER, REFRESH_AT + 0.01, JITTER / 12**0.5, REFRESH_AT - JITTER / 2
    floors = sorted(floor or ())
    p99_limit, max_limit = (max(high, _p99(floors) + 0.01), max(high, floors[-1] + 0.01)) if floors else (high, high)
    tail = f"≤ {high:.2f}" + (f" or the paced floor's + 0.01 ({p99_limit:.4f}, {max_limit:.4f})" if floors else "")
    goal = (
        f"none before {low:.2f}; median {middle:.3f} ± 0.005; p99 and latest {tail}; "
        f"stdev {spread:.4f} ± 30 % (uniform {JITTER:g} jitter)"
    )
    points = sorted(point for _, point in renewals)
    if len(points) < 2:
        return Figure(name, f"only {len(points)} renewal(s)", goal=goal, ok=False if judge else None)
    stdev, median, p99 = statistics.stdev(points), statistics.median(points), _p99(points)
    ok = (
        points[0] >= low - 0.001
        and abs(median - middle) <= 0.005
        and p99 <= p99_limit
        and points[-1] <= max_limit
        and abs(stdev - spread) <= 0.3 * spread
    )
    return Figure(
        name,
        f"min {points[0]:.4f}, median {median:.4f}, p99 {p99:.4f}, max {points[-1]:.4f}, "
        f"stdev {stdev:.4f} (n={len(points):,}; {sum(p >= 1 for p in points):,} renewed only after expiry)",
        goal=goal if judge else "",
        ok=ok if judge else None,
    )


SECTIONS = ("once", "fill", "scale", "lifetimes", "bytecodes")


async def run(bench: Bench, only: set[str]) -> None:
    at_fill = None
    try:
        if "once" in only:
            await cold_once(bench)
        if "fill" in only:
            at_fill = await fill_restart_notify_metrics(bench)
        if "scale" in only:
            await scale_and_memory(bench, at_fill)
        if "lifetimes" in only:
            await lifetimes(bench)
        if "bytecodes" in only:
            await bytecodes(bench)
    finally:
        await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes: fewer rounds, no 10,000, 8 s tokens")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--dir", type=Path, default=None, help="where the temp directory goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (configs, daemon logs)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(only - set(SECTIONS)))}")
    plan = QUICK if args.quick else FULL
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show as they happen, even into a pipe
    # an installed package has compiled bytecode; an editable checkout under PYTHONDONTWRITEBYTECODE would not,
    # and every start would pay for compiling our modules: compile them once, like `pip install` does
    import edge_token

    compileall.compile_dir(str(Path(edge_token.__file__).parent), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="edge-token-bench-", dir=args.dir))
    started = time.perf_counter()
    print(f"edge-token benchmark ({plan.name} run), {time.strftime('%Y-%m-%d %H:%M %Z')}\n{machine()}")
    print(f"sinks and logs on {filesystem(work)}")
    bench = Bench(work, plan)
    try:
        asyncio.run(run(bench, only))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - started
    print(f"\nedge-token benchmark, {plan.name} run, {took:.0f} s wall; {machine()}\n\n{bench.report.table()}")


if __name__ == "__main__":
    main()
