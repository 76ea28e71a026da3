"""Usage history on the real database: the per-window summary and its right-sizing hints over rows
with known values, one row per app and slot, the hourly rollups behind the 30d window, and retention
of old samples and rollups."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, event, func, select, text
from sqlalchemy.exc import IntegrityError

from core import apps, dialects, retention, usage_history
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
    assert runtime.retention_policy(settings).usage_hourly_seconds == 90 * 86400
    keep = settings.model_copy(update={"retention_usage_hourly_days": 0})
    assert runtime.retention_policy(keep).usage_hourly_seconds is None


# ---------------------------------------------------------------------------
# Hourly rollups and the 30d window

HOUR = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)  # NOW's hour


def _before_hour(*, days: int = 0, minutes: int = 0) -> dt.timedelta:
    """For `_samples` (which counts back from NOW): a sample this long before HOUR."""
    return NOW - HOUR + dt.timedelta(days=days, minutes=minutes)


async def _second_app(rt: Runtime) -> int:
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="paper", name="api", namespace="api",
            changes=apps.AppChanges(image="ghcr.io/acme/api:1.0"),
        )  # fmt: skip
    return await _app_id(rt, "api")


async def _roll_up(rt: Runtime, *, now: dt.datetime, lookback: dt.timedelta | None = None) -> int:
    async with rt.sessionmaker.begin() as session:
        if dialects.is_postgres(session):
            # A session zone off UTC by half an hour: the hours must still be UTC hours.
            await session.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))
        return await usage_history.roll_up(session, now=now, lookback=lookback)


async def _hourly(rt: Runtime) -> list[tuple[object, ...]]:
    h = models.UsageHourly
    async with rt.sessionmaker() as session:
        rows = await session.execute(
            select(
                h.app_id, h.hour, h.samples, h.cpu_sum_millicores, h.cpu_peak_millicores, h.memory_sum_bytes,
                h.memory_peak_bytes, h.max_pods, h.cpu_peak_per_pod, h.memory_peak_per_pod,
            ).order_by(h.hour, h.app_id)
        )  # fmt: skip
        return [tuple(r) for r in rows]


async def test_completed_hours_roll_up_once_into_sums_and_peaks(paper: Runtime) -> None:
    rt = paper
    web, api = await _app_id(rt), await _second_app(rt)
    await _samples(
        rt,
        web,
        [
            (_before_hour(minutes=120), 2, 40.0, 60 * MI),  # 10:00, the hour's first slot
            (_before_hour(minutes=90), 4, 100.0, 100 * MI),  # 10:30: peak in total, 25m and 25Mi per pod
            (_before_hour(minutes=61), 1, 30.0, 70 * MI),  # 10:59: the per-pod peaks, 30m and 70Mi
            (_before_hour(minutes=45), 3, 90.0, 90 * MI),  # 11:15
            (_before_hour(minutes=1), 3, 60.5, 30 * MI),  # 11:59
            (_before_hour(minutes=0), 1, 5.0, MI),  # 12:00: the current hour
        ],
    )
    await _samples(rt, api, [(_before_hour(minutes=100), 2, 10.0, 8 * MI)])  # 10:20, another app's hour 10
    ten, eleven = HOUR - dt.timedelta(hours=2), HOUR - dt.timedelta(hours=1)
    hour_ten_web = (web, ten, 3, 170.0, 100.0, 230.0 * MI, 100 * MI, 4, 30.0, 70.0 * MI)
    hour_ten_api = (api, ten, 1, 10.0, 10.0, 8.0 * MI, 8 * MI, 2, 5.0, 4.0 * MI)
    hour_eleven_web = (web, eleven, 2, 150.5, 90.0, 120.0 * MI, 90 * MI, 3, 30.0, 30.0 * MI)
    # Hour 11 ended at 12:00, but a pass begun in its last slot may still be storing it: not before 12:05.
    assert await _roll_up(rt, now=HOUR + dt.timedelta(minutes=4, seconds=59)) == 2
    assert await _hourly(rt) == [hour_ten_web, hour_ten_api]
    assert await _roll_up(rt, now=HOUR + dt.timedelta(minutes=5)) == 1
    rolled = [hour_ten_web, hour_ten_api, hour_eleven_web]
    assert await _hourly(rt) == rolled  # the current hour (12) is not rolled up
    # Again (the next pass, another replica's): nothing new, no double.
    assert await _roll_up(rt, now=HOUR + dt.timedelta(minutes=6)) == 0
    assert await _hourly(rt) == rolled
    # Two replicas at once: one row per app and hour.
    later = HOUR + dt.timedelta(hours=1, minutes=5)
    both = [await _roll_up(rt, now=later) for _ in range(2)]
    assert both == [1, 0]
    assert [r[:3] for r in await _hourly(rt)][-1] == (web, HOUR, 1)
    # Deleting an app deletes its rollups.
    async with rt.sessionmaker.begin() as session:
        await apps.delete(session, actor=ADMIN, name="web")
    assert [r[0] for r in await _hourly(rt)] == [api]


async def test_a_first_rollup_reads_back_only_the_lookback(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    days = [_before_hour(days=15), _before_hour(days=13), _before_hour(days=1)]
    await _samples(rt, web, [(days[0], 1, 1.0, MI), (days[1], 1, 2.0, MI), (days[2], 1, 3.0, MI)])
    assert await _roll_up(rt, now=HOUR, lookback=dt.timedelta(days=14)) == 2
    assert [r[3] for r in await _hourly(rt)] == [2.0, 3.0]
    # No lookback (raw samples kept for ever): all of them, once.
    assert await _roll_up(rt, now=HOUR, lookback=None) == 0  # the newest rolled hour bounds it now
    async with rt.sessionmaker.begin() as session:
        await session.execute(delete(models.UsageHourly))
    assert await _roll_up(rt, now=HOUR, lookback=None) == 3


async def test_a_catch_up_rolls_up_a_few_hours_a_transaction_skipping_gaps(paper: Runtime) -> None:
    # The first pass after the upgrade meets up to 14 days of samples: in bounded transactions (SQLite
    # has one writer), each INSERT over at most `hours` hours, and a day with no sample costs nothing.
    rt = paper
    web = await _app_id(rt)
    sampled = [h for h in range(1, 73, 2) if not 30 <= h < 54]  # every other hour of 3 days, a day's gap
    await _samples(rt, web, [(_before_hour(minutes=60 * h), 1, float(h), h * MI) for h in sampled])
    inserts: list[tuple[object, ...]] = []

    def seen(conn: object, cursor: object, statement: str, parameters: object, *_: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE_HOURLY"):
            inserts.append((statement, parameters))

    later = HOUR + dt.timedelta(minutes=10)  # hour 11 is complete and past its grace
    sync = rt.engine.sync_engine
    event.listen(sync, "before_cursor_execute", seen)
    try:
        written = await usage_history.catch_up(rt.sessionmaker, lookback=None, now=later, hours=6)
    finally:
        event.remove(sync, "before_cursor_execute", seen)
    assert written == len(sampled) == 24
    # 48 sampled hours in 6-hour chunks (3 samples each), the empty day skipped: 8 statements.
    assert len(inserts) == 8
    got = await _hourly(rt)
    assert [(r[1], r[2], r[3]) for r in got] == [
        (HOUR - dt.timedelta(hours=h), 1, float(h)) for h in sorted(sampled, reverse=True)
    ]
    # Caught up: the next pass writes nothing, and an unbounded roll-up agrees.
    assert await usage_history.catch_up(rt.sessionmaker, lookback=None, now=later, hours=6) == 0
    assert await _roll_up(rt, now=later) == 0


async def test_the_30d_window_comes_from_the_rollups_after_the_raw_samples_are_gone(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    await _samples(
        rt,
        web,
        [
            (_before_hour(days=20, minutes=0), 2, 100.0, 100 * MI),  # 20 days ago, 12:00
            (_before_hour(days=20, minutes=30), 1, 40.0, 20 * MI),  # 11:30
            (_before_hour(days=20, minutes=31), 3, 700.0, 300 * MI),  # 11:29: the 30d peak
            (_before_hour(days=31, minutes=0), 9, 9000.0, 900 * MI),  # 31 days ago: older than the window
        ],
    )
    assert await _roll_up(rt, now=NOW, lookback=None) == 3
    off = {"jobs_seconds": None, "events_seconds": None, "deliveries_seconds": None, "builds_seconds": None}
    policy = retention.Policy(**off, usage_seconds=14 * 86400, usage_hourly_seconds=90 * 86400)
    assert await retention.prune(rt.sessionmaker, policy=policy, now=NOW) == retention.Pruned(usage_samples=4)
    thirty = Window(
        window="30d", samples=3, cpu_average_millicores=280.0, cpu_peak_millicores=700.0,
        memory_average_bytes=140 * MI, memory_peak_bytes=300 * MI, max_pods=3,
    )  # fmt: skip
    got = await _summary(rt, web, cpu=("100m", "1"), memory=("64Mi", "1Gi"))
    assert got == History(windows=[thirty], hints=[])  # no 24h window: no hint from 30d peaks
    # With recent samples, the windows of raw samples come first and are what they were.
    await _samples(rt, web, [(dt.timedelta(minutes=10), 2, 20.0, 10 * MI)])
    got = await _summary(rt, web, cpu=("100m", "1"), memory=("64Mi", "1Gi"))
    assert [w.window for w in got.windows] == ["1h", "24h", "7d", "30d"]
    assert got.windows[-1] == thirty  # 11:50 is in an hour not rolled up yet
    assert [h.split(":")[0] for h in got.hints] == ["CPU", "Memory"]  # from the 24h peak: 10m, 5Mi per pod


async def test_retention_prunes_old_hourly_rollups(paper: Runtime) -> None:
    rt = paper
    web = await _app_id(rt)
    now = models.utcnow()
    hours = [now - dt.timedelta(days=91, hours=i) for i in range(3)] + [now - dt.timedelta(days=89)]
    async with rt.sessionmaker.begin() as session:
        session.add_all(
            models.UsageHourly(
                app_id=web, hour=h, samples=60, cpu_sum_millicores=600.0, cpu_peak_millicores=20.0,
                memory_sum_bytes=60.0 * MI, memory_peak_bytes=2 * MI, max_pods=1, cpu_peak_per_pod=20.0,
                memory_peak_per_pod=2.0 * MI,
            )
            for h in hours
        )  # fmt: skip
    off = {"jobs_seconds": None, "events_seconds": None, "deliveries_seconds": None, "builds_seconds": None}
    policy = retention.Policy(**off, usage_seconds=None, usage_hourly_seconds=90 * 86400, batch=2)
    assert await retention.prune(rt.sessionmaker, policy=policy, now=now) == retention.Pruned(usage_hourly=3)
    assert len(await _hourly(rt)) == 1
    forever = retention.Policy(**off, usage_seconds=None, usage_hourly_seconds=None)
    assert (
        await retention.prune(rt.sessionmaker, policy=forever, now=now + dt.timedelta(days=100))
        == retention.Pruned()
    )
