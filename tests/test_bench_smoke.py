"""The benchmark keeps working: each section, at tiny sizes against real daemons, yields its figures and verdicts.

No timing is asserted (the benchmark measures; tests assert behaviour). What is asserted is what would make
the benchmark's output wrong or empty: a figure missing, a quantity not measured, a floor not run, the renewal
points mis-derived, a child process left behind.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bench"))

import benchlib
from benchlib import Bench, Daemon, Plan

import bench as benchmark  # tests/bench/bench.py

TINY = Plan(
    "tiny", once_runs=1, fill_profiles=2, fill_rounds=1, scrapes=2, scale_sizes=(1,), scale_rounds=1,
    big=3, ttl=1.0, lifetimes=1, lifetime_profiles=(1, 2), cap=30.0,
)  # fmt: skip


@pytest.fixture
async def benches(tmp_path: Path) -> AsyncIterator[Callable[[str], Bench]]:
    """A Bench per section (each its own work directory and report); all closed, none may leave a child."""
    made: list[Bench] = []

    def make(name: str) -> Bench:
        made.append(Bench(tmp_path / name, TINY))
        made[-1].work.mkdir()
        return made[-1]

    yield make
    left = [p.pid for bench in made for p in bench.children]
    for bench in made:
        await bench.close()
    assert not left, f"a section left child processes running: {left}"


def verdicts(bench: Bench) -> dict[str, str]:
    """Figure name -> verdict; every figure shown must have been measured."""
    for figure in bench.report.figures:
        assert "not measured" not in figure.value, figure
    return {figure.name: figure.verdict for figure in bench.report.figures}


@pytest.mark.slow
async def test_every_section_yields_its_figures(benches: Callable[[str], Bench]) -> None:
    """The four sections at tiny sizes, side by side (independent servers, directories and daemons)."""
    once, fill, scale, life, counts = (benches(name) for name in ("once", "fill", "scale", "life", "bytecodes"))
    _, filled, _, _, _ = await asyncio.gather(
        benchmark.cold_once(once),
        benchmark.fill_restart_notify_metrics(fill),
        benchmark.scale_and_memory(scale, None),
        benchmark.lifetimes(life),
        benchmark.bytecodes(counts),
    )
    judged = {**verdicts(once), **verdicts(fill), **verdicts(scale), **verdicts(life)}
    assert all(v in ("PASS", "MISS") for name, v in judged.items() if "context" not in name), judged
    names = " / ".join(judged)
    for part in (
        "cold `once`", "libraries imported by `once`", "fill 2 profiles", "NOTIFY_SOCKET", "restart with 2 FRESH",
        "/metrics at 2 profiles", "peak RSS of the idle daemon", "CPU over 1 whole lifetimes, 1 profile",
        "CPU over 1 whole lifetimes, 2 profile", "freshness: renewal points (fraction of lifetime), all",
        "fill 3 vs fill 2 (linear)", "peak RSS at 3 profiles", "/metrics at 3 vs at 2",
        "the fill, split at the auth server (context): start-up", "and throughput: time per profile",
        "and CPU, spawn → ready, every thread",
    ):  # fmt: skip
        assert part in names, part
    assert filled.body.startswith(b"# HELP") and len(filled.scrape.values) == 1
    restart = next(f for f in fill.report.figures if f.name.startswith("restart"))
    assert "token requests 0" in restart.value  # FRESH tokens in the sinks: the restart asked for none
    assert all(f"| {n} |" in scale.report.tables[0] for n in (1, 2, 3))
    (count,) = counts.report.figures  # both processes counted their bytecodes, per renewal
    assert count.name.startswith("Python bytecodes per renewal, 2 profiles") and count.ratio.endswith("x")
    assert all(int(text.split()[0].replace(",", "")) > 1000 for text in (count.value, count.floor.split(": ")[1]))


def test_renewal_points_from_log_events() -> None:
    """received = expires_at - lifetime; a point is (received_new - received_prev) / lifetime_prev, per profile."""
    events = [
        {"profile": "a", "expires_at": 1020.0, "lifetime": 20.0},  # received 1000
        {"profile": "b", "expires_at": 1510.0, "lifetime": 10.0},  # received 1500
        {"profile": "a", "expires_at": 1036.0, "lifetime": 20.0},  # received 1016: point 0.8
        {"profile": "b", "expires_at": 1517.5, "lifetime": 10.0},  # received 1507.5: point 0.75
        {"profile": "a", "expires_at": 1051.0, "lifetime": 20.0},  # received 1031: point 0.75
    ]
    points = benchmark.renewal_points([reversed(events)])  # log order does not matter, receipt order does
    assert sorted(points) == [(1016.0, 0.8), (1031.0, 0.75), (1507.5, 0.75)]
    figure = benchmark.freshness_figure("f", points)
    assert figure.value.startswith("min 0.7500, median 0.7500") and "n=3" in figure.value


def test_fill_split_at_the_auth_server() -> None:
    """Start-up is spawn to the first request; throughput the time per profile between the 10th and 90th
    percentile requests (so a slow first or last handful does not count); fewer than two requests: no split."""
    arrivals = [10.0 + 0.002 * i for i in range(100)]
    arrivals[-1] = 99.0  # a straggler past the 90th percentile
    split = benchlib.FillSplit.of(arrivals, 9.6)
    assert split is not None and split.startup == pytest.approx(0.4) and split.per_profile == pytest.approx(0.002)
    two = benchlib.FillSplit.of([5.0, 5.5], 4.0)
    assert two is not None and two.startup == pytest.approx(1.0) and two.per_profile == pytest.approx(0.5)
    assert benchlib.FillSplit.of([5.0], 4.0) is None


async def test_a_daemon_that_dies_fails_the_section_with_its_log(benches: Callable[[str], Bench]) -> None:
    """A daemon that exits (here: a config error) stops the section with its exit code and log tail, not a hang."""
    run = benches("dies")
    config = run.work / "bad.toml"
    config.write_text('[daemon]\nlisten = "127.0.0.1:0"\nno_such_key = 1\n')
    with pytest.raises(RuntimeError, match=r"(?s)exited \(78\).*no_such_key"):
        async with Daemon(run, config, 1) as daemon:
            await daemon.ready(30)
