"""core.tasks.end: every task ends, whatever it does with its cancel; errors are logged, not raised."""

from __future__ import annotations

import asyncio

import pytest

from core import tasks
from tests.helpers import swallowing_cancels


async def test_a_task_that_swallows_its_cancel_is_cancelled_again(caplog: pytest.LogCaptureFixture) -> None:
    cancels: list[int] = []

    async def polite() -> None:
        await asyncio.sleep(3600)

    stubborn = asyncio.create_task(swallowing_cancels(2, cancels=cancels), name="stubborn")
    both = [stubborn, asyncio.create_task(polite(), name="polite")]
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.end(both, recancel_seconds=0.05), 30)
    assert all(t.cancelled() for t in both)
    assert len(cancels) == 3
    assert caplog.text.count("task stubborn did not end when cancelled; cancelling it again") == 2
    assert "polite" not in caplog.text


async def test_an_error_is_logged_and_shutdown_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    async def failed_before() -> None:
        raise ValueError("broke early")

    async def done() -> None:
        return None

    early = asyncio.create_task(failed_before(), name="early")
    finished = asyncio.create_task(done(), name="finished")
    late = asyncio.create_task(fails_on_cancel(), name="late")
    await asyncio.sleep(0.01)
    await tasks.end([early, finished, late])
    assert "task early had ended with an error: ValueError" in caplog.text
    assert "task late had ended with an error: RuntimeError" in caplog.text
    assert "finished" not in caplog.text
