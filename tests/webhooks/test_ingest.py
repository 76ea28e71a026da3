"""Group commit of deliveries: bursts share a transaction, answers stay exact, one failure stays alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.context import Core
from core.gitops import Outcome
from core.identity import SYSTEM
from shipit.runtime import Runtime
from storage import models
from tests.webhooks.conftest import (
    SHA_A,
    Hook,
    deployments,
    job_rows,
    make_app,
    offline_cluster,
    push_payload,
)
from webhooks.ingest import DUPLICATE, Ingest
from webhooks.table import Handler


@pytest.mark.both_databases
async def test_a_burst_of_deliveries_is_answered_one_by_one_and_deduplicated(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    shas = [f"{i:040x}" for i in range(1, 25)]
    ids = [str(uuid.uuid4()) for _ in shas]
    posts = [hook.post("push", push_payload(sha=sha), delivery=d) for sha, d in zip(shas, ids, strict=True)]
    posts += [hook.post("push", push_payload(sha=shas[0]), delivery=ids[0]) for _ in range(3)]
    answers = await asyncio.gather(*posts)
    results = [a.json()["result"] for a in answers]
    assert results.count("accepted") == 24
    assert results.count("duplicate") == 3
    rows = await deployments(hook.rt)
    assert len(rows) == 24
    # However the burst was cut into transactions, exactly one deploy is left queued: the newest.
    assert [d.status for d in rows].count("queued") == 1
    assert rows[-1].status == "queued"
    async with hook.rt.sessionmaker() as session:
        recorded = list(await session.scalars(select(models.WebhookDelivery.id)))
    assert sorted(recorded) == sorted(f"github:{d}" for d in ids)


def _handler(fail_on: str) -> Handler[Mapping[str, Any]]:
    async def run(session: AsyncSession, ctx: Core, parsed: Mapping[str, Any]) -> Outcome:
        await audit.record(session, actor=SYSTEM, action="test.ingest", target=str(parsed["name"]))
        if parsed["name"] == fail_on:
            raise RuntimeError("handler bug")
        return Outcome(summary=f"did {parsed['name']}")

    return Handler(parse=dict, run=run)


@pytest.mark.both_databases
async def test_one_failing_delivery_does_not_take_its_batch_down(rt: Runtime) -> None:
    ingest = Ingest()
    handler = _handler(fail_on="b")
    try:
        outcomes = await asyncio.gather(
            *[
                ingest.submit(
                    ctx=rt.core, delivery=f"d-{n}", kind="test", handler=handler, parsed={"name": n}
                )
                for n in ("a", "b", "c")
            ],
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], Outcome) and outcomes[0].summary == "did a"
        assert isinstance(outcomes[1], RuntimeError)
        assert isinstance(outcomes[2], Outcome) and outcomes[2].summary == "did c"
        async with rt.sessionmaker() as session:
            recorded = set(await session.scalars(select(models.WebhookDelivery.id)))
            targets = sorted(await session.scalars(select(models.AuditEvent.target)))
        assert recorded == {"github:d-a", "github:d-c"}  # d-b never committed: its redelivery will run
        assert targets == ["a", "c"]

        again = await ingest.submit(
            ctx=rt.core, delivery="d-b", kind="test", handler=_handler(fail_on="-"), parsed={"name": "b"}
        )
        assert isinstance(again, Outcome)
        done = await ingest.submit(
            ctx=rt.core, delivery="d-a", kind="test", handler=handler, parsed={"name": "a"}
        )
        assert done is DUPLICATE
    finally:
        await ingest.close()


async def test_a_delivery_whose_client_went_away_is_still_recorded_once(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    ingest = Ingest()
    try:
        from webhooks import table

        handler = table.HANDLERS[("push", None)]
        parsed = handler.parse(push_payload(sha=SHA_A))
        task = asyncio.create_task(
            ingest.submit(ctx=hook.rt.core, delivery="gone", kind="push.", handler=handler, parsed=parsed)
        )
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await ingest.submit(
            ctx=hook.rt.core, delivery="gone", kind="push.", handler=handler, parsed=parsed
        )
        # Either the cancelled submission committed first (then this is a duplicate) or it was dropped
        # before its batch ran (then this one deploys): never both, never neither.
        assert len(await deployments(hook.rt)) == 1
        assert len(await job_rows(hook.rt, kind="deploy")) == 1
        assert result is DUPLICATE or isinstance(result, Outcome)
    finally:
        await ingest.close()


async def test_closing_answers_deliveries_that_were_not_recorded(rt: Runtime) -> None:
    ingest = Ingest()
    waiting = asyncio.create_task(
        ingest.submit(
            ctx=rt.core, delivery="late", kind="test", handler=_handler(fail_on="-"), parsed={"name": "x"}
        )
    )
    await asyncio.sleep(0)  # queued; the writer has not run yet
    await ingest.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        await waiting
    async with rt.sessionmaker() as session:
        assert list(await session.scalars(select(models.WebhookDelivery.id))) == []
    # The channel comes back on the next delivery.
    again = await ingest.submit(
        ctx=rt.core, delivery="late", kind="test", handler=_handler(fail_on="-"), parsed={"name": "x"}
    )
    assert isinstance(again, Outcome)
    await ingest.close()
