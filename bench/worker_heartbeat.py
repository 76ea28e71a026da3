"""What a worker costs while its jobs wait: N running jobs that block (deploys watching a slow rollout)
in one real Worker, measured over a quiet window: the process's CPU time (all its threads), the
statements sent and the transactions committed per second.  Only the lease heartbeats write then.
Run it from a tree to measure that tree's code (a `git archive` copy of a base commit, then this
branch), back to back:

    .venv/bin/python -m bench.worker_heartbeat [--jobs 50] [--duration 30] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from core import jobs
from core.worker import Handler, Worker
from shipit import runtime
from shipit.settings import Settings
from storage.crypto import generate_key


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            data_dir=Path(tmp),
            master_key=generate_key(),  # type: ignore[arg-type]
            run_worker=False,
            worker_concurrency=args.jobs,
        )
        rt = await runtime.build(settings)
        started: set[int] = set()
        finish = asyncio.Event()

        async def block(*, ctx: object, job: jobs.JobView) -> None:
            started.add(job.id)
            await finish.wait()

        async with rt.sessionmaker.begin() as session:
            for _ in range(args.jobs):
                await jobs.enqueue(session, kind="bench-block", payload={})
        # Every slot busy, as under load: the worker does not poll for more work, only renews leases.
        worker = Worker(ctx=rt.core, handlers={"bench-block": Handler(run=block)}, concurrency=args.jobs)
        worker.start()
        while len(started) < args.jobs:
            await asyncio.sleep(0.05)
        counts = {"statements": 0, "commits": 0}

        def statement(*_: Any) -> None:
            counts["statements"] += 1

        def commit(*_: Any) -> None:
            counts["commits"] += 1

        engine = rt.engine.sync_engine
        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "commit", commit)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(args.duration)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
        finish.set()
        await worker.stop()
        await runtime.stop(rt)
    print(
        f"{args.jobs} running jobs over {wall:.1f} s ({rt.engine.dialect.name}): "
        f"CPU {cpu * 1000 / wall:.1f} ms/s ({cpu / wall:.1%} of a core), "
        f"{counts['statements'] / wall:.2f} statements/s, {counts['commits'] / wall:.2f} commits/s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    asyncio.run(main(parser.parse_args()))
