"""Process hardening for the commands that hold secrets in memory (run, once, exec, check --online).

`PR_SET_DUMPABLE 0` makes the kernel treat this process like a setuid program: no core dumps (which would hold
the client secret and tokens), and other processes of the same uid can neither ptrace it nor read its
/proc/PID/environ, /proc/PID/mem or /proc/PID/cmdline... (the daemon's own hooks run as the same user). Root (or
CAP_SYS_PTRACE) still can; nothing in user space can stop that. Children start dumpable again after execve,
which is why they must not inherit secrets in their environment either.
"""

from __future__ import annotations

import ctypes
import sys

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(option, value, 0, 0, 0)
    return result


def make_non_dumpable() -> bool:
    """Mark this process non-dumpable; False where the kernel has no prctl (not Linux) or refuses."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _prctl(PR_SET_DUMPABLE, 0) == 0
    except (OSError, AttributeError):
        return False


def is_dumpable() -> bool:
    """The current PR_GET_DUMPABLE state (True off Linux: nothing protects the process there)."""
    if not sys.platform.startswith("linux"):
        return True
    return _prctl(PR_GET_DUMPABLE) != 0
