"""Process limits a long-running daemon should ask for itself.

The soft RLIMIT_NOFILE is often 1024 while the hard limit is far higher (systemd's default is 1024:524288,
containers inherit the runtime's). The soft limit is the one that bites: with it raised to the hard limit, a
burst of HTTP clients or hooks cannot leave the renewals without descriptors. The HTTP listener additionally
caps its own connections below the limit (httpserver.connection_cap).
"""

from __future__ import annotations

import resource
from pathlib import Path

NR_OPEN = Path("/proc/sys/fs/nr_open")  # the kernel's ceiling for RLIMIT_NOFILE when the hard limit is infinite


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard limit; returns (soft, hard) as they are afterwards.

    Never fails: a limit we may not change is left as it is (the daemon works with fewer descriptors, and the HTTP
    connection cap shrinks with it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(NR_OPEN.read_text().strip())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)
