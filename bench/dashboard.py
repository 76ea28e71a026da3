"""The dashboard: the app page's server time, and how fast a deploy's state change reaches an open page.

  .venv/bin/python -m bench.dashboard [--apps 200] [--deploys 1000] [--requests 300] [--events 100]

What runs: ONE shipit app (create_app, the dashboard on, uvicorn on loopback) in its own thread with its
own event loop, like a server process; the worker is not started (no cluster is needed: the apps sit on
a cluster row whose server is unreachable, and nothing here contacts it).  SQLite (WAL), the default.

Seed: `--apps` apps over 4 projects and `--deploys` deploys spread evenly over them, each requested and
finished through core (deploys.request, then core's own finishing step: revisions promoted and pruned,
events and audit written), so the tables look like a real history.  A person with the developer role in
every project is signed in by writing a session row through core.web_sessions (no OIDC round trip) and
the signed cookie the dashboard expects.

(1) app page: GET /apps/<app> `--requests` times, one after another, over loopback HTTP (httpx); the
    figure is the client's wall time per request (request sent -> body read), after 20 warm-up requests.
(2) live stream: an httpx streaming client holds GET /apps/<app>/events open; the server's loop commits
    a change of the running deploy's `ready` count (as the worker does while a rollout progresses) and
    the time from that commit returning to the matching SSE event being parsed by the client is taken,
    `--events` times.  Both sides stamp the same perf_counter clock (one process).
    (2b) the same with the commit made by ANOTHER engine (another replica): only the fallback poll can
    deliver it, so this shows the poll interval, not the broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from pydantic import SecretStr
from sqlalchemy import select, update

from core import apps, clusters, deploys, projects, web_sessions
from core.identity import Actor
from shipit import runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key

ADMIN = Actor(subject="user:bench", channel="api", is_admin=True)
PERSON = "user:dev@bench.example"
PROJECTS = 4
TARGET = "app-000"
T = TypeVar("T")

OFFLINE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: offline
  cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}
contexts:
- name: offline
  context: {cluster: offline, user: nobody, namespace: apps}
current-context: offline
users:
- name: nobody
  user: {token: not-a-real-token}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 0.5):.1f} ms, p95 {pct(values, 0.95):.1f} ms, p99 {pct(values, 0.99):.1f} ms, "
        f"mean {statistics.fmean(values):.1f} ms, max {max(values):.1f} ms (n={len(values)})"
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The app on its own event loop in its own thread, as a separate server process would have."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-server", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def seed(rt: runtime.Runtime, *, n_apps: int, n_deploys: int) -> None:
    started = time.perf_counter()
    async with rt.sessionmaker.begin() as session:
        await clusters.add(
            session, ctx=rt.core, actor=ADMIN, name="offline", kubeconfig_text=OFFLINE_KUBECONFIG,
            default_namespace="apps", version="v0.0.0-offline",
        )  # fmt: skip
        for p in range(PROJECTS):
            name = f"team-{p}"
            await projects.create(session, ctx=rt.core, actor=ADMIN, name=name)
            await clusters.grant(session, actor=ADMIN, cluster="offline", project=name, namespace=name)
            await projects.set_access(
                session, actor=ADMIN, project_name=name, subject=PERSON, role="developer"
            )
        for i in range(n_apps):
            p = i % PROJECTS
            await apps.create(
                session, actor=ADMIN, project=f"team-{p}", cluster="offline", name=f"app-{i:03d}",
                namespace=f"team-{p}", changes=apps.AppChanges(image=f"ghcr.io/acme/app-{i:03d}:1.0"),
            )  # fmt: skip
    for k in range(n_deploys):
        name = f"app-{k % n_apps:03d}"
        round_ = k // n_apps
        last = k >= n_deploys - n_apps  # each app's last deploy
        async with rt.sessionmaker.begin() as session:
            asked = await deploys.request(
                session, ctx=rt.core, actor=ADMIN, app_name=name, image=f"1.{round_ + 1}", trigger="api"
            )
            d = asked.deployment
            d.started_at, d.desired = models.utcnow(), 1
            if last and name == TARGET:
                d.status, d.ready = deploys.RUNNING, 0  # the live rollout the stream bench moves
            else:
                # One first deploy in ten fails (nothing to roll back to yet), the rest succeed.
                failed = round_ == 0 and k % 10 == 3
                d.ready = 0 if failed else 1
                # Core's own finishing step: promotes the revision, prunes old ones, writes events.
                await deploys._finish(
                    session, ctx=rt.core, deployment=d,
                    status=deploys.FAILED if failed else deploys.SUCCEEDED,
                    error="ProgressDeadlineExceeded: bench" if failed else None,
                )  # fmt: skip
    async with rt.sessionmaker.begin() as session:
        # No worker runs here: the deploy jobs are settled by hand so nothing is left queued.
        await session.execute(update(models.Job).values(state="done", finished_at=models.utcnow()))
    async with rt.sessionmaker() as session:
        n = len(list(await session.scalars(select(models.Deployment.id))))
    print(f"seeded {n_apps} apps, {n} deploys in {time.perf_counter() - started:.1f} s", flush=True)


async def serve(rt: runtime.Runtime, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    from shipit.main import create_app

    config = uvicorn.Config(
        create_app(rt=rt), host="127.0.0.1", port=port, log_config=None, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


async def shut(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


async def session_cookie(rt: runtime.Runtime) -> str:
    import datetime as dt

    from web.channel import sign  # the dashboard's own cookie signature

    async with rt.sessionmaker.begin() as session:
        _, token = await web_sessions.create(
            session, subject=PERSON, display="dev", provider="github", lifetime=dt.timedelta(hours=1)
        )
    return f"{token}.{sign(rt.core, 'web-session', token)}"


async def bump(rt: runtime.Runtime, *, ready: int) -> float:
    """Commit a new `ready` count on the target app's running deploy; answer when the commit returned."""
    async with rt.sessionmaker() as session:
        async with session.begin():
            d = await session.scalar(
                select(models.Deployment)
                .join(models.App, models.App.id == models.Deployment.app_id)
                .where(models.App.name == TARGET, models.Deployment.status == deploys.RUNNING)
            )
            assert d is not None
            d.ready = ready
        return time.perf_counter()


async def app_page(client: httpx.AsyncClient, *, requests: int) -> list[float]:
    for _ in range(20):
        (await client.get(f"/apps/{TARGET}")).raise_for_status()
    out = []
    for _ in range(requests):
        t0 = time.perf_counter()
        r = await client.get(f"/apps/{TARGET}")
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200 and TARGET in r.text, r.status_code
    return out


async def live(
    client: httpx.AsyncClient, commit: Any, *, events: int, start: int, pause: float
) -> list[float]:
    """Open the stream, then per change: commit (via `commit(ready=…)`), read until its event arrives."""
    out = []
    async with client.stream("GET", f"/apps/{TARGET}/events", timeout=30) as stream:
        lines = stream.aiter_lines()

        async def event_with(ready: int | None) -> float:
            async for line in lines:
                if line.startswith("data: {"):
                    state = json.loads(line.removeprefix("data: "))
                    if state["status"] == deploys.RUNNING and ready in (None, state["ready"]):
                        return time.perf_counter()
            raise RuntimeError("the stream ended")

        await event_with(None)  # the opening state
        for i in range(start, start + events):
            waiter = asyncio.create_task(event_with(i))
            committed = await commit(ready=i)
            received = await waiter
            out.append((received - committed) * 1000)
            # Spread the changes out, as a rollout does, at random phases of the stream's fallback poll.
            await asyncio.sleep(random.uniform(pause, pause + 0.5))
    return out


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            data_dir=Path(tmp),
            master_key=generate_key(),  # type: ignore[arg-type]
            url=f"http://127.0.0.1:{port}",
            run_worker=False,
            # A provider must be configured for the dashboard to be on; nobody signs in through it.
            github_oauth_client_id="bench",
            github_oauth_client_secret=SecretStr("bench"),
            web_cookie_secure=False,
        )
        server = Server()
        rt = await server.run(runtime.build(settings))
        other: runtime.Runtime | None = None
        served: tuple[uvicorn.Server, asyncio.Task[None]] | None = None
        try:
            await server.run(seed(rt, n_apps=args.apps, n_deploys=args.deploys))
            served = await server.run(serve(rt, port))
            cookie = await server.run(session_cookie(rt))
            print(f"load average before: {os.getloadavg()}", flush=True)
            async with httpx.AsyncClient(
                base_url=settings.url, cookies={"shipit_session": cookie}, timeout=30
            ) as client:
                page = await app_page(client, requests=args.requests)
                print(f"app page GET /apps/{TARGET}: {summary(page)}", flush=True)

                async def same_process(*, ready: int) -> float:
                    return await server.run(bump(rt, ready=ready))

                same = await live(client, same_process, events=args.events, start=1, pause=0.05)
                print(f"SSE, commit in the server process -> event received: {summary(same)}", flush=True)

                other = await runtime.build(settings, migrate_db=False)  # another replica's engine
                replica_rt = other

                async def other_replica(*, ready: int) -> float:
                    return await bump(replica_rt, ready=ready)

                far = await live(client, other_replica, events=args.replica_events,
                                 start=10_000, pause=0.05)  # fmt: skip
                print(f"SSE, commit by another replica (poll) -> event received: {summary(far)}", flush=True)
            print(f"load average after: {os.getloadavg()}", flush=True)
        finally:
            if served is not None:
                await server.run(shut(*served))
            if other is not None:
                await runtime.stop(other)
            await server.run(runtime.stop(rt))
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--deploys", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--replica-events", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
