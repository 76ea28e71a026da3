"""Error mapping: the one place HTTP and connection failures become core.errors.

Requests are sent with `_preload_content=False` (see connection): we read the body ourselves,
which keeps the library from logging response bodies (Secrets!) at DEBUG and lets these
functions map every failure, raised `from` the original at the adapter boundary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import aiohttp
from kubernetes_asyncio.client import exceptions as k8s_exceptions

from core import errors
from core.kube.objects import truncate


def _parse_status(body: bytes | str | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


_CONVERSION_FAILURES = ("failed to convert new object", "unable to convert unstructured object")
# resource.Quantity's own pattern, as quoted in the API server's error.
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")


def bad_quantities(obj: Any, path: str = "") -> list[str]:
    """Paths of resource quantities in a manifest that the API server cannot parse.

    Its error for them names no field; we find them ourselves so the user learns which one.
    """
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else str(key)
            if key in ("requests", "limits") and path.endswith("resources") and isinstance(value, dict):
                found += [
                    f"{here}.{name}"
                    for name, quantity in value.items()
                    if not (isinstance(quantity, int | float) or _QUANTITY.match(str(quantity)))
                ]
            else:
                found += bad_quantities(value, here)
    elif isinstance(obj, list):
        for index, item in enumerate(obj):
            found += bad_quantities(item, f"{path}[{index}]")
    return found


class AlreadyExists(errors.TransientError):
    """409 AlreadyExists on a create: still a TransientError to everyone but the creator that checks for it."""


def _status_only(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def http_error(
    *,
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
    what: str,
    quote: bool = True,
) -> errors.ShipitError:
    error = _http_error(status=status, body=body, headers=headers, what=what, quote=quote)
    error.http_status = status
    return error


def _http_error(
    *,
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
    what: str,
    quote: bool,
) -> errors.ShipitError:
    """Map an API server answer to our errors.  The Status message never holds object contents
    beyond names and the offending field values the server quotes; we never add the request body.

    With `quote=False` (a server not yet trusted: adding a cluster) nothing the server sent is
    repeated, only the status code and its standard reason: a hostile server could put anything
    in its answer, and this message is shown to the user and logged.
    """
    parsed = _parse_status(body) if quote else {}
    message = str(parsed.get("message") or parsed.get("reason") or "").strip()
    if quote and not message and isinstance(body, str | bytes) and body and not parsed:
        message = body.decode(errors="replace") if isinstance(body, bytes) else body
    message = truncate(message) if message else _status_only(status)
    text = f"{what}: {message}"
    if status == 401:
        return errors.PermanentError(f"{what}: the cluster rejected shipit's credentials (401): {message}")
    if status == 403:
        causes = (parsed.get("details") or {}).get("causes") or []
        if any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes):
            return errors.TransientError(f"{what}: the namespace is being deleted: {message}")
        return errors.PermanentError(f"{what}: permission missing on the cluster (403): {message}")
    if status == 404:
        return errors.NotFound(text)
    if status == 409:
        if parsed.get("reason") == "AlreadyExists":
            return AlreadyExists(f"{what}: already exists: {message}")
        return errors.TransientError(f"{what}: conflict: {message}")
    if status == 500 and any(marker in message for marker in _CONVERSION_FAILURES):
        # The API server answers 500 when an applied object does not decode (a bad quantity, a
        # string for an int): a fault in what we sent, so retrying cannot help.
        return errors.PermanentError(f"{what}: rejected by the API server: {message}")
    if status == 429 or status >= 500:
        return errors.TransientError(text, retry_after=errors.retry_after_seconds(headers, default=None))
    return errors.PermanentError(f"{what}: rejected by the API server ({status}): {message}")


def api_exception_error(
    exc: k8s_exceptions.ApiException, *, what: str, quote: bool = True
) -> errors.ShipitError:
    body: bytes | str | None = exc.body if exc.body else None
    if body is None and exc.reason:
        body = json.dumps({"message": exc.reason})
    headers = dict(exc.headers) if exc.headers else None
    return http_error(status=int(exc.status or 0), body=body, headers=headers, what=what, quote=quote)


def connection_error(exc: BaseException, *, what: str) -> errors.ShipitError:
    if isinstance(exc, aiohttp.ClientSSLError):
        return errors.PermanentError(f"{what}: TLS failure talking to the cluster: {exc}")
    if isinstance(exc, TimeoutError):
        return errors.TransientError(f"{what}: the cluster did not answer in time")
    return errors.TransientError(f"{what}: cluster unreachable: {type(exc).__name__}: {exc}")


CONNECTION_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
