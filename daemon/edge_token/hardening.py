"""Process hardening for the commands that hold secrets in memory (run, once, exec, check --online).

`PR_SET_DUMPABLE 0` makes the kernel treat this process like a setuid program: no core dumps (which would hold
the client secret and tokens), and other processes of the same uid can neither ptrace it nor read its
/proc/PID/environ, /proc/PID/mem or /proc/PID/cmdline... (the daemon's own hooks run as the same user). Root (or
CAP_SYS_PTRACE) still can; nothing in user space can stop that. Children start dumpable again after execve,
which is why they must not inherit secrets in their environment either.
"""

from __future__ import annotations

import sys

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl(option: int, value: int = 0) -> int:
    """prctl(2), looked up in the process's own libc (musl or glibc alike) and called through `_ctypes`, the C half
    of ctypes: `import ctypes` would define some sixty classes this one call does not need (~1.5 ms of a cold
    `once`, issue 15). The call is the one `ctypes.CDLL(None).prctl(...)` makes: int arguments, int result.
    An interpreter whose `_ctypes` lacks these functions gets there through ctypes itself."""
    try:
        from _ctypes import call_function, dlopen, dlsym
    except ImportError:
        import ctypes

        result: int = ctypes.CDLL(None).prctl(option, value, 0, 0, 0)
        return result
    # dlopen(NULL): the main program and the libraries it loaded, libc among them (typeshed wants a path)
    address = dlsym(dlopen(None), "prctl")  # type: ignore[arg-type]
    answer: int = call_function(address, (option, value, 0, 0, 0))
    return answer


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
