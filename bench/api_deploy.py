"""API deploy requests per second, in-process: the real app through httpx's ASGI transport.

A developer's token (not an admin: the membership is read), one app on a cluster nobody dials (no worker
runs: only the request path is measured), `POST /api/v1/apps/web/deploys` `--requests` times, with
`--concurrency` requests in flight.  Prints req/s and the SQL statements per request (counted by a
`before_cursor_execute` listener).  To compare with another commit, run this file with that commit's
tree first on the path:

    .venv/bin/python -m bench.api_deploy [--requests 600] [--concurrency 8]
    PYTHONPATH=/tmp/base .venv/bin/python bench/api_deploy.py      # (from /tmp/base)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any


async def _main(args: argparse.Namespace) -> None:
    import httpx
    from sqlalchemy import event

    from core import apps, clusters, projects, tokens
    from core.identity import Actor
    from shipit import runtime
    from shipit.main import create_app
    from shipit.settings import Settings
    from storage.crypto import generate_key

    admin = Actor(subject="user:bench", channel="api", is_admin=True)
    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            data_dir=Path(tmp),
            master_key=generate_key(),  # type: ignore[arg-type]
            registry_pin_digests=False,
            run_worker=False,
            api_requests_per_minute=0,  # off: the budget per token is not what is measured
        )
        rt = await runtime.build(settings)
        async with rt.sessionmaker.begin() as session:
            await projects.create(session, ctx=rt.core, actor=admin, name="acme")
            await clusters.add(
                session, ctx=rt.core, actor=admin, name="offline", kubeconfig_text=kubeconfig,
                default_namespace="apps", version="v0.0.0-offline",
            )  # fmt: skip
            await clusters.grant(session, actor=admin, cluster="offline", project="acme", namespace="apps")
            await projects.set_access(
                session, actor=admin, project_name="acme", subject="user:dev", role="developer"
            )
            await apps.create(
                session, actor=admin, project="acme", cluster="offline", name="web",
                changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
            )  # fmt: skip
            _, token = await tokens.create(session, actor=admin, name="dev", subject="user:dev")
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        app = create_app(rt=rt)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as http,
        ):
            counter = iter(range(10**9))

            async def one() -> None:
                n = next(counter)
                r = await http.post("/api/v1/apps/web/deploys", json={"image": f"ghcr.io/acme/web:1.{n}"})
                assert r.status_code == 202, r.text

            async def run(total: int) -> float:
                queue = iter(range(total))

                async def lane() -> None:
                    for _ in queue:
                        await one()

                start = time.perf_counter()
                await asyncio.gather(*(lane() for _ in range(args.concurrency)))
                return time.perf_counter() - start

            await run(50)  # warm
            event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
            elapsed = await run(args.requests)
            event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
        print(
            f"{args.requests} deploy requests, {args.concurrency} in flight: "
            f"{args.requests / elapsed:.0f} req/s, {statements / args.requests:.1f} statements/request "
            f"({rt.engine.dialect.name})"
        )
        await runtime.stop(rt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database-url", default="")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
