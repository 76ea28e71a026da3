"""Group commit for webhook deliveries: deliveries that arrive together share one transaction.

Every delivery must be durably recorded (dedupe) together with the work it
queues before it is answered.  One transaction per delivery makes a burst of
deliveries queue up behind each other's commits (on SQLite all writes are
serialised anyway), so a single writer task takes whatever deliveries are
waiting, runs them in one transaction, commits once, and only then answers
each one.  Alone, a delivery is its own batch, so nothing waits for company.

The batch records its delivery ids with one INSERT ... ON CONFLICT DO NOTHING RETURNING, which
also tells which of them are new.  If
anything in a batch fails (a handler bug, or another replica recording the
same delivery at the same moment), the batch is rolled back and each delivery
is run again in its own transaction with `deliveries.first_time`, so one bad
delivery never takes the others down and the dedupe stays exact.

A batch is all or nothing (core.gitops.all_or_nothing): its deploys run without a SAVEPOINT each,
and one that is refused (a deploy window, a freeze) fails the batch with `gitops.RunAlone`; run
alone, each delivery's refused deploys are rolled back to their savepoint and answered as skipped.
Before the handlers run, each handler with a `prepare` gets all of its new deliveries at once (the
pushes' dedupe keys, looked up in one SELECT); after them, `gitops.finish` writes what the batch's
deploy requests left for the whole batch (one supersede, one audit INSERT, one prune per app).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from core import deliveries, gitops, tasks
from core.context import Core
from core.gitops import Outcome
from webhooks.table import Handler

log = logging.getLogger(__name__)

SOURCE = "github"
MAX_BATCH = 128
SHUTTING_DOWN = "shipit is shutting down; the delivery was not recorded"


@dataclass(frozen=True, kw_only=True)
class Duplicate:
    """The delivery was handled before; nothing was done."""


DUPLICATE = Duplicate()


@dataclass(kw_only=True)
class _Item:
    ctx: Core
    delivery: str
    kind: str
    handler: Handler[Any]
    parsed: Any
    done: asyncio.Future[Outcome | Duplicate] = field(repr=False)


class _Pending:
    """The deliveries waiting for the writer, and the one future the writer sleeps on when there are
    none (issue 13: asyncio.Queue's getter futures and bookkeeping cost more per delivery than this)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: _Item) -> None:
        self.items.append(item)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until there is a delivery to take."""
        while not self.items:
            self.waiter = loop.create_future()
            await self.waiter

    def take(self, limit: int) -> list[_Item]:
        items = self.items
        return [items.popleft() for _ in range(min(limit, len(items)))]


class Ingest:
    def __init__(self, *, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._pending: _Pending | None = None
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = self.batched = 0  # transactions run and deliveries in them (benches print them)

    async def submit(
        self, *, ctx: Core, delivery: str, kind: str, handler: Handler[Any], parsed: Any
    ) -> Outcome | Duplicate:
        """Record the delivery and run its handler; returns once the transaction has committed."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        if pending is None or self._writer is None or self._writer.done() or self._loop is not loop:
            pending, self._loop = _Pending(), loop
            self._pending = pending
            self._writer = loop.create_task(self._write(pending, loop), name="github-ingest-writer")
        item = _Item(
            ctx=ctx, delivery=delivery, kind=kind, handler=handler, parsed=parsed, done=loop.create_future()
        )
        pending.put(item)
        return await item.done

    async def close(self) -> None:
        """Stop the writer; deliveries not yet committed are answered with an error (GitHub may redeliver)."""
        if self._writer is not None and self._loop is asyncio.get_running_loop():
            await tasks.end([self._writer])
            # A writer cancelled before it first ran never saw its deliveries: answer those too.
            if self._pending is not None:
                for item in self._pending.take(len(self._pending.items)):
                    _settle(item, exception=RuntimeError(SHUTTING_DOWN))
        self._writer = None

    async def _write(self, pending: _Pending, loop: asyncio.AbstractEventLoop) -> None:
        batch: list[_Item] = []
        try:
            while True:
                batch = []
                await pending.wait(loop)
                batch = pending.take(self.max_batch)
                live = [i for i in batch if not i.done.done()]  # the client may have gone away
                for ctx_batch in _by_ctx(live):
                    self.batches += 1
                    self.batched += len(ctx_batch)
                    await self._run(ctx_batch)
        except asyncio.CancelledError:
            # Shutting down: whatever did not commit is rolled back; say so instead of hanging.
            batch += pending.take(len(pending.items))
            for item in batch:
                _settle(item, exception=RuntimeError(SHUTTING_DOWN))
            raise

    async def _run(self, batch: list[_Item]) -> None:
        try:
            results = await _together(batch)
        except gitops.RunAlone as e:
            log.info(
                "github ingest: a deploy in a batch of %d was refused (%s); running each alone", len(batch), e
            )
            await self._each_alone(batch)
            return
        except Exception:
            if len(batch) > 1:
                log.warning(
                    "github ingest: a batch of %d failed; running each alone", len(batch), exc_info=True
                )
            await self._each_alone(batch)
            return
        for item, result in zip(batch, results, strict=True):
            _settle(item, result=result)

    async def _each_alone(self, batch: list[_Item]) -> None:
        for item in batch:
            try:
                result = await _alone(item)
            except Exception as e:
                _settle(item, exception=e)
            else:
                _settle(item, result=result)


def _by_ctx(items: list[_Item]) -> list[list[_Item]]:
    groups: dict[int, list[_Item]] = {}
    for item in items:
        groups.setdefault(id(item.ctx), []).append(item)
    return list(groups.values())


def _settle(
    item: _Item, *, result: Outcome | Duplicate | None = None, exception: Exception | None = None
) -> None:
    if item.done.done():
        return
    if exception is not None:
        item.done.set_exception(exception)
    else:
        assert result is not None
        item.done.set_result(result)


async def _together(batch: list[_Item]) -> list[Outcome | Duplicate]:
    ctx = batch[0].ctx
    results: list[Outcome | Duplicate] = []
    async with ctx.sessionmaker.begin() as session:
        kinds: dict[str, str] = {}
        for item in batch:
            kinds.setdefault(item.delivery, item.kind)
        new = await deliveries.claim(session, source=SOURCE, kinds=kinds)
        gitops.all_or_nothing(session)
        runs: list[_Item | None] = []
        for item in batch:
            if item.delivery not in new:
                runs.append(None)
                continue
            new.discard(item.delivery)  # a second copy in the same batch is a duplicate
            runs.append(item)
        prepared: dict[int, tuple[Handler[Any], list[Any]]] = {}
        for run in runs:
            if run is not None and run.handler.prepare is not None:
                prepared.setdefault(id(run.handler), (run.handler, []))[1].append(run.parsed)
        for handler, parsed in prepared.values():
            assert handler.prepare is not None
            await handler.prepare(session, parsed)
        for run in runs:
            results.append(DUPLICATE if run is None else await run.handler.run(session, ctx, run.parsed))
        await gitops.finish(session)  # the batch's deferred rows, before the commit
    return results


async def _alone(item: _Item) -> Outcome | Duplicate:
    async with item.ctx.sessionmaker.begin() as session:
        if not await deliveries.first_time(session, source=SOURCE, delivery_id=item.delivery, kind=item.kind):
            return DUPLICATE
        return await item.handler.run(session, item.ctx, item.parsed)
