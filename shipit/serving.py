"""How `shipit serve` runs uvicorn: timeouts and limits so a slow or greedy client cannot hold the server.

What uvicorn covers by itself, and what we add:

- idle connections between requests: uvicorn's `timeout_keep_alive` (SHIPIT_KEEP_ALIVE_SECONDS);
- too many connections: uvicorn's `limit_concurrency` (SHIPIT_MAX_CONNECTIONS), answered with 503;
- header size: h11 refuses more than `h11_max_incomplete_event_size` (16 KiB) of unfinished headers,
  httptools (llhttp) its own limit;
- header *time*: uvicorn has no timeout for a client that sends its headers a byte at a time
  (slowloris).  The protocol classes below close a connection whose request headers are not complete
  within SHIPIT_HEADER_TIMEOUT_SECONDS of the connection opening or, on a kept-alive connection, of
  the next request's first byte (idle time between requests is the keep-alive's to bound);
- body time: shipit.app.Edge answers 408 when a request body pauses longer than
  SHIPIT_BODY_TIMEOUT_SECONDS between chunks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shipit.settings import Settings

log = logging.getLogger(__name__)


class _HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol: the request headers must be complete within `timeout`.

    Both protocols set `self.cycle` to a new object the moment a request's headers are parsed,
    so a changed `cycle` after feeding data means the headers arrived.  The clock starts when the
    connection opens and, between requests, at the next request's first byte: an idle kept-alive
    connection is closed by uvicorn's keep-alive timeout, which must outlast the proxy's or client's
    own idle timeout, or a request sent as the server closes is lost (502 / connection reset).
    """

    header_timeout = 10.0
    _deadline: asyncio.TimerHandle | None = None
    _between_requests = True  # a response ended (or none began) and no next request's headers came

    # Attributes of the uvicorn protocol this is mixed into.
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            # Debug only: under a slowloris attack this would be a line per connection.
            log.debug("closed a connection from %s: no complete request headers in time", self.client)
            self.transport.close()

    def _next_request_begun(self) -> bool:
        """Whether bytes of a next request were read already (pipelined behind the last one)."""
        raise NotImplementedError

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests and self._deadline is None:
            self._arm()  # the first byte of the next request on a kept-alive connection
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:
            self._between_requests = False
            self._disarm()

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()  # type: ignore[misc]
        # A pipelined request may have started in the call above (a new cycle, or httptools' queued one).
        if self.cycle is before and before.response_complete and not self.transport.is_closing():
            self._between_requests = True
            if self._next_request_begun():
                self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class H11WithHeaderTimeout(_HeaderDeadline, H11Protocol):
    def _next_request_begun(self) -> bool:
        return bool(self.conn.trailing_data[0])  # h11 holds unparsed bytes until the cycle ends


class HttpToolsWithHeaderTimeout(_HeaderDeadline, HttpToolsProtocol):
    # httptools parses as bytes arrive: a pipelined request has begun once its message began.
    _message_begun = False

    def _next_request_begun(self) -> bool:
        return self._message_begun

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_begun = True

    def on_headers_complete(self) -> None:
        self._message_begun = False
        super().on_headers_complete()


def protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn: httptools when installed (as uvicorn's "auto"), else h11."""
    base: type[_HeaderDeadline]
    try:
        import httptools  # noqa: F401

        base = HttpToolsWithHeaderTimeout
    except ImportError:  # pragma: no cover - httptools ships with uvicorn[standard]
        base = H11WithHeaderTimeout
    return type(base.__name__, (base,), {"header_timeout": settings.header_timeout_seconds})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config besides the app, host and port."""
    return {
        "http": protocol(settings),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": 16 * 1024,
        "log_config": None,
        "proxy_headers": True,
        "timeout_graceful_shutdown": 10,
    }
