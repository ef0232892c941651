"""The one "read, never regress, conditional write" loop of the secret stores (Kubernetes Secret, Vault KV v2).

Several daemons (or an operator) may write the same secret. Each attempt reads what the store holds, leaves it
alone if it is our token already or one that expires later (never regress a newer token: a JWT whose own `exp`
is the recorded expiry, never garbage beside a forged one), and otherwise writes
conditionally on the version it read (Kubernetes `resourceVersion`, Vault check-and-set): if someone wrote in
between, the store refuses and we decide again on what is there now. Bounded: MAX_ATTEMPTS reads and writes, then
a SinkError (retried at the next cycle), never a loop against a store that keeps changing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from edge_token.core.errors import SinkError
from edge_token.core.token import Token, claimed_exp

MAX_ATTEMPTS = 4
Verifier = Callable[[str], Awaitable[bool]]  # does this JWT pass the profile's full verification?


@dataclass(frozen=True)
class Held:
    """What a store holds: the JWT (None when absent), its expiry in UNIX seconds (0 when unknown or garbage, so
    garbage can never block an update) and the store's own version of it, passed back to `write_if_unchanged`."""

    jwt: str | None
    expires: float
    version: object


class ConditionalStore(Protocol):
    """The per-store half of the loop: one read, one conditional write."""

    name: str
    #: what keeps changing, for the message after MAX_ATTEMPTS conflicts ("the Secret", "the secret")
    noun: str

    async def held(self) -> Held:
        """What the store holds now; SinkError if it cannot be read."""
        ...

    async def write_if_unchanged(self, held: Held, token: Token) -> bool:
        """Write `token` only if the store still has `held.version`: True if written, False if someone wrote in
        between (the loop re-reads); SinkError for any other refusal."""
        ...


async def write_never_regress(store: ConditionalStore, token: Token, verify: Verifier | None = None) -> bool:
    """Put `token` in the store unless it holds this token or a newer one; True if written. With `verify`, a newer
    value counts only if it passes the profile's verification (signature, issuer, audience, client): a forged
    token claiming a far expiry is replaced, never kept as "newer" while the sink reports healthy."""
    for _ in range(MAX_ATTEMPTS):
        held = await store.held()
        if held.jwt == token.jwt:
            return False  # ours already
        newer = held.jwt is not None and held.expires > token.exp and _claims_its_expiry(held)
        if newer and held.jwt is not None and (verify is None or await verify(held.jwt)):
            return False  # a newer verified token from another writer: never regress it
        if await store.write_if_unchanged(held, token):
            return True
    raise SinkError(
        f"{store.name}: {store.noun} kept changing under us ({MAX_ATTEMPTS} conflicting writes); will retry"
    )


def _claims_its_expiry(held: Held) -> bool:
    """The expiry recorded beside the value is the one the value itself claims: garbage, or any value with a forged
    far-future expiry beside it, is not "a newer token" and is replaced (it froze the store, reported healthy)."""
    exp = claimed_exp(held.jwt) if held.jwt is not None else None
    return exp is not None and int(exp) == int(held.expires)
