"""`python -m edge_token` is the same as the `edge-token` console script (which calls `main` from here too)."""

import gc
import signal
import sys

# The first instruction, before any import: hold the signals `run` and `exec` handle until their handlers are
# installed (their default action would kill the process while it imports; pid1.py explains, and releases them).
HELD = {"run": {signal.SIGHUP, signal.SIGUSR1}, "exec": {signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}}
if sys.argv[1:2] and sys.argv[1] in HELD:
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD[sys.argv[1]])

# Start-up (imports, the config) allocates what lives as long as the process: the cyclic collector went over it
# again and again (~30 ms of a 1,000-profile start). Off until start-up ends: `commands.started()` for run and once,
# before dispatch for every other command (cli.main), so no command runs with it off.
gc.disable()

from edge_token.cli import main  # noqa: E402  (after the mask, on purpose)

if __name__ == "__main__":
    raise SystemExit(main())
