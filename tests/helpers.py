"""Small helpers shared by test modules of every package."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, what: str = "", timeout: float = 30.0, interval: float = 0.1
) -> T: ...
@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    what: str = "",
    timeout: float = 30.0,
    interval: float = 0.1,
) -> T: ...
async def eventually(
    probe: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool] = bool,
    *,
    what: str = "",
    timeout: float = 30.0,
    interval: float = 0.1,
) -> Any:
    """Poll `probe` until `accept` (by default: truthy) holds of what it returns, and return that.

    A deadline, never a timing assertion: past `timeout` it fails with the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = await probe()
        if accept(last):
            return last
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}; last seen: {last!r}")
        await asyncio.sleep(interval)


# Held for the whole test session: a bound socket that never listens refuses every connection at once,
# and no other process can take its port meanwhile (a port merely closed again can be re-bound by any
# server started later, and a TLS client would then wait for a handshake until its timeout).
_REFUSING: list[socket.socket] = []


def refused_port() -> int:
    """A loopback port where every connection is refused, for the whole test session."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _REFUSING.append(s)
    port: int = s.getsockname()[1]
    return port


async def swallowing_cancels(times: int, *, cancels: list[int]) -> None:
    """A task that does not end when cancelled, as a loop does that takes the error a library turned
    its cancel into for a failed pass and goes on: it sleeps for ever, goes on after each of the first
    `times` cancels and ends on the next.  Each cancel is appended to `cancels`."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancels.append(len(cancels) + 1)
            if len(cancels) > times:
                raise
