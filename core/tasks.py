"""Ending background tasks at shutdown, so that a stop never hangs on one of them.

A cancel is only a request: a task may turn it into an ordinary error (a library that raises something
else from its cleanup; session 24's CI hung 300 s on such a loop, see core.readcache._forget) and, if
it catches errors in a loop, go on as if nothing happened.  `end` cancels again until the task ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# How long a cancelled task is given before it is cancelled again.
RECANCEL_SECONDS = 1.0


async def end(tasks: Iterable[asyncio.Task[Any]], *, recancel_seconds: float = RECANCEL_SECONDS) -> None:
    """Cancel `tasks` and wait until every one has ended.  A task still running `recancel_seconds`
    after its cancel is cancelled again (with a warning naming it); one that ended with an error other
    than its cancel is logged, not raised: shutdown goes on to the next thing to close."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=recancel_seconds)
        for task in pending:
            log.warning("task %s did not end when cancelled; cancelling it again", task.get_name())
            task.cancel()
    for task in tasks:
        _retrieve(task)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.warning(
            "task %s had ended with an error: %s", task.get_name(), type(error).__name__, exc_info=error
        )
