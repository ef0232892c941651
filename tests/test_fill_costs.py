"""What a fill and a restart of many profiles cost, counted (never timed): directory listings, read-backs, token
requests and threads. The benchmark (tests/bench) times them; these tests keep the counts from growing back.

File-system calls are counted with an audit hook (`os.listdir`, `os.scandir` and `open` events, raised by the
interpreter itself in whichever thread makes the call), on a real daemon running in this process against the
bundled auth server on loopback, with real files.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import FakeClock, profile_toml
from edge_token.config import load_config
from edge_token.core.outcome import Result
from edge_token.daemon import Daemon
from edge_token.localauth import LocalAuthServer
from edge_token.sinks import file as file_sink
from edge_token.sinks import filecalls
from edge_token.sinks.filecalls import BlockingCalls
from edge_token.sinks.tempfiles import TEMP_SUFFIX, StaleTemps, temp_name
from harness import ManualScheduler

PROFILES = 40  # more than the default 16 renewals in flight, so most first cycles start after the first listing
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

# ---- counting file-system calls ------------------------------------------------------------------------------
_recording: list[list[tuple[str, tuple[Any, ...]]]] = []  # the active recorder (at most one), else empty


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event in ("os.listdir", "os.scandir", "open"):
        _recording[0].append((event, args))


sys.addaudithook(_hook)  # audit hooks cannot be removed: this one records only inside `recorded()`


@contextmanager
def recorded() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    events: list[tuple[str, tuple[Any, ...]]] = []
    _recording.append(events)
    try:
        yield events
    finally:
        _recording.clear()


def listings(events: list[tuple[str, tuple[Any, ...]]], directory: Path) -> int:
    """How many times `directory` was listed."""
    return sum(1 for event, args in events if event != "open" and args and os.fspath(args[0] or ".") == str(directory))


def opens(events: list[tuple[str, tuple[Any, ...]]], name: str, writing: bool = False) -> int:
    """How many times a file called `name` (any directory; os.open with dir_fd passes the bare name) was opened,
    for reading only (`writing=False`) or for writing."""
    count = 0
    for _event, (path, _mode, flags) in ((e, a) for e, a in events if e == "open"):
        if isinstance(path, str | bytes | os.PathLike) and os.path.basename(os.fsdecode(path)) == name:
            count += bool(flags & _WRITE_FLAGS) == writing
    return count


# ---- a real daemon in this process --------------------------------------------------------------------------
@pytest.fixture
async def fleet_dir(tmp_path: Path, auth: LocalAuthServer, secret_file: Path) -> AsyncIterator[Path]:
    """A config of PROFILES profiles whose sinks share one directory (as the benchmark's fill)."""
    sinks = tmp_path / "sinks"
    sinks.mkdir()
    text = '[daemon]\nlisten = ""\n'
    for i in range(PROFILES):
        text += profile_toml(f"p{i}", auth, secret_file, [{"path": str(sinks / f"p{i}.jwt")}])
    (tmp_path / "config.toml").write_text(text)
    yield sinks


def unfired_daemon(config: Path, clock: FakeClock) -> Daemon:
    """The real daemon on a manual scheduler that nothing fires (only first cycles run), no signals, no tick."""
    return Daemon(
        load_config(config, environ={}), clock=clock, environ={}, handle_signals=False,
        scheduler=ManualScheduler(clock.time), tick_seconds=3600,
    )  # fmt: skip


async def run_until_first_cycles(config: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """Start the daemon as a new process would (nothing listed yet), let every profile's first cycle finish, stop.
    Jobs are scheduled on a manual scheduler that nothing fires: only the first cycles run."""
    monkeypatch.setattr(file_sink, "STALE_TEMPS", StaleTemps(), raising=False)
    daemon = unfired_daemon(config, clock)
    task = asyncio.create_task(daemon.run())
    try:
        for _ in range(3000):
            slots = daemon.profiles.supervisor.slots.values()
            if len(slots) == PROFILES and all(s.renewer.last_outcome is not None and s.task is None for s in slots):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the first cycles did not finish within 30 s")
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    return daemon


def results(daemon: Any) -> set[Result | None]:
    """The result of every profile's last outcome (None: no outcome yet)."""
    return {r.last_outcome.result if r.last_outcome else None for r in daemon.profiles.renewers.values()}


async def test_a_fill_and_a_restart_list_the_shared_directory_once_and_a_restart_requests_nothing(
    tmp_path: Path, auth: LocalAuthServer, clock: FakeClock, fleet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fill of N profiles sharing one sink directory: that directory is listed once (stale temps), not once per
    sink (O(N^2) entries), and a sink is read back only while the listing did not exist yet. Restart with every
    token FRESH: zero token requests, one listing, each sink file opened once (its read-back is also the
    unchanged check of the write that follows), and nothing written."""
    config = tmp_path / "config.toml"
    with recorded() as fill:
        daemon = await run_until_first_cycles(config, clock, monkeypatch)
    assert auth.token_requests == PROFILES
    assert results(daemon) == {Result.NEW_TOKEN}
    assert listings(fill, fleet_dir) <= 1
    max_in_flight = daemon.config.daemon.max_concurrent_renewals
    read_back = sum(opens(fill, f"p{i}.jwt") for i in range(PROFILES))
    assert read_back <= max_in_flight, f"{read_back} read-backs of {PROFILES} sinks that did not exist"

    with recorded() as restart:
        daemon = await run_until_first_cycles(config, clock, monkeypatch)
    assert auth.token_requests == PROFILES  # nothing requested
    assert results(daemon) == {Result.ADOPTED}
    assert listings(restart, fleet_dir) <= 1
    per_sink = [opens(restart, f"p{i}.jwt") for i in range(PROFILES)]
    assert max(per_sink) == 1, f"sink files opened {per_sink} times"
    assert not [args for event, args in restart if event == "open" and str(args[0]).endswith(TEMP_SUFFIX)]


async def test_a_restart_makes_far_fewer_worker_trips_than_it_adopts_sinks(
    tmp_path: Path, auth: LocalAuthServer, clock: FakeClock, fleet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restart over N FRESH sinks sharing one directory: each sink is read back and, after verification, checked
    to be still the file read; those calls of the sinks whose cycles reach the same step together go to the
    worker threads in one trip, so the restart makes at most one trip per two adopted sinks (before: two per
    sink, each costing the event loop a wake-up and the interpreter lock), with each sink still opened once and
    nothing written."""
    config = tmp_path / "config.toml"
    await run_until_first_cycles(config, clock, monkeypatch)  # the fill
    trips: list[object] = []
    real_submit = filecalls.WORKERS.submit

    def counted(job: Any) -> None:
        trips.append(job)
        real_submit(job)

    monkeypatch.setattr(filecalls.WORKERS, "submit", counted)
    with recorded() as restart:
        daemon = await run_until_first_cycles(config, clock, monkeypatch)
    assert auth.token_requests == PROFILES
    assert results(daemon) == {Result.ADOPTED}
    assert [opens(restart, f"p{i}.jwt") for i in range(PROFILES)] == [1] * PROFILES
    assert not [args for event, args in restart if event == "open" and args[2] & _WRITE_FLAGS]
    assert len(trips) <= PROFILES // 2, f"{len(trips)} worker trips to adopt {PROFILES} sinks"


async def test_stale_temps_are_removed_at_start_although_absent_sinks_skip_their_read_back(
    tmp_path: Path, auth: LocalAuthServer, clock: FakeClock, fleet_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temp files a killed predecessor left beside some sinks (whose token files do not exist) are removed by the
    fill: the listing that lets a sink skip its read-back also tells which sinks have temps to clean."""
    stale = [fleet_dir / temp_name(fleet_dir / f"p{i}.jwt") for i in range(0, PROFILES, 3)]
    for path in stale:
        path.write_bytes(b"half a token")
    foreign = fleet_dir / ".p1.jwt.backup"
    foreign.write_bytes(b"not ours")
    await run_until_first_cycles(tmp_path / "config.toml", clock, monkeypatch)
    assert [p for p in stale if p.exists()] == []
    assert foreign.exists()
    assert sorted(p.name for p in fleet_dir.iterdir() if not p.name.startswith(".")) == sorted(
        f"p{i}.jwt" for i in range(PROFILES)
    )


async def test_a_profile_changed_by_reload_adopts_the_token_written_after_start(
    tmp_path: Path, auth: LocalAuthServer, clock: FakeClock, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up listing saw no sink file (a fill); the daemon then wrote it. A reload that changes the profile
    (not only its sinks) builds a new renewer whose read-back must not trust that old listing: it adopts the
    token on disk, no request."""
    monkeypatch.setattr(file_sink, "STALE_TEMPS", StaleTemps(), raising=False)
    config, sink = tmp_path / "config.toml", tmp_path / "sinks" / "t.jwt"
    sink.parent.mkdir()
    config.write_text('[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret_file, [{"path": str(sink)}]))
    daemon = unfired_daemon(config, clock)
    task = asyncio.create_task(daemon.run())
    try:
        await until(
            lambda: daemon.profiles.renewers.get("main") is not None and daemon.profiles.renewers["main"].ready()
        )
        assert auth.token_requests == 1
        config.write_text(
            '[daemon]\nlisten = ""\n' + profile_toml("main", auth, secret_file, [{"path": str(sink)}], refresh_at=0.7)
        )
        daemon.reload()
        await until(lambda: daemon.profiles.renewers["main"].last_outcome is not None)
        outcome = daemon.profiles.renewers["main"].last_outcome
        assert outcome is not None and outcome.result is Result.ADOPTED
        assert auth.token_requests == 1
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


async def until(condition: Any, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


# ---- threads ------------------------------------------------------------------------------------------------
async def test_file_calls_reuse_a_bounded_set_of_threads() -> None:
    """200 blocking file calls, 20 at a time from 20 sinks, run on at most `limit` long-lived threads (a thread
    started per call blocked the event loop until it ran: half the time of a 1,000-profile fill)."""
    owners = [BlockingCalls(f"file:/s{i}", timeout=30) for i in range(20)]

    async def ten(calls: BlockingCalls) -> list[int]:
        return [await calls.call(threading.get_native_id) for _ in range(10)]

    threads = {tid for tids in await asyncio.gather(*(ten(o) for o in owners)) for tid in tids}
    assert threading.get_native_id() not in threads  # never on the event loop
    assert len(threads) <= 16, f"{len(threads)} threads"  # the process's file workers: at most 16


def test_a_hung_listing_blocks_no_other_sink_and_not_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one worker's listing of a directory hangs (a dead NFS server; here the listing waits on an event),
    `absent` (called on the event loop) answers at once, "unsure", and a sink in another directory is read back
    and cleaned as usual: the lock is never held across I/O."""
    from edge_token.sinks import tempfiles

    hung, other = tmp_path / "hung", tmp_path / "other"
    hung.mkdir()
    other.mkdir()
    stale = other / temp_name(other / "b.jwt")
    stale.write_bytes(b"half")
    release, real_list = threading.Event(), tempfiles._list

    def listing(directory: str, now: float) -> Any:
        if directory == str(hung):
            release.wait()
        return real_list(directory, now)

    monkeypatch.setattr(tempfiles, "_list", listing)
    temps = StaleTemps()
    stuck = threading.Thread(target=temps.remove, args=(hung / "a.jwt",), daemon=True)
    stuck.start()
    try:
        answers: list[object] = []
        probe = threading.Thread(
            target=lambda: answers.extend([temps.absent(hung / "c.jwt"), temps.remove(other / "b.jwt")]), daemon=True
        )
        probe.start()
        probe.join(10)
        assert not probe.is_alive(), "blocked behind the hung listing"
        assert answers == [False, 1] and not stale.exists()
        assert stuck.is_alive()  # still hung: nothing above waited for it
    finally:
        release.set()
        stuck.join(10)


@given(st.lists(st.sampled_from(["a", "b.jwt", ".", "..", "", "ü", " x", ".c.jwt.0123456789abcdef.edge-token-tmp"]), max_size=6),
       st.booleans())  # fmt: skip
def test_the_stale_temp_bookkeeping_files_a_sink_under_the_directory_and_name_its_path_has(
    parts: list[str], absolute: bool
) -> None:
    """The listing is looked up by the sink path's directory and name, taken as text (no new Path per renewal):
    for any path that names a file, they are what `Path.parent` and `Path.name` say."""
    from edge_token.sinks.tempfiles import split_path

    path = Path(("/" if absolute else "") + "/".join(parts) or ".")
    assume(path.name != "")  # `/` and `.`: no file sink has such a path
    assert split_path(path) == (os.fspath(path.parent), path.name)
