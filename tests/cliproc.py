"""The real `edge-token` command as a child process (shared by the CLI and error-table tests)."""

from __future__ import annotations

import asyncio
import os
import sys


async def edge_token(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, argv0: list[str] | None = None
) -> tuple[int, str, str]:
    """Run `python -m edge_token ARGS` as a child while this loop keeps serving any test server; killed (and
    reaped) if it outlives 60 s or the test fails while waiting. `argv0` replaces `[python]` (e.g. setpriv)."""
    process = await asyncio.create_subprocess_exec(
        *(argv0 or [sys.executable]), "-m", "edge_token", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
