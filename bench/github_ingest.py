"""GitHub webhook ingest: throughput and latency at 64 connections on one process, beside a bare endpoint.

Five servers, one after the other in the same run, each one uvicorn process (uvloop + httptools),
loaded by `wrk` (Debian package) on loopback with signed push bodies:

- bare:   a FastAPI app whose POST handler returns a constant (the ceiling of the stack);
- app:    the same constant endpoint added to shipit's app (its middleware, its route table);
- ingest: POST /github/webhook, a push to a branch no app tracks: signature verified, JSON parsed,
          the delivery recorded in the database (dedupe) and the answer sent — the path every
          delivery takes before any work is queued;
- deploy: the same route, a push of a NEW commit to the tracked branch: additionally a revision, a
          deployment, the supersede of the previous queued deploy, the deploy job, the outbox events
          and their notify jobs and the audit row, all in the one transaction that is committed before
          the answer.  wrk's Lua has no HMAC, so `--bodies` pushes (each its own `after` sha and
          head commit, signed) are written to a file beforehand; the Lua script reads them at start
          and sends the next one per request (threads take every n-th).  The warm-up sends the first
          ones, the measured run carries on from there; if a run needs more than there are, the
          bodies wrap around and the repeats are dedupe hits (the output says so).  "deployed"
          counts the push deployments the database gained during the run, beside "recorded"
          (deliveries recorded).
- repeat: the same route, the same push of an already deployed commit again and again (a repeated
          push, or a redelivery under a new delivery id): the per-app dedupe answers "already
          deployed" and nothing is queued.

Every request carries a new X-GitHub-Delivery id (a wrk Lua script numbers them per thread), so no
request is answered from the delivery dedupe short-cut.  The database is the embedded default (SQLite, WAL),
or with --postgres a fresh database on the given PostgreSQL server.
The worker is off: only ingest is measured.  For the webhook targets the run also prints how many
group-commit batches it took (a batch stamps its deliveries with one received_at).

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
  path = os.getenv("BENCH_PATH")
  headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = "push",
  }
  -- One signed body per line: "<X-Hub-Signature-256>\t<body>"; this thread sends every
  -- `threads`-th one, starting at BENCH_OFFSET (what the warm-up already sent).
  sigs, bodies = {}, {}
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    local sig, body = line:match("^([^\t]*)\t(.*)$")
    sigs[#sigs + 1] = sig
    bodies[#bodies + 1] = body
  end
  stride = tonumber(os.getenv("BENCH_THREADS") or "1")
  next_index = tonumber(os.getenv("BENCH_OFFSET") or "0") + tid - 1
end
function request()
  n = n + 1
  local i = next_index % #bodies + 1
  next_index = next_index + stride
  headers["X-GitHub-Delivery"] = string.format("%s-%d-%d", run, tid, n)
  headers["X-Hub-Signature-256"] = sigs[i]
  return wrk.format("POST", path, headers, bodies[i])
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


def _push_payload(*, ref: str) -> dict[str, Any]:
    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "github" / "push__branch.json"
    payload: dict[str, Any] = json.loads(fixture.read_text())
    payload["ref"] = ref
    return payload


def _push_body(*, ref: str) -> bytes:
    return json.dumps(_push_payload(ref=ref)).encode()


def new_commit_bodies(*, ref: str, count: int, seed: str) -> list[bytes]:
    """`count` pushes to `ref`, each of a new commit (its own `after` sha and head commit), each
    following the one before it (`before`), as a branch that moves on does."""
    import hashlib

    payload = _push_payload(ref=ref)
    before = payload["before"]
    bodies = []
    for i in range(count):
        sha = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()
        payload["before"], payload["after"] = before, sha
        payload["compare"] = f"https://github.com/acme/web/compare/{before[:12]}...{sha[:12]}"
        payload["head_commit"] = {**payload["head_commit"], "id": sha, "tree_id": sha}
        payload["commits"] = [{**payload["commits"][0], "id": sha, "tree_id": sha}]
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
        before = sha
    return bodies


# Enough distinct commits that a deploying push's run never wraps around to dedupe hits: more pushes a
# second than any machine has answered here (3,000 at most, session 26).
BODIES_PER_SECOND = 5000
MIN_BODIES = 30000


def _bodies(args: argparse.Namespace) -> int:
    if args.bodies is not None:
        return int(args.bodies)
    return max(MIN_BODIES, BODIES_PER_SECOND * (args.warmup + args.duration))


def _write_bodies(path: Path, bodies: list[bytes]) -> None:
    """One line per body for the Lua script: its signature, a tab, the body (compact JSON: no newline)."""
    from webhooks import signature

    with path.open("wb") as f:
        for body in bodies:
            assert b"\n" not in body and b"\t" not in body
            f.write(signature.sign(secret=SECRET, body=body).encode() + b"\t" + body + b"\n")


async def _prepare(env: dict[str, str], *, secrets: int = 0, apps_n: int = 1) -> None:
    """Migrate the database and link an app `web` to acme/web, branch main (with `secrets` secrets:
    most production apps have some, and every deploy's revision records their checksum).  With
    `apps_n` above 1, as many apps more (`web-01`...) in namespaces of their own follow the same
    branch: a monorepo, each push deploys them all."""
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
        names = ["web"]
        for m in range(1, apps_n):
            names.append(f"web-{m:02d}")
            await apps.create(
                session, actor=SYSTEM, project="acme", cluster="c", name=names[-1], namespace=names[-1],
                changes=AppChanges(
                    image=f"ghcr.io/acme/{names[-1]}:0.1", git_repo="acme/web", git_branch="main",
                    image_template=f"ghcr.io/acme/{names[-1]}:{{sha}}",
                ),
            )  # fmt: skip
        if secrets:
            from core import secrets as app_secrets

            values = {f"SECRET_{i}": f"bench-value-{i}" for i in range(secrets)}
            for name in names:
                await app_secrets.set_values(session, ctx=rt.core, actor=SYSTEM, app_name=name, values=values)
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


def _rss_mib(pid: int) -> float | None:
    """The server process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk(*, url: str, path: str, bodies: Path, script: Path, run: str, args: argparse.Namespace,
         duration: int, offset: int = 0) -> dict[str, Any]:  # fmt: skip
    env = {
        **os.environ,
        "BENCH_BODIES": str(bodies),
        "BENCH_OFFSET": str(offset),
        "BENCH_THREADS": str(args.threads),
        "BENCH_PATH": path,
        "BENCH_RUN": run,
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


def _counts(url: str) -> tuple[int, int, int]:
    """(deliveries recorded, push deployments, group-commit batches) in the database now.

    A batch stamps all of its deliveries with one received_at, so the distinct stamps count batches."""
    return asyncio.run(_counts_async(url))


async def _counts_async(url: str) -> tuple[int, int, int]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    # One statement, so one snapshot: requests still in flight when wrk stops commit afterwards, and
    # a batch landing between two separate counts showed as deployments without deliveries.
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM webhook_deliveries),"
                    " (SELECT count(*) FROM deployments WHERE \"trigger\" = 'push'),"
                    " (SELECT count(DISTINCT received_at) FROM webhook_deliveries)"
                )
            )
        ).one()
    delivered, deployed, batches = int(row[0]), int(row[1]), int(row[2])
    await engine.dispose()
    return delivered, deployed, batches


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
        "--bodies",
        type=int,
        default=None,
        help="deploy: signed pushes of distinct commits written beforehand (warm-up and run share them); "
        f"default {BODIES_PER_SECOND} per second of warm-up and run, at least {MIN_BODIES}",
    )
    parser.add_argument(
        "--targets",
        default="bare,app,ingest,deploy,repeat",
        help="comma-separated subset of bare,app,ingest,deploy,repeat (bare is always run: the ratios)",
    )
    parser.add_argument("--secrets", type=int, default=0, help="the tracked app has this many secrets")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="use a fresh database on this PostgreSQL server (postgresql+asyncpg://...) instead of SQLite",
    )
    args = parser.parse_args()
    args.bodies = _bodies(args)
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
    asyncio.run(_prepare(env, secrets=args.secrets))
    script = tmp / "signed.lua"
    script.write_text(LUA)
    bodies = {
        "ingest": tmp / "untracked.txt",
        "deploy": tmp / "tracked-new.txt",
        "repeat": tmp / "tracked.txt",
    }
    _write_bodies(bodies["ingest"], [_push_body(ref="refs/heads/not-tracked")])
    _write_bodies(
        bodies["deploy"],
        new_commit_bodies(ref="refs/heads/main", count=args.bodies, seed=str(time.time_ns())),
    )
    _write_bodies(bodies["repeat"], [_push_body(ref="refs/heads/main")])

    wanted = {"bare", *args.targets.split(",")}
    targets = [
        (name, factory, path, body)
        for name, factory, path, body in (
            ("bare", "bench.github_ingest:bare_app", "/bare", bodies["ingest"]),
            ("app", "bench.github_ingest:real_app", "/bench-constant", bodies["ingest"]),
            ("ingest", "bench.github_ingest:real_app", "/github/webhook", bodies["ingest"]),
            ("deploy", "bench.github_ingest:real_app", "/github/webhook", bodies["deploy"]),
            ("repeat", "bench.github_ingest:real_app", "/github/webhook", bodies["repeat"]),
        )
        if name in wanted
    ]
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, factory, path, body in targets:
            server = Server(factory=factory, env=env)
            try:
                url = f"http://127.0.0.1:{server.port}"
                before, _, _ = _counts(db_url)
                warm_requests = 0
                if args.warmup:
                    warm = _wrk(url=url, path=path, bodies=body, script=script,
                                run=f"{name}-warm-{time.time_ns()}", args=args, duration=args.warmup)  # fmt: skip
                    # wrk counts the answered requests; up to one per connection was sent and not
                    # counted when it stopped (and is committed anyway): skip past those too.
                    warm_requests = warm["requests"] + args.connections
                mid, deployed_mid, batches_mid = _counts(db_url)
                rss_mid = _rss_mib(server.proc.pid)
                # The measured run carries on where the warm-up stopped: new commits only, until they wrap.
                results[name] = _wrk(url=url, path=path, bodies=body, script=script,
                                     run=f"{name}-{time.time_ns()}", args=args, duration=args.duration,
                                     offset=warm_requests)  # fmt: skip
                recorded, deployed, batches = _counts(db_url)
                results[name]["rss"] = (rss_mid, _rss_mib(server.proc.pid))
                webhook = path == "/github/webhook"
                results[name]["recorded"] = recorded - mid if webhook else None
                results[name]["deployed"] = deployed - deployed_mid if webhook else None
                results[name]["batches"] = batches - batches_mid if webhook else None
                results[name]["warmup_recorded"] = mid - before
                # More requests than distinct bodies: the later ones repeated earlier commits.
                results[name]["wrapped"] = (
                    name == "deploy"
                    and warm_requests + results[name]["requests"] + args.connections > args.bodies
                )
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
          f"{'non-2xx':>8} {'requests':>9} {'recorded':>9} {'deployed':>9}")  # fmt: skip
    for name, r in results.items():
        recorded = "" if r["recorded"] is None else str(r["recorded"])
        deployed = "" if r["deployed"] is None else str(r["deployed"])
        print(f"{name:8} {r['rps']:9.0f} {r['rps'] / bare:6.2f} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} "
              f"{r['non_2xx']:8d} {r['requests']:9d} {recorded:>9} {deployed:>9}")  # fmt: skip
        if r["batches"]:
            print(f"         {r['batches']} group-commit batches, {r['recorded'] / r['batches']:.1f} "
                  "deliveries each on average")  # fmt: skip
        if None not in r["rss"]:
            print(
                f"         server RSS {r['rss'][0]:.1f} MiB after the warm-up, {r['rss'][1]:.1f} MiB after the run"
            )
        if r["socket_errors"]:
            print(f"         socket errors: {r['socket_errors']}")
        if r["wrapped"]:
            print(f"         the {args.bodies} distinct commits wrapped around: the repeats were dedupe hits "
                  "(raise --bodies)")  # fmt: skip
    # The aims of issue 13, each a ratio to bare measured in this run.
    for name, aim, p99_aim in (("app", 0.9, None), ("ingest", 0.6, 50.0), ("deploy", 0.3, None)):
        if name in results:
            r = results[name]
            met = (
                r["rps"] / bare >= aim
                and (p99_aim is None or (r["p99"] or 1e9) < p99_aim)
                and not r["non_2xx"]
                # The deploy row counts only if every push it measured queued a deploy.
                and (name != "deploy" or (not r["wrapped"] and r["deployed"] == r["recorded"]))
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
