"""shipit.app._within: the body cap's wait for the next body message, with its timer armed only when the
message is not there at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shipit.app import _within

BODY = {"type": "http.request", "body": b"{}", "more_body": False}


async def test_a_message_that_is_there_is_returned() -> None:
    async def receive() -> dict[str, Any]:
        return BODY

    assert await _within(receive, 30) == BODY


async def test_a_message_that_comes_later_is_returned_after_each_wait() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()
    second: asyncio.Future[bytes] = loop.create_future()

    async def receive() -> dict[str, Any]:
        kind = await first
        await asyncio.sleep(0)
        body = await second
        return {"type": kind, "body": body, "more_body": False}

    loop.call_soon(first.set_result, "http.request")
    loop.call_later(0.01, second.set_result, b"late")
    assert await _within(receive, 30) == {"type": "http.request", "body": b"late", "more_body": False}


async def test_a_message_that_never_comes_times_out_and_the_wait_is_closed() -> None:
    ended: list[str] = []

    async def receive() -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("receive")
        raise AssertionError("unreachable")

    with pytest.raises(TimeoutError):
        await _within(receive, 0.05)
    assert ended == ["receive"]


async def test_the_callers_cancellation_reaches_the_wait_and_is_not_a_timeout() -> None:
    started = asyncio.Event()
    seen: list[type[BaseException]] = []

    async def receive() -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()
        except BaseException as e:
            seen.append(type(e))
            raise
        raise AssertionError("unreachable")

    task = asyncio.create_task(_within(receive, 30))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [asyncio.CancelledError]


async def test_a_wait_that_handles_the_cancellation_returns_its_message() -> None:
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return {"type": "http.disconnect"}
        raise AssertionError("unreachable")

    task = asyncio.create_task(_within(receive, 30))
    await started.wait()
    task.cancel()
    assert await task == {"type": "http.disconnect"}
