"""Every Prometheus metric, defined once, fed from renewal outcomes.

Process-wide metrics (build info, JWKS fetches, the renewal-duration histogram, reloads) live on a
prometheus-client registry built at the first scrape (registry.py says why and how). Per-profile series are kept
in a plain table and rendered here: prometheus-client spends ~25 us per sample, which made a 1,000-profile scrape
take over half a second. Rendering is incremental, so a scrape costs what serving a static body of its size costs:
- a profile's sample lines (bytes, per family) are rendered at the first scrape after that profile's series
  changed, once however many times they changed (as /status renders its changed entries: statusbody.py). Updates
  only mark the profile: a fill or a restart of 1,000 profiles renders nothing before it is ready (~35 ms of
  rendering, ~30 us a profile, were 3 % of a restart), and a profile that renews twice between scrapes is
  rendered once. The price is one longer first scrape after a fill (~0.3 s at 10,000 profiles), the same work the
  outcomes would otherwise have done one by one;
- each family's samples are the concatenation of those cached lines, and the whole per-profile section (per
  format) is kept until any profile changes: a scrape with no renewal since the last one sends cached bytes;
- with gzip, the section is compressed once per change and the scrape compresses only the small rest (the
  registry's families and the counters read at every scrape), continuing from a copy of the compressor's state.
Every update goes through a method here that marks the profile, so a scrape right after an outcome shows it
(counters are exact); the registry's families and the external counters are rendered at every scrape.

Labels are bounded: profile and sink come from the config, `result`/`reason`/`state` from fixed sets, `url` is a
configured JWKS URL. No label or value can carry a token or a secret.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_token.core.errors import VerificationError
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.observe import series as profile_series
from edge_token.observe.negotiation import prefers_openmetrics
from edge_token.observe.registry import ProcessFamilies
from edge_token.observe.series import FAMILIES, HEADERS, ProfileSeries, SinkSeries, escape, number, rate_limit

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Metrics:
    """The daemon's metrics. One instance per registry (tests use a fresh registry each; the daemon lets it build
    its own at the first scrape)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """On `registry` (built now), or on a registry of its own built at the first scrape (registry.py)."""
        self.process = ProcessFamilies(registry)
        self.profiles: dict[str, ProfileSeries] = {}
        self._external: list[tuple[str, str, Callable[[], dict[str, int]]]] = []
        # the render cache (see the module docstring)
        self._samples: dict[str, dict[str, bytes]] = {name: {} for name, _kind, _doc in FAMILIES}  # family->profile
        self._stale: dict[str, None] = {}  # profiles changed since their lines were rendered (in order of change)
        self.rendered = 0  # profile renders so far (the tests count them)
        self._sections: dict[bool, bytes] = {}  # openmetrics? -> every per-profile family, headers included
        self._compressed: dict[bool, tuple[bytes, bytes, zlib._Compress]] = {}  # section, its gzip, compressor

    @property
    def registry(self) -> CollectorRegistry:
        """The registry of the process-wide families (built now if it was not yet)."""
        return self.process.registry

    def _changed(self, series: ProfileSeries) -> None:
        """Every update of a profile's series ends here: its lines are due for rendering at the next scrape, the
        assembled answer is dropped."""
        self._stale[series.name] = None
        self._sections.clear()
        self._compressed.clear()

    def _render_stale(self) -> None:
        """Render the lines of every profile changed since its last render (at a scrape: see the module docstring)."""
        stale, self._stale = self._stale, {}
        for name in stale:
            series = self.profiles.get(name)
            if series is None:
                continue  # forgotten since: its rows went with it
            lines = profile_series.profile_lines(series)
            self.rendered += 1
            for family, rows in self._samples.items():
                line = lines.get(family)
                if line:
                    rows[name] = line
                else:
                    rows.pop(name, None)

    def _profile(self, name: str) -> ProfileSeries:
        series = self.profiles.get(name)
        if series is None:
            series = self.profiles[name] = ProfileSeries(name, f'profile="{escape(name)}"')
        return series

    def observe(self, outcome: RenewalOutcome, state: str, next_attempt: float | None) -> None:
        """Record one renewal outcome (called by the daemon after every cycle)."""
        series = self._profile(outcome.profile)
        label = outcome.label
        series.refresh[label] = series.refresh.get(label, 0.0) + 1
        self.process.renewal_took(outcome.duration)
        if outcome.requested:
            series.requests += 1
        if isinstance(outcome.error, VerificationError):
            reason = outcome.error.reason
            series.verification_failures[reason] = series.verification_failures.get(reason, 0.0) + 1
        token, gauges = outcome.token, series.gauges
        if token is not None:
            gauges.update(expiry=token.exp, issued=token.received_at, lifetime=token.lifetime)
        finished = outcome.started_at + outcome.duration
        if outcome.error is None and outcome.result in (Result.NEW_TOKEN, Result.ADOPTED, Result.RECEIVED):
            gauges["last_success"] = finished
        if next_attempt is not None:
            gauges["next_refresh"] = next_attempt
        series.state = state
        if outcome.rate_limit is not None:
            rate_limit(series, outcome.rate_limit)
        for name in outcome.sinks_written:
            sink = self._sink(series, name)
            sink.writes["success"] = sink.writes.get("success", 0.0) + 1
            sink.healthy, sink.last_success = 1.0, finished
        for name in outcome.sink_errors:
            sink = self._sink(series, name)
            sink.writes["failure"] = sink.writes.get("failure", 0.0) + 1
            sink.healthy = 0.0
        self._changed(series)

    @staticmethod
    def _sink(series: ProfileSeries, name: str) -> SinkSeries:
        sink = series.sinks.get(name)
        if sink is None:
            sink = series.sinks[name] = SinkSeries(f'{series.labels},sink="{escape(name)}"')
        return sink

    def fleet_role(self, profile: str, role: str) -> None:
        """Fleet mode: this daemon's role for the profile now (a change to or from leader is counted)."""
        series = self._profile(profile)
        if series.fleet_role is not None and "leader" in (series.fleet_role, role) and role != series.fleet_role:
            series.leadership_changes += 1
        series.fleet_role = role
        self._changed(series)

    def fleet_event(self, profile: str, event: str) -> None:
        """Fleet mode: a token published to, received from or rejected from etcd."""
        series = self._profile(profile)
        series.fleet_events[event] = series.fleet_events.get(event, 0.0) + 1
        self._changed(series)

    def jwks_fetched(self, url: str, result: str, keys: int) -> None:
        """One JWKS fetch and the number of keys it left loaded."""
        self.process.jwks_fetched(url, result, keys)

    def counters(self, name: str, doc: str, read: Callable[[], dict[str, int]]) -> None:
        """A counter family kept by another part (notifier, HTTP limiter, etcd client): read at every scrape.
        `read` returns {value of the `result` label: count}; the key "" means a single sample without labels."""
        self._external.append((name, doc, read))

    def reloaded(self, ok: bool, at: float) -> None:
        """One SIGHUP reload: applied or refused, and when."""
        self.process.reloaded(ok, at)

    def keep_sinks(self, profile: str, names: set[str]) -> None:
        """Drop the series of a profile's sinks a reload removed (a failing one would keep its alert firing)."""
        series = self.profiles.get(profile)
        if series is not None and set(series.sinks) - names:
            series.sinks = {name: sink for name, sink in series.sinks.items() if name in names}
            self._changed(series)

    def forget(self, profile: str) -> None:
        """Drop a removed profile's series so dashboards do not show ghosts."""
        if self.profiles.pop(profile, None) is not None:
            self._stale.pop(profile, None)
            for rows in self._samples.values():
                rows.pop(profile, None)
            self._sections.clear()
            self._compressed.clear()

    # ---- exposition ------------------------------------------------------------------------------------
    def render_profiles(self, openmetrics: bool) -> bytes:
        """The per-profile families in text 0.0.4 or OpenMetrics format, from the cache (module docstring)."""
        section = self._sections.get(openmetrics)
        if section is None:
            self._render_stale()
            headers = HEADERS[openmetrics]
            parts: list[bytes] = []
            for name, _kind, _doc in FAMILIES:
                rows = self._samples[name]
                if rows:
                    parts += (headers[name], b"".join(rows.values()))
            section = self._sections[openmetrics] = b"".join(parts)
        return section

    def _rest(self, openmetrics: bool) -> bytes:
        """What is rendered at every scrape: the registry's families and the counters kept by other parts."""
        out = [self.process.render(openmetrics)]
        for name, doc, read in self._external:
            shown = name.removesuffix("_total") if openmetrics else name
            rows = [(f'{{result="{key}"}}' if key else "", float(value)) for key, value in read().items()]
            lines = "".join(f"{name}{labels} {number(value)}\n" for labels, value in rows)
            out.append(f"# HELP {shown} {doc}\n# TYPE {shown} counter\n{lines}".encode())
        if openmetrics:
            out.append(b"# EOF\n")
        return b"".join(out)

    def _gzip(self, openmetrics: bool, section: bytes, rest: bytes) -> list[bytes]:
        """gzip of section + rest, as two chunks; the section's compressed bytes and compressor state are kept while
        it is unchanged, so a scrape compresses only `rest` (one gzip member: every client can read it)."""
        cached = self._compressed.get(openmetrics)  # cleared with the section by every change
        if cached is None or cached[0] is not section:
            compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip header and trailer
            # a sync flush ends the section's output on a byte boundary, so the rest can follow from a copy
            head = compressor.compress(section) + compressor.flush(zlib.Z_SYNC_FLUSH)
            cached = self._compressed[openmetrics] = (section, head, compressor)
        compressor = cached[2].copy()
        return [cached[1], compressor.compress(rest) + compressor.flush()]

    def exposition_parts(self, accept: str, accept_encoding: str) -> tuple[list[bytes], dict[str, str]]:
        """The body of GET /metrics as chunks to send one after the other, and its headers: OpenMetrics when Accept
        prefers it (negotiation.py), else text; gzip when accepted. The big first chunk is the cached object
        itself: a fresh 1 MiB copy per scrape cost more than everything else in a scrape (page faults and the
        copy)."""
        openmetrics = prefers_openmetrics(accept)
        headers = {"Content-Type": self.process.content_type(openmetrics)}
        section, rest = self.render_profiles(openmetrics), self._rest(openmetrics)
        if accepts(accept_encoding, "gzip"):
            headers["Content-Encoding"] = "gzip"
            return self._gzip(openmetrics, section, rest), headers
        return [section, rest], headers

    def exposition(self, accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
        """(body, headers) for GET /metrics, in one piece (see `exposition_parts`)."""
        parts, headers = self.exposition_parts(accept, accept_encoding)
        return b"".join(parts), headers


def accepts(header: str, value: str) -> bool:
    """True if an Accept / Accept-Encoding header lists `value` with a quality above zero (`gzip;q=0` refuses it)."""
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if name.lower() != value:
            continue
        for param in params:
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(number) > 0
                except ValueError:
                    return False
        return True
    return False
