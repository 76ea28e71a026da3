"""Log context and tracing, in one small facade, so core needs neither a web framework nor an SDK.

Log context: contextvars (request id, project, app, environment, deploy id) that the API request
middleware and the worker bind; shipit.logs writes them into every JSON log line.

Tracing: OpenTelemetry's API only.  Without an SDK provider (the default: no
OTEL_EXPORTER_OTLP_ENDPOINT) every span is the API's no-op span, and `traceparent()` returns None,
so nothing is added to job payloads.  A deploy stays one trace across processes: jobs.enqueue puts
the W3C traceparent of the current span into the job's payload and the worker continues from it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

LOG_FIELDS = ("request_id", "project", "app", "environment", "deploy_id")

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "shipit_log_fields", default=None
)
_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("shipit")


def fields() -> dict[str, Any]:
    """The log context bound here (a copy)."""
    return dict(_fields.get() or {})


@contextlib.contextmanager
def bind(**values: Any) -> Iterator[None]:
    """Add fields to the log context for the duration of the block (None values are left out)."""
    merged = {**(_fields.get() or {}), **{k: v for k, v in values.items() if v is not None}}
    token = _fields.set(merged)
    try:
        yield
    finally:
        _fields.reset(token)


def enter(**values: str) -> contextvars.Token[dict[str, Any] | None]:
    """`bind` without the context manager, for the per-request path (shipit.app.Edge): string values,
    none of them None; undo with `leave(token)` in a finally."""
    current = _fields.get()
    return _fields.set({**current, **values} if current else values)


def leave(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _fields.reset(token)


def set_fields(**values: Any) -> None:
    """Add fields to the log context of the current task from here on (the middleware's task)."""
    _fields.set({**(_fields.get() or {}), **{k: v for k, v in values.items() if v is not None}})


@contextlib.contextmanager
def span(name: str, *, parent: str | None = None, **attributes: Any) -> Iterator[Any]:
    """A span (no-op without an SDK); `parent` is a W3C traceparent to continue, e.g. from a job."""
    ctx = _propagator.extract({"traceparent": parent}) if parent else None
    attrs = {f"shipit.{k}": v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, context=ctx, attributes=attrs) as s:
        yield s


def traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when no trace is being recorded."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=otel_context.get_current())
    return carrier.get("traceparent")


def trace_id() -> str | None:
    sc = trace.get_current_span().get_span_context()
    return format(sc.trace_id, "032x") if sc.is_valid else None
