"""Duplicate deliveries (GitHub redeliveries, Slack retries, double clicks) never act twice.

The delivery id is recorded in the same transaction as the work it causes, so
a delivery that committed is answered and dropped when it comes again, while
one that never finished (its transaction rolled back) runs when redelivered.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage import models


async def first_time(session: AsyncSession, *, source: str, delivery_id: str, kind: str = "") -> bool:
    """Record the delivery; False if it was recorded before (the caller answers and does nothing)."""
    key = f"{source}:{delivery_id}"[:200]
    if await session.scalar(select(models.WebhookDelivery.id).where(models.WebhookDelivery.id == key)):
        return False
    try:
        async with session.begin_nested():
            session.add(
                models.WebhookDelivery(id=key, source=source, kind=kind[:64], finished_at=models.utcnow())
            )
            await session.flush()
    except IntegrityError:
        return False
    return True
