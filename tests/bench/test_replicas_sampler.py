"""bench.replicas' sampler of PostgreSQL backends: the CPU of a backend that starts and ends while the
load runs is counted (a pool that closes a connection and opens another must not hide its backends' CPU).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bench import replicas
from tests.conftest import POSTGRES_URL

pytestmark = [
    pytest.mark.skipif(not POSTGRES_URL, reason="needs SHIPIT_TEST_POSTGRES_URL"),
    pytest.mark.parametrize("db_backend", ["postgres"], indirect=True),
]
# A statement that keeps its backend busy on the CPU for a good fraction of a second.
BUSY = "SELECT count(*) FROM generate_series(1, 4000000) AS g(i) WHERE i % 7 = 3"


async def test_a_backend_that_comes_and_goes_within_the_window_is_counted(db_url: str) -> None:
    sampler = replicas.Sampler(db_url)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    try:
        while not sampler.samples:
            await asyncio.sleep(0.01)
        conn = await asyncpg.connect(replicas._asyncpg_dsn(db_url))
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        while pid not in sampler.backends:  # seen once, as a pool's new connection would be
            await asyncio.sleep(0.01)
        for _ in range(3):
            await conn.fetchval(BUSY)
        worked = replicas.cpu_seconds(pid)
        while sampler.last.get(pid, 0.0) < worked:  # sampled after its work
            await asyncio.sleep(0.01)
        await conn.close()
        while replicas.cpu_seconds(pid):  # the backend has gone
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await sampling
    assert sampler.started_seen >= 1
    # Its CPU is counted although it is gone: what its last sample read.
    assert worked >= 0.1
    assert sampler.backend_cpu() >= worked
