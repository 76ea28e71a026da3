"""Where the constant endpoint's time goes inside shipit's app: the ASGI app driven in-process.

No network and no server: the same constant endpoint as bench.github_ingest (`bare` or inside the real
app), called 5,000 times back to back with a synthetic POST scope; prints req/s, and with --profile the
top frames by own time (cProfile).  What the app adds over bare FastAPI shows up directly.

`--target both` builds the two apps in one process and alternates rounds of 500 requests between
them, timing each by this process's CPU time (time.process_time) as well as the wall clock: on a
shared, loaded machine the CPU-time ratio is the steadier one (other processes' load moves the wall
clock of one round, not the CPU it took).

    .venv/bin/python -m bench.profile_constant [--target app|bare|both] [--profile] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from typing import Any

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
    parser.add_argument("--target", choices=("app", "bare", "both"), default="app")
    parser.add_argument("--rounds", type=int, default=20, help="--target both: rounds of 500 each")
    parser.add_argument("--profile", action="store_true")
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
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
