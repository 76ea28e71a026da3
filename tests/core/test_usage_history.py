"""Usage history on the real database: the per-window summary and its right-sizing hints over rows
with known values, one row per app and slot, and retention of old samples."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from core import apps, retention, usage_history
from core.usage_history import History, Window
from shipit import runtime
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN

pytestmark = pytest.mark.both_databases

MI = 2**20
NOW = dt.datetime(2026, 12, 5, 12, 0, 30, tzinfo=dt.UTC)


async def _app_id(rt: Runtime, name: str = "web") -> int:
    async with rt.sessionmaker() as session:
        found = await session.scalar(select(models.App.id).where(models.App.name == name))
    assert found is not None
    return found


async def _samples(rt: Runtime, app_id: int, rows: list[tuple[dt.timedelta, int, float, int]]) -> None:
    async with rt.sessionmaker.begin() as session:
        session.add_all(
            models.UsageSample(
                app_id=app_id, sampled_at=NOW - ago, pods=pods, cpu_millicores=cpu, memory_bytes=memory
            )
            for ago, pods, cpu, memory in rows
        )


async def _summary(rt: Runtime, app_id: int, *, cpu: tuple[str, str], memory: tuple[str, str]) -> History:
    async with rt.sessionmaker() as session:
        return await usage_history.summary(
            session,
            app_id=app_id,
            cpu_request=cpu[0],
            cpu_limit=cpu[1],
            memory_request=memory[0],
            memory_limit=memory[1],
            now=NOW,
        )


def test_slots_start_on_multiples_of_the_period() -> None:
    assert usage_history.slot_of(NOW, every=60) == dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
    assert usage_history.slot_of(NOW + dt.timedelta(seconds=29.9), every=60) == usage_history.slot_of(
        NOW, every=60
    )
    assert usage_history.slot_of(NOW, every=300) == dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
    assert usage_history.slot_of(NOW, every=20) == dt.datetime(2026, 12, 5, 12, 0, 20, tzinfo=dt.UTC)


async def test_windows_average_and_peak_the_totals_and_hint_from_the_24h_peak(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    minutes, hours, days = (
        (lambda n: dt.timedelta(minutes=n)),
        (lambda n: dt.timedelta(hours=n)),
        (lambda n: dt.timedelta(days=n)),
    )
    await _samples(
        rt,
        web,
        [
            (minutes(10), 2, 40.0, 60 * MI),
            (minutes(30), 2, 80.0, 100 * MI),
            (hours(5), 4, 400.0, 200 * MI),  # the 24h peak in total: 100m and 50Mi per pod
            (days(3), 1, 900.0, 10 * MI),
            (days(8), 9, 9000.0, 900 * MI),  # older than every window
        ],
    )
    got = await _summary(rt, web, cpu=("500m", "1"), memory=("128Mi", "256Mi"))
    assert got.windows == [
        Window(
            window="1h", samples=2, cpu_average_millicores=60.0, cpu_peak_millicores=80.0,
            memory_average_bytes=80 * MI, memory_peak_bytes=100 * MI, max_pods=2,
        ),
        Window(
            window="24h", samples=3, cpu_average_millicores=173.333, cpu_peak_millicores=400.0,
            memory_average_bytes=120 * MI, memory_peak_bytes=200 * MI, max_pods=4,
        ),
        Window(
            window="7d", samples=4, cpu_average_millicores=355.0, cpu_peak_millicores=900.0,
            memory_average_bytes=round(370 * MI / 4), memory_peak_bytes=200 * MI, max_pods=4,
        ),
    ]  # fmt: skip
    # Per pod, the 24h peak is 100m of 500m requested and 50Mi of 128Mi: both under half.
    assert got.hints == [
        "CPU: requests 500m per pod, 24h peak 100m per pod (400m at most in total): requests could be lowered",
        "Memory: requests 128Mi per pod, 24h peak 50.0Mi per pod (200.0Mi at most in total): "
        "requests could be lowered",
    ]
    # Exactly half of the request is not under half: no hint; a little more request, and there is.
    edge = await _summary(rt, web, cpu=("200m", "1"), memory=("100Mi", "256Mi"))
    assert edge.hints == []
    above = await _summary(rt, web, cpu=("201m", "1"), memory=("101Mi", "256Mi"))
    assert [h.split(":")[0] for h in above.hints] == ["CPU", "Memory"]
    # 90 % of the limit is not over it; above it, the limit could be raised (and no "lower" besides).
    at_limit = await _summary(rt, web, cpu=("100m", "1000m"), memory=("50Mi", "512Mi"))
    assert at_limit.hints == []
    near = await _summary(rt, web, cpu=("100m", "111m"), memory=("50Mi", "55Mi"))
    assert near.hints == [
        "CPU: limit 111m per pod, 24h peak 100m per pod (400m at most in total): over 90% of the limit, "
        "it could be raised",
        "Memory: limit 55Mi per pod, 24h peak 50.0Mi per pod (200.0Mi at most in total): over 90% of the "
        "limit, it could be raised",
    ]
    # No request set (0): nothing to compare with.
    assert (await _summary(rt, web, cpu=("0", "0"), memory=("0", "0"))).hints == []


async def test_only_windows_with_samples_are_shown_and_hints_need_the_24h_window(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    assert await _summary(rt, web, cpu=("500m", "1"), memory=("128Mi", "256Mi")) == History(
        windows=[], hints=[]
    )
    await _samples(rt, web, [(dt.timedelta(days=2), 1, 5.0, MI)])
    got = await _summary(rt, web, cpu=("500m", "1"), memory=("128Mi", "256Mi"))
    assert [w.window for w in got.windows] == ["7d"] and got.hints == []
    # A window's edge: a sample exactly 1 h old is no longer in the last hour.
    await _samples(rt, web, [(dt.timedelta(hours=1), 1, 5.0, MI)])
    got = await _summary(rt, web, cpu=("500m", "1"), memory=("128Mi", "256Mi"))
    assert [(w.window, w.samples) for w in got.windows] == [("24h", 1), ("7d", 2)]


async def test_one_sample_per_app_and_slot_and_they_go_with_the_app(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    await _samples(rt, web, [(dt.timedelta(0), 1, 5.0, MI)])
    with pytest.raises(IntegrityError):
        await _samples(rt, web, [(dt.timedelta(0), 2, 7.0, MI)])
    async with rt.sessionmaker.begin() as session:
        await apps.delete(session, actor=ADMIN, name="web")
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(models.UsageSample)) == 0


async def test_retention_prunes_old_samples_in_batches(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    now = models.utcnow()
    old = [(NOW - now + dt.timedelta(days=15, minutes=i), 1, 1.0, MI) for i in range(5)]
    recent = [(NOW - now + dt.timedelta(days=13, minutes=i), 1, 1.0, MI) for i in range(2)]
    await _samples(rt, web, old + recent)
    off = {"jobs_seconds": None, "events_seconds": None, "deliveries_seconds": None, "builds_seconds": None}
    policy = retention.Policy(**off, usage_seconds=14 * 86400, batch=2)
    assert await retention.prune(rt.sessionmaker, policy=policy, now=now) == retention.Pruned(usage_samples=5)
    async with rt.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(models.UsageSample)) == 2
    assert await retention.prune(rt.sessionmaker, policy=policy, now=now) == retention.Pruned()
    forever = retention.Policy(**off, usage_seconds=None)
    assert (
        await retention.prune(rt.sessionmaker, policy=forever, now=now + dt.timedelta(days=100))
        == retention.Pruned()
    )


def test_usage_settings_reach_the_policy(settings: Settings) -> None:
    assert settings.usage_sample_seconds == 60
    assert runtime.retention_policy(settings).usage_seconds == 14 * 86400
    off = settings.model_copy(update={"retention_usage_days": 0})
    assert runtime.retention_policy(off).usage_seconds is None
