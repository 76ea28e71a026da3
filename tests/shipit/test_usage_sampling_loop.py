"""The runtime's maintenance loop runs the usage sampling pass on its own every
SHIPIT_USAGE_SAMPLE_SECONDS: a deployed app's sample shows up without anyone asking."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from shipit.settings import Settings
from storage import models
from tests.conftest import LiveServer, World
from tests.helpers import eventually
from tests.shipit.cluster_apps import deployed_app
from tests.shipit.test_usage import MEMORY_PER_POD, METRICS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"usage_sample_seconds": 2})


async def test_the_maintenance_loop_samples_deployed_apps(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    await deployed_app(api, world)

    async def samples() -> list[tuple[int, int]]:
        async with live_server.rt.sessionmaker() as session:
            rows = await session.execute(select(models.UsageSample.pods, models.UsageSample.memory_bytes))
            return [(p, m) for p, m in rows]

    got = await eventually(samples, bool, timeout=METRICS, what="a sample stored by the runtime")
    assert got[0] == (1, MEMORY_PER_POD)
