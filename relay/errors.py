"""Errors of the relay application; each carries its HTTP answer (DESIGN.md rule 4).

Handlers raise these; one middleware turns them into
``{"error": {"code": ..., "message": ...}}`` with the right status. Messages are
written for the person reading them and never contain health data or details
about accounts other than the caller's.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class: a request could not be served, with a status and a stable code."""

    http_status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(RelayError):
    """The configuration file or an environment override is invalid (stops start-up)."""

    code = "invalid_configuration"


class BadRequest(RelayError):
    """The request is malformed (JSON syntax, missing or invalid field)."""

    http_status = 400
    code = "bad_request"


class Unauthenticated(RelayError):
    """No valid session: missing, expired or forged token, or failed login."""

    http_status = 401
    code = "unauthenticated"


class Forbidden(RelayError):
    """Authenticated, but the policy table does not allow this action."""

    http_status = 403
    code = "forbidden"


class NotFound(RelayError):
    """No such resource (or the caller may not know it exists)."""

    http_status = 404
    code = "not_found"


class Conflict(RelayError):
    """The resource already exists or is in a state that forbids the action."""

    http_status = 409
    code = "conflict"


class PayloadTooLarge(RelayError):
    """The request body exceeds the configured limit."""

    http_status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RelayError):
    """The request body has a content type this endpoint does not accept."""

    http_status = 415
    code = "unsupported_media_type"


class TooManyRequests(RelayError):
    """Rate limit reached; ``retry_after`` seconds tell the client when to try again."""

    http_status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(RelayError):
    """A dependency (database, audit log, blob store) cannot serve now; nothing was done.
    ``retry_after`` (seconds), when known, becomes a ``Retry-After`` header."""

    http_status = 503
    code = "service_unavailable"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class InvalidIdentifier(BadRequest):
    """An RPPS or NIR/INS failed its format or check-key test."""

    code = "invalid_identifier"
