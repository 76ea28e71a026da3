"""The app's lifespan sets the cyclic collector up for serving, and puts it back when it stops."""

from __future__ import annotations

import gc

import httpx

from shipit.app import GC_YOUNG_THRESHOLD
from shipit.main import create_app
from shipit.settings import Settings
from tests.conftest import serving as serve_app


async def test_serving_freezes_start_up_and_collects_the_young_generation_less_often(
    settings: Settings,
) -> None:
    before = gc.get_threshold()
    assert before[0] != GC_YOUNG_THRESHOLD
    async with serve_app(create_app(settings.model_copy(update={"run_worker": False}))) as url:
        async with httpx.AsyncClient(timeout=30, base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
