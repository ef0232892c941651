"""PURE health decisions: liveness from the tick, readiness from every profile and sink, the state name."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_token.core.errors import CredentialsRejected, TransientError
from edge_token.core.health import (
    LISTED,
    NO_TOKEN_YET,
    ProfileStatus,
    alive,
    readiness,
    state_name,
    summary,
    waiting,
)
from edge_token.core.policy import TokenState


def status(name: str, state: str = "fresh", sinks: dict[str, str | None] | None = None) -> ProfileStatus:
    return ProfileStatus(name, state, 2e9, 1e9, 1.5e9, None, sinks if sinks is not None else {"file:/a": None})


@settings(max_examples=60, deadline=None)
@given(
    names=st.sets(st.text("abz.-_09", min_size=1, max_size=4), max_size=2 * LISTED + 5),
    ready=st.sets(st.text("abz.-_09", min_size=1, max_size=4)),
)
def test_readiness_names_the_first_unready_profiles_by_name_and_counts_the_rest(
    names: set[str], ready: set[str]
) -> None:
    """Whatever the profiles: ready exactly when none is unready; at most LISTED named, the first by name, and
    `unlisted` (present only when some are left out) counts the rest; `waiting` says the same to a person."""
    unready = sorted(names - ready)
    ok, details = readiness([status(name) if name in ready else status(name, "expired") for name in sorted(names)])
    assert ok == (not unready) and details["ready"] == ok
    assert sorted(details["not_ready"]) == unready[:LISTED]
    assert details.get("unlisted") == (len(unready) - LISTED if len(unready) > LISTED else None)
    more = f" and {len(unready) - LISTED} more" if len(unready) > LISTED else ""
    count = f"{len(unready)} profile{'' if len(unready) == 1 else 's'} still without a verified token: "
    assert waiting(details) == count + ", ".join(unready[:LISTED]) + more


def test_alive_needs_a_running_scheduler_and_a_recent_tick() -> None:
    """The loop is alive while it ticks; a stalled loop or stopped scheduler is not."""
    assert alive(last_tick=100.0, now=114.0, tick_seconds=3.0, scheduler_running=True)
    assert not alive(last_tick=100.0, now=115.0, tick_seconds=3.0, scheduler_running=True)
    assert not alive(last_tick=100.0, now=100.0, tick_seconds=3.0, scheduler_running=False)


def test_readiness_requires_every_profile_and_every_sink() -> None:
    """Not ready if any profile is expired or any sink lacks the token; the details name them."""
    assert readiness([status("a"), status("b", "stale")])[0]
    ready, details = readiness([status("a"), status("b", "expired"), status("c", sinks={"file:/x": "disk full"})])
    assert not ready
    assert details["not_ready"] == {
        "b": {"state": "expired", "sinks_failing": []},
        "c": {"state": "fresh", "sinks_failing": ["file:/x"]},
    }


def test_readiness_names_no_sink_of_a_profile_that_has_no_token_yet() -> None:
    """A profile without a token is not ready and says so by its state; its sinks have not failed (at start the
    first probe named, and scrubbed, every sink path of every profile); a sink whose write failed is named."""
    ready, details = readiness(
        [
            status("a", "expired", sinks={"file:/a": NO_TOKEN_YET, "file:/b": NO_TOKEN_YET}),
            status("b", "expired", sinks={"file:/c": "cannot write file:/c: disk full", "file:/d": NO_TOKEN_YET}),
        ]
    )
    assert not ready
    assert details["not_ready"] == {
        "a": {"state": "expired", "sinks_failing": []},
        "b": {"state": "expired", "sinks_failing": ["file:/c"]},
    }


def test_readiness_shows_fleet_roles() -> None:
    """In fleet mode /readyz names each profile's role, ready or not."""
    from edge_token.core.record import replace

    ready, details = readiness(
        [replace(status("a"), fleet_role="leader"), replace(status("b"), fleet_role="standalone")]
    )
    assert ready and details["fleet_roles"] == {"a": "leader", "b": "standalone"}
    assert "fleet_roles" not in readiness([status("a")])[1]


def test_rejected_credentials_are_named_as_such() -> None:
    """While the provider refuses us, the state says so; other errors keep the token's own state."""
    assert state_name(TokenState.STALE, CredentialsRejected("no")) == "credentials_rejected"
    assert state_name(TokenState.STALE, TransientError("down")) == "stale"
    assert state_name(TokenState.FRESH, None) == "fresh"


def test_summary_line() -> None:
    """The STATUS= line counts fresh profiles, names unready ones and shows the next renewal in UTC."""
    line = summary([status("a"), status("b", "expired")], next_renewal=1_800_000_000.0)
    assert line == "1/2 profiles fresh, not ready: b, next renewal 08:00Z"
