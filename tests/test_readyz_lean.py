"""/readyz stays cheap while many profiles are unready (a fill's probes, a kubelet's): each profile gives its own
entry without a status snapshot, and the answer is written by json's C encoder. Both are checked against what they
replace: the entry equals what `health.readiness` makes of the full status, in every state a renewer can be in.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FakeClock
from edge_token.config import load_config
from edge_token.core.errors import CredentialsRejected, SinkError, TransientError
from edge_token.core.health import NO_TOKEN_YET, readiness
from edge_token.core.settings import ProfileConfig
from edge_token.core.token import Token
from edge_token.observe.httpserver import _json
from edge_token.renewer import Renewer

SINKS = tuple(f"file:/run/edge-token/s{i}.jwt" for i in range(3))
MESSAGES = ("disk full", "", NO_TOKEN_YET, "not written yet")  # the last two: what the status itself says
_profile: list[ProfileConfig] = []


def profile() -> ProfileConfig:
    """One profile of a real config (read once: Hypothesis runs the test hundreds of times)."""
    if not _profile:
        directory = Path(tempfile.mkdtemp(prefix="edge-token-readyz-"))
        (directory / "secret").write_text("a-client-secret")
        (directory / "secret").chmod(0o600)
        (directory / "c.toml").write_text(
            f'[profiles.main]\nclient_id = "c"\nclient_secret_file = "{directory / "secret"}"\n'
            f'[[profiles.main.sinks]]\npath = "{directory / "t.jwt"}"\n'
        )
        _profile.append(load_config(directory / "c.toml", environ={}).profiles["main"])
    return _profile[0]


@st.composite
def renewers(draw: st.DrawFn) -> Renewer:
    """A renewer in any state: no token, or one FRESH, STALE or EXPIRED now; any sinks pending or failed (with
    any message); no error, a transient one, or credentials rejected."""
    clock = FakeClock()
    sinks: list[Any] = [SimpleNamespace(name=name) for name in SINKS[: draw(st.integers(1, len(SINKS)))]]
    nothing: Any = None  # no session, no JWKS cache, sinks that are only names: readiness uses none of them
    renewer = Renewer(profile(), nothing, nothing, clock, structlog.get_logger(), environ={}, sinks=[*sinks])
    if draw(st.booleans()):
        lifetime = draw(st.sampled_from([60.0, 3600.0]))
        received = clock.wall - lifetime * draw(st.floats(0.0, 1.5))
        renewer.current = Token("h.p.s", {"exp": received + lifetime}, received, lifetime)
    names = [sink.name for sink in sinks]
    renewer.pending_sinks = set(draw(st.lists(st.sampled_from(names), unique=True)))
    failed = draw(st.lists(st.sampled_from(names), unique=True))
    renewer.sink_errors = {name: SinkError(draw(st.sampled_from(MESSAGES))) for name in failed}
    renewer.last_error = draw(
        st.sampled_from([None, TransientError("timed out"), CredentialsRejected("refused", "invalid_client")])
    )
    return renewer


@settings(max_examples=400, deadline=None)
@given(renewers())
def test_a_profiles_entry_is_what_readiness_makes_of_its_status(renewer: Renewer) -> None:
    ready, details = readiness([renewer.status(None)])
    assert renewer.unready() == (None if ready else details["not_ready"]["main"])


def test_a_long_readyz_answer_is_written_by_the_c_encoder() -> None:
    """1,000 unready profiles: no Python frame of json's encoder runs (its indenting encoder did, for every entry),
    and the body is the same JSON."""
    body: dict[str, Any] = {
        "ready": False,
        "not_ready": {f"p{i}": {"state": "expired", "sinks_failing": [f"file:/run/t/p{i}.jwt"]} for i in range(1000)},
    }
    frames: list[str] = []

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.endswith(("json/encoder.py", "json\\encoder.py")):
            frames.append(frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        response = _json(body, 503)
    finally:
        sys.setprofile(None)
    assert not [name for name in frames if name.startswith("_iterencode")], frames[:5]
    assert response.status == 503 and json.loads(response.text or "") == body
