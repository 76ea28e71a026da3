"""Shared machinery of the fake Slack and GitHub servers: a real TCP server, a call log, injected failures.

The server runs in its own thread with its own event loop, so a synchronous client (PyGithub) called
from an async test, the app under test in the same process, and an app in another uvicorn process all
reach it the same way, over loopback TCP, and none of them can block it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclasses.dataclass(frozen=True)
class Call:
    """One request a fake answered, as the client sent it and as the fake answered it."""

    api: str
    """Slack method (``chat.update``) or GitHub route name (``create_deployment``); ``unknown`` if none."""
    http_method: str
    path: str
    """Request path; for GitHub without the optional ``/api/v3`` Enterprise prefix."""
    query: dict[str, str]
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    body: Any
    """Parsed body: for Slack the merged query, form or JSON arguments; for GitHub the JSON document."""
    raw_body: bytes
    status: int
    response: Any
    path_params: dict[str, str] = dataclasses.field(default_factory=dict)
    injected: bool = False
    """True when the answer was an injected failure (`fail`, `rate_limit`...)."""
    peer: str | None = None
    """The client's end of the TCP connection (host:port): calls over one connection share it."""
    at: float = dataclasses.field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        if self.status >= 400:
            return False
        return not (isinstance(self.response, dict) and self.response.get("ok") is False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def arg(self, name: str, default: Any = None) -> Any:
        """A body argument (Slack arguments, GitHub JSON fields)."""
        if isinstance(self.body, Mapping):
            return self.body.get(name, default)
        return default


def peer_of(request: Any) -> str | None:
    """host:port of the client's end of the request's connection."""
    transport = getattr(request, "transport", None)
    name = transport.get_extra_info("peername") if transport is not None else None
    return f"{name[0]}:{name[1]}" if name else None


@dataclasses.dataclass
class _Failure:
    api: str
    remaining: int
    status: int
    body: Any
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    text: str | None = None
    """Plain-text body instead of JSON (Slack response_url answers ``ok``)."""
    data: bytes | None = None
    """A binary body instead of JSON (GitHub's codeload serves tarballs)."""


class FakeServer:
    """Base of the fakes: lifecycle (sync and async), call log, failure injection, waiting helpers."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._failures: list[_Failure] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.errors: list[Exception] = []
        """Exceptions raised by the fake's own code while answering (each answered with a 500)."""

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._requested_port))
        sock.listen(256)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # A short shutdown timeout: clients keep idle keep-alive connections open.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            try:
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.SockSite(runner, sock).start())
            except BaseException as e:
                errors.append(e)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}:{self._port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if errors:
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from errors[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ---- call log --------------------------------------------------------------------------------

    def calls(self, api: str | None = None, *, ok: bool | None = None) -> list[Call]:
        """Recorded calls in arrival order, optionally only those of one API method / route name,
        optionally only the successful (``ok=True``) or failed (``ok=False``) ones."""
        with self._lock:
            found = [c for c in self._calls if api is None or c.api == api]
        if ok is not None:
            found = [c for c in found if c.ok == ok]
        return found

    def last_call(self, api: str | None = None) -> Call:
        found = self.calls(api)
        if not found:
            raise AssertionError(f"no {api or ''} call recorded; calls: {self.describe_calls()}")
        return found[-1]

    def describe_calls(self) -> list[str]:
        with self._lock:
            return [f"{c.http_method} {c.path} [{c.api}] -> {c.status}" for c in self._calls]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _record(self, call: Call) -> None:
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()

    # ---- waiting ---------------------------------------------------------------------------------

    def wait_for_call_sync(
        self,
        api: str | None = None,
        *,
        where: Callable[[Call], bool] | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> Call:
        """Block until `count` matching calls were recorded; returns the `count`-th one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._matching(api, where)
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(self._timeout_message(api, count, len(found), timeout))
                self._changed.wait(timeout=left)

    async def wait_for_call(
        self,
        api: str | None = None,
        *,
        where: Callable[[Call], bool] | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> Call:
        """Wait (without blocking the event loop) until `count` matching calls were recorded."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = self._matching(api, where)
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(api, count, len(found), timeout))
            await asyncio.sleep(0.01)

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Wait until `predicate()` (called under the fake's lock) holds, e.g. a message has a state."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if predicate():
                    return
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout}s; calls: {self.describe_calls()}")
            await asyncio.sleep(0.01)

    def _matching(self, api: str | None, where: Callable[[Call], bool] | None) -> list[Call]:
        return [c for c in self._calls if (api is None or c.api == api) and (where is None or where(c))]

    def _timeout_message(self, api: str | None, count: int, seen: int, timeout: float) -> str:
        return (
            f"expected {count} matching {api or 'any'} call(s) within {timeout}s, saw {seen}; "
            f"calls: {self.describe_calls()}"
        )

    # ---- failure injection -----------------------------------------------------------------------

    def _add_failure(
        self, api: str, *, times: int, status: int, body: Any, headers: Mapping[str, str] | None
    ) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._failures.append(_Failure(api, times, status, body, dict(headers or {})))

    def _take_failure(self, api: str) -> Answer | None:
        with self._lock:
            for failure in self._failures:
                if failure.api in (api, "*"):
                    failure.remaining -= 1
                    if failure.remaining == 0:
                        self._failures.remove(failure)
                    return Answer(failure.status, failure.body, dict(failure.headers))
        return None

    def pending_failures(self) -> int:
        """How many injected failures are still to be answered."""
        with self._lock:
            return sum(f.remaining for f in self._failures)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    # ---- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            answer = self._serve(request, raw)
        except Exception as e:
            # A bug in the fake itself: answer 500 and keep it for the fixture teardown to report.
            with self._lock:
                self.errors.append(e)
            return web.Response(status=500, text=f"{type(self).__name__} crashed: {e!r}")
        if answer.data is not None:
            return web.Response(status=answer.status, body=answer.data, headers=answer.headers)
        if answer.text is not None:
            return web.Response(status=answer.status, text=answer.text, headers=answer.headers)
        if answer.status == 204 or answer.body is None:
            return web.Response(status=answer.status, headers=answer.headers)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    def _serve(self, request: web.Request, raw: bytes) -> Answer:
        raise NotImplementedError


def lower_headers(request: web.Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}
