"""/metrics from cached bytes stays exact: every scrape equals a model of what happened, in both formats, with
and without gzip; updates render nothing, and a scrape renders each profile changed since the last one exactly once
(however many times it changed)."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

import edge_token.observe.series as series_module
from conftest import profile_toml
from daemonproc import DaemonProcess
from edge_token.core.errors import SinkError, TransientError, VerificationError
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.core.token import Token
from edge_token.localauth import LocalAuthServer
from edge_token.observe.metrics import Metrics
from edge_token.provider.verify import decode_unverified

PROFILES = ("a", "b", 'c"quoted\\', "d\nnewline")  # label values that need escaping
SINKS = ("file:/run/t/one.jwt", "file:/run/t/two.jwt")
START = 1_800_000_000.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
MODELLED = {
    "edge_token_refresh_total", "edge_token_token_requests_total", "edge_token_sink_writes_total",
    "edge_token_fleet_tokens_total", "edge_token_token_expiry_timestamp_seconds", "edge_token_token_state",
}  # fmt: skip


def _families(body: bytes, openmetrics: bool, gzipped: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus-client's own parser for that format."""
    text = (gzip.decompress(body) if gzipped else body).decode()
    parse = parse_openmetrics if openmetrics else parse_text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in parse(text)
        for sample in family.samples
    }


class MetricsMachine(RuleBasedStateMachine):
    """Outcomes, fleet events, forgotten profiles and scrapes in any order; a model counts what must show."""

    @initialize()
    def setup(self) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.http_requests = 0
        self.metrics.counters("edge_token_http_requests_total", "Scrapes served.", lambda: {"": self.http_requests})
        self.refresh: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self.writes: Counter[tuple[str, str, str]] = Counter()
        self.fleet: Counter[tuple[str, str]] = Counter()
        self.expiry: dict[str, float] = {}
        self.state: dict[str, str] = {}
        self.changed: set[str] = set()  # profiles updated since the last scrape
        self.clock = START
        self.renders = 0  # profile renders so far: only scrapes may make them
        self.renders_by_scrapes = 0
        real = series_module.profile_lines

        def counting(series: Any) -> Any:
            self.renders += 1
            return real(series)

        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(series_module, "profile_lines", counting)

    def teardown(self) -> None:
        self._patch.undo()

    @rule(
        profile=st.sampled_from(PROFILES),
        kind=st.sampled_from(["new", "transient", "invalid", "sinks_retried"]),
        failing=st.sets(st.sampled_from(SINKS)),
        state=st.sampled_from(["fresh", "stale", "expired", "credentials_rejected"]),
    )
    def outcome(self, profile: str, kind: str, failing: set[str], state: str) -> None:
        self.clock += 1.5
        token = Token("h.p.s", {"exp": self.clock + 600}, self.clock, 600.0)
        errors = {name: SinkError(f"{name}: disk full") for name in failing}
        written = tuple(name for name in SINKS if name not in failing)
        if kind == "new":
            outcome = RenewalOutcome(profile, Result.NEW_TOKEN, self.clock, 0.2, token, requested=True,
                                     sinks_written=written, sink_errors=errors)  # fmt: skip
        elif kind == "sinks_retried":
            outcome = RenewalOutcome(profile, Result.SINKS_RETRIED, self.clock, 0.1, token,
                                     sinks_written=written, sink_errors=errors)  # fmt: skip
        else:
            error = TransientError("timeout") if kind == "transient" else VerificationError("bad aud", "audience")
            outcome = RenewalOutcome(profile, Result.FAILED, self.clock, 0.3, None, error, requested=True)
            written, errors = (), {}
        self.metrics.observe(outcome, state, self.clock + 30)
        self.refresh[profile, outcome.label] += 1
        self.requests[profile] += outcome.requested
        for name in written:
            self.writes[profile, name, "success"] += 1
        for name in errors:
            self.writes[profile, name, "failure"] += 1
        if outcome.token is not None:
            self.expiry[profile] = token.exp
        self.state[profile] = state
        self.changed.add(profile)

    @rule(profile=st.sampled_from(PROFILES), event=st.sampled_from(["published", "received", "rejected"]))
    def fleet_event(self, profile: str, event: str) -> None:
        self.metrics.fleet_event(profile, event)
        self.fleet[profile, event] += 1
        self.requests[profile] += 0  # a known profile shows its request count, 0 included
        self.changed.add(profile)

    @rule(profile=st.sampled_from(PROFILES))
    def forget(self, profile: str) -> None:
        self.metrics.forget(profile)
        models: list[dict[Any, Any]] = [self.refresh, self.requests, self.writes, self.fleet, self.expiry, self.state]
        for model in models:
            for key in [k for k in model if k == profile or (isinstance(k, tuple) and k[0] == profile)]:
                del model[key]
        self.changed.discard(profile)

    @rule(openmetrics=st.booleans(), gzipped=st.booleans())
    def scrape(self, openmetrics: bool, gzipped: bool) -> None:
        self.http_requests += 1
        before = self.renders
        body, headers = self.metrics.exposition(OPENMETRICS if openmetrics else "text/plain", "gzip" if gzipped else "")
        assert (headers.get("Content-Encoding") == "gzip") is gzipped
        # each profile changed since the last scrape is rendered once, however often it changed; the others not
        assert self.renders - before == len(self.changed)
        assert self.metrics.rendered == self.renders
        self.renders_by_scrapes += self.renders - before
        self.changed.clear()
        seen = _families(body, openmetrics, gzipped)
        assert seen[("edge_token_http_requests_total", ())] == self.http_requests  # read at every scrape
        expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for (profile, result), n in self.refresh.items():
            expected["edge_token_refresh_total", (("profile", profile), ("result", result))] = n
        for profile, n in self.requests.items():
            expected["edge_token_token_requests_total", (("profile", profile),)] = n
        for (profile, sink, result), n in self.writes.items():
            expected["edge_token_sink_writes_total", (("profile", profile), ("result", result), ("sink", sink))] = n
        for (profile, event), n in self.fleet.items():
            expected["edge_token_fleet_tokens_total", (("event", event), ("profile", profile))] = n
        for profile, exp in self.expiry.items():
            expected["edge_token_token_expiry_timestamp_seconds", (("profile", profile),)] = exp
        for profile, state in self.state.items():
            for name in ("fresh", "stale", "expired", "credentials_rejected"):
                expected["edge_token_token_state", (("profile", profile), ("state", name))] = float(name == state)
        per_profile = {key: value for key, value in seen.items() if dict(key[1]).get("profile") is not None}
        assert {key: value for key, value in per_profile.items() if key[0] in MODELLED} == expected
        # every per-profile sample belongs to a profile still known: a forgotten one is gone from every family
        assert {dict(labels)["profile"] for _name, labels in per_profile} <= set(self.metrics.profiles)

    @invariant()
    def updates_render_nothing(self) -> None:
        """A fill or restart of N profiles renders no metric line before its first scrape."""
        assert self.renders == self.renders_by_scrapes

    @invariant()
    def unchanged_scrape_is_the_cached_section(self) -> None:
        """With nothing changed, the per-profile section is the very bytes of the last render (no re-assembly)."""
        if not self.changed and self.metrics.profiles:
            assert self.metrics.render_profiles(False) is self.metrics.render_profiles(False)


MetricsMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestMetricsCache = MetricsMachine.TestCase


# ---- the real daemon at 1,000 profiles --------------------------------------------------------------------
PROFILE_COUNT = 1000


def _promtool() -> str:
    """The real promtool; CI installs it (`.ci/run`), so there a missing tool is a failure, not a skip."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


async def _scrape(http: aiohttp.ClientSession, url: str, accept: str, encoding: str) -> tuple[bytes, dict[str, str]]:
    async with http.get(url, headers={"Accept": accept, "Accept-Encoding": encoding}, auto_decompress=False) as resp:
        assert resp.status == 200
        return await resp.read(), dict(resp.headers)


def _per_profile(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[Any, float]:
    return {key: value for key, value in samples.items() if any(label == "profile" for label, _ in key[1])}


@pytest.mark.slow
async def test_scrape_of_1000_profiles_is_valid_and_matches_what_the_daemon_did(
    tmp_path: Path, live_auth: LocalAuthServer, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    """At 1,000 profiles /metrics passes `promtool check metrics` and prometheus-client's text and OpenMetrics
    parsers, gzip or not; every profile's counters and expiry match the tokens on disk and the requests the auth
    server counted, before and after SIGUSR1 renews every profile (the cache never serves an old count)."""
    promtool = _promtool()
    sinks = tmp_path / "sinks"
    sinks.mkdir()
    names = [f"p{i:04d}" for i in range(PROFILE_COUNT)]
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = "127.0.0.1:0"\n'
        + "".join(profile_toml(name, live_auth, secret_file, [{"path": str(sinks / f"{name}.jwt")}]) for name in names)
    )
    daemon = await DaemonProcess(config).start()
    daemons.append(daemon)
    url = f"http://{(await daemon.wait_for('http.listening'))['address']}/metrics"
    async with aiohttp.ClientSession() as http:
        for round_ in (1, 2):
            await daemon.wait_for("token.renewed", count=round_ * PROFILE_COUNT, timeout=120)
            text = await _wait_for_total(http, url, round_ * PROFILE_COUNT)
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
            assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
            samples = _families(text, openmetrics=False, gzipped=False)
            assert live_auth.token_requests == round_ * PROFILE_COUNT
            for name in names:
                exp = float(decode_unverified((sinks / f"{name}.jwt").read_text())[1]["exp"])
                sink = f"file:{sinks / f'{name}.jwt'}"
                assert samples["edge_token_refresh_total", (("profile", name), ("result", "success"))] == round_
                assert samples["edge_token_token_requests_total", (("profile", name),)] == round_
                assert samples["edge_token_sink_writes_total", (("profile", name), ("result", "success"),
                                                                ("sink", sink))] == round_  # fmt: skip
                assert samples["edge_token_sink_healthy", (("profile", name), ("sink", sink))] == 1
                assert samples["edge_token_token_expiry_timestamp_seconds", (("profile", name),)] == exp
                assert samples["edge_token_token_state", (("profile", name), ("state", "fresh"))] == 1
            # the other formats carry the same per-profile samples
            for accept, encoding in (("text/plain", "gzip"), (OPENMETRICS, ""), (OPENMETRICS, "gzip")):
                body, headers = await _scrape(http, url, accept, encoding)
                assert (headers.get("Content-Encoding") == "gzip") is (encoding == "gzip")
                other = _families(body, accept == OPENMETRICS, encoding == "gzip")
                assert _per_profile(other) == _per_profile(samples)
            async with http.head(url, headers={"Accept-Encoding": "identity"}) as head:
                assert head.status == 200 and await head.read() == b""
                assert int(head.headers["Content-Length"]) > len(text) // 2  # the length of the body it would send
            daemon.send(signal.SIGUSR1)  # renew every profile now: every counter must move
    assert await daemon.stop() == 0


async def _wait_for_total(http: aiohttp.ClientSession, url: str, renewals: int) -> bytes:
    """The first scrape whose success count across profiles reaches `renewals` (the log line of the last renewal
    is written just before its outcome is recorded); fails if it never does."""
    deadline = time.monotonic() + 20
    while True:
        body, _ = await _scrape(http, url, "text/plain", "identity")
        samples = _families(body, openmetrics=False, gzipped=False)
        done = sum(v for (name, labels), v in samples.items() if name == "edge_token_refresh_total")
        if done >= renewals or time.monotonic() > deadline:
            assert done == renewals, f"{done} renewals counted, {renewals} logged"
            return body
        await asyncio.sleep(0.05)
