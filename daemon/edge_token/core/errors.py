"""The error hierarchy: every failure is classified once, where it happens, into one of these.

Each class carries the sysexits code the CLI exits with, so `once`, `check` and a failed start all speak the
same language as systemd's `RestartPreventExitStatus=`. Messages say what was wrong and what to do; they never
carry a secret, a token or a raw response body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_token.core.ratelimit import RateLimit

EX_DATAERR = 65  # a token failed verification
EX_NOINPUT = 66  # an input file does not exist or cannot be read
EX_UNAVAILABLE = 69  # provider (token endpoint or JWKS) unavailable
EX_SOFTWARE = 70  # a bug in edge-token (an exception nothing classified)
EX_CANTCREAT = 73  # a sink could not be written
EX_PROTOCOL = 76  # the provider answered something that is not OAuth2
EX_NOPERM = 77  # credentials rejected
EX_CONFIG = 78  # configuration error


class EdgeTokenError(Exception):
    """Base of every error edge-token raises on purpose."""

    exit_code = 1
    #: short, bounded label for metrics and /status (never free text)
    kind = "error"


class ConfigError(EdgeTokenError):
    """The configuration (or a file it points to) is unusable; fix it and restart or reload."""

    exit_code = EX_CONFIG
    kind = "config"


class TransientError(EdgeTokenError):
    """Worth retrying soon: network trouble, timeouts, 5xx, 429, `temporarily_unavailable`."""

    exit_code = EX_UNAVAILABLE
    kind = "transient"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: seconds the server asked us to wait (already parsed), or None
        self.retry_after = retry_after
        #: the provider's rate-limit/quota figures from the failed answer (ratelimit.py), or None
        self.rate_limit: RateLimit | None = None


class PermanentError(EdgeTokenError):
    """Retrying at once will not help; retried slowly in case an operator fixes the cause."""

    exit_code = EX_PROTOCOL
    kind = "protocol"


class CredentialsRejected(PermanentError):
    """The provider refused our client id/secret/audience (invalid_client, access_denied, 401/403...)."""

    exit_code = EX_NOPERM
    kind = "rejected"


class ProtocolError(PermanentError):
    """The provider answered, but not with a usable OAuth2 token answer (HTML page, redirect, bad JSON)."""


class VerificationError(EdgeTokenError):
    """The token is not one we may use: signature, algorithm, issuer, audience, expiry or client binding."""

    exit_code = EX_DATAERR
    kind = "invalid_token"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: bounded label naming the rule that failed (metrics: verification failures by reason)
        self.reason = reason


class JwksError(TransientError):
    """The JWKS could not be fetched or holds no usable key; the last good key set is kept."""

    kind = "jwks"


class JwksConfigError(JwksError, ConfigError):
    """Our own configuration stops the JWKS fetch (a proxy URL or credential, a CA bundle): exit 78 like any config
    problem, yet a JWKS failure for the key cache (the last good key set is kept)."""

    exit_code = EX_CONFIG
    kind = "config"


class JwksAnswerError(JwksError):
    """The JWKS URL answered, but not with a key set (404, an HTML page, not JSON): most likely a wrong `jwks_url`.

    The protocol's exit code (like a token endpoint answering nonsense), yet still a JWKS failure for metrics and
    retries: the last good key set is kept and the fetch is retried with the ordinary backoff.
    """

    exit_code = EX_PROTOCOL


class SinkError(EdgeTokenError):
    """A sink could not be written; the previous content is intact."""

    exit_code = EX_CANTCREAT
    kind = "sink"


class InternalError(TransientError):
    """An exception nothing classified: a bug (ours or a library's) or an input no rule foresaw.

    It is retried with the ordinary backoff like a transient failure, so it can never turn into a request storm,
    and it is counted and shown like every other failure (`kind` "internal"); the traceback goes to the log.
    """

    exit_code = EX_SOFTWARE
    kind = "internal"

    @classmethod
    def wrap(cls, exc: BaseException, where: str) -> InternalError:
        """Classify an unexpected exception; the message names only its type (its text could echo a secret)."""
        return cls(f"internal error while {where} ({type(exc).__name__}); retrying with backoff")
