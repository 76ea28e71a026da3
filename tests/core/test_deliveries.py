"""core.deliveries.claim: one statement records a batch of deliveries and says which are new."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import deliveries
from shipit.runtime import Runtime
from storage import models

pytestmark = pytest.mark.both_databases


async def test_claim_records_new_deliveries_once_with_their_kind_and_time(rt: Runtime) -> None:
    before = models.utcnow()
    async with rt.sessionmaker.begin() as session:
        assert await deliveries.claim(session, source="github", kinds={"a": "push.", "b": "x" * 80}) == {
            "a",
            "b",
        }
    async with rt.sessionmaker.begin() as session:
        # Already recorded ones are not new; a new one beside them is.
        assert await deliveries.claim(session, source="github", kinds={"a": "push.", "c": "push."}) == {"c"}
        assert not await deliveries.first_time(session, source="github", delivery_id="b")
    after = models.utcnow()
    async with rt.sessionmaker() as session:
        rows = {r.id: r for r in await session.scalars(select(models.WebhookDelivery))}
    assert set(rows) == {"github:a", "github:b", "github:c"}
    assert rows["github:b"].kind == "x" * 64 and rows["github:a"].source == "github"
    for row in rows.values():
        # Read back as the aware UTC datetime the column type gives, within the claim's time.
        assert row.received_at.tzinfo is not None and before <= row.received_at <= after
        assert row.finished_at == row.received_at
    # forget_older compares the stored times: nothing is older than an hour, everything is older than now.
    async with rt.sessionmaker.begin() as session:
        assert await deliveries.forget_older(session, prefix="github", seconds=3600) == 0
        assert await deliveries.forget_older(session, prefix="github", seconds=-1) == 3


async def test_a_batch_larger_than_one_statement_takes_is_claimed_whole(rt: Runtime) -> None:
    kinds = {f"d{i}": "push." for i in range(450)}
    async with rt.sessionmaker.begin() as session:
        assert await deliveries.claim(session, source="github", kinds=dict(list(kinds.items())[:200])) == {
            f"d{i}" for i in range(200)
        }
    async with rt.sessionmaker.begin() as session:
        assert await deliveries.claim(session, source="github", kinds=kinds) == {
            f"d{i}" for i in range(200, 450)
        }
