"""The FastAPI application: REST API, health, metrics, and the Slack and GitHub channels, one process."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import errors, jobs, metrics, observe, validation
from core.errors import Conflict, InvalidInput, SeveralEnvironments, ShipitError, UserError
from shipit import api, limits, runtime, telemetry
from shipit.runtime import Runtime
from shipit.settings import Settings

log = logging.getLogger("shipit.http")

REQUESTS = Counter("shipit_http_requests_total", "HTTP requests", ["route", "method", "status"])
_COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY = Histogram(
    "shipit_http_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
QUEUE_DEPTH = Gauge("shipit_queue_depth", "Jobs waiting or running", ["state"])


_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_NAMED = {"apps": "app", "projects": "project"}

# Sent on every response: no MIME sniffing, no referrer leaking URLs, never framed.
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
]
# API answers carry tokens, audit trails and settings: no cache (browser or proxy) keeps them.
NO_STORE: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
_API_HEADERS = SECURITY_HEADERS + NO_STORE


def _request_ids() -> Iterator[str]:
    """New request ids: 32 hex digits of os.urandom, as uuid4().hex reads, cut from a block of 128
    at a time (issue 13: a getrandom system call per request)."""
    while True:
        block = os.urandom(16 * 128).hex()
        for at in range(0, len(block), 32):
            yield block[at : at + 32]


_REQUEST_IDS = _request_ids()


def _after_fork() -> None:
    global _REQUEST_IDS  # a forked child draws blocks of its own: two processes never share ids
    _REQUEST_IDS = _request_ids()


os.register_at_fork(after_in_child=_after_fork)


class Edge:
    """Everything shipit does around each HTTP request, in ONE plain ASGI layer (issue 13: five
    stacked middlewares cost half the constant endpoint's throughput, mostly in the wrappers):

    - a request id (the caller's X-Request-Id when sane, else a new one), echoed in the response and
      bound with the app or project the path names, for the logs (core.observe);
    - SECURITY_HEADERS on every response, and Cache-Control: no-store under /api/;
    - request count and latency by route template (Prometheus);
    - the /api/ throttle (shipit.limits.Throttle): 429 with Retry-After;
    - the body cap: bodies over `max_bytes` are refused (413) before they are read whole, bodies that
      stall longer than `idle_timeout` between chunks are refused (408).  Once refused, the app only
      sees a disconnect; whatever it raises about that (Starlette's ClientDisconnect, say) is
      swallowed here, so an oversized body is not logged as a crash.

    The headers are read in one pass; the metric children are looked up once per label set.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        idle_timeout: float | None = None,
        throttle: limits.Throttle | None = None,
    ) -> None:
        self.app, self.max_bytes, self.idle_timeout, self.throttle = app, max_bytes, idle_timeout, throttle
        # By route template, and by (route template, method, status): the method is the caller's.
        self._latency, self._requests = metrics.Children(LATENCY), metrics.Children(REQUESTS)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self._latency.labels(route).observe(seconds)
        method = scope["method"]
        # The method is the caller's to choose (h11 takes any token, httptools some 30 names): each
        # one would be a series of its own in /metrics.
        self._requests.labels(route, method if method in _COUNTED_METHODS else "OTHER", status).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = declared = authorization = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == b"content-length":
                declared = value
            elif name == b"authorization":
                authorization = value
        request_id = given.decode("latin-1") if given else ""
        if not (0 < len(request_id) <= 64 and set(request_id) <= _REQUEST_ID_OK):
            request_id = next(_REQUEST_IDS)
        path: str = scope["path"]
        is_api = path.startswith(limits.API_PREFIX)
        exchange = _Exchange(
            send=send,
            receive=receive,
            extra=[(b"x-request-id", request_id.encode()), *(_API_HEADERS if is_api else SECURITY_HEADERS)],
            max_bytes=self.max_bytes,
            idle_timeout=self.idle_timeout,
        )
        if is_api:
            where: dict[str, str] = {}
            parts = path.split("/", 5)
            if len(parts) > 4 and parts[2] == "v1" and parts[3] in _NAMED:
                where[_NAMED[parts[3]]] = parts[4][:63]
            bound = observe.enter(request_id=request_id, **where)
        else:
            bound = observe.enter(request_id=request_id)
        address = ""
        token_key = None
        try:
            if is_api and self.throttle is not None:
                client = scope.get("client")
                address = client[0] if client else "unknown"
                too_many, token_key = self.throttle.admit(address=address, authorization=authorization)
                if too_many is not None:
                    await exchange.answer(too_many[0])
                    await exchange.answer(too_many[1])
                    return
            if declared is not None and declared.isdigit() and int(declared) > exchange.max_bytes:
                await _refuse(
                    exchange.answer,
                    413,
                    "payload_too_large",
                    f"request body is larger than {exchange.max_bytes} bytes",
                )
                return
            try:
                await self.app(scope, exchange.limited, exchange.guarded)
            except Exception as e:
                if not exchange.refused:
                    raise
                # Expected (it was reading a body we cut off): no traceback.
                log.debug(
                    "%s %s: body refused; the app stopped with %s",
                    scope["method"],
                    path,
                    type(e).__name__,
                )
            if is_api and self.throttle is not None:
                self.throttle.settle(status=exchange.status, address=address, token_key=token_key)
        finally:
            observe.leave(bound)
            self._record(scope, exchange.status, time.perf_counter() - start)


class _Exchange:
    """One request's side of Edge: the app's receive (the body cap) and send (the headers added),
    and what they saw.  One object with slots per request, where closures took a function object
    each and a cell per shared variable (issue 13)."""

    __slots__ = ("body_done", "extra", "idle_timeout", "max_bytes", "receive", "refused", "seen", "send",
                 "started", "status")  # fmt: skip

    def __init__(
        self,
        *,
        send: Send,
        receive: Receive,
        extra: list[tuple[bytes, bytes]],
        max_bytes: int,
        idle_timeout: float | None,
    ) -> None:
        self.send, self.receive, self.extra = send, receive, extra
        self.max_bytes, self.idle_timeout = max_bytes, idle_timeout
        self.status = 500
        self.started = self.refused = self.body_done = False
        self.seen = 0

    async def answer(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.started = message["status"], True
            message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
        await self.send(message)

    async def guarded(self, message: Message) -> None:
        """The app's send: `answer` (inlined: two sends a request), unless we answered already."""
        if self.refused:  # we answered: the app's answer is dropped
            return
        if message["type"] == "http.response.start":
            self.status, self.started = message["status"], True
            message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
        await self.send(message)

    async def refuse(self, code: int, kind: str, text: str) -> Message:
        self.refused = True
        if not self.started:
            await _refuse(self.answer, code, kind, text)
        return {"type": "http.disconnect"}

    async def limited(self) -> Message:
        """The app's receive, with the body cap and the idle timeout."""
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done or self.idle_timeout is None:
            # After the body, receive() waits for a disconnect (streaming responses): no timeout.
            message = await self.receive()
        else:
            try:
                message = await _within(self.receive, self.idle_timeout)
            except TimeoutError:
                return await self.refuse(408, "request_timeout", "the request body stalled")
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.body_done = not message.get("more_body", False)
            if self.seen > self.max_bytes:
                # Raising here would not do: FastAPI turns errors while reading a body into a 400.
                return await self.refuse(
                    413, "payload_too_large", f"request body is larger than {self.max_bytes} bytes"
                )
        return message


async def _within(receive: Receive, seconds: float) -> Message:
    """`await receive()`, cut off with TimeoutError after `seconds`; the timer is armed only when the
    message is not there at once.  A small body has arrived whole before the app runs (uvicorn's
    receive() then returns without waiting), and arming and cancelling a timer for it cost more
    than the rest of the body cap (issue 13: asyncio.timeout was ~4 us per webhook delivery)."""
    step = receive().__await__()
    try:
        waiting = step.send(None)
    except StopIteration as done:
        message: Message = done.value
        return message
    async with asyncio.timeout(seconds):
        resumed: Message = await _resume(step, waiting)
        return resumed


@types.coroutine
def _resume(step: Generator[Any, Any, Message], waiting: Any) -> Generator[Any, Any, Message]:
    """Go on with a coroutine that `_within` started and that is waiting on `waiting`: what
    `yield from` does (sends, throws and close passed on), from its second step."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            step.close()
            raise
        # A cancellation (the timeout's or the caller's): the coroutine's to handle.
        except BaseException as e:
            try:
                waiting = step.throw(e)
            except StopIteration as done:
                message: Message = done.value
                return message
        else:
            try:
                waiting = step.send(sent)
            except StopIteration as done:
                message = done.value
                return message


async def _refuse(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one error shape (schemas.ErrorOut), whatever answers: core, validation, routing, the body cap."""
    return {"error": {"type": kind, "message": message, **extra}}


def _field_of(loc: tuple[Any, ...]) -> str:
    """("body", "env", "1FOO", "[key]") -> "env": a dict key that is wrong is the dict's fault."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if parts and parts[-1] == "[key]":
        parts = parts[:-2]
    return ".".join(parts) or "body"


def _validation_message(error: Any, field: str) -> str:
    """Say what the rule is, in words: a client shows this as written."""
    kind, ctx, value = error.get("type"), error.get("ctx") or {}, error.get("input")
    if kind == "json_invalid":
        return f"request body is not valid JSON: {ctx.get('error', 'cannot parse')}"
    got = f", got {validation.shown(value)}" if isinstance(value, str) else f", got {value!r}"
    loc = error.get("loc", ())
    # A dict key that is wrong: name the dict, and show the key.
    is_key = bool(loc) and loc[-1] == "[key]" and isinstance(value, str)
    subject = f"{field}: {validation.shown(value)}" if is_key else field
    if kind == "string_pattern_mismatch":
        help_text = validation.PATTERN_HELP.get(ctx.get("pattern", ""))
        if help_text:
            return f"{subject} {help_text}" + ("" if subject != field else got)
    if kind == "string_too_long":
        length = f", got {len(value)}" if isinstance(value, str) else ""
        return f"{subject} must be at most {ctx.get('max_length')} characters{length}"
    if kind in ("greater_than_equal", "less_than_equal"):
        if field in validation.RANGES:  # an app setting: the same words core uses
            low, high = validation.RANGES[field]
            return f"{field} must be between {low} and {high}{got}"
        bound = f"at least {ctx.get('ge')}" if kind == "greater_than_equal" else f"at most {ctx.get('le')}"
        return f"{field} must be {bound}{got}"
    return f"{field}: {error.get('msg')}"


def _json_position(error: Any, body: Any) -> str:
    """json_invalid errors carry a character offset; people read lines and columns."""
    loc = error.get("loc", ())
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    if pos is None or not isinstance(body, str):
        return ""
    line = body.count("\n", 0, pos) + 1
    column = pos - (body.rfind("\n", 0, pos) + 1) + 1
    return f" at line {line} column {column}"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names only the first route's."""
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        field = exc.field if isinstance(exc, InvalidInput | Conflict) else None
        extra: dict[str, Any] = {"field": field} if field else {}
        message = str(exc)
        if isinstance(exc, SeveralEnvironments):
            # The API takes it as a query parameter; the list lets a client word its own ask.
            message = exc.ask(f"the env query parameter (?env={exc.environments[0]})")
            extra["environments"] = exc.environments
        return JSONResponse(error_body(type(exc).__name__, message, **extra), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            message = _validation_message(first, "body") + _json_position(first, exc.body)
            return JSONResponse(error_body("InvalidInput", message, field="body"), status_code=422)
        field = _field_of(tuple(first.get("loc", ())))
        return JSONResponse(
            error_body("InvalidInput", _validation_message(first, field), field=field), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing (404, 405) and body parsing (400) errors, in the same shape as every other error.
        headers = dict(exc.headers or {})
        phrase = HTTPStatus(exc.status_code).phrase
        message = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else ""
        extra: dict[str, Any] = {}
        if exc.status_code == 404 and not message:
            message = f"nothing at {request.url.path}"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request) or [m.strip() for m in headers.get("Allow", "").split(",")]
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; use {headers['Allow']}"
        elif exc.status_code == 400:
            extra["field"] = "body"
        return JSONResponse(
            error_body(phrase.title().replace(" ", ""), message or phrase, **extra),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(ShipitError)
    async def _shipit_error(request: Request, exc: ShipitError) -> JSONResponse:
        ref, text = errors.report(exc, log=log, what=f"request {request.method} {request.url.path}")
        return JSONResponse(error_body(type(exc).__name__, text, reference=ref), status_code=502)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref, text = errors.report(exc, log=log, what=f"request {request.method} {request.url.path}")
        # This answer is sent by Starlette's outermost middleware, outside Edge.
        return JSONResponse(
            error_body("InternalError", text, reference=ref),
            status_code=500,
            headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS},
        )


# Young-generation collections start after this many net allocations of tracked objects (Python's
# default is 700): see settle_gc.
GC_YOUNG_THRESHOLD = 7000


def settle_gc() -> tuple[int, int, int]:
    """Once the app and its runtime have started: what exists now (the app, its routes, the runtime,
    every imported module) lives as long as the process, so it is frozen out of the cyclic
    collector's way (its full collections walked it, which under load cost ingest about a quarter of
    its CPU, issue 13); start-up's garbage is collected first, not kept forever.  And the young
    generation is collected every 7,000 allocations instead of 700: 64 pushes in flight keep ~700
    container objects alive between any two collections, so at 700 nearly every one found nothing to
    free (101 collections per 2,560 pushes, 0.03-0.05 ms of each; 4 at 7,000).  The few cycles a
    request leaves are still collected, ten times less often.  Returns the thresholds it replaced."""
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, before[1], before[2])
    return before


class _App(FastAPI):
    """FastAPI whose document also holds the error body the API's responses refer to by name
    (shipit.api.base: by reference, so that no route builds a field for it)."""

    def openapi(self) -> dict[str, Any]:
        document = super().openapi()  # cached by FastAPI until a route is added: then made afresh
        found = document.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorOut" not in found:
            merged = {**found, **api.error_schemas()}
            found.clear()
            found.update((name, merged[name]) for name in sorted(merged))  # sorted, as FastAPI's
        return document


def create_app(settings: Settings | None = None, *, rt: Runtime | None = None) -> FastAPI:
    """Build the app.  With `rt` given the caller owns the runtime (tests, benchmarks)."""
    settings = settings or (rt.settings if rt else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = rt is None
        the_rt = rt or await runtime.build(settings)
        app.state.runtime = the_rt
        for channel in channels:
            await channel(app, the_rt)
        if own:
            token_file = settings.bootstrap_token_file
            token = await runtime.bootstrap_admin_token(the_rt, write_to=token_file)
            if token and token_file is not None:
                log.warning(
                    "First start: created an admin API token and wrote it to %s (mode 0600). "
                    "Read it, keep it somewhere safe, then delete the file.",
                    token_file,
                )
            elif token:
                log.warning(
                    "\n%s\nFirst start: created an admin API token. It is shown ONCE:\n\n    %s\n\n"
                    "export SHIPIT_TOKEN=%s\n%s",
                    "=" * 78, token, token, "=" * 78,
                )  # fmt: skip
            await runtime.start(the_rt)
            thresholds = settle_gc()
        try:
            yield
        finally:
            if own:
                gc.unfreeze()  # collectable again (an app served and stopped inside a longer process)
                gc.set_threshold(*thresholds)
                await runtime.stop(the_rt)

    app = _App(
        # Tracing is shipit.telemetry's (OpenTelemetry's FastAPI instrumentation, when configured);
        # FastAPI's own would otherwise look the providers up on every request to find them unset.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="shipit",
        version="0.5.0",
        description="Ship container images to your own Kubernetes clusters.",
        lifespan=lifespan,
    )
    channels: list[Callable[[FastAPI, Runtime], Awaitable[None]]] = []
    app.state.channels = channels
    install_error_handlers(app)
    app.include_router(api.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        the_rt: Runtime = request.app.state.runtime
        try:
            async with the_rt.sessionmaker() as session:
                await session.execute(text("SELECT 1"))
                depth = await jobs.depth(session)
        except Exception as e:
            return JSONResponse({"status": "unavailable", "database": type(e).__name__}, status_code=503)
        worker = the_rt.worker is not None or not the_rt.settings.run_worker
        return JSONResponse(
            {"status": "ok" if worker else "degraded", "database": "ok", "queue": depth},
            status_code=200 if worker else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> PlainTextResponse:
        the_rt: Runtime = request.app.state.runtime
        async with the_rt.sessionmaker() as session:
            for state, n in (await jobs.depth(session)).items():
                QUEUE_DEPTH.labels(state=state).set(n)
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    throttle = None
    if settings.api_auth_failures_per_minute or settings.api_requests_per_minute:
        throttle = limits.Throttle(
            auth_failures_per_minute=settings.api_auth_failures_per_minute,
            requests_per_minute=settings.api_requests_per_minute,
        )
    app.add_middleware(
        Edge, max_bytes=settings.max_body_bytes, idle_timeout=settings.body_timeout_seconds, throttle=throttle
    )
    telemetry.instrument_app(app)
    return app
