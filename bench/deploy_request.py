"""In-process req/s of `POST /api/v1/apps/{name}/deploys`: the request path alone, no network, no worker.

The real app (`shipit.main.create_app`) on a SQLite file, driven through httpx's ASGI transport with a
developer's bearer token; each request supersedes the one before (the queue never runs), so every request does the
whole write side: revision, deployment, supersede, events, audit, jobs.  Statements per request are
counted too (the same hook as tests/bot/test_statement_budget.py), and the process's CPU time per
request (all its threads: on a loaded, shared machine it moves less than req/s does).  Run it from a
tree to measure that tree's code (a `git archive` copy of a base commit, then this branch), back to back:

    .venv/bin/python -m bench.deploy_request [--requests 600] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from core import apps, clusters, projects, tokens
from core.identity import SYSTEM, Actor
from shipit import runtime
from shipit.main import create_app
from shipit.settings import Settings
from storage.crypto import generate_key
from tests.shipit.conftest import offline_kubeconfig

ADMIN = Actor(subject="user:bench", channel="api", is_admin=True)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            data_dir=Path(tmp),
            master_key=generate_key(),  # type: ignore[arg-type]
        )
        rt = await runtime.build(settings)
        async with rt.sessionmaker.begin() as session:
            await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
            await clusters.add(
                session, ctx=rt.core, actor=ADMIN, name="offline", kubeconfig_text=offline_kubeconfig(),
                default_namespace="apps", version="v0.0.0-offline",
            )  # fmt: skip
            await clusters.grant(session, actor=ADMIN, cluster="offline", project="acme", namespace="apps")
            await apps.create(
                session, actor=ADMIN, project="acme", cluster="offline", name="web", namespace="apps",
                changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
            )  # fmt: skip
            # A developer's token, not an admin's: the membership check is on the path, as for most callers.
            await projects.set_access(
                session, actor=ADMIN, project_name="acme", subject="user:dev", role="developer"
            )
            _, token = await tokens.create(session, actor=SYSTEM, name="bench", subject="user:dev")
        statements = 0

        seen: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            nonlocal statements
            statements += 1
            if len(seen) < 40:
                seen.append(" ".join(statement.split())[:140])

        app = create_app(rt=rt)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),  # what uvicorn runs at start (given a runtime: no worker)
            httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as http,
        ):
            n = 0

            async def one() -> None:
                nonlocal n
                n += 1
                r = await http.post("/api/v1/apps/web/deploys", json={"image": f"ghcr.io/acme/web:2.{n}"})
                assert r.status_code == 202, r.text

            for _ in range(20):  # warm up
                await one()
            event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
            sem = asyncio.Semaphore(args.concurrency)

            async def gated() -> None:
                async with sem:
                    await one()

            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(gated() for _ in range(args.requests)))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
        print(
            f"{args.requests} deploy requests, concurrency {args.concurrency}: {args.requests / elapsed:.0f} req/s, "
            f"{statements / args.requests:.1f} statements and {cpu / args.requests * 1000:.1f} ms CPU per request"
        )
        if args.show:
            print("\n".join(seen))
        await rt.engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--show", action="store_true", help="print the first statements counted")
    asyncio.run(main(parser.parse_args()))
