"""Test helper: a fresh pool of file workers per Hypothesis example, and the counts its properties are stated in.

Each example gets workers under a thread name never used before (idle workers of earlier pools live on, and the
id() of a dead plan is reused), an Event that stands for a hung filesystem recovering (set at the end whatever
happened, so no thread stays blocked), and a check that surplus threads leave once it has.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from edge_token.sinks.filecalls import Workers

_POOLS = itertools.count()


def pool_threads(name: str) -> int:
    """Live threads of the pool called `name`."""
    return sum(1 for thread in threading.enumerate() if thread.name == name)


def run_with_pool(
    prefix: str, limit: int, exercise: Callable[[Workers, threading.Event, str], Coroutine[Any, Any, None]]
) -> None:
    """`exercise(workers, release, name)` on a new event loop with a new pool of `limit` workers; `release` is set
    afterwards in any case."""
    name = f"{prefix}-{next(_POOLS)}"
    workers = Workers(limit=limit, name=name)
    release = threading.Event()
    try:
        asyncio.run(exercise(workers, release, name))
    finally:
        release.set()


async def threads_leave(name: str, limit: int) -> None:
    """The pool is back to at most `limit` threads: those that leave do so at once, though a loaded machine may
    take seconds to run them."""
    for _ in range(200):
        if pool_threads(name) <= limit:
            break
        await asyncio.sleep(0.05)
    assert pool_threads(name) <= limit
