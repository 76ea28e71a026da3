"""Slack slash-command ack latency while deploys are in flight, on one shipit process.

  .venv/bin/python -m bench.slack_ack [--rate 20,50] [--duration 20] [--inflight 50] [--command deploy]
                                      [--hold SECONDS]

The aim (issue 13): `/shipit deploy` ack p99 under 100 ms at 50 commands/s with 50 deploys in flight,
one process on SQLite.  Prints one table row per rate.

What runs:
- the local Kubernetes control plane (tests/testenv: real kube-apiserver, scheduler, controllers, kwok);
- a fake Slack Web API (tests/fakes/slack_api.py) in this process's side thread, which the server's
  notifier posts its deploy cards to;
- ONE server process, `shipit serve` (uvicorn, worker included), SQLite (WAL) database, configured with
  a Slack signing secret, bot token and SHIPIT_SLACK_API_URL pointing at the fake.

In flight: `--inflight` apps (`slow-NN`) are deployed from Slack first; their pods request more CPU than
the kwok node has, so they stay Pending and each deploy stays *running* for the whole measurement: 50
workers holding a lease (heartbeats), a Kubernetes watch open, and their cards posted.  The bench checks
they are all still running at the end.

"server CPU with no commands" is the 5 s right after the last of them turned *running*: the tail of their
start (registry look-ups, applies, watches opened, the first of their ~150 cards' jobs), not the cost of
holding them.  `--hold SECONDS` then keeps them in flight, the server idle, and prints the server's CPU
for each 10 s (with the Slack writes so far and the notify jobs left: the cards' backlog) and over the
whole hold: that is the standing cost (issue 13, "idle CPU with 50 deploys in flight" in BENCHMARKS.md);
a profiler can attach to the printed PID.

Load: an open-loop generator in this process sends signed `/shipit …` slash commands (form-encoded,
v0 HMAC signature, as Slack sends them) at `--rate` per second for `--duration` seconds; latency is
measured from each request's *scheduled* send time to its complete response (so a stall is not hidden
by the generator slowing down).  `--command`:
- deploy:    `/shipit deploy load-K <tag>` over 20 protected apps: the full write path (revision,
             deployment, supersede of the previous request, outbox events and notify jobs, audit), one
             transaction, then the ack; each request also makes the notifier post or update a card;
- revisions: `/shipit revisions load-K`: the read path.

`--monorepo R` (issue 13's motivating case: "a monorepo push that deploys 20 apps ... stalls every
channel"): `--monorepo-apps` more apps (`mono-NN`, default 20) follow the branch main of one
repository, each with an image template, deploying on push, and the server's GitHub channel is on.
Each rate is then measured twice in a row: as above, then with signed pushes of a new commit to
that branch sent at R per second alongside the commands (open loop too, each its own delivery id), each
push queueing a deploy of every mono app in the one transaction answered after its commit (the
worker then runs them: rollouts on the cluster, cards to Slack).  The second row adds the pushes'
own answer latency and the push deployments the database gained per second while they were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import NamedTuple

import aiohttp
from sqlalchemy import func, select

from bench.common import cpu_seconds, free_port, listens, load_average, pct
from core import apps, clusters, jobs, projects
from core.identity import Actor
from shipit import runtime
from shipit.settings import Settings
from storage import db, models
from storage.crypto import generate_key
from tests.fakes.slack_api import FakeSlack
from tests.testenv.controlplane import running

ADMIN = Actor(subject="user:bench", channel="api", is_admin=True)
SECRET = "bench-slack-signing-secret"
GITHUB_SECRET = "bench-github-webhook-secret"
USER = ("U0BENCH01", "bench")
TARGETS = 20


def signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sig,
    }


def command_body(text: str, *, fake: FakeSlack, n: int) -> bytes:
    return urllib.parse.urlencode(
        {
            "token": "x",
            "team_id": fake.team_id,
            "team_domain": "bench",
            "channel_id": "C0TYPED01",
            "channel_name": "general",
            "user_id": USER[0],
            "user_name": USER[1],
            "command": "/shipit",
            "text": text,
            "api_app_id": fake.app_id,
            "response_url": f"{fake.origin}/response/bench-{n}",
            "trigger_id": f"{n}.{n}.bench",
        }
    ).encode()


def monorepo() -> str:
    """The repository the mono apps follow: the one bench.github_ingest's pushes name."""
    from bench.github_ingest import _push_payload

    return str(_push_payload(ref="refs/heads/main")["repository"]["full_name"])


def monorepo_pushes(*, count: int, seed: str) -> list[tuple[bytes, dict[str, str]]]:
    """`count` pushes of new commits to main of `monorepo()`, one after the other, each signed as
    GitHub signs it and with a delivery id of its own: (body, headers)."""
    from bench.github_ingest import new_commit_bodies
    from webhooks import signature

    return [
        (
            body,
            {
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/bench",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"mono-{seed}-{i}",
                "X-Hub-Signature-256": signature.sign(secret=GITHUB_SECRET, body=body),
            },
        )
        for i, body in enumerate(new_commit_bodies(ref="refs/heads/main", count=count, seed=seed))
    ]


async def setup_database(settings: Settings, kubeconfig: str, *, inflight: int, mono_apps: int = 0) -> None:
    rt = await runtime.build(settings)
    rt.core.notifiers.clear()
    try:
        version = await clusters.check(ctx=rt.core, kubeconfig_text=kubeconfig, key="check")
        async with rt.sessionmaker.begin() as session:
            await projects.create(session, ctx=rt.core, actor=ADMIN, name="bench", slack_channel="C0BENCH01")
            await clusters.add(
                session, ctx=rt.core, actor=ADMIN, name="local", kubeconfig_text=kubeconfig,
                default_namespace="bench", version=version,
            )  # fmt: skip
            await projects.set_access(
                session, actor=ADMIN, project_name="bench", subject=f"slack:{USER[0]}", role="owner"
            )
            for i in range(inflight):
                # More CPU than the node has: Pending, so the rollout stays in progress.
                await apps.create(
                    session, actor=ADMIN, project="bench", cluster="local", name=f"slow-{i:02d}",
                    namespace="bench",
                    changes=apps.AppChanges(
                        image="ghcr.io/acme/slow:1", cpu_request="100", cpu_limit="100",
                        progress_deadline_seconds=3600,
                    ),
                )  # fmt: skip
            for k in range(TARGETS):
                await apps.create(
                    session, actor=ADMIN, project="bench", cluster="local", name=f"load-{k:02d}",
                    namespace="bench", changes=apps.AppChanges(image="ghcr.io/acme/web:1", protected=True),
                )  # fmt: skip
            for m in range(mono_apps):
                await apps.create(
                    session, actor=ADMIN, project="bench", cluster="local", name=f"mono-{m:02d}",
                    namespace="bench",
                    changes=apps.AppChanges(
                        image=f"ghcr.io/acme/mono-{m:02d}:1", git_repo=monorepo(), git_branch="main",
                        image_template=f"ghcr.io/acme/mono-{m:02d}:{{sha}}", deploy_on="push",
                    ),
                )  # fmt: skip
    finally:
        await runtime.stop(rt)


async def fresh_postgres(base_url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"shipit_bench_{int(time.time())}"
    admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


async def count_running(settings: Settings) -> int:
    rt = await runtime.build(settings, migrate_db=False)
    rt.core.notifiers.clear()
    try:
        async with rt.sessionmaker() as session:
            rows = await session.scalars(
                select(models.Deployment.id)
                .join(models.App, models.App.id == models.Deployment.app_id)
                .where(models.App.name.like("slow-%"), models.Deployment.status == "running")
            )
            return len(list(rows))
    finally:
        await runtime.stop(rt)


async def count_notify_jobs(settings: Settings) -> int:
    """Notify jobs not done yet (queued, paced or running): the cards' backlog."""
    engine = db.create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            return int(
                await conn.scalar(
                    select(func.count())
                    .select_from(models.Job)
                    .where(
                        models.Job.kind == jobs.NOTIFY_KIND, models.Job.state.in_([jobs.QUEUED, jobs.RUNNING])
                    )
                )
                or 0
            )
    finally:
        await engine.dispose()


class MonoRow(NamedTuple):
    """One rate measured with monorepo pushes alongside: the commands' figures, then the pushes'."""

    rate: float
    latencies: list[float]
    errors: list[str]
    elapsed: float
    busy: float
    push_latencies: list[float]
    push_errors: list[str]
    push_elapsed: float
    deployed: int  # push deployments the database gained meanwhile


def mono_summary(row: MonoRow, *, apps: int) -> str:
    """The pushes' columns of a row: answered, p50, p99, max, errors, deployments written per second
    (and, when the database gained other than accepted pushes x apps, both counts: a loss or a double)."""
    lat = row.push_latencies
    accepted = len(lat) - len(row.push_errors)
    text = (
        f"{len(lat):6d} {pct(lat, 0.50):8.1f} {pct(lat, 0.99):8.1f} {max(lat, default=float('nan')):8.1f} "
        f"{len(row.push_errors):6d} {row.deployed / row.push_elapsed:9.1f}"
    )
    if row.deployed != accepted * apps:
        text += f"  (deployments {row.deployed} != {accepted} pushes accepted x {apps} apps)"
    return text


async def count_push_deployments(settings: Settings) -> int:
    rt = await runtime.build(settings, migrate_db=False)
    rt.core.notifiers.clear()
    try:
        async with rt.sessionmaker() as session:
            n = await session.scalar(
                select(func.count()).select_from(models.Deployment).where(models.Deployment.trigger == "push")
            )
            return int(n or 0)
    finally:
        await runtime.stop(rt)


async def send(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    at: float,
    out: list[float],
    errors: list[str],
    headers: dict[str, str] | None = None,
) -> None:
    delay = at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        async with http.post(url, data=body, headers=headers or signed(body)) as response:
            payload = await response.read()
            if headers is not None:  # a push: accepted (202), every app deployed
                if response.status != 202 or b'"result":"accepted"' not in payload:
                    errors.append(f"{response.status} {payload[:200]!r}")
            elif response.status != 200 or b"warning" in payload:
                errors.append(f"{response.status} {payload[:200]!r}")
    except Exception as e:  # a failed request counts, with its latency
        errors.append(repr(e))
    out.append((time.perf_counter() - at) * 1000)


async def push_load(
    url: str, *, rate: float, duration: float, seed: str
) -> tuple[list[float], list[str], float]:
    """Monorepo pushes at `rate` per second for `duration` seconds, open loop, as `load` sends commands."""
    pushes = monorepo_pushes(count=max(1, int(rate * duration)), seed=seed)
    latencies: list[float] = []
    errors: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        start = time.perf_counter() + 0.2
        await asyncio.gather(
            *(
                send(http, url, body, at=start + i / rate, out=latencies, errors=errors, headers=headers)
                for i, (body, headers) in enumerate(pushes)
            )
        )
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


async def load(
    url: str, fake: FakeSlack, *, rate: float, duration: float, command: str, offset: int
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    n_total = int(rate * duration)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        start = time.perf_counter() + 0.2
        tasks = []
        for i in range(n_total):
            n = offset + i
            app = f"load-{n % TARGETS:02d}"
            text = {"deploy": f"deploy {app} {n}.0", "revisions": f"revisions {app}", "help": "help"}[command]
            body = command_body(text, fake=fake, n=n)
            tasks.append(
                asyncio.create_task(send(http, url, body, at=start + i / rate, out=latencies, errors=errors))
            )
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


async def main(args: argparse.Namespace) -> None:
    with running() as env, tempfile.TemporaryDirectory() as tmp, FakeSlack() as fake:
        key = generate_key()
        database_url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        if args.database_url:
            database_url = await fresh_postgres(args.database_url)
        env_vars = {
            "SHIPIT_DATABASE_URL": database_url,
            "SHIPIT_DATA_DIR": tmp,
            "SHIPIT_MASTER_KEY": key,
            "SHIPIT_SLACK_SIGNING_SECRET": SECRET,
            "SHIPIT_SLACK_BOT_TOKEN": fake.bot_token,
            "SHIPIT_SLACK_API_URL": fake.url,
            "SHIPIT_WORKER_CONCURRENCY": str(args.workers),
            "SHIPIT_LOG_LEVEL": args.log_level,
        }
        if args.monorepo:
            env_vars["SHIPIT_GITHUB_WEBHOOK_SECRET"] = GITHUB_SECRET
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=env_vars["SHIPIT_DATABASE_URL"],
            data_dir=Path(tmp),
            master_key=key,  # type: ignore[arg-type]
        )
        mono_apps = args.monorepo_apps if args.monorepo else 0
        await setup_database(settings, env.kubeconfig, inflight=args.inflight, mono_apps=mono_apps)

        port = free_port()
        log_path = Path(tmp) / "server.log"
        shipit = Path(sys.executable).with_name("shipit")
        if not shipit.exists():
            raise SystemExit("the shipit entry point is missing: pip install -e .")
        cmd = [str(shipit), "serve", "--host", "127.0.0.1", "--port", str(port)]
        with log_path.open("wb") as log_file:
            server = subprocess.Popen(cmd, env={**os.environ, **env_vars}, stdout=log_file, stderr=log_file)
            try:
                url = f"http://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as http:
                    for _ in range(900):
                        try:
                            async with http.get(f"{url}/readyz") as r:
                                # Ours, not a server another job started on the same port meanwhile.
                                if r.status == 200 and listens(server.pid, port):
                                    break
                        except aiohttp.ClientError:
                            pass
                        if server.poll() is not None:
                            raise SystemExit(f"server exited: {log_path.read_text()[-3000:]}")
                        await asyncio.sleep(0.1)
                    else:
                        raise SystemExit(f"server not ready after 90 s: {log_path.read_text()[-3000:]}")
                    # The deploys in flight, started from Slack like any other.
                    for i in range(args.inflight):
                        body = command_body(f"deploy slow-{i:02d} 2", fake=fake, n=-1 - i)
                        async with http.post(f"{url}/slack/events", data=body, headers=signed(body)) as r:
                            assert r.status == 200, await r.text()
                deadline = time.monotonic() + 120
                while (running_now := await count_running(settings)) < args.inflight:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {running_now} of {args.inflight} deploys got running")
                    await asyncio.sleep(0.5)
                print(
                    f"{running_now} deploys in flight (pods Pending, rollouts in progress); load average {load_average()}"
                )

                # What the deploys in flight cost with no commands (their cards still being posted at
                # Slack's pace of about one message per second in the project channel).
                cpu_before = cpu_seconds(server.pid)
                await asyncio.sleep(5)
                idle = (cpu_seconds(server.pid) - cpu_before) / 5
                held = None
                if args.hold > 0:
                    # The same state held longer (a profiler can attach to the PID meanwhile).
                    print(f"holding {args.hold:g} s idle; server pid {server.pid}", flush=True)
                    cpu_before = cpu_seconds(server.pid)
                    series, t = [], 0.0
                    while t < args.hold:  # every 10 s: when the start of the deploys in flight has settled
                        step = min(10.0, args.hold - t)
                        cpu_step = cpu_seconds(server.pid)
                        await asyncio.sleep(step)
                        writes = len(fake.calls("chat.postMessage")) + len(fake.calls("chat.update"))
                        cpu = (cpu_seconds(server.pid) - cpu_step) / step
                        # The notify jobs left: how far the cards' backlog has drained.
                        series.append(f"{cpu:.1%} ({writes}, {await count_notify_jobs(settings)})")
                        t += step
                    held = (cpu_seconds(server.pid) - cpu_before) / args.hold
                    print(
                        "server CPU each 10 s of the hold (Slack writes so far, notify jobs left): "
                        + " ".join(series),
                        flush=True,
                    )
                # Warm up (connections, bolt's first auth.test, caches), then measure.
                await load(
                    f"{url}/slack/events", fake, rate=20, duration=2, command=args.command, offset=10**6
                )
                results = []
                mono_results: list[MonoRow] = []
                for i, rate in enumerate(float(r) for r in args.rate.split(",")):
                    cpu_before = cpu_seconds(server.pid)
                    latencies, errors, elapsed = await load(
                        f"{url}/slack/events", fake, rate=rate, duration=args.duration,
                        command=args.command, offset=i * 10**5,
                    )  # fmt: skip
                    busy = (cpu_seconds(server.pid) - cpu_before) / elapsed
                    results.append((rate, latencies, errors, elapsed, busy))
                    await asyncio.sleep(2)  # let a backlog (if any) drain before the next rate
                    if args.monorepo:
                        # The same rate again, with the monorepo pushes alongside.
                        deployed_before = await count_push_deployments(settings)
                        cpu_before = cpu_seconds(server.pid)
                        (latencies, errors, elapsed), pushed = await asyncio.gather(
                            load(
                                f"{url}/slack/events", fake, rate=rate, duration=args.duration,
                                command=args.command, offset=i * 10**5 + 5 * 10**4,
                            ),
                            push_load(
                                f"{url}/github/webhook", rate=args.monorepo, duration=args.duration,
                                seed=f"{time.time_ns()}-{i}",
                            ),
                        )  # fmt: skip
                        busy = (cpu_seconds(server.pid) - cpu_before) / elapsed
                        deployed = await count_push_deployments(settings) - deployed_before
                        mono_results.append(
                            MonoRow(rate, latencies, errors, elapsed, busy, *pushed, deployed)
                        )
                        await asyncio.sleep(2)
                still = await count_running(settings)
            finally:
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
        cards = len(fake.calls("chat.postMessage", ok=True)) + len(fake.calls("chat.update", ok=True))
        limited = len([c for c in fake.calls() if c.status == 429])
        print(
            f"database: {'PostgreSQL' if args.database_url else 'SQLite (WAL)'}; {args.inflight} deploys in flight "
            f"({still} still running at the end); one process, {args.workers} worker slots; "
            f"server CPU with no commands: {idle:.0%} of a core"
            + (f"; over the {args.hold:g} s hold: {held:.1%}" if held is not None else "")
        )
        print(
            f"{'command':>9} {'offered/s':>9} {'achieved/s':>10} {'sent':>6} {'p50 ms':>8} {'p90 ms':>8} "
            f"{'p99 ms':>8} {'max ms':>8} {'errors':>6} {'server CPU':>10}"
        )
        for rate, latencies, errors, elapsed, busy in results:
            print(
                f"{args.command:>9} {rate:9g} {(len(latencies) - len(errors)) / elapsed:10.1f} {len(latencies):6d} "
                f"{pct(latencies, 0.50):8.1f} {pct(latencies, 0.90):8.1f} {pct(latencies, 0.99):8.1f} "
                f"{max(latencies):8.1f} {len(errors):6d} {busy:9.0%}"
            )
            if errors:
                print(f"          e.g. {errors[0][:160]}")
        print(
            "  (open loop: latency from each command's scheduled send time to its whole answer; achieved = "
            "answers / time until the last one; server CPU = the shipit process, share of one core; "
            f"aim for deploy: p99 < 100 ms at 50/s; load average at the end {load_average()})"
        )
        for rate, latencies, errors, _elapsed, _busy in results:
            if args.command == "deploy" and rate == 50:
                p99 = pct(latencies, 0.99)
                met = p99 < 100 and not errors
                print(
                    f"aim (issue 13) /shipit deploy ack p99 < 100 ms at 50/s with {args.inflight} deploys in flight: "
                    f"{'MET' if met else 'NOT MET'} (p99 {p99:.1f} ms, {len(errors)} errors)"
                )
        if args.monorepo:
            print(
                f"with monorepo pushes alongside: {args.monorepo:g}/s, each a new commit that "
                f"{args.monorepo_apps} apps deploy"
            )
            print(
                f"{'command':>9} {'offered/s':>9} {'achieved/s':>10} {'sent':>6} {'p50 ms':>8} {'p90 ms':>8} "
                f"{'p99 ms':>8} {'max ms':>8} {'errors':>6} {'server CPU':>10} | "
                f"{'pushes':>6} {'push p50':>8} {'push p99':>8} {'push max':>8} {'errors':>6} {'deploys/s':>9}"
            )
            for row in mono_results:
                rate, latencies, errors, elapsed, busy = row[:5]
                print(
                    f"{args.command:>9} {rate:9g} {(len(latencies) - len(errors)) / elapsed:10.1f} "
                    f"{len(latencies):6d} {pct(latencies, 0.50):8.1f} {pct(latencies, 0.90):8.1f} "
                    f"{pct(latencies, 0.99):8.1f} {max(latencies):8.1f} {len(errors):6d} {busy:9.0%} | "
                    + mono_summary(row, apps=args.monorepo_apps)
                )
                if errors:
                    print(f"          e.g. {errors[0][:160]}")
                if row.push_errors:
                    print(f"          e.g. (push) {row.push_errors[0][:160]}")
            print(
                "  (pushes: latency from each push's scheduled send time to its answer, sent after its "
                "commit; deploys/s = push deployments the database gained / the pushes' time; expected: "
                "pushes accepted x apps)"
            )
        print(f"Slack Web API writes by the notifier meanwhile: {cards} (429s: {limited})")
        if args.json:
            rows = [
                {
                    "command": args.command,
                    "offered": rate,
                    "achieved": (len(lat) - len(errs)) / elapsed,
                    "sent": len(lat),
                    "p50": pct(lat, 0.5),
                    "p90": pct(lat, 0.9),
                    "p99": pct(lat, 0.99),
                    "max": max(lat),
                    "errors": len(errs),
                    "server_cpu": busy,
                }
                for rate, lat, errs, elapsed, busy in results
            ]
            mono = [
                {
                    "command": args.command,
                    "offered": row.rate,
                    "p99": pct(row.latencies, 0.99),
                    "errors": len(row.errors),
                    "pushes_per_second": args.monorepo,
                    "push_p50": pct(row.push_latencies, 0.5),
                    "push_p99": pct(row.push_latencies, 0.99),
                    "push_errors": len(row.push_errors),
                    "deployments_per_second": row.deployed / row.push_elapsed,
                }
                for row in mono_results
            ]
            figures = {"load_average": load_average(), "rows": rows, **({"monorepo": mono} if mono else {})}
            args.json.write_text(json.dumps(figures, indent=2))
        if args.keep_log:
            print(log_path.read_text()[-5000:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=str, default="20,50", help="commands per second; a list runs one after another"
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--inflight", type=int, default=50)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--command", choices=("deploy", "revisions", "help"), default="deploy")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server URL (postgresql+asyncpg://…/postgres): a fresh database is made on it; "
        "default: a SQLite file",
    )
    parser.add_argument(
        "--monorepo",
        type=float,
        default=0.0,
        help="also measure each rate with monorepo pushes alongside, this many per second (0: off)",
    )
    parser.add_argument("--monorepo-apps", type=int, default=20, help="apps each monorepo push deploys")
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="before the load, keep the deploys in flight and the server idle this many seconds and "
        "print the server's CPU over them (a profiler can attach meanwhile)",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep-log", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    asyncio.run(main(parser.parse_args()))
