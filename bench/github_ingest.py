"""GitHub webhook ingest: throughput and latency at 64 connections on one process, beside a bare endpoint.

Three servers, one after the other in the same run, each one uvicorn process (uvloop + httptools),
loaded by `wrk` (Debian package) on loopback with the same signed push body:

- bare:   a FastAPI app whose POST handler returns a constant (the ceiling of the stack);
- app:    the same constant endpoint added to shipit's app (its middleware, its route table);
- ingest: POST /github/webhook, a push to a branch no app tracks: signature verified, JSON parsed,
          the delivery recorded in the database (dedupe) and the answer sent — the path every
          delivery takes before any work is queued;
- deploy: the same route, a push to the tracked branch: additionally a revision, a deployment, the
          supersede of the previous queued deploy, the deploy job, the outbox events and their notify
          jobs and the audit row, all in the one transaction that is committed before the answer.

Every request carries a new X-GitHub-Delivery id (a wrk Lua script numbers them per thread), so no
request is answered from the dedupe short-cut.  The database is the embedded default (SQLite, WAL),
or with --postgres a fresh database on the given PostgreSQL server.
The worker is off: only ingest is measured.

    .venv/bin/python -m bench.github_ingest [--duration 10] [--connections 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from bench.common import listens

SECRET = "bench-webhook-secret"
LUA = r"""
local counter = 1
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  n = 0
  run = os.getenv("BENCH_RUN") or "run"
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = "push",
    ["X-Hub-Signature-256"] = os.getenv("BENCH_SIGNATURE"),
  }
end
function request()
  n = n + 1
  headers["X-GitHub-Delivery"] = string.format("%s-%d-%d", run, tid, n)
  return wrk.format("POST", os.getenv("BENCH_PATH"), headers, body)
end
"""


def bare_app() -> FastAPI:
    """The comparison: FastAPI returning a constant, nothing else."""
    app = FastAPI()

    @app.post("/bare")
    async def bare() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def real_app() -> FastAPI:
    """shipit as `shipit serve` builds it, configured from the SHIPIT_ environment."""
    from shipit.main import create_app

    app = create_app()

    # The same constant as the bare app, behind shipit's own middleware and routes: separates what
    # the application stack costs from what ingest costs.
    @app.post("/bench-constant", include_in_schema=False)
    async def constant() -> dict[str, bool]:
        return {"ok": True}

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _push_body(*, ref: str) -> bytes:
    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "github" / "push__branch.json"
    payload = json.loads(fixture.read_text())
    payload["ref"] = ref
    return json.dumps(payload).encode()


async def _prepare(env: dict[str, str]) -> None:
    """Migrate the database and link an app `web` to acme/web, branch main."""
    os.environ.update(env)
    from core import apps, clusters, projects
    from core.apps import AppChanges
    from core.identity import SYSTEM
    from shipit import runtime
    from shipit.settings import Settings

    rt = await runtime.build(Settings(_env_file=None))
    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=SYSTEM, name="acme")
        await clusters.add(
            session, ctx=rt.core, actor=SYSTEM, name="c", kubeconfig_text=kubeconfig, version="v1.36.3"
        )
        await apps.create(
            session,
            actor=SYSTEM,
            project="acme",
            cluster="c",
            name="web",
            namespace="web",
            changes=AppChanges(
                image="ghcr.io/acme/web:0.1",
                git_repo="acme/web",
                git_branch="main",
                image_template="ghcr.io/acme/web:{sha}",
            ),
        )
    await runtime.stop(rt)


class Server:
    def __init__(self, *, factory: str, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            env={**os.environ, **env},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    # Ours, not a server another job started on the same port meanwhile.
                    if r.status == 200 and listens(self.proc.pid, self.port):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"{factory} did not start: {err[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk(*, url: str, path: str, body: Path, script: Path, run: str, args: argparse.Namespace,
         duration: int) -> dict[str, Any]:  # fmt: skip
    from webhooks import signature

    env = {
        **os.environ,
        "BENCH_BODY": str(body),
        "BENCH_PATH": path,
        "BENCH_RUN": run,
        "BENCH_SIGNATURE": signature.sign(secret=SECRET, body=body.read_bytes()),
    }
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--timeout", "5s",
           "--latency", "-s", str(script), url]  # fmt: skip
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    result: dict[str, Any] = {"command": " ".join(cmd), "raw": out}
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(m.group(1)) if m else None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = errors.group(1) if errors else ""
    return result


def _count_deliveries(url: str) -> int:
    return asyncio.run(_count_async(url))


async def _count_async(url: str) -> int:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.connect() as conn:
        n = int((await conn.execute(text("SELECT count(*) FROM webhook_deliveries"))).scalar_one())
    await engine.dispose()
    return n


async def _postgres_database(server: str, *, drop: str | None = None) -> str:
    """A fresh database on `server` (or drop `drop`); returns its URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    name = drop or f"shipit_bench_{os.getpid()}_{time.time_ns() % 10**8}"
    async with admin.connect() as conn:
        if drop:
            await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (leave a core to the server)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="use a fresh database on this PostgreSQL server (postgresql+asyncpg://...) instead of SQLite",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

    from storage.crypto import generate_key

    tmp = Path(tempfile.mkdtemp(prefix="shipit-bench-"))
    db_url = (
        asyncio.run(_postgres_database(args.postgres))
        if args.postgres
        else f"sqlite+aiosqlite:///{tmp}/shipit.db"
    )
    env = {
        "SHIPIT_DATABASE_URL": db_url,
        "SHIPIT_DATA_DIR": str(tmp / "var"),
        "SHIPIT_MASTER_KEY": generate_key(),
        "SHIPIT_RUN_WORKER": "false",
        "SHIPIT_GITHUB_WEBHOOK_SECRET": SECRET,
        "SHIPIT_GITHUB_TOKEN": "bench-token-never-used",
        "SHIPIT_GITHUB_API_URL": "http://127.0.0.1:9",
        "SHIPIT_LOG_LEVEL": "WARNING",
    }
    asyncio.run(_prepare(env))
    script = tmp / "signed.lua"
    script.write_text(LUA)
    bodies = {"ingest": tmp / "untracked.json", "deploy": tmp / "tracked.json"}
    bodies["ingest"].write_bytes(_push_body(ref="refs/heads/not-tracked"))
    bodies["deploy"].write_bytes(_push_body(ref="refs/heads/main"))

    targets = [
        ("bare", "bench.github_ingest:bare_app", "/bare", bodies["ingest"]),
        ("app", "bench.github_ingest:real_app", "/bench-constant", bodies["ingest"]),
        ("ingest", "bench.github_ingest:real_app", "/github/webhook", bodies["ingest"]),
        ("deploy", "bench.github_ingest:real_app", "/github/webhook", bodies["deploy"]),
    ]
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, factory, path, body in targets:
            server = Server(factory=factory, env=env)
            try:
                url = f"http://127.0.0.1:{server.port}"
                before = _count_deliveries(db_url)
                if args.warmup:
                    _wrk(url=url, path=path, body=body, script=script, run=f"{name}-warm-{time.time_ns()}",
                         args=args, duration=args.warmup)  # fmt: skip
                mid = _count_deliveries(db_url)
                results[name] = _wrk(url=url, path=path, body=body, script=script,
                                     run=f"{name}-{time.time_ns()}", args=args, duration=args.duration)  # fmt: skip
                recorded = _count_deliveries(db_url) - mid
                results[name]["recorded"] = recorded if name.startswith(("ingest", "deploy")) else None
                results[name]["warmup_recorded"] = mid - before
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.postgres:
            from sqlalchemy.engine import make_url

            asyncio.run(_postgres_database(args.postgres, drop=make_url(db_url).database))

    bare = results["bare"]["rps"]
    database = "PostgreSQL" if args.postgres else "SQLite (WAL)"
    print(
        f"GitHub webhook ingest, {args.connections} connections, {args.duration}s each, "
        f"one uvicorn process, {database}"
    )
    print(f"{'target':8} {'req/s':>9} {'ratio':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'non-2xx':>8} {'recorded':>9}")  # fmt: skip
    for name, r in results.items():
        recorded = "" if r["recorded"] is None else str(r["recorded"])
        print(f"{name:8} {r['rps']:9.0f} {r['rps'] / bare:6.2f} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} "
              f"{r['non_2xx']:8d} {recorded:>9}")  # fmt: skip
        if r["socket_errors"]:
            print(f"         socket errors: {r['socket_errors']}")
    # The aims of issue 13, each a ratio to bare measured in this run.
    for name, aim, p99_aim in (("app", 0.9, None), ("ingest", 0.6, 50.0), ("deploy", 0.3, None)):
        if name in results:
            r = results[name]
            met = (
                r["rps"] / bare >= aim
                and (p99_aim is None or (r["p99"] or 1e9) < p99_aim)
                and not r["non_2xx"]
            )
            print(
                f"aim (issue 13) {name} >= {aim} of bare{f' with p99 < {p99_aim:g} ms' if p99_aim else ''}: "
                f"{'MET' if met else 'NOT MET'} ({r['rps'] / bare:.2f}, p99 {r['p99']} ms)"
            )
    print("commands:")
    for name, r in results.items():
        print(f"  {name}: {r['command']}")
    if args.json:
        args.json.write_text(json.dumps({k: {**v, "raw": None} for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
