"""The daemon's prometheus-client registry is built at the first scrape, not at start, and that changes no byte of
/metrics: a Metrics that builds its registry late answers every scrape exactly as one built at once, fed the same
events; a real daemon imports prometheus-client only when first scraped, and that scrape shows every family the
README documents."""

from __future__ import annotations

import gzip
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry

import edge_token.observe.registry as registry_module
from conftest import profile_toml, python_calls
from daemonproc import DaemonProcess
from edge_token.core.errors import TransientError
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.core.token import Token
from edge_token.localauth import LocalAuthServer
from edge_token.observe.metrics import Metrics

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
URLS = ("https://a.example/jwks", "https://b.example/.well-known/jwks.json")
START = 1_800_000_000.0


class LateRegistryMachine(RuleBasedStateMachine):
    """Outcomes, JWKS fetches, reloads and scrapes in any order, fed to a Metrics on a registry built at once and
    to one that builds its own at its first scrape."""

    @initialize()
    def setup(self) -> None:
        self.eager, self.late = Metrics(CollectorRegistry()), Metrics()
        self.outcomes = 0
        self.scraped = False
        self.clock = START

    @rule(
        profile=st.sampled_from(["a", "b"]),
        ok=st.booleans(),
        duration=st.floats(0, 60, allow_nan=False) | st.sampled_from(list(registry_module.DURATION_BUCKETS)),
    )
    def outcome(self, profile: str, ok: bool, duration: float) -> None:
        self.clock += 1.0
        if ok:
            token = Token("h.p.s", {"exp": self.clock + 600}, self.clock, 600.0)
            outcome = RenewalOutcome(profile, Result.NEW_TOKEN, self.clock, duration, token, requested=True)
        else:
            outcome = RenewalOutcome(profile, Result.FAILED, self.clock, duration, None, TransientError("down"))
        for metrics in (self.eager, self.late):
            metrics.observe(outcome, "fresh" if ok else "stale", self.clock + 30)
        self.outcomes += 1

    @rule(url=st.sampled_from(URLS), result=st.sampled_from(["success", "failure"]), keys=st.integers(0, 5))
    def jwks_fetch(self, url: str, result: str, keys: int) -> None:
        for metrics in (self.eager, self.late):
            metrics.jwks_fetched(url, result, keys)

    @rule(ok=st.booleans(), at=st.floats(START, START + 1e6))
    def reload(self, ok: bool, at: float) -> None:
        for metrics in (self.eager, self.late):
            metrics.reloaded(ok, at)

    @rule(openmetrics=st.booleans(), gzipped=st.booleans())
    def scrape(self, openmetrics: bool, gzipped: bool) -> None:
        accept, encoding = (OPENMETRICS if openmetrics else "text/plain"), ("gzip" if gzipped else "")
        (late, late_headers), (eager, eager_headers) = (m.exposition(accept, encoding) for m in (self.late, self.eager))
        assert late_headers == eager_headers
        if gzipped:
            late, eager = gzip.decompress(late), gzip.decompress(eager)
        assert late == eager
        self.scraped = True

    @invariant()
    def built_by_a_scrape_only(self) -> None:
        assert self.late.process.built == self.scraped  # however many renewals: their durations are counts


@settings(max_examples=200, deadline=None)
@given(
    durations=st.lists(
        st.floats(0, 100, allow_nan=False) | st.sampled_from([0.0, *registry_module.DURATION_BUCKETS]), max_size=60
    )
)
def test_the_duration_histogram_is_prometheus_clients_histogram_byte_for_byte(durations: list[float]) -> None:
    """The renewal durations are counted in plain numbers (a renewal's Histogram.observe was five Python calls and
    two locks); rendered, they are what prometheus-client's own Histogram with the same buckets shows, in both
    formats, whatever the durations (on a bound, between, beyond the last)."""
    from prometheus_client import Histogram, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

    ours = Metrics(CollectorRegistry())
    reference = CollectorRegistry()
    histogram = Histogram(*registry_module.DURATION, buckets=registry_module.DURATION_BUCKETS, registry=reference)
    for duration in durations:
        ours.process.renewal_took(duration)
        histogram.observe(duration)
    for render in (generate_latest, openmetrics_latest):
        shown = render(ours.registry).decode()
        family = [line for line in shown.splitlines() if "refresh_duration" in line]
        expected = [line for line in render(reference).decode().splitlines() if line != "# EOF"]
        assert family == expected


LateRegistryMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestLateRegistry = LateRegistryMachine.TestCase

# the families of the README's Metrics paragraph that a daemon of one healthy file-sink profile shows (verification
# failures and the provider's rate-limit and quota signals appear only when those happen)
DOCUMENTED = (
    "edge_token_token_expiry_timestamp_seconds", "edge_token_token_issued_timestamp_seconds",
    "edge_token_token_lifetime_seconds", "edge_token_next_refresh_timestamp_seconds",
    "edge_token_last_success_timestamp_seconds", "edge_token_token_state", "edge_token_refresh_total",
    "edge_token_refresh_duration_seconds", "edge_token_token_requests_total", "edge_token_jwks_fetches_total",
    "edge_token_jwks_keys", "edge_token_sink_writes_total", "edge_token_sink_last_success_timestamp_seconds",
    "edge_token_sink_healthy", "edge_token_build_info", "edge_token_config_last_reload_successful",
)  # fmt: skip


def _imports_of(lines: list[str], package: str) -> int:
    """`python -X importtime` lines naming `package` or one of its modules."""
    return sum(
        1
        for line in lines
        if line.startswith("import time:") and line.rsplit("|", 1)[1].strip().split(".")[0] == package
    )


@pytest.mark.slow
async def test_a_daemon_imports_prometheus_client_at_its_first_scrape_which_shows_every_documented_family(
    tmp_path: Path, live_auth: LocalAuthServer, secret_file: Path, daemons: list[DaemonProcess]
) -> None:
    """A real daemon (one profile, listener on): ready with its token written without having imported
    prometheus-client; the first scrape imports it and shows every documented family with the values of what
    happened before it (one renewal: one duration observed, one JWKS fetch, one key)."""
    sink = tmp_path / "token.jwt"
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nlog_format = "json"\nlisten = "127.0.0.1:0"\n'
        + profile_toml("main", live_auth, secret_file, [{"path": str(sink)}])
    )
    daemon = await DaemonProcess(config, env={"PYTHONPROFILEIMPORTTIME": "1"}).start()
    daemons.append(daemon)
    address = (await daemon.wait_for("http.listening"))["address"]
    await daemon.wait_for("token.renewed")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{address}/readyz") as response:
            assert response.status == 200
        assert _imports_of(daemon.raw, "aiohttp") > 0  # the measurement sees the libraries it does import
        assert _imports_of(daemon.raw, "prometheus_client") == 0
        async with http.get(f"http://{address}/metrics") as response:
            assert response.status == 200
            body = await response.text()
    assert _imports_of(daemon.raw, "prometheus_client") > 0
    shown = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    assert sorted(set(DOCUMENTED) - shown) == []
    assert "edge_token_refresh_duration_seconds_count 1.0" in body
    assert f'edge_token_jwks_fetches_total{{result="success",url="{live_auth.jwks_url}"}} 1.0' in body
    assert f'edge_token_jwks_keys{{url="{live_auth.jwks_url}"}} 1.0' in body
    assert "edge_token_config_last_reload_successful 1.0" in body
    assert await daemon.stop() == 0


def test_a_renewals_duration_costs_no_python_call_once_the_registry_exists() -> None:
    """After the first scrape built the registry, each renewal's duration is a count and a sum: no Python call
    beyond `renewal_took` itself (prometheus-client's Histogram.observe made five, and took two locks)."""
    metrics = Metrics()
    metrics.exposition("text/plain", "")  # the first scrape: the registry exists from now on
    calls = python_calls(lambda: metrics.process.renewal_took(0.2))
    assert calls == ["ProcessFamilies.renewal_took"]
    assert (
        'edge_token_refresh_duration_seconds_bucket{le="0.25"} 1.0' in metrics.exposition("text/plain", "")[0].decode()
    )
