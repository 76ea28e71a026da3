"""shipit.runtime.stop: shutdown ends even when a background loop swallows its cancel."""

from __future__ import annotations

import asyncio

import pytest

from shipit import runtime
from shipit.settings import Settings


async def test_stop_ends_a_background_task_that_swallowed_its_cancel(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop that takes its cancel for a failed pass and goes on (as the maintenance loop did when a
    database library turned the cancel into an error) is cancelled again until it ends."""
    rt = await runtime.build(settings)
    swallowed: list[str] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append("once")

    task = asyncio.create_task(stubborn(), name="stubborn-loop")
    rt.background.append(task)
    await asyncio.sleep(0)
    await asyncio.wait_for(runtime.stop(rt), 30)
    assert task.cancelled() and swallowed == ["once"]
    assert "task stubborn-loop did not end when cancelled" in caplog.text
