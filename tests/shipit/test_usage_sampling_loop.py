"""The runtime's maintenance loop runs the usage sampling pass on its own every
SHIPIT_USAGE_SAMPLE_SECONDS: a deployed app's sample shows up without anyone asking, and so does the
hourly rollup of a completed hour's samples."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from sqlalchemy import select

from core import usage_history
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

    # A sample in the last hour a pass may roll up now, of an app with none (never deployed, so the
    # loop's own passes neither sample it nor roll up its hours): the loop rolls its hour up.
    r = await api.post(
        "/api/v1/apps", json={"name": "idle", "project": world.project, "cluster": world.cluster}
    )
    assert r.status_code == 201, r.text
    hour = usage_history.slot_of(models.utcnow() - usage_history.ROLLUP_GRACE, every=3600) - dt.timedelta(
        hours=1
    )
    async with live_server.rt.sessionmaker.begin() as session:
        idle = await session.scalar(select(models.App.id).where(models.App.name == "idle"))
        assert idle is not None
        session.add(models.UsageSample(app_id=idle, sampled_at=hour + dt.timedelta(minutes=7), pods=2,
                                       cpu_millicores=30.0, memory_bytes=MEMORY_PER_POD))  # fmt: skip

    async def rolled() -> list[tuple[dt.datetime, int, float]]:
        h = models.UsageHourly
        async with live_server.rt.sessionmaker() as session:
            rows = await session.execute(select(h.hour, h.samples, h.cpu_peak_per_pod).where(h.hour == hour))
            return [(at, n, cpu) for at, n, cpu in rows]

    assert await eventually(rolled, bool, timeout=30, what="the hour rolled up by the runtime") == [
        (hour, 1, 15.0)
    ]
