"""Where a `/shipit deploy` slash command's CPU goes: cProfile of signed commands, in-process, on SQLite.

The real app (create_app with its lifespan: the real bolt app of bot/channel.py, worker off) driven by
httpx over ASGITransport: no network, no server.  Each request is what Slack sends: a form-encoded slash
command with a fresh trigger_id, signed with the v0 HMAC signature.  Seeded like bench/slack_ack.py: a
project with a Slack channel, an offline cluster, `--apps` apps (protected by default, as the bench's:
the deploy then waits for an approval) and the Slack user as the project's owner; command n deploys tag
`n.0` of app `load-(n mod apps)`.  A fake Slack Web API (tests/fakes) runs in a side thread for bolt's
client, though nothing should call it before the ack.

    .venv/bin/python -m bench.profile_slack [--requests 300] [--apps 20] [--unprotected] [--top 25]

Prints:
- CPU per command without the profiler: the event loop thread's CPU (Python: bolt, FastAPI, SQLAlchemy,
  the core) and the other threads' (aiosqlite's: SQLite), and the statements per command;
- cProfile (the event loop thread's CPU clock), own time by package, with bolt and slack_sdk split out;
- landmarks on the path (bolt's dispatch, its signature check, the core's request, the commit ...);
- the top functions by cumulative and by own time.

What this does not see: the worker (off here), which in `shipit serve` also runs each command's notify
jobs (the deploy card) and polls the deploys in flight; bench.profile_notify measures those notify
jobs alone, bench.slack_ack the whole process.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import common, profile_deploy
from bench.slack_ack import SECRET, USER, command_body, signed

# The Slack packages as their own groups (profile_deploy's GROUPS has the rest).
profile_deploy.GROUPS.update(
    {"slack_bolt": "slack_bolt", "slack_sdk": "slack_sdk", "urllib": "urllib (form parsing)"}
)
LANDMARKS = [
    ("bot/channel.py", "handle", "SlackChannel.handle (all of it below the route)"),
    ("bot/channel.py", "signature_refusal", "our signature check (bot.channel.signature_refusal)"),
    ("slack_bolt/adapter/fastapi/async_handler.py", "handle", "bolt's FastAPI adapter handle"),
    ("slack_bolt/adapter/starlette/async_handler.py", "to_async_bolt_request", "bolt: request conversion"),
    ("slack_bolt/request/async_request.py", "__init__", "bolt: AsyncBoltRequest (parse, context)"),
    ("slack_bolt/app/async_app.py", "async_dispatch", "bolt: async_dispatch (middleware + listener)"),
    (
        "slack_bolt/middleware/request_verification/async_request_verification.py",
        "async_process",
        "bolt: request verification middleware",
    ),
    (
        "slack_bolt/middleware/authorization/async_single_team_authorization.py",
        "async_process",
        "bolt: single-team authorization middleware",
    ),
    ("slack_bolt/listener/asyncio_runner.py", "run", "bolt: listener runner"),
    (
        "slack_bolt/kwargs_injection/async_utils.py",
        "build_async_required_kwargs",
        "bolt: listener kwargs injection",
    ),
    ("bot/handlers/base.py", "execute", "bot.handlers.execute (the transaction)"),
    ("bot/handlers/base.py", "queued_card", "bot.handlers.queued_card (the reply)"),
    ("core/deploys/request.py", "request", "core deploys.request (the whole write path)"),
    ("core/deliveries.py", "first_time", "core deliveries.first_time (the replay record)"),
    ("sqlalchemy/ext/asyncio/session.py", "commit", "AsyncSession.commit"),
    ("sqlalchemy/engine/base.py", "_execute_context", "Core statement execution (all statements)"),
    ("slack_bolt/adapter/starlette/async_handler.py", "to_starlette_response", "bolt: the response"),
    ("bot/views/cards.py", "queued", "the reply's blocks (views.queued)"),
]


# Stretches of the path timed on the event loop thread's CPU clock (the driver sends one command at a
# time, so nothing else runs on the loop meanwhile): (module, attribute, what), wrapped in place.
SPLIT = [
    ("bot.handlers", "run_command", "bot.handlers.run_command: parse, the transaction, the reply"),
    ("bot.handlers.deploys", "queued_card", "  of which the reply card (queued_card)"),
    ("core.deploys", "request", "  of which core deploys.request"),
    ("core.deliveries", "first_time", "  of which the replay record (deliveries.first_time)"),
]
# With --split-core, the steps of core deploys.request too (nested: "of which" lines overlap).
SPLIT_CORE = [
    ("core.apps", "get", "    apps.get (app look-up, cached reads)"),
    ("core.apps", "project_of", "    apps.project_of"),
    ("core.apps", "authorize", "    apps.authorize (role)"),
    ("core.protection", "check_request", "    protection.check_request (locks, windows, approvals)"),
    ("core.claims", "check_owned", "    claims.check_owned (namespace)"),
    ("core.secrets", "ensure_version", "    secrets.ensure_version"),
    ("core.secrets", "for_deploy", "    secrets.for_deploy (checksum)"),
    ("core.deploys.request", "_insert_revision", "    INSERT revision"),
    ("core.deploys.request", "_insert_deployment", "    INSERT deployment"),
    ("core.deploys.request", "_supersede_older", "    UPDATE supersede"),
    ("core.deploys.request", "_enqueue", "    deploy job (pending, written with the notify jobs)"),
    ("core.events", "emit_all", "    events.emit_all (INSERT events, notify jobs)"),
    ("core.audit", "record", "    audit.record"),
    ("core.protection", "record_override", "    protection.record_override"),
    ("core.deploys.request", "_prune_revisions", "    DELETE old revisions"),
]


def timed_split(split: list[tuple[str, str, str]]) -> tuple[dict[str, float], Any]:
    """Wrap the SPLIT functions with CPU-clock timers; returns the totals and an undo."""
    import importlib

    totals: dict[str, float] = defaultdict(float)
    undo = []
    for module_name, attr, what in split:
        module = importlib.import_module(module_name)
        original = getattr(module, attr)

        def make(fn: Any, what: str) -> Any:
            async def wrapper(*a: Any, **kw: Any) -> Any:
                t = time.thread_time()
                try:
                    return await fn(*a, **kw)
                finally:
                    totals[what] += time.thread_time() - t

            return wrapper

        setattr(module, attr, make(original, what))
        undo.append((module, attr, original))

    def restore() -> None:
        for module, attr, original in undo:
            setattr(module, attr, original)

    return totals, restore


async def settle() -> None:
    """Let the worker catch up after a burst: one second (the notify jobs run within milliseconds).

    Not until the queue is empty: cards paced to Slack's one message a second per channel come back
    one a second for minutes, and jobs queued behind them per deploy wait as long (as after
    bench.slack_ack's measured window).
    """
    await asyncio.sleep(1.0)


async def seed(rt: Any, *, apps_count: int, protected: bool) -> None:
    from core import apps, clusters, projects
    from core.identity import SYSTEM

    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=SYSTEM, name="bench", slack_channel="C0BENCH01")
        await clusters.add(
            session, ctx=rt.core, actor=SYSTEM, name="c", kubeconfig_text=kubeconfig,
            default_namespace="bench", version="v1.36.3",
        )  # fmt: skip
        await clusters.grant(session, actor=SYSTEM, cluster="c", project="bench", namespace="bench")
        await projects.set_access(
            session, actor=SYSTEM, project_name="bench", subject=f"slack:{USER[0]}", role="owner"
        )
        for k in range(apps_count):
            await apps.create(
                session, actor=SYSTEM, project="bench", cluster="c", name=f"load-{k:02d}",
                namespace="bench", changes=apps.AppChanges(image="ghcr.io/acme/web:1", protected=protected),
            )  # fmt: skip


def bench_settings(*, tmp: str, fake: Any, run_worker: bool) -> Any:
    """The settings of a profiled process: SQLite in `tmp`, Slack signed with SECRET, the fake Web API."""
    from shipit.settings import Settings
    from storage.crypto import generate_key

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{tmp}/shipit.db",
        data_dir=Path(tmp) / "var",
        master_key=generate_key(),  # type: ignore[arg-type]
        run_worker=run_worker,
        log_level="WARNING",
        slack_signing_secret=SECRET,  # type: ignore[arg-type]
        slack_bot_token=fake.bot_token,  # type: ignore[arg-type]
        slack_api_url=fake.url,
    )


def fake_threads(fake: Any) -> set[int]:
    """The fake Slack's own thread, left out of the process's CPU (it stands for Slack's servers)."""
    thread = getattr(fake, "_thread", None)
    return {thread.native_id} if thread is not None and thread.native_id else set()


async def send_deploy(http: Any, *, fake: Any, n: int, apps_count: int) -> str:
    """The n-th signed `/shipit deploy` (apps round robin); stops the bench on anything but a success."""
    text = f"deploy load-{n % apps_count:02d} {n}.0"
    body = command_body(text, fake=fake, n=n)
    r = await http.post("/slack/events", content=body, headers=signed(body))
    if r.status_code != 200 or "warning" in r.text or ":x:" in r.text:
        raise SystemExit(f"command {n}: {r.status_code} {r.text[:300]}")
    return r.text


async def _main(args: argparse.Namespace, tmp: str) -> None:
    import httpx
    from sqlalchemy import event

    from shipit import runtime
    from shipit.main import create_app
    from tests.fakes.slack_api import FakeSlack

    with FakeSlack() as fake:
        settings = bench_settings(tmp=tmp, fake=fake, run_worker=args.worker)
        rt = await runtime.build(settings)
        await seed(rt, apps_count=args.apps, protected=not args.unprotected)
        app = create_app(rt=rt)
        if args.worker:
            await runtime.start(rt)  # a caller-owned runtime: the app's lifespan does not start it
        n = 0
        replies: list[str] = []

        async def burst(http: httpx.AsyncClient, count: int) -> None:
            nonlocal n
            for _ in range(count):
                n += 1
                replies.append(await send_deploy(http, fake=fake, n=n, apps_count=args.apps))

        skip = fake_threads(fake)
        statements = 0
        listed: list[str] = []

        def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            nonlocal statements
            statements += 1
            listed.append(" ".join(statement.split())[:150])

        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                    await burst(http, 50)  # warm: caches, the pool, first-request imports
                    if args.worker:
                        await settle()
                    start = time.perf_counter()
                    main_cpu = time.thread_time()
                    side_cpu = common.threads_cpu(skip=skip)
                    await burst(http, args.requests)
                    plain = time.perf_counter() - start
                    if args.worker:
                        await settle()
                    main_cpu = time.thread_time() - main_cpu
                    side_cpu = common.threads_cpu(skip=skip) - side_cpu
                    engine = rt.engine.sync_engine
                    event.listen(engine, "before_cursor_execute", before)
                    await burst(http, args.requests)
                    counted = statements
                    listed.clear()
                    await burst(http, 1)
                    event.remove(engine, "before_cursor_execute", before)
                    split = SPLIT + (SPLIT_CORE if args.split_core else [])
                    totals, restore = timed_split(split)
                    split_cpu = time.thread_time()
                    await burst(http, args.requests)
                    split_cpu = time.thread_time() - split_cpu
                    restore()
                    profile = (
                        cProfile.Profile(time.thread_time) if args.timer == "cpu" else cProfile.Profile()
                    )
                    profile.enable()
                    await burst(http, args.requests)
                    profile.disable()
        finally:
            await runtime.stop(rt)
        web_api_calls = len(fake.calls())

    per = args.requests
    print(
        f"/shipit deploy in-process (httpx ASGITransport, the real bolt app, SQLite WAL, "
        f"{'worker ON (its CPU over each burst and 1 s after included: the cards)' if args.worker else 'worker off'}, "
        f"{'unprotected' if args.unprotected else 'protected'} apps x{args.apps}): {per / plain:.0f} commands/s, "
        f"{plain * 1000 / per:.2f} ms wall per command unprofiled; load average "
        f"{common.load_average()}"
    )
    print(
        f"CPU per command: {(main_cpu + side_cpu) * 1000 / per:.2f} ms = event loop thread "
        f"{main_cpu * 1000 / per:.2f} ms + other threads (aiosqlite: SQLite) {side_cpu * 1000 / per:.2f} ms; "
        f"{counted / per:.1f} SQL statements per command; Slack Web API calls during the run: {web_api_calls}"
    )
    print(f"split of the event loop thread's CPU per command ({split_cpu * 1000 / per:.2f} ms in that run):")
    for _module, _attr, what in split:
        print(f"  {totals[what] * 1000 / per:6.2f} ms  {what}")
    print(
        f"  {(split_cpu - totals[SPLIT[0][2]]) * 1000 / per:6.2f} ms  the rest: the HTTP client and ASGI, FastAPI, "
        "our signature check, bolt (parsing, middleware, listener, ack), the response"
    )
    report_tail(args, listed=listed, what="one command", profile=profile, per=per, landmarks=LANDMARKS)


def report_tail(
    args: argparse.Namespace, *, listed: list[str], what: str, profile: Any, per: int, landmarks: Any
) -> None:
    """The statements listed (--statements) and the profile's report, per command."""
    if args.statements:
        print(f"the statements of {what} ({len(listed)}, BEGIN included):")
        for i, text in enumerate(listed, 1):
            print(f"  {i:2}. {text}")
    profile_deploy.report(
        profile, per=per, unit="cmd", noun="command", landmarks=landmarks, top=args.top, dump=args.dump
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="commands per measured burst")
    parser.add_argument("--apps", type=int, default=20, help="apps the commands deploy, round robin")
    parser.add_argument("--unprotected", action="store_true", help="apps that need no approval (a job each)")
    parser.add_argument(
        "--worker",
        action="store_true",
        help="run the worker too: CPU per command then includes its notify jobs (cards), drained after "
        "each burst; the split and the profile still see only what runs in their stretches",
    )
    parser.add_argument("--split-core", action="store_true", help="also time the steps of deploys.request")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--timer",
        choices=("cpu", "wall"),
        default="cpu",
        help="cProfile's clock: the event loop thread's CPU time (default) or wall time (shows the waits)",
    )
    parser.add_argument("--statements", action="store_true", help="list the SQL statements of one command")
    parser.add_argument("--dump", type=Path, help="also write the raw cProfile data here")
    args = parser.parse_args()
    os.environ.setdefault("SHIPIT_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="shipit-profile-slack-") as tmp:
        asyncio.run(_main(args, tmp))


if __name__ == "__main__":
    main()
