"""The /status body, rendered in O(changed profiles) per request.

At 10,000 profiles the whole-body way (every profile's dict built, the whole body walked by the scrubber,
`json.dumps(indent=2, sort_keys=True)`, which runs the pure-Python encoder) blocked the event loop for about half
a second per request. Now each profile's entry is a cached fragment of JSON text: rendered and scrubbed when its
status changes (a renewal, a failure, a sink error: `ProfileStatus` compares by value) or when the secret registry
does (a fragment scrubbed before a secret was registered could hold it), and reused otherwise. A request compares
each profile's status with the cached one and joins the fragments. The body is compact JSON with one profile per
line, so `grep` works on it as well as `jq`.

What a fragment holds never depends on anything but the status and the registry: the guarantee that no secret
or token appears in /status is the one `Scrubber.scrub` gives, applied to exactly the same values as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from edge_token.core.health import ProfileStatus
from edge_token.core.scrub import SECRETS


class StatusBody:
    """Renders /status; one instance per listener. `generation` tells when the secret registry changed (the
    process-wide one, which every `Redactor` uses unless given another)."""

    def __init__(self, scrub: Callable[[Any], Any], generation: Callable[[], object] | None = None) -> None:
        self._scrub = scrub
        self._generation = generation or (lambda: SECRETS.generation)
        self._under: object = None  # the registry generation the cached fragments were scrubbed under
        self._fragments: dict[str, tuple[ProfileStatus, str]] = {}  # profile -> (its status, its JSON line)
        self.rendered = 0  # profile entries rendered and scrubbed so far (the tests count them)

    def render(self, statuses: Iterable[ProfileStatus], alive: bool, daemon: dict[str, Any]) -> str:
        """The body: `{"alive", "daemon", "profiles": {name: entry}}`, keys sorted, one profile per line."""
        generation = self._generation()
        cached = self._fragments if generation is self._under else {}
        fragments: dict[str, tuple[ProfileStatus, str]] = {}
        for status in statuses:
            entry = cached.get(status.profile)
            if entry is None or entry[0] != status:
                entry = (status, self._fragment(status))
                self.rendered += 1
            fragments[status.profile] = entry
        self._fragments, self._under = fragments, generation  # removed profiles drop out
        head = json.dumps({"alive": alive, "daemon": self._scrub(daemon)}, sort_keys=True)
        lines = ",\n".join(line for _, (_, line) in sorted(fragments.items()))
        return head[:-1] + ', "profiles": {\n' + lines + "\n}}\n"

    def _fragment(self, status: ProfileStatus) -> str:
        name, entry = self._scrub(status.profile), self._scrub(status.to_json())
        return json.dumps(name) + ": " + json.dumps(entry, sort_keys=True)
