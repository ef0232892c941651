"""`python -m edge_token` is the same as the `edge-token` console script (which calls `main` from here too)."""

import signal
import sys

# The first instruction, before any import: hold the signals `run` and `exec` handle until their handlers are
# installed (their default action would kill the process while it imports; pid1.py explains, and releases them).
if sys.argv[1:2] in (["run"], ["exec"]):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2})

from edge_token.cli import main  # after the mask, on purpose

if __name__ == "__main__":
    raise SystemExit(main())
