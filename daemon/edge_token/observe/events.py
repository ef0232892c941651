"""The one subscriber that turns a step's outcome into its log lines, for `run` and `once` alike.

The renewer does the work and returns a frozen `RenewalOutcome`; what operators read about it (`token.renewed`,
`token.adopted`, `fleet.token_received`, `token.renewal_failed`, `fleet.token_rejected`, `sink.written`,
`sink.write_failed`) is written here, from the outcome alone, in the order things happened: each sink's result,
then the token's. The renewer keeps only the diagnostics a step alone can give (why a sink's token was not adopted,
a lifetime mismatch, an internal error's rate-limited traceback).
"""

from __future__ import annotations

from typing import Any

from edge_token.core.errors import VerificationError
from edge_token.core.outcome import RenewalOutcome, Result
from edge_token.observe import logs


def log_outcome(log: Any, outcome: RenewalOutcome) -> None:
    """Log one outcome through `log`, bound to its profile (the renewer's `log`), its lines in one write; never
    raises for an outcome the renewer produced."""
    if logs.batched():
        _log_outcome(log, outcome)
        return
    with logs.together():
        _log_outcome(log, outcome)


def _log_outcome(bound: Any, outcome: RenewalOutcome) -> None:
    for name, sink_error in outcome.sink_errors.items():
        bound.error("sink.write_failed", sink=name, message=str(sink_error))
    token = outcome.token
    if token is not None:
        for name in outcome.sinks_changed:
            bound.info("sink.written", sink=name, fingerprint=token.fingerprint)
    error = outcome.error
    if outcome.result is Result.FAILED and error is not None:
        reason = error.reason if isinstance(error, VerificationError) else error.kind
        if outcome.from_fleet:
            bound.warning("fleet.token_rejected", reason=reason, message=str(error))
        else:
            bound.warning(
                "token.renewal_failed", error=error.kind, reason=reason, message=str(error),
                failures=outcome.failures, state=outcome.state,
            )  # fmt: skip
    elif token is not None and outcome.result is Result.NEW_TOKEN:
        bound.info(
            "token.renewed", fingerprint=token.fingerprint, expires_at=token.expires_at,
            lifetime=round(token.lifetime, 3),
        )  # fmt: skip
    elif token is not None and outcome.result is Result.ADOPTED:
        bound.info("token.adopted", fingerprint=token.fingerprint, expires_at=token.expires_at, state=outcome.state)
    elif token is not None and outcome.result is Result.RECEIVED:
        bound.info("fleet.token_received", fingerprint=token.fingerprint, expires_at=token.expires_at)
