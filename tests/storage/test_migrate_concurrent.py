"""Replicas start together (and each runs `shipit db upgrade` in an init container): on PostgreSQL the
migrations must run once, the others waiting on the advisory lock, and every caller end at head."""

from __future__ import annotations

import asyncio

import pytest

from storage import db, migrate
from tests.conftest import POSTGRES_URL, _drop_postgres, _fresh_postgres


@pytest.mark.skipif(not POSTGRES_URL, reason="SHIPIT_TEST_POSTGRES_URL is not set")
async def test_concurrent_upgrades_on_postgresql_all_end_at_head() -> None:
    assert POSTGRES_URL
    url, name = await _fresh_postgres(POSTGRES_URL)
    engines = [db.create_engine(url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate.upgrade(e) for e in engines))
        heads = {await migrate.current(e) for e in engines}
        assert len(heads) == 1 and None not in heads
        # Again, all at once: nothing left to do, nothing fails.
        await asyncio.gather(*(migrate.upgrade(e) for e in engines))
    finally:
        for e in engines:
            await e.dispose()
        await _drop_postgres(POSTGRES_URL, name)
