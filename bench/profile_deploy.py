"""Where a deploy request's time goes: cProfile of `POST /api/v1/apps/web/deploys`, in-process, on SQLite.

The real app (create_app with its lifespan, worker off) driven by httpx over ASGITransport: no network,
no server.  Seeded like tests/bot/test_statement_budget.py (project, offline cluster, app `web`) with a
developer's API token; each request deploys a new tag of `web`, so it supersedes the previous one.

    .venv/bin/python -m bench.profile_deploy [--requests 300] [--top 25] [--admin]

Prints req/s without the profiler, then with it:
- own time by package (each builtin's own time charged to the package of its callers, so `sha256`
  counts where it is called from); the event loop's idle time (`epoll.poll`: waiting for aiosqlite's
  thread to run SQLite and hand the result back) is its own line;
- time awaiting the database driver per request (SQLAlchemy's before/after_cursor_execute around
  each statement: the thread hop to aiosqlite's thread, SQLite itself and the hop back) and the
  statements per request;
- landmarks: the cumulative time of a few functions on the path (token, authorization, the core's
  deploys.request, ORM flush, the answer's serialisation, commit);
- the top functions by cumulative and by own time, each with its package.

cProfile sees only the event loop's thread: what aiosqlite's thread spends in SQLite shows as the
loop's idle time, and cProfile's own overhead inflates Python-heavy code (SQLAlchemy, pydantic) more
than C code, so read the shares as "where", not "how much exactly".
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import common

ROOT = str(Path(__file__).resolve().parents[1])
OWN = ("core", "storage", "shipit", "bot", "webhooks", "web")
# Third-party packages grouped as the issue talks about them.
GROUPS = {
    "sqlalchemy": "sqlalchemy",
    "aiosqlite": "aiosqlite",
    "sqlite3": "sqlite3 (stdlib)",
    "fastapi": "fastapi/starlette",
    "starlette": "fastapi/starlette",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "httpx": "httpx (the client)",
    "httpcore": "httpx (the client)",
    "anyio": "anyio",
    "json": "json",
    "asyncio": "asyncio",
    "greenlet": "greenlet",
    "prometheus_client": "prometheus_client",
    "logging": "logging",
}
SQLALCHEMY = {
    "orm": "orm (session, unit of work, loading)",
    "sql": "sql (statement building, compiling, cache keys)",
    "engine": "engine (execution, results)",
    "ext": "ext.asyncio (greenlet adaptation)",
    "dialects": "dialects (sqlite/aiosqlite adapter)",
    "util": "util",
    "pool": "pool",
    "event": "event",
}
IDLE = "event loop idle (waiting for aiosqlite's thread)"
LANDMARKS = [
    ("core/tokens.py", "authenticate", "token look-up (core.tokens.authenticate)"),
    ("core/deploys/request.py", "request", "core deploys.request (the whole write path)"),
    ("core/apps.py", "authorize", "apps.authorize (permission)"),
    ("sqlalchemy/orm/session.py", "flush", "ORM Session.flush"),
    ("sqlalchemy/orm/session.py", "execute", "ORM Session.execute"),
    ("sqlalchemy/ext/asyncio/session.py", "commit", "AsyncSession.commit"),
    ("sqlalchemy/engine/base.py", "_execute_context", "Core statement execution (all statements)"),
    ("sqlalchemy/sql/compiler.py", "__init__", "SQL compilation (compiler __init__)"),
    ("shipit/api/reads.py", "deployment_out", "the answer's read (reads.deployment_out)"),
    ("fastapi/routing.py", "serialize_response", "response validation + serialisation (FastAPI)"),
    ("fastapi/dependencies/utils.py", "solve_dependencies", "FastAPI dependency solving"),
]


def package_of(filename: str, funcname: str) -> str | None:
    """The group a frame belongs to; None for builtins (charged to their callers)."""
    if filename == "~":
        return IDLE if "poll" in funcname and "epoll" in funcname else None
    path = filename.replace("\\", "/")
    if "site-packages/" in path:
        rel = path.split("site-packages/", 1)[1]
        top = rel.split("/", 1)[0].removesuffix(".py")
        if top == "sqlalchemy":
            sub = rel.split("/")[1] if rel.count("/") >= 2 else "other"
            return f"sqlalchemy: {SQLALCHEMY.get(sub, sub)}"
        return GROUPS.get(top, top)
    if path.startswith(ROOT + "/"):
        top = path[len(ROOT) + 1 :].split("/", 1)[0]
        return f"shipit's {top}/" if top in OWN else f"repo {top}/"
    # The standard library: its module (asyncio, json, logging, …).
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part.startswith("python3"):
            top = parts[i + 1].removesuffix(".py") if i + 1 < len(parts) else "stdlib"
            return GROUPS.get(top, f"stdlib {top}")
    return "other"


def own_time_by_package(stats: pstats.Stats) -> dict[str, float]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: dict[str, float] = defaultdict(float)
    for (filename, _line, funcname), (_cc, _nc, tt, _ct, callers) in raw.items():
        group = package_of(filename, funcname)
        if group is not None:
            totals[group] += tt
            continue
        # A builtin: its own time goes to the packages of the frames that called it.
        charged = 0.0
        for (c_file, _c_line, c_func), caller_stats in callers.items():
            c_tt = caller_stats[2]
            totals[package_of(c_file, c_func) or "builtins"] += c_tt
            charged += c_tt
        if tt > charged:
            totals["builtins"] += tt - charged
    return dict(totals)


def label(key: tuple[str, int, str]) -> str:
    filename, line, funcname = key
    group = package_of(filename, funcname) or "builtin"
    short = filename.split("site-packages/", 1)[-1].removeprefix(ROOT + "/")
    where = funcname if filename == "~" else f"{short}:{line}({funcname})"
    return f"[{group}] {where}"


async def seed(rt: Any, *, admin: bool) -> str:
    from core import apps, clusters, projects, tokens
    from core.identity import SYSTEM

    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    subject = "user:bench-ci"
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=SYSTEM, name="acme")
        await clusters.add(
            session, ctx=rt.core, actor=SYSTEM, name="c", kubeconfig_text=kubeconfig,
            default_namespace="apps", version="v1.36.3",
        )  # fmt: skip
        await clusters.grant(session, actor=SYSTEM, cluster="c", project="acme", namespace="apps")
        await apps.create(
            session, actor=SYSTEM, project="acme", cluster="c", name="web", namespace="apps",
            changes=apps.AppChanges(image="ghcr.io/acme/web:0"),
        )  # fmt: skip
        await projects.set_access(
            session, actor=SYSTEM, project_name="acme", subject=subject, role="developer"
        )
        _, token = await tokens.create(
            session, actor=SYSTEM, name="bench-ci", subject=subject, is_admin=admin
        )
    return token


async def _main(args: argparse.Namespace, tmp: str) -> None:
    import httpx
    from sqlalchemy import event

    from shipit import runtime
    from shipit.main import create_app
    from shipit.settings import Settings
    from storage.crypto import generate_key

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{tmp}/shipit.db",
        data_dir=Path(tmp) / "var",
        master_key=generate_key(),  # type: ignore[arg-type]
        run_worker=False,
        api_requests_per_minute=0,  # the per-token throttle would stop the run at 600
        log_level="WARNING",
    )
    rt = await runtime.build(settings)
    rt.core.notifiers.clear()
    token = await seed(rt, admin=args.admin)
    app = create_app(rt=rt)
    n = 0

    async def burst(http: httpx.AsyncClient, count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            r = await http.post("/api/v1/apps/web/deploys", json={"image": f"ghcr.io/acme/web:1.{n}"})
            if r.status_code != 202:
                raise SystemExit(f"request {n}: {r.status_code} {r.text[:300]}")

    awaiting = 0.0
    statements = 0
    started_at: dict[int, float] = {}
    listed: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        started_at[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        nonlocal awaiting, statements
        awaiting += time.perf_counter() - started_at.pop(id(cursor), time.perf_counter())
        statements += 1
        listed.append(" ".join(statement.split())[:150])

    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", headers=headers
            ) as http:
                await burst(http, 50)  # warm: caches, the pool, first-request imports
                start = time.perf_counter()
                main_cpu = time.thread_time()
                threads_cpu = common.threads_cpu()
                await burst(http, args.requests)
                plain = time.perf_counter() - start
                main_cpu = time.thread_time() - main_cpu
                threads_cpu = common.threads_cpu() - threads_cpu
                engine = rt.engine.sync_engine
                event.listen(engine, "before_cursor_execute", before)
                event.listen(engine, "after_cursor_execute", after)
                start = time.perf_counter()
                await burst(http, args.requests)
                timed = time.perf_counter() - start
                timed_awaiting, timed_statements = awaiting, statements
                # One more request with its statements written down, to show what the count is made of.
                listed.clear()
                await burst(http, 1)
                event.remove(engine, "before_cursor_execute", before)
                event.remove(engine, "after_cursor_execute", after)
                # The CPU clock of the event loop's thread by default: what the other processes on a busy
                # machine take, and the waits for aiosqlite's thread, then do not count as anyone's time.
                profile = cProfile.Profile(time.thread_time) if args.timer == "cpu" else cProfile.Profile()
                profile.enable()
                await burst(http, args.requests)
                profile.disable()
    finally:
        await runtime.stop(rt)

    per = args.requests
    print(
        f"POST /api/v1/apps/web/deploys in-process (httpx ASGITransport, SQLite WAL, worker off, "
        f"{'admin' if args.admin else 'developer'} token): {per / plain:.0f} req/s, "
        f"{plain * 1000 / per:.2f} ms per request unprofiled; load average "
        f"{common.load_average()}"
    )
    print(
        f"per request: {plain * 1000 / per:.2f} ms wall = event loop thread CPU {main_cpu * 1000 / per:.2f} ms "
        f"+ other threads' CPU (aiosqlite: SQLite and its side of the hand-over) {threads_cpu * 1000 / per:.2f} ms "
        f"+ waiting {(plain - main_cpu - threads_cpu) * 1000 / per:.2f} ms (hand-overs between the threads, "
        "and the cores taken by other processes)"
    )
    print(
        f"awaiting the driver: {timed_awaiting * 1000 / per:.2f} ms per request over {timed_statements / per:.1f} "
        "statements "
        f"({timed_awaiting / timed:.0%} of the request's {timed * 1000 / per:.2f} ms with the hooks on): the hop to "
        "aiosqlite's thread, SQLite, the hop back"
    )
    if args.statements:
        print(f"the statements of one request ({len(listed)}, BEGIN included, COMMIT not):")
        for i, text in enumerate(listed, 1):
            print(f"  {i:2}. {text}")
    report(
        profile, per=per, unit="req", noun="request", landmarks=LANDMARKS, top=args.top, dump=args.dump,
        blur=", and SQLAlchemy's greenlet switches blur where the statement work is charged",
    )  # fmt: skip


def report(
    profile: Any,
    *,
    per: int,
    unit: str,
    noun: str,
    landmarks: list[tuple[str, str, str]],
    top: int,
    dump: Path | None,
    blur: str = "",
) -> None:
    """cProfile's figures per `unit` (req, cmd): own time by package, landmarks, top functions."""
    stats = pstats.Stats(profile)
    total: float = stats.total_tt  # type: ignore[attr-defined]
    print(f"\ncProfile, {per} {noun}s, {total * 1000 / per:.2f} ms per {noun} profiled; own time by package:")
    by_package = own_time_by_package(stats)
    tops: dict[str, float] = defaultdict(float)
    for group, tt in by_package.items():
        tops[group.split(":", 1)[0]] += tt
    for name, top_tt in sorted(tops.items(), key=lambda kv: -kv[1]):
        if top_tt / total < 0.005:
            continue
        print(f"  {top_tt / total:6.1%}  {top_tt * 1000 / per:6.3f} ms/{unit}  {name}")
        subs = [(g, tt) for g, tt in by_package.items() if g.startswith(name + ":")]
        for group, tt in sorted(subs, key=lambda kv: -kv[1]):
            if tt / total >= 0.005:
                print(
                    f"      {tt / total:6.1%}  {tt * 1000 / per:6.3f} ms/{unit}  {group.split(':', 1)[1].strip()}"
                )
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    print(
        "\nlandmarks (cumulative time, share of all profiled time; nested, so they overlap; a coroutine's "
        f"figure counts only its running stretches{blur}, so these are rough):"
    )
    for file_part, func, what in landmarks:
        ct = sum(v[3] for k, v in raw.items() if k[2] == func and k[0].endswith(file_part))
        if ct:
            print(f"  {ct / total:6.1%}  {ct * 1000 / per:6.3f} ms/{unit}  {what}")
    plumbing = ("asyncio", "httpx (the client)", "repo bench/", "anyio", "stdlib ", "greenlet")
    print(f"\ntop {top} by cumulative time (below the event loop and the client; same caveats):")
    by_ct = sorted(
        (
            (k, v)
            for k, v in raw.items()
            if k[0] != "~" and not (package_of(k[0], k[2]) or "").startswith(plumbing)
        ),
        key=lambda kv: -kv[1][3],
    )[:top]
    for key, (_cc, _nc, _tt, ct, _callers) in by_ct:
        print(f"  {ct / total:6.1%}  {label(key)}")
    print(f"\ntop {top} by own time (calls/{unit} counts each resumption of a coroutine):")
    by_tt = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for key, (_cc, nc, tt, _ct, _callers) in by_tt:
        print(f"  {tt / total:6.1%}  {nc / per:6.1f}/{unit}  {label(key)}")
    if dump:
        stats.dump_stats(dump)
        print(f"\nraw profile written to {dump} (snakeviz / `python -m pstats`)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per measured burst")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--admin", action="store_true", help="an admin token (no membership check)")
    parser.add_argument(
        "--timer",
        choices=("cpu", "wall"),
        default="cpu",
        help="cProfile's clock: the event loop thread's CPU time (default) or wall time (shows the waits)",
    )
    parser.add_argument("--statements", action="store_true", help="list the SQL statements of one request")
    parser.add_argument("--dump", type=Path, help="also write the raw cProfile data here")
    args = parser.parse_args()
    os.environ.setdefault("SHIPIT_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="shipit-profile-deploy-") as tmp:
        asyncio.run(_main(args, tmp))


if __name__ == "__main__":
    main()
