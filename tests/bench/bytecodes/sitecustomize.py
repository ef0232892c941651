"""Counts the Python bytecodes a process runs, in every thread, for the benchmark's `bytecodes` section.

Active only when EDGE_TOKEN_BENCH_BYTECODES is set (to a path prefix); this directory is put on PYTHONPATH of the
daemon and the floor it counts, nowhere else. A count is noise-free where a time is not: the machine's speed
drifts by tens of percent within minutes, the bytecodes a renewal runs do not. Each time the file
`PREFIX.PID.goN` appears, `PREFIX.PID.outN` gets "bytecodes writes": the bytecodes run so far and the calls so far
of functions named `write_atomic` (one per token written, in the daemon's file sink and in the floor alike), so
bytecodes per renewal is a difference of two snapshots over the writes between them.
"""

import os
from typing import Any

if os.environ.get("EDGE_TOKEN_BENCH_BYTECODES"):
    import _thread
    import itertools
    import sys
    import threading
    import time

    _PREFIX = f"{os.environ['EDGE_TOKEN_BENCH_BYTECODES']}.{os.getpid()}"
    _ops, _writes = itertools.count(), itertools.count()  # next() on these is one C call: atomic in any thread

    def _opcode(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            next(_ops)
        return _opcode

    def _enter(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if frame.f_code.co_name == "write_atomic":
            next(_writes)
        return _opcode

    def _answer() -> None:  # a thread of `_thread`'s, which `threading.settrace` does not reach: not counted itself
        for index in itertools.count():
            go = f"{_PREFIX}.go{index}"
            while not os.path.exists(go):
                time.sleep(0.05)
            with open(f"{_PREFIX}.tmp", "w") as out:
                out.write(f"{next(_ops)} {next(_writes)}")
            os.replace(f"{_PREFIX}.tmp", f"{_PREFIX}.out{index}")

    _thread.start_new_thread(_answer, ())
    sys.settrace(_enter)
    threading.settrace(_enter)
