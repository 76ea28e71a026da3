"""Where the constant endpoint's time goes inside shipit's app: the ASGI app driven in-process.

No network and no server: the same constant endpoint as bench.github_ingest (`bare` or inside the real
app), called 5,000 times back to back with a synthetic POST scope; prints req/s, and with --profile the
top frames by own time (cProfile).  What the app adds over bare FastAPI shows up directly.

`--target both` builds the two apps in one process and alternates rounds of 500 requests between
them, timing each by this process's CPU time (time.process_time) as well as the wall clock: on a
shared, loaded machine the CPU-time ratio is the steadier one (other processes' load moves the wall
clock of one round, not the CPU it took).

`--target ingest` does the same for a signed GitHub push to a branch no app tracks (verified,
parsed, recorded in SQLite before the answer, as bench.github_ingest's `ingest`) against bare, with
64 requests in flight at a time (so deliveries group-commit as they do under wrk's 64 connections);
the CPU time counts the database thread too.

`--target deploy` is the same with a push of a NEW commit to the tracked branch per request (every
one queues a deploy, as bench.github_ingest's `deploy`); `--target repeat` pushes one commit again
and again (after the first, each is answered "already deployed": the per-app dedupe hit).

The webhook targets also print how much of their CPU the process's other threads took (aiosqlite's
thread, where SQLite runs): the rest is the event loop's, what the profile shows.

`--max-batch N` caps the group commit's batch (over wrk at 64 connections batches average ~32
deliveries; in process they fill to 64); the run prints the batches it made.

    .venv/bin/python -m bench.profile_constant [--target app|bare|both|ingest|deploy|repeat] [--profile]
        [--rounds 20] [--max-batch N] [--secrets N] [--apps N]

`--apps N` (deploy, repeat): N apps follow the pushed branch, each push deploys them all (a monorepo).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import itertools
import os
import pstats
import shutil
import tempfile
import time
from typing import Any

from bench import common

N = 5000


async def _drive(app: Any, path: str, n: int) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"0")],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    for _ in range(n):
        await app(dict(scope), receive, send)


Request = tuple[bytes, list[Any]]  # a body and its headers


async def _concurrently(app: Any, path: str, n: int, *, requests: Any) -> None:
    """`n` requests, 64 in flight at a time, each the next of `requests` (an iterator of
    (body, headers)); every one must be answered 2xx."""
    counter = iter(range(10**9))

    async def client(count: int) -> None:
        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        for _ in range(count):
            status.clear()
            body, headers = next(requests)

            async def receive(body: bytes = body) -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            delivery = f"profile-{time.time_ns()}-{next(counter)}".encode()
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                "root_path": "", "headers": [*headers, (b"x-github-delivery", delivery)],
                "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80), "state": {},
            }  # fmt: skip
            await app(scope, receive, send)
            assert status and 200 <= status[0] < 300, status

    await asyncio.gather(*(client(n // 64) for _ in range(64)))


async def _ingest(args: argparse.Namespace) -> None:
    from bench import github_ingest as gi
    from shipit import runtime
    from shipit.app import settle_gc
    from shipit.main import create_app
    from shipit.settings import Settings
    from webhooks import signature

    await gi._prepare(
        {**os.environ, "SHIPIT_GITHUB_WEBHOOK_SECRET": gi.SECRET}, secrets=args.secrets, apps_n=args.apps
    )
    rt = await runtime.build(Settings(_env_file=None))
    app = create_app(rt=rt)
    app.state.runtime = rt  # what the lifespan does; the runtime is ours here
    ingest = _webhook_ingest(app)
    settle_gc()  # as the lifespan does once it has started a runtime of its own
    if args.max_batch:
        ingest.max_batch = args.max_batch

    def signed(body: bytes) -> Request:
        headers = [
            (b"host", b"x"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"user-agent", b"GitHub-Hookshot/bench"),
            (b"x-github-event", b"push"),
            (b"x-hub-signature-256", signature.sign(secret=gi.SECRET, body=body).encode()),
        ]  # fmt: skip
        return body, headers

    per_round = 640
    warm = 128
    if args.target == "deploy":
        # A new commit per request, as bench.github_ingest's `deploy`: every push queues a deploy.
        count = warm + args.rounds * per_round
        pushes = iter(
            [
                signed(b)
                for b in gi.new_commit_bodies(ref="refs/heads/main", count=count, seed=str(time.time_ns()))
            ]
        )
    elif args.target == "repeat":
        pushes = itertools.repeat(signed(gi._push_body(ref="refs/heads/main")))
    else:
        pushes = itertools.repeat(signed(gi._push_body(ref="refs/heads/not-tracked")))
    measured = args.target
    targets = {
        "bare": (gi.bare_app(), "/bare", itertools.repeat((b"", [(b"host", b"x")]))),
        measured: (app, "/github/webhook", pushes),
    }
    cpu = dict.fromkeys(targets, 0.0)
    wall = dict.fromkeys(targets, 0.0)
    others = dict.fromkeys(targets, 0.0)  # of `cpu`: the threads other than the event loop's (SQLite's)
    for target, path, requests in targets.values():
        await _concurrently(target, path, warm, requests=requests)
    profile = cProfile.Profile() if args.profile else None
    collections = [g["collections"] for g in gc.get_stats()]
    gc_time = _gc_timer()
    for i in range(args.rounds):
        for name in list(targets) if i % 2 == 0 else list(reversed(targets)):
            target, path, requests = targets[name]
            if profile is not None and name == measured:
                profile.enable()
            c, w, o = time.process_time(), time.perf_counter(), common.threads_cpu()
            await _concurrently(target, path, per_round, requests=requests)
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
            others[name] += common.threads_cpu() - o
            if profile is not None and name == measured:
                profile.disable()
    collections = [g["collections"] - c for g, c in zip(gc.get_stats(), collections, strict=True)]
    gc.callbacks.remove(gc_time)
    print(
        f"cyclic GC collections while measured (generations 0/1/2): {'/'.join(map(str, collections))}, "
        f"{gc_time.seconds / (args.rounds * per_round) * 1000:.4f} ms per request"  # type: ignore[attr-defined]
    )
    if ingest.batches:
        print(
            f"{measured}: {ingest.batches} batches of {ingest.batched / ingest.batches:.1f} deliveries "
            f"on average (warm-up included)"
        )
    if args.target in ("deploy", "repeat"):
        deployed = await _push_deployments(rt)
        print(
            f"push deployments in the database: {deployed} (requests to {measured}: {warm + args.rounds * per_round}"
            + (f", each deploying {args.apps} apps)" if args.apps > 1 else ")")
        )
    await runtime.stop(rt)
    n = args.rounds * per_round
    for name in targets:
        print(
            f"{name}: {n / cpu[name]:.0f} req/s per CPU second ({cpu[name] / n * 1000:.3f} ms CPU/request), "
            f"{n / wall[name]:.0f} req/s wall clock"
        )
    print(
        f"ratio {measured}/bare: {cpu['bare'] / cpu[measured]:.3f} (CPU time), "
        f"{wall['bare'] / wall[measured]:.3f} (wall)"
    )
    print(
        f"{measured}: of which {others[measured] / n * 1000:.3f} ms/request in the process's other threads "
        "(the database driver's), the rest in the event loop's"
    )
    if profile is not None:
        stats = pstats.Stats(profile)
        if args.profile_out:
            stats.dump_stats(args.profile_out)
        stats.sort_stats("tottime").print_stats(25)


def _gc_timer() -> Any:
    """A gc callback (registered) that adds up the time the cyclic collector runs, in `.seconds`."""
    started = 0.0

    def timer(phase: str, _info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            timer.seconds += time.perf_counter() - started  # type: ignore[attr-defined]

    timer.seconds = 0.0  # type: ignore[attr-defined]
    gc.callbacks.append(timer)
    return timer


def _webhook_ingest(app: Any) -> Any:
    """The app's webhooks.ingest.Ingest (its batch counts; --max-batch): the one the app holds."""
    from webhooks.ingest import Ingest

    found = [o for o in gc.get_objects() if isinstance(o, Ingest)]
    if len(found) != 1:
        raise LookupError(f"expected one webhooks.ingest.Ingest, found {len(found)}")
    return found[0]


async def _push_deployments(rt: Any) -> int:
    from sqlalchemy import func, select

    from storage import models

    async with rt.sessionmaker() as session:
        n = await session.scalar(
            select(func.count()).select_from(models.Deployment).where(models.Deployment.trigger == "push")
        )
    return int(n or 0)


async def _both(rounds: int) -> None:
    from bench.github_ingest import bare_app, real_app

    apps = {"bare": (bare_app(), "/bare"), "app": (real_app(), "/bench-constant")}
    cpu = {name: 0.0 for name in apps}
    wall = {name: 0.0 for name in apps}
    for app, path in apps.values():
        await _drive(app, path, 200)
    per_round = 500
    for i in range(rounds):
        order = list(apps) if i % 2 == 0 else list(reversed(apps))
        for name in order:
            app, path = apps[name]
            c, w = time.process_time(), time.perf_counter()
            await _drive(app, path, per_round)
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
    n = rounds * per_round
    for name in apps:
        print(f"{name}: {n / cpu[name]:.0f} req/s per CPU second, {n / wall[name]:.0f} req/s wall clock")
    print(
        f"ratio app/bare: {cpu['bare'] / cpu['app']:.2f} (CPU time), {wall['bare'] / wall['app']:.2f} (wall)"
    )


async def _main(args: argparse.Namespace) -> None:
    from bench.github_ingest import bare_app, real_app

    if args.target == "both":
        await _both(args.rounds)
        return
    if args.target in ("ingest", "deploy", "repeat"):
        await _ingest(args)
        return

    app, path = (bare_app(), "/bare") if args.target == "bare" else (real_app(), "/bench-constant")
    await _drive(app, path, 200)  # builds the middleware stack, warms caches
    start = time.perf_counter()
    await _drive(app, path, N)
    print(f"{args.target}: {N / (time.perf_counter() - start):.0f} req/s in-process")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        await _drive(app, path, N)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target", choices=("app", "bare", "both", "ingest", "deploy", "repeat"), default="app"
    )
    parser.add_argument(
        "--rounds", type=int, default=20, help="--target both/ingest/deploy/repeat: rounds per target"
    )
    parser.add_argument(
        "--max-batch", type=int, default=0, help="ingest/deploy/repeat: cap the group commit's batch size"
    )
    parser.add_argument("--secrets", type=int, default=0, help="ingest/deploy/repeat: the app's secrets")
    parser.add_argument(
        "--apps", type=int, default=1, help="deploy/repeat: apps following the pushed branch (a monorepo)"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-out", help="with --profile: also dump the cProfile stats to this file")
    args = parser.parse_args()
    from storage.crypto import generate_key

    tmp = tempfile.mkdtemp(prefix="shipit-profile-")
    os.environ.update(
        {
            "SHIPIT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/shipit.db",
            "SHIPIT_DATA_DIR": f"{tmp}/var",
            "SHIPIT_MASTER_KEY": generate_key(),
            "SHIPIT_RUN_WORKER": "false",
            "SHIPIT_LOG_LEVEL": "WARNING",
        }
    )
    try:
        asyncio.run(_main(args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the database grows by thousands of deploys per run


if __name__ == "__main__":
    main()
