"""What every figure of the benchmark shares: samples and figures, child processes, daemons, floors, /proc readings.

Everything here measures from the outside, so it works on whatever daemon code is checked out: a daemon is
`python -m edge_token run -c CONFIG` with its JSON log on a file (stderr is not a terminal, as under systemd),
readiness is its `/readyz`, CPU and memory come from `/proc/PID/stat` and `/proc/PID/status`, and token
requests are counted at the bundled auth server (`LocalAuthServer`, in this process, on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from edge_token.localauth import DEFAULT_AUDIENCE, LocalAuthServer

CLIENT, SECRET = "bench-client", "bench-secret-0123456789"
FLOOR = Path(__file__).with_name("floor.py")
# /readyz is polled every READY_POLL_SECONDS once the log shows every profile holding a token, and only every
# READY_FALLBACK_SECONDS before that: a poll costs the daemon real CPU (about 15 ms at 1,000 profiles), and
# polling a fill fast from its start would slow the very thing being timed.
READY_POLL_SECONDS = 0.01
READY_FALLBACK_SECONDS = 2.0
# the port comes from the daemon's http.listening log line; /proc/net/tcp only after this long without one
LISTEN_LOG_SECONDS = 10.0
HOLDING_EVENTS = ("token.renewed", "token.adopted")  # the README's events for "this profile now holds a token"
HOLDING_MARKS = tuple(b'"event": "%b"' % event.encode() for event in HOLDING_EVENTS)
PROFILE_FIELD = re.compile(rb'"profile": "([^"\\]*)"')
LISTENING_LINE = re.compile(rb'[^\n]*"event": "http\.listening"[^\n]*')
SCRAPE_HEADERS = {"Accept": "text/plain", "Accept-Encoding": "identity"}  # classic text, no gzip: like for like


# ---- samples and figures ---------------------------------------------------------------------------------
@dataclass
class Samples:
    """Repeated measurements of one quantity; `capped` when a run hit its time limit (the value is the cap)."""

    values: list[float] = field(default_factory=list)
    capped: bool = False

    def add(self, value: float | None, cap: float = 0.0) -> None:
        if value is None:
            self.capped = True
            value = cap
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def show(self, unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
        """Median with the spread: `3.52 s (3.40-3.70, n=5)`; `≥` when a run was capped."""
        if not self.values:
            return "not measured"
        med = f"{'≥ ' if self.capped else ''}{self.median * scale:.{digits}f} {unit}".rstrip()
        if len(self.values) == 1:
            return med
        low, high = min(self.values) * scale, max(self.values) * scale
        return f"{med} ({low:.{digits}f}-{high:.{digits}f}, n={len(self.values)})"


def paired_ratios(numerators: Samples, denominators: Samples) -> Samples:
    """Round-by-round ratios of interleaved measurements (round k of one over round k of the other)."""
    pairs = zip(numerators.values, denominators.values, strict=False)
    return Samples([a / b for a, b in pairs if b > 0], capped=numerators.capped)


@dataclass
class Figure:
    """One line of the final table: edge-token's figure beside its floor, the ratio, the goal and the verdict."""

    name: str
    value: str
    floor: str = ""
    ratio: str = ""
    goal: str = ""
    ok: bool | None = None  # None: context only, no goal

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else "PASS" if self.ok else "MISS"


class Report:
    """Figures in the order they were measured; each is printed as soon as it is known, the table at the end."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.tables: list[str] = []

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        parts = [figure.value, f"floor {figure.floor}" if figure.floor else "", figure.ratio, figure.goal]
        shown = " | ".join(p for p in parts if p)
        print(f"  => {figure.name}: {shown} {figure.verdict}".rstrip())

    def add_table(self, header: list[str], rows: list[list[str]]) -> None:
        """A table of context figures (e.g. the scale), printed now and again after the figures."""
        lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
        lines += [f"| {' | '.join(row)} |" for row in rows]
        self.tables.append("\n".join(lines))
        print("\n".join(lines))

    def table(self) -> str:
        lines = ["| figure | edge-token | floor (same run) | ratio | goal | |", "|---|---|---|---|---|---|"]
        lines += [f"| {f.name} | {f.value} | {f.floor} | {f.ratio} | {f.goal} | {f.verdict} |" for f in self.figures]
        return "\n\n".join(["\n".join(lines), *self.tables])


def ratio_figure(
    name: str,
    value: Samples,
    floor: Samples,
    goal: float,
    *,
    unit: str = "s",
    scale: float = 1.0,
    digits: int = 2,
    floor_name: str = "",
) -> Figure:
    """A figure judged by the ratio of medians to a floor measured in the same run, with the per-round ratios as
    its spread. Under a noisy neighbour the medians of a few short runs can land anywhere, so a PASS also needs
    the best run to meet the goal against the floor's best run (min/min: the least disturbed runs of each), over
    as many runs on each side: the one 10,000-profile fill against the best of the floor's first one, not of its
    nine (the least disturbed of nine is faster than any one run, by chance alone).
    A value that was not measured (its run capped earlier) is a MISS."""
    floor_text = f"{floor_name}: " if floor_name else ""
    if not value.values or not floor.values:
        return Figure(
            name, value.show(unit, scale, digits), floor_text + floor.show(unit, scale, digits), "", f"≤ {goal:g}x",
            ok=False,
        )  # fmt: skip
    ratio = value.median / floor.median
    best = min(value.values) / min(floor.values[: len(value.values)])
    per_round = paired_ratios(value, floor)
    spread = f"rounds {min(per_round.values):.2f}-{max(per_round.values):.2f}, " if len(per_round.values) > 1 else ""
    return Figure(
        name,
        value.show(unit, scale, digits),
        floor_text + floor.show(unit, scale, digits),
        f"{'≥ ' if value.capped else ''}{ratio:.2f}x ({spread}best {best:.2f}x)",
        f"≤ {goal:g}x",
        ok=not value.capped and ratio <= goal and best <= goal,
    )


# ---- the machine -----------------------------------------------------------------------------------------
def machine() -> str:
    """Cores, CPU model, Python, load, the checked-out commit and the filesystem the sinks live on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()[:80]
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}, load average {load}\ncode: {commit or 'unknown commit'}"
    )


def filesystem(path: Path) -> str:
    """The filesystem type holding `path` (fsync costs differ: ext4 on a disk vs tmpfs under /run)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return f"{path} ({kind})"


# ---- /proc -----------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def listen_port(pid: int) -> int | None:
    """The TCP port a child listens on (it binds 127.0.0.1:0), from its socket inodes and /proc/net/tcp: for
    children that log no address. /proc/net/tcp lists every socket of the machine, thousands after a few fills,
    so this costs milliseconds per call: polled while a daemon starts, it competed with the auth server."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
            return int(parts[1].split(":")[1], 16)
    return None


def _die_with_parent() -> None:
    # children must not outlive a benchmark killed with SIGKILL: PR_SET_PDEATHSIG (1) = SIGKILL
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


# ---- the run: sizes, work directory, child processes, HTTP client -----------------------------------------
@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, --quick, or the smoke test's tiny sizes."""

    name: str
    once_runs: int  # interleaved pairs of cold `once` and its floor
    fill_profiles: int  # the fill, restart, notify and /metrics figures
    fill_rounds: int  # each: edge-token fill + restart, floor fill, fill under NOTIFY_SOCKET
    scrapes: int  # scrapes per round, median taken
    scale_sizes: tuple[int, ...]  # measured here besides fill_profiles
    scale_rounds: int
    big: int | None  # the 10,000-profile point (full run only), one round
    ttl: float  # token lifetime for the CPU and freshness figures
    lifetimes: int  # whole lifetimes in the CPU window (after one lifetime of settling)
    lifetime_profiles: tuple[int, int]  # the small and the large daemon of the CPU figures
    cap: float  # seconds before a fill counts as "did not finish" (reported as ≥ cap, a MISS)
    settle: float = 0.0  # the CPU window opens no earlier than this many seconds after the daemons start
    big_cap: float = 300.0


class Bench:
    """One benchmark run: its plan and temp directory, every child process it started (all killed at the end,
    even on failure), one HTTP client session, and the figures."""

    def __init__(self, work: Path, plan: Plan) -> None:
        self.work, self.plan = work, plan
        self.report = Report()
        self.children: set[asyncio.subprocess.Process] = set()
        self._names = itertools.count()
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._http

    def fresh_dir(self, prefix: str) -> Path:
        path = self.work / f"{prefix}-{next(self._names)}"
        path.mkdir(parents=True)
        return path

    async def spawn(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        stdout: Any = asyncio.subprocess.DEVNULL,
        stderr: Any = None,
    ) -> asyncio.subprocess.Process:
        """Start a child with a clean environment (no systemd variables unless given) that dies with us."""
        base = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.DEVNULL if stderr is None else stderr,
            env={**base, **(env or {})},
            preexec_fn=_die_with_parent,
        )
        self.children.add(process)
        return process

    async def stop(self, process: asyncio.subprocess.Process, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaped."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.children.discard(process)

    async def close(self) -> None:
        for process in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self.children.clear()
        if self._http is not None:
            await self._http.close()

    async def timed_run(self, *argv: str) -> float:
        """Seconds from spawn to exit of a command that must succeed."""
        start = time.perf_counter()
        process = await self.spawn(*argv, stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        took = time.perf_counter() - start
        self.children.discard(process)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} exited {process.returncode}: {err.decode()[-800:]}")
        return took

    async def get(self, url: str) -> tuple[int, bytes, float]:
        """One GET: status, body, seconds from sending to the last byte."""
        start = time.perf_counter()
        async with self.http.get(url, headers=SCRAPE_HEADERS) as response:
            body = await response.read()
            return response.status, body, time.perf_counter() - start

    async def scrape_times(self, url: str, count: int, warmup: int = 2) -> tuple[Samples, bytes, str]:
        """`count` sequential scrapes after `warmup`: their times, the last body and its content type."""
        times, body, kind = Samples(), b"", ""
        for i in range(warmup + count):
            start = time.perf_counter()
            async with self.http.get(url, headers=SCRAPE_HEADERS) as response:
                body, kind = await response.read(), response.headers.get("Content-Type", "")
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            if i >= warmup:
                times.add(time.perf_counter() - start)
        return times, body, kind


class TimedAuthServer(LocalAuthServer):
    """The bundled server, noting when each token request arrived (`perf_counter`): where a fill's time goes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[float] = []

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.perf_counter())
        return await super()._token(request)


@dataclass
class FillSplit:
    """A fill cut in two at the auth server: start-up (spawn to the first token request: imports, the config, the
    profiles, the JWKS) and throughput (the time per profile between the 10th and the 90th percentile request)."""

    startup: float
    per_profile: float

    @classmethod
    def of(cls, arrivals: list[float], started: float) -> FillSplit | None:
        """From the arrival times of one fill's token requests (in order) and its spawn time; None below two."""
        if len(arrivals) < 2:
            return None
        low, high = len(arrivals) // 10, max(len(arrivals) * 9 // 10, 1)
        return cls(arrivals[0] - started, (arrivals[high] - arrivals[low]) / (high - low))


@contextlib.asynccontextmanager
async def auth_server(ttl: float = 3600.0) -> AsyncIterator[TimedAuthServer]:
    """The bundled OAuth2 + JWKS server on loopback, in this process (so token requests can be counted)."""
    server = TimedAuthServer({CLIENT: SECRET}, ttl=ttl)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def write_config(bench: Bench, server: LocalAuthServer, count: int, sinks: Path) -> Path:
    """`count` profiles sharing one sink directory; everything else at its default (log level included),
    except the HTTP listener on a free loopback port."""
    secret = bench.work / "secret"
    if not secret.exists():
        secret.write_text(SECRET)
        secret.chmod(0o600)
    common = (
        f'client_id = "{CLIENT}"\nclient_secret_file = "{secret}"\ntoken_url = "{server.token_url}"\n'
        f'issuer = "{server.issuer}"\njwks_url = "{server.jwks_url}"\n'
    )
    parts = ['[daemon]\nlisten = "127.0.0.1:0"\n']
    parts += [f'[profiles.p{i}]\n{common}[[profiles.p{i}.sinks]]\npath = "{sinks}/p{i}.jwt"\n' for i in range(count)]
    path = sinks.parent / f"{sinks.name}.toml"
    path.write_text("".join(parts))
    return path


def verify_sinks(server: LocalAuthServer, sinks: Path, count: int) -> None:
    """Every sink holds a token from `server` that verifies (signature, iss, aud, exp): a fill that is fast
    because it did not do the work must not be timed as one. Runs after the timing, outside it."""
    keys = KeySet.import_key_set(server.jwks())
    rules = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": server.issuer}, aud={"essential": True, "value": DEFAULT_AUDIENCE},
        exp={"essential": True},
    )  # fmt: skip
    for i in range(count):
        path = sinks / f"p{i}.jwt"
        try:
            rules.validate(jwt.decode(path.read_text(), keys, algorithms=["RS256"]).claims)
        except (OSError, ValueError, JoseError) as exc:
            raise RuntimeError(f"{path} does not hold a valid token after the fill: {exc!r}") from None


def floor_argv(server: LocalAuthServer, bench: Bench, command: str, *rest: str) -> list[str]:
    """argv of a floor (floor.py) that talks to `server` with the benchmark's client."""
    return [
        sys.executable,
        str(FLOOR),
        command,
        server.token_url,
        server.jwks_url,
        server.issuer,
        "https://api.sitecorecloud.io",
        CLIENT,
        str(bench.work / "secret"),
        *rest,
    ]


# ---- the daemon as a child process -----------------------------------------------------------------------
class Daemon:
    """`python -m edge_token run -c CONFIG`, its JSON log on a file, timed from the moment it is spawned."""

    def __init__(self, bench: Bench, config: Path, profiles: int, env: dict[str, str] | None = None) -> None:
        self.bench, self.config, self.profiles, self.env = bench, config, profiles, env
        self.late_ready = False  # readiness was seen by the slow fallback poll only (up to 2 s late)
        self.holding: set[str] = set()  # profiles the log shows holding a token (progress of a capped fill)
        self.log_path = config.with_suffix(f".{next(bench._names)}.log")
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self._port: int | None = None
        self._log_offset = 0  # how far the log has been read
        self._log: BinaryIO | None = None  # open for reading while it is tailed: one open a daemon, not one a poll

    async def __aenter__(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.started = time.perf_counter()
            self.process = await self.bench.spawn(
                sys.executable, "-m", "edge_token", "run", "-c", str(self.config), env=self.env, stderr=log
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.process is not None:
            await self.bench.stop(self.process)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _check_alive(self) -> None:
        if self.process is None or self.process.returncode is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""
            code = self.process.returncode if self.process else None
            raise RuntimeError(f"the daemon exited ({code}) before it was ready; log tail:\n{tail}")

    async def url(self, path: str, timeout: float = 30.0) -> str:
        """http://127.0.0.1:PORT/path, once the daemon listens."""
        deadline = time.perf_counter() + timeout
        while self._port is None:
            self._check_alive()
            self._log_offset = self._tail_holding(self.holding, self._log_offset)
            if self._port is None and time.perf_counter() > self.started + LISTEN_LOG_SECONDS:
                self._port = listen_port(self.pid)  # no http.listening line: a daemon that does not log it
            if self._port is None:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the daemon did not listen within {timeout:g} s")
                await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{self._port}{path}"

    async def ready(self, cap: float) -> float | None:
        """Seconds from spawn until /readyz answers 200; None when `cap` seconds pass first."""
        readyz = await self.url("/readyz", timeout=cap)
        next_poll, first = 0.0, True
        while True:
            self._check_alive()
            self._log_offset = self._tail_holding(self.holding, self._log_offset)
            now = time.perf_counter()
            gate = len(self.holding) >= self.profiles
            if gate or now >= next_poll:
                next_poll = now + READY_FALLBACK_SECONDS
                with contextlib.suppress(aiohttp.ClientError):
                    status, _, _ = await self.bench.get(readyz)
                    if status == 200:
                        # the first poll follows the listener by ~10 ms, and readiness cannot come before it
                        self.late_ready = not gate and not first
                        return time.perf_counter() - self.started
                first = False
            if now - self.started > cap:
                return None
            await asyncio.sleep(READY_POLL_SECONDS)

    def _tail_holding(self, holding: set[str], offset: int) -> int:
        """Add the profiles the log (read on from `offset`) shows holding a token, and take the listening port from
        its http.listening line; returns the new offset. This runs every 10 ms on the thread of the auth server the
        fill is timed against, in the daemon's rounds only (the floor's fill prints one line), so it must cost
        little: one open file read on, each holding event found by a substring search and the profile read from
        that line alone. A JSON parse of every line cost the auth server ~40 ms of a 1,000-profile fill; a regular
        expression for the event anywhere in each line and an open per poll, still ~58 ms; this, ~7 ms."""
        if self._log is None:
            self._log = self.log_path.open("rb")
        self._log.seek(offset)
        chunk = self._log.read()
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        for mark in HOLDING_MARKS:
            at = chunk.find(mark, 0, end)
            while at != -1:
                line_end = chunk.find(b"\n", at)
                if (name := PROFILE_FIELD.search(chunk, chunk.rfind(b"\n", 0, at) + 1, line_end)) is not None:
                    holding.add(name.group(1).decode())
                at = chunk.find(mark, line_end, end)
        if self._port is None and (listening := LISTENING_LINE.search(chunk, 0, end)) is not None:
            with contextlib.suppress(ValueError):
                event = json.loads(listening.group())
                self._port = int(str(event.get("address", "")).rpartition(":")[2])
        return offset + end

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss(self) -> float:
        return peak_rss_mib(self.pid)

    def events(self, name: str) -> Iterator[dict[str, Any]]:
        """The daemon's JSON log events called `name` (other lines are skipped)."""
        with self.log_path.open(errors="replace") as log:
            for line in log:
                if f'"{name}"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == name:
                        yield event


class FloorServer:
    """floor.py serve/idle: a bare aiohttp server (the floor of /metrics and of idle memory); or, with `ready`,
    any floor that prints that word once running (pace: the floor of CPU over lifetimes)."""

    def __init__(self, bench: Bench, *args: str, ready: bytes | None = None, env: dict[str, str] | None = None) -> None:
        self.bench, self.args, self.ready, self.env = bench, args, ready, env
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def __aenter__(self) -> FloorServer:
        self.process = await self.bench.spawn(
            sys.executable, str(FLOOR), *self.args, stdout=asyncio.subprocess.PIPE, env=self.env
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if self.ready is not None and line.strip() == self.ready:
            return self
        if not line.strip().isdigit():
            raise RuntimeError(f"floor {self.args[0]} did not start: {line!r}")
        self.port = int(line)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            await self.bench.stop(self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET, drained by a thread (systemd drains it at
    once; a full queue would block the daemon's send, which is not what we measure)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, bytes]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> NotifySocket:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.perf_counter(), self._sock.recv(65536)))

    def first(self, line: bytes) -> float | None:
        """perf_counter time of the first message carrying `line` (e.g. b"READY=1")."""
        return next((t for t, m in self.messages if line in m.split(b"\n")), None)


async def sample_interleaved(rounds: int, *steps: Callable[[], Any]) -> None:
    """Run the steps in turn, `rounds` times (edge-token, floor, edge-token, floor, …), so drift hits all alike."""
    for _ in range(rounds):
        for step in steps:
            await step()
