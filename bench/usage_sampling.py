"""What one usage sampling pass costs (core.usage_history.sample, as the runtime's maintenance loop
calls it): N apps, one pod each, spread over M namespaces, deployed for real on the test control plane
(kwok pods, metrics-server scraping their emulated usage).  Prints, per pass, the wall time, the
statements sent and the Metrics API lists made; then a pass whose slot is already sampled (what a
second replica's pass costs).

    .venv/bin/python -m bench.usage_sampling [--apps 50] [--namespaces 5] [--passes 5] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from core import apps, clusters, deploys, projects, usage_history
from core.identity import SYSTEM
from shipit import runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key
from tests.testenv import controlplane


async def _wait(what: str, check: Any, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(1.0)


async def main(args: argparse.Namespace) -> None:
    cp = controlplane.ControlPlane()
    await asyncio.to_thread(cp.start)
    assert cp.env is not None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
                data_dir=Path(tmp),
                master_key=generate_key(),  # type: ignore[arg-type]
                usage_sample_seconds=0,  # the passes measured are this script's own
                registry_pin_digests=False,
            )
            rt = await runtime.build(settings)
            try:
                await _run(rt, cp, args)
            finally:
                await runtime.stop(rt)
    finally:
        await asyncio.to_thread(cp.stop)


async def _run(rt: runtime.Runtime, cp: controlplane.ControlPlane, args: argparse.Namespace) -> None:
    assert cp.env is not None
    kubeconfig = cp.env.kubeconfig
    version = await clusters.check(ctx=rt.core, kubeconfig_text=kubeconfig, key="bench")
    namespaces = [f"bench-{i}" for i in range(args.namespaces)]
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=SYSTEM, name="acme")
        await clusters.add(
            session, ctx=rt.core, actor=SYSTEM, name="bench", kubeconfig_text=kubeconfig,
            default_namespace=namespaces[0], version=version,
        )  # fmt: skip
        await clusters.grant(session, actor=SYSTEM, cluster="bench", project="acme", namespace=namespaces[0])
        for i in range(args.apps):
            await apps.create(
                session, actor=SYSTEM, project="acme", cluster="bench", name=f"app{i}",
                namespace=namespaces[i % len(namespaces)],
                changes=apps.AppChanges(image="ghcr.io/acme/web:1.0", replicas=1),
            )  # fmt: skip
    async with rt.sessionmaker.begin() as session:
        for i in range(args.apps):
            await deploys.request(session, ctx=rt.core, actor=SYSTEM, app_name=f"app{i}", trigger="api")
    await runtime.start(rt)  # the worker rolls them out

    async def deployed() -> bool:
        async with rt.sessionmaker() as session:
            done = await session.scalars(
                select(models.App.id).where(models.App.current_revision_id.is_not(None))
            )
            return len(list(done)) == args.apps

    await _wait("the rollouts", deployed)
    kube = await clusters.client(await _cluster(rt), ctx=rt.core)

    async def measured() -> bool:
        lists = [await kube.namespace_pod_metrics(namespace=ns) for ns in namespaces]
        return sum(len(m) for m in lists) >= args.apps

    await _wait("the pods' metrics", measured)
    # The worker and the maintenance loop stop here: the statements counted are the passes' alone.
    for task in rt.background:
        task.cancel()
    await asyncio.gather(*rt.background, return_exceptions=True)
    rt.background.clear()
    if rt.worker is not None:
        await rt.worker.stop()
        rt.worker = None

    counts = {"statements": 0}

    def statement(*_: Any) -> None:
        counts["statements"] += 1

    engine = rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", statement)
    base = usage_history.slot_of(models.utcnow() - dt.timedelta(hours=1), every=60)
    walls: list[float] = []
    for k in range(args.passes):
        counts["statements"] = 0
        started = time.monotonic()
        got = await usage_history.sample(rt.core, every=60, now=base + dt.timedelta(minutes=k, seconds=5))
        walls.append(time.monotonic() - started)
        print(
            f"pass {k + 1}: {walls[-1] * 1000:.1f} ms, {counts['statements']} statements, "
            f"{got.namespaces} Metrics API lists, {got.stored} samples stored"
        )
    counts["statements"] = 0
    started = time.monotonic()
    again = await usage_history.sample(rt.core, every=60, now=base + dt.timedelta(seconds=30))
    print(
        f"again in a sampled slot: {(time.monotonic() - started) * 1000:.1f} ms, {counts['statements']} "
        f"statements, {again.namespaces} lists, {again.stored} stored"
    )
    event.remove(engine, "before_cursor_execute", statement)
    print(
        f"{args.apps} apps in {args.namespaces} namespaces ({rt.engine.dialect.name}): median pass "
        f"{statistics.median(walls) * 1000:.1f} ms over {args.passes}"
    )
    await _summary_cost(rt)


async def _summary_cost(rt: runtime.Runtime) -> None:
    """The history block of one usage answer over a full week of minutely samples (10,080 rows)."""
    now = models.utcnow()
    async with rt.sessionmaker.begin() as session:
        app_id = await session.scalar(select(models.App.id).where(models.App.name == "app0"))
        assert app_id is not None
        await session.execute(
            models.UsageSample.__table__.insert(),  # type: ignore[attr-defined]
            [
                {"app_id": app_id, "sampled_at": now - dt.timedelta(minutes=m, seconds=1), "pods": 2,
                 "cpu_millicores": 40.0 + m % 7, "memory_bytes": 2**26 + m}
                for m in range(7 * 1440)
            ],
        )  # fmt: skip
    walls = []
    for _ in range(20):
        started = time.monotonic()
        async with rt.sessionmaker() as session:
            history = await usage_history.summary(
                session, app_id=app_id, cpu_request="500m", cpu_limit="1", memory_request="128Mi",
                memory_limit="256Mi", now=now,
            )  # fmt: skip
        walls.append(time.monotonic() - started)
    print(
        f"summary over {history.windows[-1].samples} samples of a week: median "
        f"{statistics.median(walls) * 1000:.1f} ms over 20, one statement"
    )


async def _cluster(rt: runtime.Runtime) -> models.Cluster:
    async with rt.sessionmaker() as session:
        found = await session.scalar(select(models.Cluster).where(models.Cluster.name == "bench"))
    assert found is not None
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--namespaces", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--database-url", default="")
    asyncio.run(main(parser.parse_args()))
