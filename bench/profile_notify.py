"""What the worker's notify jobs cost per `/shipit deploy`: CPU and cProfile of those jobs alone, in-process.

Seeded and driven like bench/profile_slack.py (the real app over httpx ASGITransport, the real bolt app,
SQLite WAL, signed slash commands over `--apps` protected apps; a fake Slack Web API from tests/fakes in
a side thread, which the real Slack notifier posts its cards to), but the worker is not started: after
each command the bench drains the queue in the event loop with the worker's own claim and run
(core.worker.Worker._claim/_run: lease, heartbeat task, handler, completion), and only that drain is
measured.  So the figures are the notify jobs of one command each (the new deploy's card posted, the
superseded deploy's card updated, ...), nothing else.

    .venv/bin/python -m bench.profile_notify [--requests 200] [--apps 20] [--paced] [--top 25]

By default the Slack notifier's pacer is replaced by one that never waits, so every card write is made
(the cost of the work, not of Slack's one message a second per channel); `--paced` keeps the real pacer
(writes beyond its burst come back Deferred and are retried later: the drain then waits for them).

Prints: CPU per command spent in notify jobs (the event loop thread's, and the other threads': aiosqlite's
SQLite; the fake Slack's thread excluded), jobs, SQL statements and Slack Web API calls per command, then
cProfile of the drains (profile_deploy.report: own time by package, landmarks, top functions).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, profile_deploy
from bench.profile_slack import bench_settings, fake_threads, report_tail, seed, send_deploy

profile_deploy.GROUPS.update({"slack_sdk": "slack_sdk", "aiohttp": "aiohttp (slack_sdk's client)"})
LANDMARKS = [
    ("core/worker.py", "_claim", "worker: claim (one write transaction)"),
    ("core/worker.py", "_finish", "worker: complete (one write transaction)"),
    ("core/worker.py", "_retry", "worker: retry (a Deferred or failed delivery)"),
    ("core/events.py", "run_notify_job", "events.run_notify_job (the handler)"),
    ("core/events.py", "build_notice", "  events.build_notice (the notice's reads)"),
    ("core/notices/targets.py", "record", "  targets.record (the target's delivery state)"),
    ("bot/notifier.py", "deliver", "  SlackNotifier.deliver"),
    ("bot/views/cards.py", "card", "    views.card (the card's blocks)"),
    ("bot/notifier.py", "_call", "    SlackNotifier._call (the Web API call)"),
    ("bot/notifier.py", "_save_post", "    SlackNotifier._save_post (the posted card's refs)"),
    ("slack_sdk/web/async_base_client.py", "api_call", "      slack_sdk api_call"),
    ("sqlalchemy/ext/asyncio/session.py", "commit", "AsyncSession.commit"),
    ("sqlalchemy/engine/base.py", "_execute_context", "Core statement execution (all statements)"),
]


class Unpaced:
    """A Slack pacer that never waits (bot.notifier.Pacer's interface)."""

    async def wait(self, channel: str, *, key: Any = None) -> None:
        return None

    def backoff(self, channel: str, seconds: float) -> None:
        return None

    async def backoff_shared(self, channel: str, seconds: float) -> None:
        return None


async def drain(worker: Any, *, settle: bool) -> int:
    """Run every claimable job in this task, as the worker would; with `settle`, also wait for jobs
    deferred to later (paced cards).  Returns how many ran."""
    from core import jobs

    ran = 0
    while True:
        claimed = await worker._claim()
        if claimed is None:
            if not settle:
                return ran
            async with worker.ctx.sessionmaker() as session:
                counts = await jobs.depth(session)
            if counts[jobs.RUNNING] == 0 and not await _notify_queued(worker):
                return ran
            await asyncio.sleep(0.05)
            continue
        job, sent = claimed
        await worker._run(job, claimed_at=sent)
        ran += 1


async def _notify_queued(worker: Any) -> bool:
    from sqlalchemy import func, select

    from core import jobs
    from storage import models

    async with worker.ctx.sessionmaker() as session:
        queued = await session.scalar(
            select(func.count()).where(models.Job.kind == jobs.NOTIFY_KIND, models.Job.state == jobs.QUEUED)
        )
    return bool(queued)


async def _main(args: argparse.Namespace, tmp: str) -> None:
    import httpx
    from sqlalchemy import event

    from core import jobs
    from core.worker import Worker
    from shipit import runtime
    from shipit.main import create_app
    from tests.fakes.slack_api import FakeSlack

    with FakeSlack() as fake:
        settings = bench_settings(tmp=tmp, fake=fake, run_worker=False)
        rt = await runtime.build(settings)
        await seed(rt, apps_count=args.apps, protected=not args.unprotected)
        app = create_app(rt=rt)
        skip = fake_threads(fake)
        n = 0
        statements = 0

        listed: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            nonlocal statements
            statements += 1
            listed.append(" ".join(statement.split())[:160])

        try:
            async with app.router.lifespan_context(app):
                slack = rt.core.notifiers["slack"]
                if not args.paced:
                    slack.pacer = Unpaced()  # type: ignore[attr-defined]
                # Notify jobs only: an unprotected app's deploy job (an offline cluster here) stays queued.
                handlers = {k: h for k, h in rt.handlers().items() if k == jobs.NOTIFY_KIND}
                worker = Worker(ctx=rt.core, handlers=handlers)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:

                    async def command() -> None:
                        nonlocal n
                        n += 1
                        await send_deploy(http, fake=fake, n=n, apps_count=args.apps)

                    async def burst(
                        count_: int, profile: cProfile.Profile | None = None
                    ) -> tuple[float, int]:
                        """`count_` commands, each followed by a drain; CPU seconds of the drains, jobs run."""
                        cpu, ran = 0.0, 0
                        for _ in range(count_):
                            await command()
                            main0, side0 = time.thread_time(), common.threads_cpu(skip=skip)
                            if profile is not None:
                                profile.enable()
                            ran += await drain(worker, settle=False)
                            if profile is not None:
                                profile.disable()
                            cpu += time.thread_time() - main0 + common.threads_cpu(skip=skip) - side0
                        if args.paced:
                            main0, side0 = time.thread_time(), common.threads_cpu(skip=skip)
                            ran += await drain(worker, settle=True)
                            cpu += time.thread_time() - main0 + common.threads_cpu(skip=skip) - side0
                        return cpu, ran

                    await burst(max(args.apps * 2, 40))  # warm: every app has a card to update
                    calls0 = len(fake.calls())
                    cpu, ran = await burst(args.requests)
                    calls = len(fake.calls()) - calls0
                    engine = rt.engine.sync_engine
                    # Statements of the drains only: counted between command and drain ends.
                    counted = 0
                    for _ in range(args.requests):
                        await command()
                        event.listen(engine, "before_cursor_execute", count)
                        statements = 0
                        listed.clear()
                        await drain(worker, settle=False)
                        event.remove(engine, "before_cursor_execute", count)
                        counted += statements
                    profile = cProfile.Profile(time.thread_time)
                    await burst(args.requests, profile)
        finally:
            await runtime.stop(rt)

    per = args.requests
    print(
        f"notify jobs of /shipit deploy, in-process (SQLite WAL, {'real' if args.paced else 'no'} pacing, "
        f"{'unprotected' if args.unprotected else 'protected'} apps x{args.apps}), {per} commands; load "
        f"average {common.load_average()}"
    )
    print(
        f"CPU per command in its notify jobs: {cpu * 1000 / per:.2f} ms; {ran / per:.2f} jobs, "
        f"{counted / per:.1f} SQL statements and {calls / per:.2f} Slack Web API calls per command"
    )
    report_tail(
        args, listed=listed, what="one command's notify jobs", profile=profile, per=per, landmarks=LANDMARKS
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="commands per measured burst")
    parser.add_argument("--apps", type=int, default=20, help="apps the commands deploy, round robin")
    parser.add_argument("--unprotected", action="store_true", help="apps that need no approval")
    parser.add_argument("--paced", action="store_true", help="keep the Slack notifier's real pacer")
    parser.add_argument("--statements", action="store_true", help="list the SQL statements of one drain")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dump", type=Path, help="also write the raw cProfile data here")
    args = parser.parse_args()
    os.environ.setdefault("SHIPIT_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="shipit-profile-notify-") as tmp:
        asyncio.run(_main(args, tmp))


if __name__ == "__main__":
    main()
