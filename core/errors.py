"""Our own exceptions: every channel turns these into a message for its users.

UserError and its children are shown to the user as written, so their text must
be safe (no secret values, no stack details).  TransientError is retried by the
job queue with backoff; PermanentError fails a job at once.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple, overload


class ShipitError(Exception):
    """Base of everything shipit raises on purpose."""

    # The HTTP status a cluster answered, when the error maps one (core.kube.api_errors.http_error).
    http_status: int | None = None


class UserError(ShipitError):
    """The caller asked for something we cannot do; the text is shown as written."""

    status_code = 400


class InvalidInput(UserError):
    """Bad input; `field` names what is wrong so forms and CLIs can point at it."""

    status_code = 422

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class SeveralEnvironments(InvalidInput):
    """An app name that runs in several environments, given without one.  Each channel takes the
    environment its own way (the API's `env` parameter, the CLI's and Slack's `--env NAME`), so
    each words the ask with `ask(how)`; the plain text names none of them."""

    def __init__(self, *, app: str, environments: list[str]) -> None:
        self.app = app
        self.environments = environments
        self.situation = f"{app} runs in several environments ({', '.join(environments)})"
        super().__init__(f"{self.situation}: say which environment", field="env")

    def ask(self, how: str) -> str:
        return f"{self.situation}: say which, with {how}"


class NotFound(UserError):
    status_code = 404


class NoMetricsApi(UserError):
    """The app's cluster serves no Metrics API (metrics.k8s.io: metrics-server), so usage is unknown.

    Not a fault of shipit or of the request (not a 5xx), and not "missing" either (a 404 says the app
    is): 501, the cluster does not implement what was asked."""

    status_code = 501


class PermissionDenied(UserError):
    status_code = 403


class Unauthenticated(UserError):
    status_code = 401


class Conflict(UserError):
    """Conflicts with the current state; `field`, when given, names the input that collides."""

    status_code = 409

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TransientError(ShipitError):
    """Worth retrying later: API unreachable, 5xx, 429, optimistic-lock conflicts."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Deferred(TransientError):
    """Not a failure: our own pacing (a channel's write rate) says to try again after `retry_after`.

    Notify jobs do not count it against the target (core.events.run_notify_job).
    """


class Paced(Deferred):
    """Deferred before anything was sent: not an attempt either, so a job's `attempts` above 1 still
    says an earlier run may have sent it (the worker gives the claim's attempt back)."""


class PermanentError(ShipitError):
    """Retrying will not help: invalid spec, forbidden, misconfiguration."""


# -- Retry-After ------------------------------------------------------------------

RETRY_AFTER_CAP = 3600.0  # a server asking for more than an hour is wrong; the queue retries by then


@overload
def retry_after_seconds(
    headers: Mapping[str, Any] | None, *, default: float, minimum: float = 0.0
) -> float: ...
@overload
def retry_after_seconds(
    headers: Mapping[str, Any] | None, *, default: None, minimum: float = 0.0
) -> float | None: ...
def retry_after_seconds(
    headers: Mapping[str, Any] | None, *, default: float | None, minimum: float = 0.0
) -> float | None:
    """Seconds to wait from a response's Retry-After (delta-seconds or HTTP-date), clamped to
    [minimum, RETRY_AFTER_CAP]; `default` when the header is missing or unreadable.

    The header name is matched in any case, and a list value (some clients keep repeats) counts by its first.
    """
    value: Any = None
    for key, v in (headers or {}).items():
        if str(key).lower() == "retry-after":
            value = v
            break
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None:
        return default
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return default
    return min(max(seconds, minimum), RETRY_AFTER_CAP)


# -- references -----------------------------------------------------------------------


class Reported(NamedTuple):
    ref: str  # quoted to the user, logged with the details
    text: str  # safe to show


def report(exc: BaseException, *, log: logging.Logger | logging.LoggerAdapter[Any], what: str) -> Reported:
    """Log a failure that is not the user's under a fresh reference id; return what to show.

    Our own errors keep their (safe) message and are logged as a warning; anything else is a crash:
    the user sees only "internal error" and the reference, the log has the traceback under it.
    """
    ref = uuid.uuid4().hex[:12]
    if isinstance(exc, ShipitError):
        log.warning("%s failed [ref %s]: %s", what, ref, exc)
        return Reported(ref, f"{exc} (reference {ref})")
    log.error("%s crashed [ref %s]", what, ref, exc_info=exc)
    return Reported(ref, f"internal error, reference {ref}")
