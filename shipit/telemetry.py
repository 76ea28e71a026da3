"""OpenTelemetry set-up: traces exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else nothing.

Off (the default) no SDK provider is installed: core's spans are the API's no-op spans, no
instrumentation is added to FastAPI, SQLAlchemy or httpx, and no traceparent goes into job payloads.
The standard OTEL_* variables (endpoint, headers, service name, sampler) configure the exporter.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

_provider: Any = None


def enabled() -> bool:
    return _provider is not None


def setup(*, exporter: Any = None, simple: bool = False) -> bool:
    """Install the SDK provider once per process: with `exporter` (tests: an in-memory one), or OTLP
    when OTEL_EXPORTER_OTLP_ENDPOINT is set.  Returns whether tracing is on."""
    global _provider
    if _provider is not None:
        return True
    if exporter is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "shipit")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()
    _provider = provider
    log.info("tracing: on, exporting over OTLP" if not simple else "tracing: on")
    return True


def instrument_app(app: FastAPI) -> None:
    if not enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # Health checks and scrapes would drown the traces that matter.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")


def instrument_engine(engine: AsyncEngine) -> None:
    if not enabled():
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # The instrumentation declares support up to SQLAlchemy 2.0; its engine events work on 2.1 too.
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, skip_dep_check=True)


def shutdown() -> None:
    if _provider is not None:
        _provider.force_flush()
