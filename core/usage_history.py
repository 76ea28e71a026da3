"""Usage over time: a periodic sampling pass stores each deployed app's total use (core.usage reads
the same Metrics API live), and `summary` aggregates the samples per window for every channel's
`usage` answer, with a plain right-sizing hint.

Replicas: every replica's maintenance loop runs the pass (as it runs retention).  A sample's
`sampled_at` is the start of its slot (now floored to the sampling period) and (app_id, sampled_at)
is unique, so when two replicas sample the same slot the second INSERT does nothing: one row per app
and slot whatever the timing, with no lease to expire or leader to elect.  Before asking any cluster,
a pass drops the apps that already have this slot's sample, so a replica that comes second in a slot
reads nothing from the clusters either (a race inside the same seconds costs one extra read, not a row).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, and_, case, cast, exists, func, literal_column, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import clusters, dialects, errors, quantities
from core.context import Core
from core.kube import render
from core.kube.rules import PodMetrics
from storage import models

log = logging.getLogger(__name__)

# Clusters found without a Metrics API, said once per process (not every pass): (id, API server),
# so a cluster row pointed at another server is said again.
_said_no_metrics: set[tuple[int, str]] = set()
# Namespaces read at once in a pass (each a single list from its cluster).
READS_AT_ONCE = 8


def slot_of(now: dt.datetime, *, every: float) -> dt.datetime:
    """The start of the sampling slot `now` falls in (UTC, on multiples of `every` seconds)."""
    epoch = now.timestamp()
    return dt.datetime.fromtimestamp(epoch - epoch % every, tz=dt.UTC)


@dataclass(frozen=True, kw_only=True)
class Sampled:
    slot: dt.datetime
    stored: int = 0  # rows written by this pass
    namespaces: int = 0  # Metrics API lists made
    skipped_clusters: list[str] = field(default_factory=list)  # no Metrics API, or unreachable


@dataclass(frozen=True, kw_only=True)
class _Target:
    app_id: int
    name: str
    cluster_id: int
    namespace: str


async def _due(session: AsyncSession, *, slot: dt.datetime) -> list[_Target]:
    """Deployed apps without this slot's sample yet."""
    a, s = models.App, models.UsageSample
    done = exists().where(s.app_id == a.id, s.sampled_at == slot)
    rows = await session.execute(
        select(a.id, a.name, a.cluster_id, a.namespace).where(a.current_revision_id.is_not(None), ~done)
    )
    return [_Target(app_id=i, name=n, cluster_id=c, namespace=ns) for i, n, c, ns in rows]


def _totals(measured: list[PodMetrics]) -> dict[str, tuple[int, float, int]]:
    """App name (its pods' name label) -> (pods, CPU millicores, memory bytes) summed over its pods."""
    out: dict[str, tuple[int, float, int]] = {}
    for m in measured:
        name = m.labels.get(render.LABEL_NAME)
        if not name:
            continue
        cpu = sum(quantities.millicores(c, field="cpu") for c, _ in m.containers.values())
        memory = sum(quantities.bytes_of(mem, field="memory") for _, mem in m.containers.values())
        pods, total_cpu, total_memory = out.get(name, (0, 0.0, 0))
        out[name] = (pods + 1, total_cpu + cpu, total_memory + memory)
    return out


async def sample(ctx: Core, *, every: float, now: dt.datetime | None = None) -> Sampled:
    """One sampling pass: one Metrics API list per (cluster, namespace) holding a deployed app, then
    the rows in one short transaction.  A cluster without a Metrics API (or failing) is skipped; an
    app with no pod measured (none running, or too new for metrics-server) gets no row: no
    measurement is not zero use."""
    slot = slot_of(now or models.utcnow(), every=every)
    async with ctx.sessionmaker() as session:  # reads only: no transaction held over the cluster calls
        targets = await _due(session, slot=slot)
        ids = {t.cluster_id for t in targets}
        found = list(await session.scalars(select(models.Cluster).where(models.Cluster.id.in_(ids))))
        kubeconfigs = {c.id: (c.name, clusters.kubeconfig(c, ctx=ctx)) for c in found}
        servers = {c.id: c.server or "" for c in found}
    if not targets:
        return Sampled(slot=slot)
    by_place: dict[tuple[int, str], list[_Target]] = defaultdict(list)
    for t in targets:
        by_place[(t.cluster_id, t.namespace)].append(t)
    gate = asyncio.Semaphore(READS_AT_ONCE)
    skipped: set[int] = set()

    async def read(cluster_id: int, namespace: str) -> list[PodMetrics] | None:
        name, kubeconfig = kubeconfigs[cluster_id]
        async with gate:
            if cluster_id in skipped:
                return None
            try:
                kube = await ctx.kube.get(key=str(cluster_id), kubeconfig=kubeconfig)
                return await kube.namespace_pod_metrics(namespace=namespace)
            except errors.NoMetricsApi as e:
                skipped.add(cluster_id)
                if (cluster_id, servers[cluster_id]) not in _said_no_metrics:
                    _said_no_metrics.add((cluster_id, servers[cluster_id]))
                    log.warning("usage sampling: cluster %s skipped (said once): %s", name, e)
                return None
            except Exception as e:  # one cluster failing never stops the others' samples
                skipped.add(cluster_id)
                log.warning(
                    "usage sampling: cluster %s, namespace %s skipped this pass: %s", name, namespace, e
                )
                return None

    places = [p for p in by_place if p[0] in kubeconfigs]
    lists = await asyncio.gather(*(read(c, ns) for c, ns in places))
    rows: list[dict[str, Any]] = []
    for (cluster_id, namespace), measured in zip(places, lists, strict=True):
        if measured is None:
            continue
        totals = _totals(measured)
        for t in by_place[(cluster_id, namespace)]:
            if t.name in totals:
                pods, cpu, memory = totals[t.name]
                rows.append(
                    {
                        "app_id": t.app_id,
                        "sampled_at": slot,
                        "pods": pods,
                        "cpu_millicores": cpu,
                        "memory_bytes": memory,
                    }
                )
    stored = 0
    if rows:
        async with ctx.sessionmaker.begin() as session:
            insert = pg_insert if dialects.is_postgres(session) else sqlite_insert
            # A row another replica wrote for this slot meanwhile wins; ours is dropped (same figures).
            stmt = insert(models.UsageSample).on_conflict_do_nothing(index_elements=["app_id", "sampled_at"])
            result = await session.execute(stmt.returning(models.UsageSample.id), rows)
            stored = len(list(result.scalars()))
    return Sampled(
        slot=slot,
        stored=stored,
        namespaces=sum(1 for m in lists if m is not None),
        skipped_clusters=sorted(kubeconfigs[c][0] for c in skipped),
    )


# ---------------------------------------------------------------------------
# Hourly rollups: the 30-day window outlives the raw samples (SHIPIT_RETENTION_USAGE_DAYS)

# A completed hour is rolled up this long after its end: a pass that began in the hour's last slot may
# still be reading the clusters when the hour ends, and its row must be in the rollup (an hour's row is
# never written again).
ROLLUP_GRACE = dt.timedelta(minutes=5)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _hour_of(session: AsyncSession, column: Any) -> Any:
    """The start of the UTC hour a stored datetime falls in, as the column stores it."""
    if dialects.is_postgres(session):
        # timestamptz -> UTC wall time, truncated, back to timestamptz (whatever the session's zone).
        # Literals, not parameters: the GROUP BY must be the selected expression itself.
        utc: Any = literal_column("'UTC'")
        unit: Any = literal_column("'hour'")
        return func.timezone(utc, func.date_trunc(unit, func.timezone(utc, column)))
    # SQLite keeps UTCDateTime as text "YYYY-MM-DD HH:MM:SS.ffffff" (storage.models): the same text.
    return func.substr(column, 1, 13).op("||")(literal_column("':00:00.000000'"))


# A catch-up (the first pass after the upgrade, or after sampling was off) rolls up this many hours a
# transaction: one statement over 14 days of 100 apps' samples (2M rows) held SQLite's one writer for
# 8 s here, and every deploy request waits on that writer.
HOURS_A_TRANSACTION = 6


async def roll_up(
    session: AsyncSession,
    *,
    lookback: dt.timedelta | None,
    now: dt.datetime | None = None,
    hours: int | None = None,
) -> int:
    """Roll completed hours' samples up into usage_hourly, in one INSERT ... SELECT ... GROUP BY; returns
    the rows written.  It starts at the first sampled hour after the newest rolled-up one (before any
    rollup: the first within `lookback`, the raw retention; None: all) and goes up to the last completed
    hour, or `hours` hours at most (`catch_up` does the rest, a transaction each).  No older hour can be
    missing a row: samples are written as their slot happens, and an hour is rolled up only
    ROLLUP_GRACE after its end.  Replicas: (app_id, hour) is unique and a conflict does nothing, so
    passes racing store one row per app and hour."""
    now = now or models.utcnow()
    s, h = models.UsageSample, models.UsageHourly
    before = slot_of(now - ROLLUP_GRACE, every=3600)  # the end of the last hour rolled up now
    newest = await session.scalar(select(func.max(h.hour)))  # ix_usage_hourly_hour's last entry
    since = (
        newest + dt.timedelta(hours=1)
        if newest is not None
        else EPOCH
        if lookback is None
        else now - lookback
    )
    # Both reads are one end of an index (gaps with no sample are skipped, so every call that finds an
    # hour to roll up writes it).
    first = await session.scalar(select(func.min(s.sampled_at)).where(s.sampled_at >= since))
    if first is None:
        return 0
    start = slot_of(first, every=3600)
    stop = before if hours is None else min(before, start + dt.timedelta(hours=hours))
    if start >= stop:
        return 0
    hour = _hour_of(session, s.sampled_at)
    grouped = (
        select(
            s.app_id,
            hour,
            func.count(),
            func.sum(s.cpu_millicores),
            func.max(s.cpu_millicores),
            func.sum(cast(s.memory_bytes, Float)),
            func.max(s.memory_bytes),
            func.max(s.pods),
            func.max(s.cpu_millicores / s.pods),
            func.max(cast(s.memory_bytes, Float) / s.pods),
        )
        .where(s.sampled_at >= start, s.sampled_at < stop)
        .group_by(s.app_id, hour)
    )
    columns = [
        "app_id", "hour", "samples", "cpu_sum_millicores", "cpu_peak_millicores", "memory_sum_bytes",
        "memory_peak_bytes", "max_pods", "cpu_peak_per_pod", "memory_peak_per_pod",
    ]  # fmt: skip
    insert = pg_insert if dialects.is_postgres(session) else sqlite_insert
    stmt = insert(h).from_select(columns, grouped).on_conflict_do_nothing(index_elements=["app_id", "hour"])
    result = await session.execute(stmt.returning(h.id))
    return len(list(result.scalars()))


async def catch_up(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    lookback: dt.timedelta | None,
    now: dt.datetime | None = None,
    hours: int = HOURS_A_TRANSACTION,
) -> int:
    """Every completed hour not rolled up yet, `hours` hours a transaction (the maintenance loop's
    call); returns the rows written.  Stops at the first call that writes nothing: all done, or a
    replica racing it wrote those hours (the next pass goes on)."""
    now = now or models.utcnow()
    total = 0
    while True:
        async with sessionmaker.begin() as session:
            written = await roll_up(session, lookback=lookback, now=now, hours=hours)
        if not written:
            return total
        total += written


# ---------------------------------------------------------------------------
# The summary: per window, from SQL aggregates

WINDOWS: tuple[tuple[str, int], ...] = (("1h", 3600), ("24h", 86400), ("7d", 7 * 86400))
HINT_WINDOW = "24h"
# From the hourly rollups (completed hours only), after the windows of raw samples.
ROLLED_UP_WINDOW = ("30d", 30 * 86400)
LOWER_BELOW = 0.5  # of the request: the peak uses under half of it
RAISE_ABOVE = 0.9  # of the limit: the peak comes within 10 % of it


@dataclass(frozen=True, kw_only=True)
class Window:
    window: str
    samples: int
    cpu_average_millicores: float
    cpu_peak_millicores: float  # the highest of the per-sample totals
    memory_average_bytes: int
    memory_peak_bytes: int
    max_pods: int


@dataclass(frozen=True, kw_only=True)
class History:
    windows: list[Window]  # only windows with samples, shortest first; 30d from the hourly rollups
    hints: list[str]  # plain right-sizing hints from the 24h peak; empty when nothing to say


async def summary(
    session: AsyncSession,
    *,
    app_id: int,
    cpu_request: str,
    cpu_limit: str,
    memory_request: str,
    memory_limit: str,
    now: dt.datetime | None = None,
) -> History:
    """One statement: an aggregate over the app's samples of the longest window (the unique index's
    range), each window's figures picked with CASE, beside one over its hourly rollups for the 30d
    window; no sample row is loaded into Python."""
    now = now or models.utcnow()
    s = models.UsageSample
    cols: list[Any] = []
    for _, seconds in WINDOWS:
        inside = s.sampled_at > now - dt.timedelta(seconds=seconds)

        def only(value: Any, inside: Any = inside) -> Any:
            return case((inside, value))

        cols += [
            func.count(only(s.id)),
            func.avg(only(s.cpu_millicores)),
            func.max(only(s.cpu_millicores)),
            func.avg(only(cast(s.memory_bytes, Float))),
            func.max(only(s.memory_bytes)),
            func.max(only(s.pods)),
            # Per pod at each sample: the peak against the per-pod request is the peak against what
            # the pods requested in total at that moment, however many there were.
            func.max(only(s.cpu_millicores / s.pods)),
            func.max(only(cast(s.memory_bytes, Float) / s.pods)),
        ]
    longest = now - dt.timedelta(seconds=WINDOWS[-1][1])
    raw = select(*cols).where(and_(s.app_id == app_id, s.sampled_at > longest)).subquery()
    rolled = _rolled_up(app_id=app_id, now=now).subquery()
    # Two one-row aggregates side by side: still one statement (one round trip) per usage answer.
    row = (await session.execute(select(raw, rolled).select_from(raw.join(rolled, true())))).one()
    windows: list[Window] = []
    per_pod_peaks: dict[str, tuple[float, float]] = {}
    for i, (name, _) in enumerate(WINDOWS):
        count, cpu_avg, cpu_peak, mem_avg, mem_peak, pods, cpu_pod, mem_pod = row[i * 8 : i * 8 + 8]
        if not count:
            continue
        windows.append(
            Window(
                window=name,
                samples=int(count),
                cpu_average_millicores=round(float(cpu_avg), 3),
                cpu_peak_millicores=round(float(cpu_peak), 3),
                memory_average_bytes=round(float(mem_avg)),
                memory_peak_bytes=int(mem_peak),
                max_pods=int(pods),
            )
        )
        per_pod_peaks[name] = (float(cpu_pod), float(mem_pod))
    thirty = _rolled_up_window(row[len(WINDOWS) * 8 :])
    if thirty is not None:
        windows.append(thirty)
    hints: list[str] = []
    w = next((x for x in windows if x.window == HINT_WINDOW), None)
    if w is not None:
        cpu_pod, mem_pod = per_pod_peaks[HINT_WINDOW]
        hints += _hints(
            what="CPU",
            request=cpu_request,
            limit=cpu_limit,
            request_amount=quantities.millicores(cpu_request, field="cpu_request"),
            limit_amount=quantities.millicores(cpu_limit, field="cpu_limit"),
            peak_per_pod=cpu_pod,
            peak_total=w.cpu_peak_millicores,
            show=_cpu,
        )
        hints += _hints(
            what="Memory",
            request=memory_request,
            limit=memory_limit,
            request_amount=float(quantities.bytes_of(memory_request, field="memory_request")),
            limit_amount=float(quantities.bytes_of(memory_limit, field="memory_limit")),
            peak_per_pod=mem_pod,
            peak_total=float(w.memory_peak_bytes),
            show=_memory,
        )
    return History(windows=windows, hints=hints)


def _rolled_up(*, app_id: int, now: dt.datetime) -> Any:
    """The 30d window's aggregates over usage_hourly (one row): sums for the averages, the peaks."""
    h = models.UsageHourly
    return select(
        func.sum(h.samples),
        func.sum(h.cpu_sum_millicores),
        func.max(h.cpu_peak_millicores),
        func.sum(h.memory_sum_bytes),
        func.max(h.memory_peak_bytes),
        func.max(h.max_pods),
    ).where(h.app_id == app_id, h.hour >= now - dt.timedelta(seconds=ROLLED_UP_WINDOW[1]))


def _rolled_up_window(row: Any) -> Window | None:
    """The 30d window: average = the sums over the samples counted, exactly."""
    count, cpu_sum, cpu_peak, mem_sum, mem_peak, pods = row
    if not count:
        return None
    return Window(
        window=ROLLED_UP_WINDOW[0],
        samples=int(count),
        cpu_average_millicores=round(float(cpu_sum) / int(count), 3),
        cpu_peak_millicores=round(float(cpu_peak), 3),
        memory_average_bytes=round(float(mem_sum) / int(count)),
        memory_peak_bytes=int(mem_peak),
        max_pods=int(pods),
    )


def _cpu(millicores: float) -> str:
    return f"{millicores:.0f}m" if millicores >= 10 else f"{millicores:.1f}m"


def _memory(amount: float) -> str:
    return f"{amount / 2**20:.1f}Mi"


def _hints(
    *,
    what: str,
    request: str,
    limit: str,
    request_amount: float,
    limit_amount: float,
    peak_per_pod: float,
    peak_total: float,
    show: Any,
) -> list[str]:
    peak = f"24h peak {show(peak_per_pod)} per pod ({show(peak_total)} at most in total)"
    if limit_amount > 0 and peak_per_pod > RAISE_ABOVE * limit_amount:
        return [f"{what}: limit {limit} per pod, {peak}: over 90% of the limit, it could be raised"]
    if request_amount > 0 and peak_per_pod < LOWER_BELOW * request_amount:
        return [f"{what}: requests {request} per pod, {peak}: requests could be lowered"]
    return []
