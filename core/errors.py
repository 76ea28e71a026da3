"""Our own exceptions: every channel turns these into a message for its users.

UserError and its children are shown to the user as written, so their text must
be safe (no secret values, no stack details).  TransientError is retried by the
job queue with backoff; PermanentError fails a job at once.
"""

from __future__ import annotations


class ShipitError(Exception):
    """Base of everything shipit raises on purpose."""


class UserError(ShipitError):
    """The caller asked for something we cannot do; the text is shown as written."""

    status_code = 400


class InvalidInput(UserError):
    """Bad input; `field` names what is wrong so forms and CLIs can point at it."""

    status_code = 422

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(UserError):
    status_code = 404


class PermissionDenied(UserError):
    status_code = 403


class Unauthenticated(UserError):
    status_code = 401


class Conflict(UserError):
    status_code = 409


class TransientError(ShipitError):
    """Worth retrying later: API unreachable, 5xx, 429, optimistic-lock conflicts."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ShipitError):
    """Retrying will not help: invalid spec, forbidden, misconfiguration."""
