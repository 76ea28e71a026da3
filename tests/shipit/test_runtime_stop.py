"""shipit.runtime.stop: shutdown ends even when a background loop swallows its cancel."""

from __future__ import annotations

import asyncio

import pytest

from shipit import runtime
from shipit.settings import Settings
from tests.helpers import swallowing_cancels


async def test_stop_ends_a_background_task_that_swallowed_its_cancel(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop that takes its cancel for a failed pass and goes on (as the maintenance loop did when a
    database library turned the cancel into an error) is cancelled again until it ends."""
    rt = await runtime.build(settings)
    cancels: list[int] = []
    task = asyncio.create_task(swallowing_cancels(1, cancels=cancels), name="stubborn-loop")
    rt.background.append(task)
    await asyncio.sleep(0)
    await asyncio.wait_for(runtime.stop(rt), 30)
    assert task.cancelled() and cancels == [1, 2]
    assert "task stubborn-loop did not end when cancelled" in caplog.text
