"""Provider awareness: rate-limit and quota headers (strict parsing, metrics, 429 waits), claim pinning, and
mismatch diagnostics that say which key to change."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from conftest import CLIENT_ID, FakeClock, run_child
from edge_token.core.errors import TransientError, VerificationError
from edge_token.core.ratelimit import MAX_WAIT, Quota, RateLimit, parse, parse_quota
from edge_token.observe.metrics import Metrics
from edge_token.renewer import Renewer
from faultyauth import Fault, FaultyAuthServer

TENANT = "https://auth.sitecorecloud.io/claims/tenant_id"
NOW = 1_800_000_000.0


# ---- strict parsing --------------------------------------------------------------------------------------------
def test_auth0_headers_parse_exactly() -> None:
    """The documented Auth0 shapes give exactly the documented figures."""
    headers = CIMultiDict(
        {
            "X-RateLimit-Limit": "30",
            "x-ratelimit-remaining": "29",
            "x-ratelimit-reset": "1800000060",
            "Auth0-Client-Quota-Limit": "b=per_hour;q=100;r=90;t=3600,b=per_day;q=1000;r=950;t=86400",
        }
    )
    assert parse(headers, NOW) == RateLimit(
        30, 29, 1800000060.0, (Quota("per_hour", 100, 90, 3600), Quota("per_day", 1000, 950, 86400))
    )
    assert parse(CIMultiDict(), NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        "b=per_hour;q=100;r=90",  # a key missing
        "b=per_hour;q=100;r=90;t=3600;t=1",  # a key twice
        "b=per_hour;q=100;r=190;t=3600",  # more remaining than the quota
        "b=per_hour;q=\u0661\u0660\u0660;r=90;t=3600",  # Arabic-Indic digits, which int() would take
        "b=per_hour;q=-1;r=0;t=3600",
        "b=Per Hour;q=100;r=90;t=3600",  # not a label-safe bucket name
        "b=per_hour;q=100;r=90;t=3600,b=per_hour;q=1;r=1;t=1",  # a bucket twice
        "b=h;q=1;r=1;t=1," * 9 + "b=z;q=1;r=1;t=1",  # too many buckets
        "b=per_hour;q=" + "9" * 13 + ";r=90;t=3600",  # too many digits
        "b=per_hour;q=100;r=90;t=3600;x=1",  # an unknown key
    ],
)
def test_malformed_quota_headers_are_ignored_whole(value: str) -> None:
    """Any malformed part voids the whole header: it is never half-read."""
    assert parse_quota(value) is None


@given(st.dictionaries(st.sampled_from(["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                                        "Auth0-Client-Quota-Limit"]), st.text(max_size=600)),
       st.floats(0, 4e9))  # fmt: skip
def test_parsing_never_raises_and_every_figure_is_bounded(headers: dict[str, str], now: float) -> None:
    """Whatever the headers hold: no exception, integers of at most 12 digits, at most 8 label-safe buckets, and a
    429 wait within [0, MAX_WAIT]."""
    limits = parse(CIMultiDict(headers), now)
    if limits is None:
        return
    for number in (limits.limit, limits.remaining):
        assert number is None or 0 <= number < 10**12
    assert len(limits.quotas) <= 8
    assert all(q.bucket.isascii() and q.bucket.replace("_", "").isalnum() for q in limits.quotas)
    wait = limits.wait_seconds(now)
    assert wait is None or 0.0 <= wait <= MAX_WAIT


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1,
                max_size=8))  # fmt: skip
def test_well_formed_quota_headers_round_trip(buckets: list[tuple[int, int, int]]) -> None:
    """Every well-formed header (any order of keys, any spacing) parses back to its buckets."""
    quotas = [Quota(f"b{i}", q, min(q, r), t) for i, (q, r, t) in enumerate(buckets)]
    header = ", ".join(f"r={x.remaining}; t={x.reset_seconds};b={x.bucket}; q={x.quota}" for x in quotas)
    assert parse_quota(header) == tuple(quotas)


# ---- behaviour: 429 waits for the reset, metrics show the figures -----------------------------------------------
async def test_429_without_retry_after_waits_until_the_reset(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], clock: FakeClock
) -> None:
    """The local server's window allows one request per 600 s; the second gets 429 with x-ratelimit-reset and no
    Retry-After: the next attempt is exactly the reset (not the 1 s first backoff), and nothing is sent before it."""
    auth.rate_limit, auth.rate_window = 1, 600.0
    renewer = renewer_for()
    first = await renewer.renew()
    assert first.error is None and first.rate_limit is not None and first.rate_limit.remaining == 0
    renewer.retry_at = None
    renewer.current = None  # force a second request now
    failed = await renewer.renew()
    assert isinstance(failed.error, TransientError) and "429" in str(failed.error)
    reset = first.rate_limit.reset_at
    assert reset == clock.time() + 600 - 0  # the window opened at the first request
    assert renewer.next_attempt_at() == reset
    assert auth.token_requests == 2


async def test_exhausted_quota_waits_for_its_bucket_capped_at_an_hour(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], clock: FakeClock
) -> None:
    """An exhausted Auth0 quota bucket (429, no Retry-After): wait until that bucket resets, at most an hour."""
    auth.quotas = {"per_hour": (1, 3600), "per_day": (1000, 86400)}
    renewer = renewer_for()
    assert (await renewer.renew()).error is None
    renewer.current = None
    clock.advance(100)
    failed = await renewer.renew()
    assert isinstance(failed.error, TransientError) and failed.rate_limit is not None
    assert renewer.next_attempt_at() == clock.time() + 3500  # per_hour resets 3600 s after it opened
    auth.quotas = {"per_day": (1, 86400)}
    auth._quota_used.clear()
    renewer.retry_at = None
    assert (await renewer.renew()).error is None
    renewer.current = None
    failed = await renewer.renew()
    assert renewer.next_attempt_at() == clock.time() + MAX_WAIT


async def test_metrics_show_rate_limit_and_quota(auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]) -> None:
    """The figures of the last answer appear as the three documented gauges, with a bounded bucket label."""
    auth.rate_limit = 30
    auth.quotas = {"per_hour": (100, 3600), "per_day": (1000, 86400)}
    outcome = await renewer_for().renew()
    metrics = Metrics(CollectorRegistry())
    metrics.observe(outcome, "fresh", None)
    text = metrics.exposition("", "")[0].decode()
    assert outcome.rate_limit is not None
    assert 'edge_token_provider_ratelimit_remaining{profile="main"} 29.0' in text
    assert (
        f'edge_token_provider_ratelimit_reset_timestamp_seconds{{profile="main"}} {outcome.rate_limit.reset_at!r}'
        in text
    )
    assert 'edge_token_provider_quota_remaining{profile="main",bucket="per_hour"} 99.0' in text
    assert 'edge_token_provider_quota_remaining{profile="main",bucket="per_day"} 999.0' in text
    if shutil.which("promtool"):  # the naming rules Prometheus lints by (README "Observability")
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


# ---- claim pinning and mismatch diagnostics ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("claim", "ok"),
    [("tenant-a", True), (["tenant-b", "tenant-a"], True), ("tenant-b", False), (["tenant-b"], False),
     (None, False), (7, False), ("tenant-a ", False)],
)  # fmt: skip
async def test_required_claims_pin_the_tenant(
    claim: Any, ok: bool, auth: FaultyAuthServer, renewer_for: Callable[..., Renewer], tmp_path: Path
) -> None:
    """Exact string match or list-contains; anything else is refused with reason required_claim, nothing written."""
    if claim is not None:
        auth.extra_claims[TENANT] = claim
    outcome = await renewer_for(required_claims={TENANT: "tenant-a"}).renew()
    if ok:
        assert outcome.error is None
        return
    error = outcome.error
    assert isinstance(error, VerificationError) and error.reason == "required_claim", error
    assert TENANT in str(error) and "'tenant-a'" in str(error) and "required_claims" in str(error)
    assert not (tmp_path / "token.jwt").exists()


async def test_issuer_and_audience_mismatch_say_what_to_change(
    auth: FaultyAuthServer, renewer_for: Callable[..., Renewer]
) -> None:
    """The message names the value received, the configured one, and the key to change."""
    wrong_issuer = await renewer_for(issuer="https://auth.sitecorecloud.io/").renew()
    message = str(wrong_issuer.error)
    assert repr(auth.issuer) in message and "'https://auth.sitecorecloud.io/'" in message
    assert "set issuer = " in message
    old_api = "https://old-api.example"
    auth.token_faults.append(Fault(status=200, access_token=auth.mint(auth.claims_for(CLIENT_ID, old_api))))
    wrong_audience = await renewer_for().renew()
    message = str(wrong_audience.error)
    assert repr(old_api) in message and "'https://api.sitecorecloud.io'" in message and "set audience" in message


async def test_inspect_verify_shows_a_pinned_claim_mismatch(
    make_config: Callable[..., Any], auth: FaultyAuthServer, tmp_path: Path
) -> None:
    """`inspect --verify` applies required_claims like the daemon and says which claim failed (exit 65)."""
    auth.now = time.time
    config = make_config(required_claims={TENANT: "tenant-a"})
    token_file = tmp_path / "t.jwt"
    token_file.write_text(auth.mint({**auth.claims_for(CLIENT_ID, "https://api.sitecorecloud.io"), TENANT: "b"}))
    code, _, stderr = await run_child(
        sys.executable, "-m", "edge_token", "inspect", "--verify", "-c", str(config.path), str(token_file)
    )
    assert code == 65, stderr
    assert b"required claim" in stderr and TENANT.encode() in stderr


def test_sitecore_example_prefills_tenant_pinning() -> None:
    """config/sitecore.example.toml shows required_claims for the tenant, commented out."""
    text = (Path(__file__).parent.parent / "config" / "sitecore.example.toml").read_text()
    assert f'# required_claims = {{ "{TENANT}" = ' in text
    assert json.dumps(TENANT) in text
