"""Where the constant endpoint's time goes inside shipit's app: the ASGI app driven in-process.

No network and no server: the same constant endpoint as bench.github_ingest (`bare` or inside the real
app), called 5,000 times back to back with a synthetic POST scope; prints req/s, and with --profile the
top frames by own time (cProfile).  What the app adds over bare FastAPI shows up directly.

    .venv/bin/python -m bench.profile_constant [--target app|bare] [--profile]
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


async def _main(args: argparse.Namespace) -> None:
    from bench.github_ingest import bare_app, real_app

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
    parser.add_argument("--target", choices=("app", "bare"), default="app")
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
