"""Deploy-request throughput on PostgreSQL: one `shipit serve` replica, then three, side by side.

  .venv/bin/python -m bench.replicas [--replicas 1,3] [--duration 15] [--connections 24] [--apps 240]
                                     [--cpu-limit 0.3 [--cpu-limit-fallback]] [--postgres URL]

What runs, for each replica count (one after the other, in one run):
- a fresh PostgreSQL database (on `--postgres`, default $SHIPIT_TEST_POSTGRES_URL, else what
  scripts/test-postgres prints), migrated, with one project, an offline cluster, `--apps` apps and a
  developer's API token (a CI token, not an admin: the membership check is part of the path);
- N `shipit serve` processes on loopback ports, each ONE uvicorn process (no `--workers`: a replica is a
  process, as in manifests/), with the job worker OFF (SHIPIT_RUN_WORKER=false): the aim is the
  deploy-request path; a worker would claim the queued jobs and apply them, and its CPU (rendering,
  Kubernetes round trips) would compete with the requests for the same two cores and blur the ratio;
- a load generator in its own process (aiohttp, closed loop): `--connections` concurrent clients spread
  round-robin over the replicas, each sending `POST /api/v1/apps/app-K/deploys` with the bearer token,
  K cycling over all apps (so two requests rarely touch one app at once: supersede contention does not
  dominate); every request carries a new image tag.  When the time is up each client finishes the request
  it has in flight, so every request sent has an answer and the database can be checked exactly.

Measured: requests/s, latency p50/p99, answers by status; CPU seconds of the replicas, of the PostgreSQL
backends serving this database and of the load generator, per request; while it runs, a sampler counts
backends of this database waiting on a lock (pg_stat_activity) and pg_stat_database gives rollbacks and
deadlocks: replicas that contend in the database show up there, and in a CPU cost per request that grows
with the replica count.  Checked: every answer 2xx, and the database holds exactly the deployments the
answers name (none lost, none doubled), each app's newest one queued and every older one superseded.

The machine has 2 cores: when one replica already keeps a core busy, three replicas (plus PostgreSQL
and the load generator on the same cores) cannot reach more than about 2x; the CPU cost per request says
what they would give with a core each.

`--cpu-limit CPU` (0.3 or 300m) measures that instead of projecting it, the way Kubernetes runs
replicas: every replica is spawned into a cpu cgroup of its own with a CFS quota of CPU x 100 ms per
100 ms (bench/cpulimit.py; cgroup v2 where its cpu controller is available, else v1), in the 1-replica
run and in the 3-replica run alike, as pods with `resources.limits.cpu`.  Each replica is then CPU-bound
at its quota (cpu.stat's throttled periods, printed, prove it was held there), so one replica's
throughput is what one quota buys, and the 3-vs-1 ratio measures only what the shared parts cost as
replicas are added: PostgreSQL, row and transaction locks, the read cache's stamp.  That is the question
the aim (three replicas >= 2.5x one) asks.  The limit must leave the machine room for everything else:
3 x limit + PostgreSQL + the load generator well under the 2 cores, or the cores, not the quota, hold
the replicas back again, and their preemption makes each request dearer.  0.3 is `make bench`'s: a
0.3-core replica runs ~50 deploy requests/s, for which PostgreSQL takes ~0.08 core and the generator
~0.03, so three need 3 x (0.3 + 0.08 + 0.03) = ~1.25 of the 2 cores, leaving ~0.75 for the kernel, the
sampler and the machine's other work.  At 0.4 they need ~1.65: measured there, three replicas were
preempted ~8 times per request against ~0.5 for one, their CPU per request rose by 6-30 % with the
machine's other load and the ratio read 2.1-2.8 (BENCHMARKS.md, "Issue 13, eighth pass").  The line
after the table checks that sum for the run, and warns when a replica got less than its quota.
Where no cgroup can be made (not root, a container, CI) `--cpu-limit` fails
naming the path that refused; with `--cpu-limit-fallback` the bench says so and runs unlimited instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, free_port, listens, load_average, pct
from bench.cpulimit import CgroupUnavailable, CpuGroup, CpuStat, cpu_groups, parse_cpu, resolve_limit

ROOT = Path(__file__).resolve().parents[1]
SUBJECT = "user:bench-ci"
CORES = os.cpu_count() or 1


def postgres_server(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("SHIPIT_TEST_POSTGRES_URL"):
        return os.environ["SHIPIT_TEST_POSTGRES_URL"]
    out = subprocess.run(
        [str(ROOT / "scripts" / "test-postgres")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------------------
# The load generator (its own process: `python -m bench.replicas --drive JSON`)


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    urls: list[str] = spec["urls"]
    headers = {"Authorization": f"Bearer {spec['token']}", "Content-Type": "application/json"}
    counter = iter(range(10**9))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    ids: list[int] = []
    errors: list[str] = []
    sessions = [
        aiohttp.ClientSession(
            base_url=url,
            headers=headers,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        for url in urls
    ]

    async def client(i: int, deadline: float) -> None:
        http = sessions[i % len(sessions)]
        while time.perf_counter() < deadline:
            n = next(counter)
            app = f"app-{n % spec['apps']:03d}"
            body = json.dumps({"image": f"ghcr.io/acme/{app}:{spec['run']}-{n}"})
            started = time.perf_counter()
            try:
                async with http.post(f"/api/v1/apps/{app}/deploys", data=body) as r:
                    payload = await r.read()
                    status = str(r.status)
                    if 200 <= r.status < 300:
                        ids.append(int(json.loads(payload)["id"]))
                    elif len(errors) < 5:
                        errors.append(f"{r.status} {payload[:200]!r}")
            except Exception as e:  # counted with its latency, never dropped
                status = type(e).__name__
                if len(errors) < 5:
                    errors.append(repr(e)[:200])
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    cpu_before = time.process_time()
    started = time.perf_counter()
    deadline = started + spec["duration"]
    await asyncio.gather(*(client(i, deadline) for i in range(spec["connections"])))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    for http in sessions:
        await http.close()
    return {
        "elapsed": elapsed,
        "latencies": latencies,
        "statuses": statuses,
        "ids": ids,
        "errors": errors,
        "cpu": cpu,
    }


# ---------------------------------------------------------------------------------------------------------
# The orchestrator


async def fresh_database(server: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"shipit_replicas_{os.getpid()}_{time.time_ns() % 10**9}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


async def drop_database(server: str, url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    await admin.dispose()


def offline_kubeconfig() -> str:
    # Never contacted: the worker is off and a deploy request does not talk to the cluster.
    return (
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
        "users: [{name: u, user: {token: t}}]\n"
    )


async def prepare(env: dict[str, str], *, apps_n: int) -> str:
    """Migrate, create the project, cluster, apps and a developer's token; returns the token."""
    from core import apps, clusters, projects, tokens
    from core.identity import SYSTEM
    from shipit import runtime
    from shipit.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=env["SHIPIT_DATABASE_URL"],
        data_dir=Path(env["SHIPIT_DATA_DIR"]),
        master_key=env["SHIPIT_MASTER_KEY"],  # type: ignore[arg-type]
        run_worker=False,
    )
    rt = await runtime.build(settings)
    rt.core.notifiers.clear()
    try:
        async with rt.sessionmaker.begin() as session:
            await projects.create(session, ctx=rt.core, actor=SYSTEM, name="acme")
            await clusters.add(
                session, ctx=rt.core, actor=SYSTEM, name="c", kubeconfig_text=offline_kubeconfig(),
                default_namespace="apps", version="v1.36.3",
            )  # fmt: skip
            await clusters.grant(session, actor=SYSTEM, cluster="c", project="acme", namespace="apps")
            for k in range(apps_n):
                await apps.create(
                    session, actor=SYSTEM, project="acme", cluster="c", name=f"app-{k:03d}", namespace="apps",
                    changes=apps.AppChanges(image=f"ghcr.io/acme/app-{k:03d}:0"),
                )  # fmt: skip
            await projects.set_access(
                session, actor=SYSTEM, project_name="acme", subject=SUBJECT, role="developer"
            )
            _, token = await tokens.create(session, actor=SYSTEM, name="bench-ci", subject=SUBJECT)
    finally:
        await runtime.stop(rt)
    return token


class Replica:
    def __init__(self, *, env: dict[str, str], log: Path, group: CpuGroup | None = None) -> None:
        self.env = env
        self.log = log
        self.group = group  # its CPU limit: started inside this cgroup
        if not Path(sys.executable).with_name("shipit").exists():
            raise SystemExit("the shipit entry point is missing: make install")
        self._start()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shipit = Path(sys.executable).with_name("shipit")
        argv = [str(shipit), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.group.command(argv) if self.group else argv,
                env={**os.environ, **self.env}, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, *, retries: int = 3) -> None:
        import urllib.request

        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    # Ours, not a server another job started on the same port meanwhile.
                    if r.status == 200 and listens(self.proc.pid, self.port):
                        return
            except OSError:
                pass
            if (
                self.proc.poll() is not None
                and retries
                and "already in use" in self.log.read_text(errors="replace")
            ):
                # The port found free was taken by another job before we bound it: another port.
                retries -= 1
                self._start()
                continue
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"replica on {self.port} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Sampler:
    """The PostgreSQL backends of one database, sampled while the load runs: their CPU, their state.

    A backend's CPU is read from /proc at every sample.  One that starts during the window (a pool
    that opens a connection, or closes and reopens one) is counted from zero, connection set-up
    included; one that ends before the window does is counted up to its last sample (its CPU from
    then on is lost, at most one sampling interval's worth).  Backends that start and end between
    two samples are never seen: `started` (pg_stat_database.sessions) against `started_seen` tells
    how many that were.
    """

    url: str
    interval: float = 0.05
    samples: int = 0
    waiting_samples: int = 0
    waiting_max: int = 0
    backends: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at the window's start
    last: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at its latest sample
    started_seen: int = 0  # backends seen that started inside the window
    # What the backends were doing, summed over the samples: "state wait_type:wait_event" -> backends.
    seen: dict[str, int] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(self.url))
        try:
            window_start = await conn.fetchval("SELECT clock_timestamp()")
            while not stop.is_set():
                rows = await conn.fetch(
                    "SELECT pid, state, wait_event_type, wait_event, backend_start >= $1 AS new "
                    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    window_start,
                )
                waiting = sum(1 for r in rows if r["wait_event_type"] == "Lock")
                self.samples += 1
                self.waiting_samples += waiting > 0
                self.waiting_max = max(self.waiting_max, waiting)
                for r in rows:
                    if r["state"] != "idle":
                        key = f"{r['state']} {r['wait_event_type'] or 'CPU'}:{r['wait_event'] or '-'}"
                        self.seen[key] = self.seen.get(key, 0) + 1
                    now = cpu_seconds(r["pid"])
                    if r["pid"] not in self.backends:
                        # Started in the window: all of its CPU is the window's (its set-up too).
                        self.backends[r["pid"]] = 0.0 if r["new"] else now
                        self.started_seen += bool(r["new"])
                    if now:
                        self.last[r["pid"]] = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            await conn.close()

    def backend_cpu(self) -> float:
        total = 0.0
        for pid, before in self.backends.items():
            now = cpu_seconds(pid) or self.last.get(pid, 0.0)  # gone: what it had at its last sample
            total += max(0.0, now - before)
        return total


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process so far, all its threads (Linux /proc).

    Involuntary ones are the scheduler taking the core away: with more busy processes than cores they
    grow, and each costs the process its warm CPU caches (more CPU for the same work)."""
    voluntary = involuntary = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
        except OSError:
            continue
    return voluntary, involuntary


def server_cpu(backend_pid: int) -> float:
    """CPU seconds of the whole PostgreSQL server that `backend_pid` belongs to: the postmaster, its
    live children and the children it has reaped (every database, other users' too: a cross-check)."""
    try:
        ppid = int(Path(f"/proc/{backend_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        fields = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{ppid}/task/{ppid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return own + sum(cpu_seconds(int(c)) for c in children)


def _asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_counters(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        # Statistics are flushed by each backend about once a second; ask for ours now and wait for theirs.
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback, deadlocks, conflicts, sessions, pg_backend_pid() AS pid, "
            "(SELECT value FROM meta WHERE key = 'readcache.version') AS stamp "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        assert row is not None
        return {**dict(row), "server_cpu": server_cpu(row["pid"])}
    finally:
        await conn.close()


async def check_database(url: str, ids: list[int]) -> tuple[bool, str]:
    """The database holds exactly the answered deployments; per app the newest queued, the rest superseded."""
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        stored = [r["id"] for r in await conn.fetch("SELECT id FROM deployments")]
        per_app = await conn.fetch(
            "SELECT app_id, count(*) AS n, count(*) FILTER (WHERE status = 'queued') AS queued, "
            "count(*) FILTER (WHERE status NOT IN ('queued', 'superseded')) AS other, max(id) AS newest, "
            "max(id) FILTER (WHERE status = 'queued') AS newest_queued FROM deployments GROUP BY app_id"
        )
        audit = await conn.fetchval("SELECT count(*) FROM audit_events WHERE action LIKE 'deploy.%'")
    finally:
        await conn.close()
    problems = []
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} ids answered twice")
    if sorted(stored) != sorted(set(ids)):
        lost = len(set(ids) - set(stored))
        extra = len(set(stored) - set(ids))
        problems.append(f"{len(stored)} stored vs {len(set(ids))} answered ({lost} lost, {extra} unanswered)")
    bad = [r for r in per_app if r["queued"] != 1 or r["other"] or r["newest"] != r["newest_queued"]]
    if bad:
        problems.append(f"{len(bad)} apps not 'newest queued, rest superseded'")
    ok = not problems
    summary = (
        f"{len(stored)} deployments stored = {len(set(ids))} answered over {len(per_app)} apps; "
        f"{audit} deploy audit rows"
    )
    return ok, summary if ok else "; ".join(problems)


async def run_driver(spec: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.replicas", "--drive", json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, cwd=str(ROOT),
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the load generator failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


async def measure(args: argparse.Namespace, server: str, replicas_n: int, tmp: Path) -> dict[str, Any]:
    from storage.crypto import generate_key

    db_url = await fresh_database(server)
    try:
        env = {
            "SHIPIT_DATABASE_URL": db_url,
            "SHIPIT_DATA_DIR": str(tmp / f"var-{replicas_n}"),
            "SHIPIT_MASTER_KEY": generate_key(),
            "SHIPIT_RUN_WORKER": "false",
            "SHIPIT_LOG_LEVEL": "WARNING",
            # The per-token /api/ throttle (600/min) would cap the one token, not measure the servers.
            "SHIPIT_API_REQUESTS_PER_MINUTE": "0",
        }
        token = await prepare(env, apps_n=args.apps)
        # Each replica in a cgroup of its own with the same CPU quota, as pods with resources.limits.cpu.
        with contextlib.ExitStack() as limits:
            groups: list[CpuGroup | None] = [None] * replicas_n
            if args.cpu_limit:
                groups = list(limits.enter_context(cpu_groups(replicas_n, cores=args.cpu_limit)))
            replicas: list[Replica] = []
            try:
                for i, group in enumerate(groups):
                    replicas.append(Replica(env=env, log=tmp / f"replica-{replicas_n}-{i}.log", group=group))
                for r in replicas:
                    r.wait_ready()
                spec = {
                    # --load-on K: only the first K replicas get requests (the others idle, still counted).
                    "urls": [r.url for r in replicas][: args.load_on or None], "token": token, "apps": args.apps,
                    "connections": args.connections, "duration": args.warmup, "run": "warm",
                }  # fmt: skip
                warm = await run_driver(spec)
                counters_before = await pg_counters(db_url)
                cpu_before = [cpu_seconds(r.proc.pid) for r in replicas]
                quota_before = [r.group.stat() if r.group else CpuStat() for r in replicas]
                switches_before = [context_switches(r.proc.pid) for r in replicas]
                stop = asyncio.Event()
                sampler = Sampler(db_url)
                sampling = asyncio.create_task(sampler.run(stop))
                await asyncio.sleep(0.3)  # the sampler has seen the pooled backends before the load starts
                load = await run_driver({**spec, "duration": args.duration, "run": "load"})
                per_replica = [cpu_seconds(r.proc.pid) - b for r, b in zip(replicas, cpu_before, strict=True)]
                quota = [
                    r.group.stat() - b if r.group else CpuStat()
                    for r, b in zip(replicas, quota_before, strict=True)
                ]
                replica_cpu = sum(per_replica)
                switches = [
                    (v - vb, i - ib)
                    for r, (vb, ib) in zip(replicas, switches_before, strict=True)
                    for v, i in [context_switches(r.proc.pid)]
                ]
                stop.set()
                await sampling
                pg_cpu = sampler.backend_cpu()
                await asyncio.sleep(1.2)  # pg_stat_database is flushed by the backends about once a second
                counters_after = await pg_counters(db_url)
                errors_logged = sum(
                    1
                    for r in replicas
                    for line in r.log.read_text(errors="replace").splitlines()
                    if "ERROR" in line or "Traceback" in line
                )
            finally:
                for r in replicas:
                    r.stop()
        ok, check = await check_database(db_url, warm["ids"] + load["ids"])
    finally:
        if not args.keep_db:
            await drop_database(server, db_url)
    n = len(load["latencies"])
    good = sum(v for k, v in load["statuses"].items() if k.isdigit() and 200 <= int(k) < 300)
    return {
        "replicas": replicas_n,
        "requests": n,
        "rps": n / load["elapsed"],
        "p50": pct(load["latencies"], 0.5),
        "p99": pct(load["latencies"], 0.99),
        "mean": statistics.mean(load["latencies"]) if n else float("nan"),
        "non_2xx": n - good + sum(v for k, v in warm["statuses"].items() if not k.startswith("2")),
        "statuses": load["statuses"],
        "errors": warm["errors"] + load["errors"],
        "replica_cores": replica_cpu / load["elapsed"],
        "cpu_limit": args.cpu_limit,
        "per_replica_cores": [c / load["elapsed"] for c in per_replica],
        "periods": sum(q.periods for q in quota),
        "throttled_periods": sum(q.throttled for q in quota),
        "throttled_s": [q.throttled_s for q in quota],
        "pg_cores": pg_cpu / load["elapsed"],
        "driver_cores": load["cpu"] / load["elapsed"],
        "replica_ms": replica_cpu * 1000 / max(n, 1),
        "pg_ms": pg_cpu * 1000 / max(n, 1),
        "lock_samples": f"{sampler.waiting_samples}/{sampler.samples}",
        "pg_states": {
            k: v / max(sampler.samples, 1) for k, v in sorted(sampler.seen.items(), key=lambda kv: -kv[1])
        },
        "lock_max": sampler.waiting_max,
        "rollbacks": counters_after["xact_rollback"] - counters_before["xact_rollback"],
        "voluntary_switches": sum(v for v, _ in switches) / max(n, 1),
        "involuntary_switches": sum(i for _, i in switches) / max(n, 1),
        # Every process of the PostgreSQL server over a slightly longer window (other databases too).
        "server_ms": (counters_after["server_cpu"] - counters_before["server_cpu"]) * 1000 / max(n, 1),
        "commits": counters_after["xact_commit"] - counters_before["xact_commit"],
        # The read cache's stamp: changed means some write emptied every replica's copies meanwhile.
        "stamp_changed": counters_after["stamp"] != counters_before["stamp"],
        # Backends started in the window (connections opened), and how many of them the sampler saw.
        "backends_started": counters_after["sessions"] - counters_before["sessions"],
        "backends_started_seen": sampler.started_seen,
        "backends": len(sampler.backends),
        "deadlocks": counters_after["deadlocks"] - counters_before["deadlocks"],
        "errors_logged": errors_logged,
        "db_ok": ok,
        "db_check": check,
    }


MEANED = ("rps", "replica_ms", "pg_ms", "replica_cores", "pg_cores", "driver_cores")


def mean_by_count(results: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The runs of each replica count, their figures averaged: `--replicas 1,3,1` brackets the 3-replica
    run between two 1-replica runs, so a machine that gets busier or quieter meanwhile (other jobs on
    the shared cores) shifts both sides of the ratio alike instead of only one."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        grouped.setdefault(r["replicas"], []).append(r)
    return {
        n: {**runs[-1], **{k: statistics.mean(r[k] for r in runs) for k in MEANED}, "runs": len(runs)}
        for n, runs in grouped.items()
    }


async def main(args: argparse.Namespace) -> int:
    server = postgres_server(args.postgres)
    counts = [int(x) for x in args.replicas.split(",")]
    limit_note = "no CPU limit"
    if args.cpu_limit:
        try:
            args.cpu_limit, limit_note = resolve_limit(args.cpu_limit, fallback=args.cpu_limit_fallback)
        except CgroupUnavailable as e:
            raise SystemExit(f"--cpu-limit needs a writable cgroup cpu controller: {e}") from None
        if args.cpu_limit is None:
            print(f"NOTE: {limit_note}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="shipit-replicas-"))
    print(
        f"deploy requests on PostgreSQL ({server.rsplit('@', 1)[-1]}), job worker off, one uvicorn process per "
        f"replica, {limit_note}; {args.connections} clients over {args.apps} apps, {args.duration:g} s each "
        f"after {args.warmup:g} s warm-up; {CORES} CPU cores; load average {load_average()}",
        flush=True,
    )
    results = []
    try:
        for n in counts:
            results.append(await measure(args, server, n, tmp))
            r = results[-1]
            print(f"  {n} replica(s): {r['rps']:.0f} req/s, load average now {load_average()}", flush=True)
    finally:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"server logs kept in {tmp}")
    head = (
        f"{'replicas':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'requests':>8} {'non-2xx':>7} "
        f"{'replica CPU':>11} {'PG CPU':>7} {'driver':>7} {'ms CPU/req':>11} {'lock waits':>11} "
        f"{'rollbk/req':>10} {'deadlk':>6} {'errlog':>6}  database"
    )
    print(head)
    for r in results:
        print(
            f"{r['replicas']:8d} {r['rps']:7.0f} {r['p50']:8.1f} {r['p99']:8.1f} {r['requests']:8d} "
            f"{r['non_2xx']:7d} {r['replica_cores']:10.2f}c {r['pg_cores']:6.2f}c {r['driver_cores']:6.2f}c "
            f"{r['replica_ms']:5.2f}+{r['pg_ms']:<5.2f} {r['lock_samples']:>8}<={r['lock_max']:<2d} "
            f"{r['rollbacks'] / max(r['requests'], 1):10.2f} {r['deadlocks']:6d} {r['errors_logged']:6d}  "
            f"{'OK' if r['db_ok'] else 'MISMATCH'}: {r['db_check']}"
        )
        if r["cpu_limit"]:
            print(
                f"         CPU limit {r['cpu_limit']:g} cores per replica: replicas used "
                + ", ".join(f"{c:.2f}" for c in r["per_replica_cores"])
                + f" cores; quota ran out in {r['throttled_periods']}/{r['periods']} periods "
                f"({r['throttled_periods'] / max(r['periods'], 1):.0%}), held back "
                + ", ".join(f"{t:.1f}" for t in r["throttled_s"])
                + " s"
            )
        print(
            f"         replicas: {r['voluntary_switches']:.1f} voluntary + {r['involuntary_switches']:.1f} "
            "involuntary (preempted) context switches per request"
        )
        print(
            f"         PostgreSQL: {r['commits'] / max(r['requests'], 1):.2f} commits/request, "
            f"{r['backends']} backends, {r['backends_started']} started during the run "
            f"({r['backends_started_seen']} of them sampled); the whole server (all its processes and "
            f"databases, other users' too) {r['server_ms']:.2f} ms CPU/request; read cache stamp "
            f"{'CHANGED (copies reloaded)' if r['stamp_changed'] else 'unchanged'}"
        )
        states = ", ".join(f"{k} {v:.2f}" for k, v in list(r["pg_states"].items())[:6])
        print(f"         PostgreSQL backends not idle, mean per sample: {states or 'none'}")
        for e in r["errors"][:3]:
            print(f"         e.g. {e}")
    print(
        "  (CPU in cores busy over the run; ms CPU/req = replicas + PostgreSQL backends of this database; "
        "lock waits = samples with a backend waiting on a lock / samples, <= the most at once; rollbk/req = "
        "pg_stat_database rollbacks per request: each one a BEGIN ... ROLLBACK that changed nothing (a pool "
        "pre-ping, a read in a transaction of its own) or a failed transaction; more with more replicas would "
        "mean retried or failed transactions; backends not idle: "
        "'active CPU' runs a statement, 'idle in transaction Client:ClientRead' waits for the replica mid-"
        "transaction, Lock:* waits for a row or transaction lock, LWLock:WAL*/IO:* for the log)"
    )
    by = mean_by_count(results)
    if 1 in by and len(by) > 1:
        one = by[1]
        for n, r in sorted(by.items()):
            if n == 1:
                continue
            ratio = r["rps"] / one["rps"]
            per_req_1 = one["replica_ms"] + one["pg_ms"]
            per_req_n = r["replica_ms"] + r["pg_ms"]
            # With a core per replica (and PostgreSQL its own), throughput scales with the replica count
            # times how much the per-request CPU grew: replicas that contend pay more CPU per request.
            projected = n * (one["replica_ms"] / r["replica_ms"]) if r["replica_ms"] else float("nan")
            ceiling = min(n, CORES / (one["replica_cores"] + one["pg_cores"] + one["driver_cores"]))
            if one["cpu_limit"]:
                # What N limited replicas plus PostgreSQL and the generator would need, from the 1-replica
                # run: under the cores, the limit (not the machine) holds each replica.
                need = n * one["cpu_limit"] + n * (one["pg_cores"] + one["driver_cores"])
                runs = (
                    f" (means of {one['runs']} and {r['runs']} runs)" if one["runs"] + r["runs"] > 2 else ""
                )
                print(
                    f"{n} vs 1 replica, each held to {one['cpu_limit']:g} cores: {ratio:.2f}x measured{runs}"
                    f"{(' (aim >= 2.5x: ' + ('MET' if ratio >= 2.5 else 'NOT MET') + ')') if n == 3 else ''}; "
                    f"CPU per request {per_req_1:.2f} ms -> {per_req_n:.2f} ms (replica {one['replica_ms']:.2f} -> "
                    f"{r['replica_ms']:.2f}, PostgreSQL {one['pg_ms']:.2f} -> {r['pg_ms']:.2f}); replicas at their "
                    f"quota {one['replica_cores'] / one['cpu_limit']:.0%} -> "
                    f"{r['replica_cores'] / (n * one['cpu_limit']):.0%}; {n}x the 1-replica run's replica, "
                    f"PostgreSQL and generator CPU is {need:.2f} of {CORES} cores"
                    f"{'' if need <= CORES * 0.9 else ' (too close to the cores: the machine, not the quota, may hold them)'}."
                )
                at_quota = min(
                    one["replica_cores"] / one["cpu_limit"], r["replica_cores"] / (n * one["cpu_limit"])
                )
                if at_quota < 0.95:
                    # Not held by their quota but by the cores: other work on the machine took them.
                    print(
                        f"  WARNING: replicas used only {at_quota:.0%} of their quota in one of the runs: the "
                        f"machine's other work (load average {load_average()}) held them, not the limit; this "
                        "ratio is the machine's, run it again on a quieter machine"
                    )
                continue
            print(
                f"{n} vs 1 replica: {ratio:.2f}x measured"
                f"{(' (aim >= 2.5x: ' + ('MET' if ratio >= 2.5 else 'NOT MET') + ')') if n == 3 else ''}; CPU per request "
                f"{per_req_1:.2f} ms -> {per_req_n:.2f} ms (replica {one['replica_ms']:.2f} -> {r['replica_ms']:.2f}, "
                f"PostgreSQL {one['pg_ms']:.2f} -> {r['pg_ms']:.2f}); with a core per replica the same per-request "
                f"CPU gives {projected:.2f}x; on these {CORES} cores one replica's run already used "
                f"{one['replica_cores'] + one['pg_cores'] + one['driver_cores']:.2f} cores (replica + PostgreSQL "
                f"+ load generator), so no replica count can give more than about {ceiling:.2f}x here."
            )
    if args.json:
        args.json.write_text(json.dumps({"load_average": load_average(), "results": results}, indent=2))
    bad = [r for r in results if not r["db_ok"] or r["non_2xx"]]
    return 1 if bad else 0


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--replicas",
        default="1,3",
        help="replica counts, one after another (include 1); a count given twice (1,3,1) is averaged",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of measured load per count")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=24, help="concurrent clients over all replicas")
    parser.add_argument("--apps", type=int, default=240)
    parser.add_argument(
        "--load-on",
        type=int,
        metavar="K",
        help="send the load to the first K replicas only (the others run idle): what replicas cost by "
        "merely running, apart from sharing the cores",
    )
    parser.add_argument(
        "--cpu-limit",
        type=parse_cpu,
        metavar="CPU",
        help="hold every replica to this much CPU (0.3 or 300m, as resources.limits.cpu): a CFS quota in a "
        "cgroup of its own, for the 1- and the N-replica runs alike; fails where cgroups are not writable",
    )
    parser.add_argument(
        "--cpu-limit-fallback",
        action="store_true",
        help="with --cpu-limit: where no cgroup can be made (a container, CI), say so and run unlimited",
    )
    parser.add_argument(
        "--postgres", metavar="URL", help="a PostgreSQL server URL (postgresql+asyncpg://…/postgres)"
    )
    parser.add_argument("--keep-db", action="store_true", help="leave the databases for a look")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(asyncio.run(drive(json.loads(args.drive)))))
        return
    sys.exit(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
