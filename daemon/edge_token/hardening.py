"""Process hardening for the commands that hold secrets in memory (run, once, exec, check --online).

`PR_SET_DUMPABLE 0` makes the kernel treat this process like a setuid program: no core dumps (which would hold
the client secret and tokens), and other processes of the same uid can neither ptrace it nor read its
/proc/PID/environ, /proc/PID/mem or /proc/PID/cmdline... (the daemon's own hooks run as the same user). Root (or
CAP_SYS_PTRACE) still can; nothing in user space can stop that. Children start dumpable again after execve,
which is why they must not inherit secrets in their environment either.

A seccomp or LSM policy (a container runtime's profile, a unit's `SystemCallFilter=`) can refuse the call. The
process then works as before but stays readable by its own uid, so the failure is never silent: the commands log
it (`hardening.dumpable`) and `check` fails on it (README "Security" says why it is not a refusal to start).
"""

from __future__ import annotations

import errno
import os
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


def _prctl_errno(option: int, value: int) -> int:
    """The call again through ctypes, which saves errno right after it (`_ctypes.call_function` does not): 0 if it
    succeeds now, else its errno. Only on the failure path, so `once` still never imports ctypes."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0:
        return 0
    return ctypes.get_errno()


def make_non_dumpable() -> str | None:
    """Mark this process non-dumpable. None when done; else why not, e.g. `prctl(PR_SET_DUMPABLE) failed: EPERM
    (Operation not permitted)` (a syscall filter refused it), for `dumpable_warning`."""
    if not sys.platform.startswith("linux"):
        return f"prctl(PR_SET_DUMPABLE) does not exist on {sys.platform}"
    try:
        if _prctl(PR_SET_DUMPABLE, 0) == 0:
            return None
        code = _prctl_errno(PR_SET_DUMPABLE, 0)
    except (OSError, AttributeError) as exc:  # no prctl symbol in this process's libc
        return f"prctl(PR_SET_DUMPABLE) cannot be called here ({type(exc).__name__})"
    if code == 0:
        return None
    return f"prctl(PR_SET_DUMPABLE) failed: {errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def dumpable_warning(failure: str) -> str:
    """What `make_non_dumpable`'s failure means and what to do, for the log line and `check`."""
    return (
        f"the process stays dumpable: {failure}; other processes of this user can read its memory and environment "
        "(the client secret, tokens) and attach to it; allow prctl(PR_SET_DUMPABLE) in the process's seccomp or "
        "LSM policy (the container runtime's profile, the unit's SystemCallFilter=)"
    )


def is_dumpable() -> bool:
    """The current PR_GET_DUMPABLE state (True off Linux: nothing protects the process there)."""
    if not sys.platform.startswith("linux"):
        return True
    return _prctl(PR_GET_DUMPABLE) != 0
