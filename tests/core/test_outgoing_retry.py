"""Every notice target (webhook, Teams, Discord) honours the receiver's Retry-After, in seconds or as an HTTP-date (a real HTTP server)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from core.errors import TransientError
from core.notices import TargetView, delivery
from tests.conftest import serving_posts


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[web.Response]]]:
    """A loopback HTTP server answering with the responses queued in the returned list."""
    answers: list[web.Response] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return answers.pop(0)

    async with serving_posts(hook) as url:
        yield f"{url}/hook", answers


def _target(url: str) -> TargetView:
    return TargetView(
        id=7,
        project_id=1,
        kind="webhook",
        address=url,
        environment=None,
        events="*",
        format="",
        has_secret=False,
    )


async def test_retry_after_in_seconds_as_a_date_or_missing(receiver: tuple[str, list[web.Response]]) -> None:
    url, answers = receiver
    client = delivery.client()
    target = _target(url)

    async def send() -> httpx.Response:
        return await delivery.post(client, target=target, content=b"{}", headers={})

    try:
        answers.append(web.Response(status=429, headers={"Retry-After": "7"}))
        with pytest.raises(TransientError) as seconds:
            await send()
        assert seconds.value.retry_after == 7.0

        later = email.utils.formatdate(time.time() + 90, usegmt=True)
        answers.append(web.Response(status=503, headers={"Retry-After": later}))
        with pytest.raises(TransientError) as date:
            await send()
        assert date.value.retry_after is not None and 60 < date.value.retry_after <= 91

        answers.append(web.Response(status=500))
        with pytest.raises(TransientError) as missing:
            await send()
        assert missing.value.retry_after is None  # the queue's own backoff applies

        answers.append(web.Response(status=204))
        assert (await send()).status_code == 204
    finally:
        await client.aclose()
