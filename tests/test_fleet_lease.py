"""Fleet mode keeps one etcd lease per daemon, however many profiles race for it (at start and after a loss); a
profile a reload removes leaves no metrics series behind (even while its fleet step waits on etcd) and no
leadership either. Real etcd on loopback."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from conftest import FIGURES, profile_toml
from daemonproc import DaemonProcess
from edge_token.core.settings import FleetConfig
from edge_token.fleet.etcd import LEADER
from edge_token.fleet.membership import Fleet
from edge_token.localauth import LocalAuthServer
from edge_token.net.http import make_session
from etcdparts import EtcdCluster, HoldingProxy, running_etcd

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("live_auth")]
PROFILES = 20
LEASE = 2  # seconds: the keys of a lease nobody keeps alive vanish this soon


def keep_after_gone(proxy: HoldingProxy) -> int:
    """How many requests of "keep" the proxy forwarded since the last one of "gone"."""
    count = 0
    for keys in reversed(proxy.forwarded):
        if proxy.ours(keys):
            break
        count += any("/keep/" in key for key in keys)
    return count


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    async with running_etcd(tmp_path / "etcd", members=1) as cluster:
        yield cluster


def fleet_toml(endpoint: str, listen: str = "", poll: float = 0.3, timeout: float = 2, node: str = "a") -> str:
    return (
        f'[daemon]\nlog_format = "json"\nlisten = "{listen}"\n'
        f'[fleet]\netcd_endpoints = ["{endpoint}"]\nlease_ttl_seconds = {LEASE}\npoll_seconds = {poll}\n'
        f'node_name = "{node}"\ntimeout_seconds = {timeout}\n'
    )


async def one_lease_holds_every_key(etcd: EtcdCluster, profiles: int) -> str:
    """The invariant: etcd holds exactly one lease, and every profile's leader key is bound to it."""
    leases, leaders = await etcd.leases(), await etcd.leaders()
    assert len(leases) == 1, f"{len(leases)} leases alive, expected 1"
    assert len(leaders) == profiles and set(leaders.values()) == leases, (leases, leaders)
    return leases.pop()


async def test_profiles_starting_together_share_one_lease(
    auth: LocalAuthServer, etcd: EtcdCluster, tmp_path: Path, secret_file: Path
) -> None:
    """20 profiles start at once: one lease is granted, every leader key is under it, and they are all still
    there after more than the lease TTL (each racing cycle used to grant its own lease; all but the last expired
    and took their leader keys with them while the daemon still believed it led)."""
    config = tmp_path / "d.toml"
    config.write_text(
        fleet_toml(etcd.endpoints[0])
        + "".join(
            profile_toml(f"p{i}", auth, secret_file, [{"path": str(tmp_path / f"p{i}.jwt")}]) for i in range(PROFILES)
        )
    )
    daemon = await DaemonProcess(config).start()
    await daemon.wait_for("fleet.role", count=PROFILES, role=LEADER, timeout=30)
    lease = await one_lease_holds_every_key(etcd, PROFILES)
    await asyncio.sleep(2.5 * LEASE)  # the real TTL of etcd's leases: the property is about what survives it
    assert await one_lease_holds_every_key(etcd, PROFILES) == lease
    assert daemon.count("fleet.role") == PROFILES  # no profile changed role meanwhile
    assert daemon.count("fleet.lease_lost") == 0
    assert await daemon.stop() == 0
    assert await etcd.leases() == set() and await etcd.leaders() == {}  # the stop revoked it: successors at once


async def test_lease_losses_mid_run_still_one_lease(etcd: EtcdCluster, log: Any) -> None:
    """Counted chaos: 30 rounds of 20 concurrent role checks; in a random two thirds of them the lease is revoked
    from outside (the lease lost) while they run or after them. After each round, a keep-alive (or not: then the role checks find the
    lease gone themselves) and 20 more role checks: every profile led, exactly one lease alive, every leader key
    under it, and exactly one grant per loss."""
    rng = random.Random(20261129)
    config = FleetConfig(etcd_endpoints=(etcd.endpoints[0],), lease_ttl_seconds=60, node_name="a")
    names = [f"p{i}" for i in range(PROFILES)]
    losses = by_keepalive = 0
    with capture_logs() as logs:
        async with make_session() as session:
            fleet = Fleet(config, session, log)
            try:
                await asyncio.gather(*(fleet.role(name) for name in names))
                await one_lease_holds_every_key(etcd, PROFILES)
                assert fleet.grants == 1
                for _ in range(30):
                    checks: list[Awaitable[object]] = [fleet.role(name) for name in names]
                    loss = rng.choice([None, "during", "after"])
                    if loss is not None and fleet.lease is not None:
                        losses += 1
                        lease = fleet.lease
                        if loss == "during":
                            checks.insert(rng.randrange(len(checks) + 1), etcd.revoke(lease))
                    await asyncio.gather(*checks)
                    if loss == "after":
                        await etcd.revoke(lease)
                    if rng.random() < 0.5:  # the scheduled keep-alive notices a loss; else the next role checks do
                        before = lost(logs)
                        await fleet.keepalive()
                        by_keepalive += lost(logs) - before
                    roles = await asyncio.gather(*(fleet.role(name) for name in names))
                    assert roles == [LEADER] * PROFILES
                    await one_lease_holds_every_key(etcd, PROFILES)
                    assert fleet.grants == 1 + losses
            finally:
                await fleet.leave()
    FIGURES["fleet lease chaos"] = {"rounds": 30, "profiles": PROFILES, "lease losses": losses,
                                    "noticed by keep-alive": by_keepalive, "grants": fleet.grants}  # fmt: skip
    assert lost(logs) == losses  # each loss noticed once, however many role checks ran into it
    assert losses >= 10 and 0 < by_keepalive < losses, (losses, by_keepalive)  # both ways of noticing happened
    assert await etcd.leases() == set()


def lost(logs: list[MutableMapping[str, Any]]) -> int:
    return sum(entry["event"] == "fleet.lease_lost" for entry in logs)


async def test_removed_profile_leaves_no_fleet_series(
    auth: LocalAuthServer, etcd: EtcdCluster, tmp_path: Path, secret_file: Path
) -> None:
    """A reload removes profile "gone" while its fleet step waits on etcd (a proxy holds its requests): once that
    step ends, /metrics has no series of "gone" (its role used to be recorded again after `forget`)."""
    proxy = HoldingProxy(etcd.endpoints[0], "gone")
    endpoint = await proxy.start()
    try:
        head = fleet_toml(endpoint, listen="127.0.0.1:0", timeout=10)
        keep = profile_toml("keep", auth, secret_file, [{"path": str(tmp_path / "keep.jwt")}])
        gone = profile_toml("gone", auth, secret_file, [{"path": str(tmp_path / "gone.jwt")}])
        config = tmp_path / "d.toml"
        config.write_text(head + keep + gone)
        daemon = await DaemonProcess(config).start()
        base = f"http://{(await daemon.wait_for('http.listening'))['address']}"
        for name in ("keep", "gone"):
            await daemon.wait_for("sink.written", profile=name, timeout=30)
        async with aiohttp.ClientSession() as http:
            assert 'profile="gone"' in await (await http.get(base + "/metrics")).text()
            proxy.hold = True
            await proxy.until(lambda: any(proxy.ours(keys) for keys in proxy.held))  # its cycle waits on etcd
            config.write_text(head + keep)
            daemon.send(signal.SIGHUP)
            await daemon.wait_for("config.reloaded")
            done = len(proxy.forwarded)
            proxy.release()
            # the held request answered, then the rest of that cycle (its later etcd calls pass the proxy too), and
            # then four requests of "keep" (two of its cycles) after the last one of "gone": its step has ended
            await proxy.until(lambda: len(proxy.forwarded) > done and not proxy.held)
            await proxy.until(lambda: keep_after_gone(proxy) >= 4, timeout=30)
            text = await (await http.get(base + "/metrics")).text()
        ghosts = [line for line in text.splitlines() if 'profile="gone"' in line]
        assert ghosts == [], json.dumps(ghosts[:5])
        assert 'edge_token_fleet_role{profile="keep",role="leader"} 1' in text
        assert await daemon.stop() == 0
    finally:
        await proxy.stop()


async def test_removed_profile_hands_its_leadership_over_at_once(
    auth: LocalAuthServer, etcd: EtcdCluster, tmp_path: Path, secret_file: Path
) -> None:
    """Daemon a leads "shared", daemon b follows; a reload removes "shared" from a (which keeps running, lease
    alive): a gives its leader key up and b leads within a few polls, then keeps its own sink fresh. (The key used
    to stay under a's living lease: b stayed a follower, waiting for tokens nobody requested, until they expired.)"""

    def sink(name: str) -> list[dict[str, Any]]:
        return [{"path": str(tmp_path / f"{name}.jwt")}]

    head_a, head_b = fleet_toml(etcd.endpoints[0], node="a"), fleet_toml(etcd.endpoints[0], node="b")
    keep = profile_toml("keep", auth, secret_file, sink("a-keep"))
    config_a, config_b = tmp_path / "a.toml", tmp_path / "b.toml"
    config_a.write_text(head_a + keep + profile_toml("shared", auth, secret_file, sink("a-shared")))
    config_b.write_text(head_b + profile_toml("shared", auth, secret_file, sink("b-shared")))
    a = await DaemonProcess(config_a).start()
    await a.wait_for("fleet.role", profile="shared", role=LEADER, timeout=30)
    b = await DaemonProcess(config_b).start()
    await b.wait_for("fleet.role", profile="shared", role="follower", timeout=30)
    config_a.write_text(head_a + keep)
    a.send(signal.SIGHUP)
    await a.wait_for("config.reloaded")
    await b.wait_for("fleet.role", profile="shared", role=LEADER, timeout=10)
    assert a.count("fleet.resigned", profile="shared") == 1
    assert (await etcd.leaders()).keys() == {"keep", "shared"}
    assert len(await etcd.leases()) == 2  # one per daemon
    assert a.returncode is None and a.count("fleet.lease_lost") == 0  # a handed over; its lease did not expire
    for daemon in (a, b):
        assert await daemon.stop() == 0
