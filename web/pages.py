"""The dashboard's pages: projects, an app with its history, revisions, add-ons and builds, a build's
log, the live rollout stream, logs, the audit log, clusters and tokens.  Each reads in ONE transaction
as the signed-in person."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    addons,
    apps,
    audit,
    builds,
    claims,
    clusters,
    deploys,
    environments,
    events,
    identities,
    identity,
    projects,
    runs,
    secrets,
    status,
    tokens,
    usage,
)
from core.errors import NoMetricsApi, ShipitError, UserError
from core.notices import DeploymentView
from core.notices import targets as notice_targets
from storage import models
from web import channel


@dataclass(frozen=True, kw_only=True)
class AppRow:
    app: models.App
    current_revision: int | None
    last: DeploymentView | None  # the newest deploy, preview deploys left out
    environment: str = ""
    env_q: str = ""  # "?env=NAME" when the app runs in several environments: its link names this row


def env_query(env: str | None) -> str:
    return f"?env={quote(env, safe='')}" if env else ""


async def environments_of(session: AsyncSession, *, name: str) -> list[str]:
    """The environments an app name runs in, in its project's order (several: the app page shows tabs).

    Only picks the row to show: the core call after it checks who may see the app.
    """
    rows = list(await session.scalars(select(models.App).where(models.App.name == name)))
    if not rows:
        return []
    order = {
        e.id: (e.position, e.name)
        for e in await environments.list_for(session, project_id=rows[0].project_id)
    }
    return [n for _, n in sorted(order[r.environment_id] for r in rows if r.environment_id in order)]


@dataclass(frozen=True, kw_only=True)
class RunRow:
    run: runs.RunView
    started: dt.datetime | None
    finished: dt.datetime | None
    took: str  # "—" while it runs (or a time is missing)


def took(seconds: float) -> str:
    """A run's duration the way a person reads it: 42 s, 3 min 5 s, 2 h 10 min."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def run_rows(found: list[runs.RunView]) -> list[RunRow]:
    rows = []
    for r in found:
        span = r.took_seconds
        rows.append(
            RunRow(
                run=r,
                started=runs.time_of(r.started_at),
                finished=runs.time_of(r.finished_at),
                took="—" if span is None else took(span),
            )
        )
    return rows


async def _app_rows(session: AsyncSession, app_list: list[models.App]) -> list[AppRow]:
    rows = []
    for a in app_list:
        rev = await session.get(models.Revision, a.current_revision_id) if a.current_revision_id else None
        last = await session.scalar(
            select(models.Deployment)
            .where(models.Deployment.app_id == a.id, models.Deployment.preview_id.is_(None))
            .order_by(models.Deployment.id.desc())
            .limit(1)
        )
        current = rev.number if rev else None
        if current is None:
            done = await deploys.current_deployment(session, app=a)
            current = done.revision_number if done else None
        env = await apps.env_name(session, app=a)
        several = len(await environments_of(session, name=a.name)) > 1
        rows.append(
            AppRow(
                app=a,
                current_revision=current,
                last=events.deployment_view_of(last) if last else None,
                environment=env,
                env_q=env_query(env) if several else "",
            )
        )
    return rows


def revision_changes(revisions: list[models.Revision]) -> dict[int, tuple[int, list[tuple[str, str, str]]]]:
    """For each revision, the one before it and what its snapshot changed from it: (field, was, now)."""
    out: dict[int, tuple[int, list[tuple[str, str, str]]]] = {}
    ordered = sorted(revisions, key=lambda r: r.number)
    for older, newer in itertools.pairwise(ordered):
        changes = []
        for key in sorted(set(older.snapshot) | set(newer.snapshot)):
            was, now = older.snapshot.get(key), newer.snapshot.get(key)
            if was != now:
                changes.append((key, _show(was), _show(now)))
        out[newer.number] = (older.number, changes)
    return out


def _show(value: Any) -> str:
    return "—" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _deploy_state(d: DeploymentView) -> dict[str, Any]:
    """What the live rollout stream sends of a deploy: core's read model, a few fields of it."""
    return {
        "id": d.id,
        "status": d.status,
        "tone": channel.tone(d.status),
        "ready": d.ready,
        "desired": d.desired,
        "revision": d.revision,
        "image": d.image,
        "actor": d.actor,
        "error": d.error or "",
        "created": channel.exact(d.created_at),
    }


def add_routes(router: APIRouter, web: channel.Web) -> None:
    @router.get("/")
    async def home(request: Request) -> Response:
        async with channel.tx(web.core_of(request)) as session:
            row, actor = await channel.signed_in(request, session)
            plist = await projects.list_visible(session, actor=actor)
            app_list = await apps.list_visible(session, actor=actor)
            counts: dict[int, int] = {}
            for a in app_list:
                counts[a.project_id] = counts.get(a.project_id, 0) + 1
            roles = {p.id: await identity.role_of(session, actor=actor, project_id=p.id) for p in plist}
            # Where notices go is read from the targets, as `shipit projects list` shows it.
            defaults = await notice_targets.defaults(session, project_ids=[p.id for p in plist])
            return channel.render(
                request,
                "projects.html",
                row=row,
                title="Projects",
                projects=plist,
                counts=counts,
                roles=roles,
                defaults=defaults,
            )

    @router.get("/projects/{name}")
    async def project_page(request: Request, name: str) -> Response:
        async with channel.tx(web.core_of(request)) as session:
            row, actor = await channel.signed_in(request, session)
            try:
                members = await projects.members(session, actor=actor, project_name=name)
            except UserError as e:
                return await channel.refused(request, row, e)
            project = await projects.get(session, name=name)
            app_rows = await _app_rows(session, await apps.list_visible(session, actor=actor, project=name))
            role = await identity.role_of(session, actor=actor, project_id=project.id)
            return channel.render(
                request,
                "project.html",
                row=row,
                title=name,
                project=project,
                apps=app_rows,
                members=members,
                role=role,
            )

    @router.get("/apps/{name}")
    async def app_page(request: Request, name: str, env: str | None = None) -> Response:
        core = web.core_of(request)
        async with channel.tx(core) as session:
            row, actor = await channel.signed_in(request, session)
            # An app in several environments: one row per page, the first environment unless ?env= says.
            envs = await environments_of(session, name=name)
            env = env or (envs[0] if len(envs) > 1 else None)
            try:
                st = await status.read(session, actor=actor, app_name=name, env=env)
            except UserError as e:
                return await channel.refused(request, row, e)
            app = await apps.get(session, actor=actor, name=name, env=env)
            history = await deploys.history(session, actor=actor, app_name=name, limit=20, env=env)
            revisions = await deploys.revisions(session, actor=actor, app_name=name, env=env)
            (app_row,) = await _app_rows(session, [app])
            role = await identity.role_of(session, actor=actor, project_id=app.project_id)
            secret_keys = await secrets.list_keys(session, actor=actor, app_name=name, env=env)
            where, addon_rows = await addons.rows_for(session, ctx=core, actor=actor, app_name=name, env=env)
            recent_builds = (
                await builds.list_for(session, actor=actor, app_name=name, env=env, limit=10)
                if app.build_enabled
                else []
            )
            # Every identity of the signed-in person: no Approve button on a deploy any of them asked
            # for (core refuses it anyway: protection.refuse_own_deploy).
            mine = await identities.subjects_of(session, subject=actor.subject)
        addon_views = await addons.observed(ctx=core, where=where, rows=addon_rows)
        return channel.render(
            request,
            "app.html",
            row=row,
            title=name,
            app=app,
            st=st,
            history=history,
            revisions=revisions,
            info=app_row,
            role=role,
            secret_keys=secret_keys,
            addons=addon_views,
            addon_kinds=[k for k in addons.KINDS if k not in {a.kind for a in addon_views}],
            addon_plans=addons.PLANS,
            addon_default_plan=addons.DEFAULT_PLAN,
            builds=recent_builds,
            envs=envs if len(envs) > 1 else [],
            env_q=app_row.env_q,
            changes=revision_changes(revisions),
            can_admin=role is not None and role >= identity.Role.ADMIN,
            can_deploy=role is not None and role >= identity.Role.DEVELOPER,
            latest=history[0] if history else None,
            mine=mine,
        )

    @router.get("/apps/{name}/usage")
    async def usage_fragment(request: Request, name: str, env: str | None = None) -> Response:
        """The app page's Usage section, fetched by the page's script so the page never waits on the
        cluster's Metrics API: the stored history is read in one transaction, the cluster asked after."""
        core = web.core_of(request)
        async with channel.tx(core) as session:
            row, actor = await channel.signed_in(request, session)
            try:
                plan = await usage.plan(session, ctx=core, actor=actor, app_name=name, env=env)
            except UserError as e:
                return await channel.refused(request, row, e)
        now: usage.AppUsage | None = None
        note = problem = None
        try:
            async with asyncio.timeout(channel.USAGE_READ_SECONDS):
                now = await usage.read(ctx=core, plan=plan)
        except NoMetricsApi as e:  # not a failure: many clusters have no metrics-server
            note = str(e)
        except (UserError, ShipitError) as e:  # cluster unreachable: said as the logs page says it
            problem = str(e)
        except TimeoutError:
            problem = "the cluster did not send the pods' metrics in time"
        return channel.render(
            request, "usage.html", row=row, plan=plan, now=now, note=note, problem=problem,
            max_pods=channel.USAGE_PODS_SHOWN,
        )  # fmt: skip

    @router.get("/apps/{name}/runs")
    async def runs_fragment(request: Request, name: str, env: str | None = None) -> Response:
        """The app page's Runs section, fetched like the Usage section: the history is read in one
        transaction (with the API's role check: developers), the cluster's Jobs asked after."""
        core = web.core_of(request)
        async with channel.tx(core) as session:
            row, actor = await channel.signed_in(request, session)
            try:
                history = await runs.history_of(
                    session, ctx=core, actor=actor, app_name=name, env=env, limit=channel.RUNS_SHOWN
                )
            except UserError as e:
                return await channel.refused(request, row, e)
        problem = None
        try:
            async with asyncio.timeout(channel.RUNS_READ_SECONDS):
                found = await runs.with_live(ctx=core, history=history)
        except (UserError, ShipitError) as e:  # cluster unreachable: the history as last recorded
            found, problem = history.recorded(), str(e)
        except TimeoutError:
            found, problem = history.recorded(), "the cluster did not list the runs' Jobs in time"
        return channel.render(
            request, "runs.html", row=row, app_name=name, env=env, runs=run_rows(found), problem=problem,
        )  # fmt: skip

    @router.get("/apps/{name}/builds/{build_id}")
    async def build_page(request: Request, name: str, build_id: int, env: str | None = None) -> Response:
        """One build and its log's tail (untrusted text: the template escapes it like everything else)."""
        async with channel.tx(web.core_of(request)) as session:
            row, actor = await channel.signed_in(request, session)
            try:
                build = await builds.get_for(session, actor=actor, app_name=name, build_id=build_id, env=env)
            except UserError as e:
                return await channel.refused(request, row, e)
            return channel.render(
                request,
                "build.html",
                row=row,
                title=f"{name} build #{build.id}",
                app_name=name,
                build=build,
                env_q=env_query(env),
            )

    @router.get("/apps/{name}/events")
    async def app_events(request: Request, name: str, env: str | None = None) -> Response:
        core = web.core_of(request)
        async with channel.tx(core) as session:
            row, actor = await channel.signed_in(request, session)
            app = await apps.get(session, actor=actor, name=name, env=env)
            await apps.authorize(
                session, actor=actor, app=app, role=identity.Role.VIEWER, action="reading deploys"
            )
            session_id, app_id = row.session_id, app.id

        async def stream() -> AsyncIterator[bytes]:
            sent: dict[int, dict[str, Any]] = {}
            quiet_since = time.monotonic()
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                # Listen before reading: a commit between the read and the wait still wakes us.
                changed = core.deploys_changed.listen()
                async with core.sessionmaker() as s:
                    live = await s.get(models.WebSession, session_id)
                    if live is None or live.revoked_at or live.expires_at <= models.utcnow():
                        yield b"event: signedout\ndata: {}\n\n"
                        return
                    recent = list(
                        await s.scalars(
                            select(models.Deployment)
                            .where(models.Deployment.app_id == app_id, models.Deployment.preview_id.is_(None))
                            .order_by(models.Deployment.id.desc())
                            .limit(20)
                        )
                    )
                for d in reversed(recent):
                    state = _deploy_state(events.deployment_view_of(d))
                    if sent.get(d.id) != state:
                        sent[d.id] = state
                        quiet_since = time.monotonic()
                        yield f"event: deploy\ndata: {json.dumps(state)}\n\n".encode()
                if time.monotonic() - quiet_since > channel.SSE_HEARTBEAT_SECONDS:
                    quiet_since = time.monotonic()
                    yield b": still here\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), channel.SSE_POLL_SECONDS)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.get("/apps/{name}/logs")
    async def logs_page(request: Request, name: str, env: str | None = None) -> Response:
        """The last lines of the app's pods, served whole; the page's script then follows new ones."""
        core = web.core_of(request)
        async with channel.tx(core) as session:
            row, actor = await channel.signed_in(request, session)
            try:
                target = await status.target(session, ctx=core, actor=actor, app_name=name, env=env)
            except UserError as e:
                return await channel.refused(request, row, e)
        lines: list[str] = []
        problem = None
        try:
            async with asyncio.timeout(channel.LOG_READ_SECONDS):
                async for line in status.logs(
                    ctx=core, target=target, tail_lines=channel.LOG_TAIL, follow=False
                ):
                    lines.append(line.rstrip("\n"))
        except (UserError, ShipitError) as e:  # no pods yet, cluster unreachable: say so on the page
            problem = str(e)
        except TimeoutError:
            problem = "the cluster did not send the logs in time"
        return channel.render(
            request, "logs.html", row=row, title=f"{name} logs", app_name=name, lines=lines, problem=problem,
            env_q=env_query(env),
        )  # fmt: skip

    @router.get("/apps/{name}/logs/follow")
    async def logs_follow(request: Request, name: str, env: str | None = None) -> Response:
        core = web.core_of(request)
        async with channel.tx(core) as session:
            _, actor = await channel.signed_in(request, session)
            target = await status.target(session, ctx=core, actor=actor, app_name=name, env=env)

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 5000\n\n"
            try:
                # tail 0: the page already shows the last lines; from here on only new ones.
                async for line in status.logs(ctx=core, target=target, tail_lines=0, follow=True):
                    if await request.is_disconnected():
                        return
                    yield f"event: line\ndata: {json.dumps(line.rstrip(chr(10)))}\n\n".encode()
            except (UserError, ShipitError) as e:
                yield f"event: problem\ndata: {json.dumps(str(e))}\n\n".encode()
            yield b"event: end\ndata: {}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.get("/audit")
    async def audit_page(
        request: Request,
        action: str | None = None,
        target: str | None = None,
        actor_filter: str | None = None,
    ) -> Response:
        async with channel.tx(web.core_of(request)) as session:
            row, actor = await channel.signed_in(request, session)
            visible = await identity.visible_project_ids(session, actor=actor)
            rows = await audit.query(
                session,
                project_ids=visible,
                target=target or None,
                action=action or None,
                actor=actor_filter or None,
                limit=200,
            )
            return channel.render(
                request,
                "audit.html",
                row=row,
                title="Audit log",
                events=rows,
                action=action or "",
                target=target or "",
                actor_filter=actor_filter or "",
            )

    @router.get("/clusters")
    async def clusters_page(request: Request) -> Response:
        """Every cluster and which projects may use it: for global admins only (SHIPIT_WEB_ADMINS)."""
        async with channel.tx(web.core_of(request)) as session:
            row, actor = await channel.signed_in(request, session)
            if not actor.is_admin:
                # Like any page that does not exist: nobody learns that it does.
                return channel.render(
                    request,
                    "error.html",
                    status_code=404,
                    row=row,
                    title="Not found",
                    message="There is no such page.",
                    back=None,
                )
            found = await clusters.list_all(session)
            by_cluster: dict[str, list[claims.ProjectGrant]] = {}
            for g in await claims.grants(session):
                by_cluster.setdefault(g.cluster, []).append(g)
            return channel.render(
                request, "clusters.html", row=row, title="Clusters", clusters=found, grants=by_cluster
            )

    @router.get("/tokens")
    async def tokens_page(request: Request) -> Response:
        async with channel.tx(web.core_of(request)) as session:
            row, actor = await channel.signed_in(request, session)
            mine = await tokens.list_tokens(session, actor=actor)
            return channel.render(
                request, "tokens.html", row=row, title="API tokens", tokens=mine, created=None
            )
