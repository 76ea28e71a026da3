"""The dashboard's routes: sign-in, pages, forms, and the live rollout stream.

A thin channel: each page or form finds the signed-in person, opens ONE transaction, calls core
services as `Actor(subject, channel="web")` and renders the result.  Core's refusals (a viewer
deploying, someone approving their own deploy) come back as a page that says why, with core's status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    apps,
    audit,
    autoscaling,
    claims,
    clusters,
    deploys,
    environments,
    identity,
    projects,
    secrets,
    status,
    tokens,
    web_sessions,
)
from core.context import Core
from core.errors import InvalidInput, NotFound, ShipitError, UserError
from core.identity import Actor
from storage import models
from web.auth import GitHub, Oidc, Person, Provider, SignInRefused

log = logging.getLogger("shipit.web")
HERE = Path(__file__).resolve().parent
SIGNIN_COOKIE = "shipit_signin"
SIGNIN_SECONDS = 600  # how long a sign-in may take at the provider
# A stream wakes on this process's commit broadcast (core.deploys_changed); the poll only catches
# what other replicas commit, so it may be slower than the live aim on its own.
SSE_POLL_SECONDS = 0.5
SSE_HEARTBEAT_SECONDS = 15.0
LOG_TAIL = 200
LOG_READ_SECONDS = 10.0
# Our pages load only our own files; no inline script, nothing from elsewhere, never framed.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


@dataclass(kw_only=True)
class Config:
    providers: dict[str, Provider]
    public_url: str
    cookie_secure: bool = True
    session_lifetime: dt.timedelta = dt.timedelta(hours=12)
    # Subjects, lower case (user:ops@acme.io, github:octocat), who act as global admins once signed in.
    admins: frozenset[str] = frozenset()


@dataclass(kw_only=True)
class Web:
    config: Config
    core_of: Callable[[Request], Core]
    templates: jinja2.Environment = field(init=False)

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value is HTML-escaped unless a template says otherwise (none do)
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["ago"] = ago
        self.templates.filters["exact"] = exact
        self.templates.globals["tone"] = tone

    @property
    def cookie_name(self) -> str:
        # __Host- cookies are https-only, host-only, path=/: nobody on a sibling domain can plant one.
        return "__Host-shipit" if self.config.cookie_secure else "shipit_session"


@dataclass(frozen=True, kw_only=True)
class Me:
    """The signed-in person, copied out of the session row so it outlives the transaction."""

    subject: str
    display: str
    csrf_secret: str
    session_id: str
    is_admin: bool = False


class NotSignedIn(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class CsrfRefused(Exception):
    pass


# ---------------------------------------------------------------- rendering helpers


def exact(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((models.utcnow() - value).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            text = f"{seconds // size} {unit}"
            break
    else:
        text = f"{seconds} s"
    return f"in {text}" if future else f"{text} ago"


def tone(state: str | None) -> str:
    """The colour class of a status word (the word itself is always shown too)."""
    return {
        deploys.SUCCEEDED: "ok",
        deploys.RUNNING: "busy",
        deploys.QUEUED: "busy",
        deploys.AWAITING_APPROVAL: "wait",
        deploys.FAILED: "bad",
        deploys.CANCELLED: "muted",
        deploys.SUPERSEDED: "muted",
    }.get(state or "", "muted")


def _web(request: Request) -> Web:
    the_web: Web = request.app.state.web
    return the_web


def _sign(core: Core, purpose: str, value: str) -> str:
    return core.cipher.digest(f"{purpose}:{value}".encode())[:43]


def _unsign(core: Core, purpose: str, signed: str | None) -> str | None:
    import hmac

    if not signed or "." not in signed:
        return None
    value, _, sig = signed.rpartition(".")
    return value if hmac.compare_digest(sig, _sign(core, purpose, value)) else None


@contextlib.asynccontextmanager
async def tx(core: Core) -> AsyncIterator[AsyncSession]:
    async with core.sessionmaker.begin() as session:
        yield session


def _safe_next(path: str | None) -> str:
    # Only our own paths: never //evil.example or https://evil.example.
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


async def _session_row(request: Request, session: AsyncSession) -> models.WebSession | None:
    web = _web(request)
    token = _unsign(web.core_of(request), "web-session", request.cookies.get(web.cookie_name))
    return await web_sessions.lookup(session, token=token) if token else None


async def signed_in(request: Request, session: AsyncSession) -> tuple[Me, Actor]:
    row = await _session_row(request, session)
    if row is None:
        raise NotSignedIn(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    actor = web_sessions.actor_of(row)
    if row.subject.lower() in _web(request).config.admins:
        actor = dataclasses.replace(actor, is_admin=True)
    me = Me(subject=row.subject, display=actor.name, csrf_secret=row.csrf_secret, session_id=row.id,
            is_admin=actor.is_admin)  # fmt: skip
    return me, actor


async def form_of(request: Request, row: Me) -> dict[str, str]:
    """The posted form, after its CSRF token matched this session's."""
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    if not web_sessions.csrf_ok(
        secret=row.csrf_secret, sent=values.get("csrf") or request.headers.get("x-csrf-token")
    ):
        raise CsrfRefused()
    return values


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    row: Me | None = None,
    **context: Any,
) -> HTMLResponse:
    web = _web(request)
    html = web.templates.get_template(template).render(
        me=row,
        csrf=row.csrf_secret if row else "",
        path=request.url.path,
        providers=list(web.config.providers.values()),
        **context,
    )
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={"content-security-policy": CSP, "cache-control": "no-store"},
    )


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


# ---------------------------------------------------------------- install


def install(app: FastAPI, *, config: Config, core_of: Callable[[Request], Core]) -> Web | None:
    """Mount the dashboard; without any sign-in provider it is off and its pages answer 503."""
    router = APIRouter(include_in_schema=False)
    if not config.providers:
        log.info("web: dashboard off (set SHIPIT_OIDC_ISSUER or SHIPIT_GITHUB_OAUTH_CLIENT_ID)")

        @router.get("/")
        @router.get("/signin")
        async def off() -> Response:
            return HTMLResponse(
                "<!doctype html><title>shipit</title><p>The dashboard is off: no sign-in provider is "
                "configured (SHIPIT_OIDC_ISSUER or SHIPIT_GITHUB_OAUTH_CLIENT_ID).</p>",
                status_code=503,
            )

        app.include_router(router)
        return None

    web = Web(config=config, core_of=core_of)
    app.state.web = web
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="web-static")
    _sign_in_routes(router, web)
    _page_routes(router, web)
    from web import link_pages  # it renders with this module's helpers

    link_pages.add_routes(router, web)
    app.include_router(router)

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if request.method != "GET":
            return render(request, "error.html", status_code=401, title="Signed out",
                          message="Your session has ended. Sign in again.")  # fmt: skip
        return _back(f"/signin?next={quote(exc.next_path, safe='')}")

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return render(request, "error.html", status_code=403, title="Refused",
                      message="This form is missing its security token, or it is stale. "
                      "Go back, reload the page and try again.")  # fmt: skip

    log.info("web: dashboard on, sign-in with %s", ", ".join(config.providers))
    return web


# ---------------------------------------------------------------- sign-in


def _sign_in_routes(router: APIRouter, web: Web) -> None:
    def callback_url(provider: str) -> str:
        return f"{web.config.public_url.rstrip('/')}/auth/{provider}/callback"

    @router.get("/signin")
    async def signin_page(request: Request, next: str | None = None) -> Response:
        return render(request, "signin.html", next=_safe_next(next), title="Sign in")

    @router.get("/auth/{provider}/start")
    async def start(request: Request, provider: str, next: str | None = None) -> Response:
        p = web.config.providers.get(provider)
        if p is None:
            raise NotFound(f"no sign-in provider {provider!r}")
        try:
            started = await p.start(redirect_uri=callback_url(provider))
        except SignInRefused as e:
            return render(request, "error.html", status_code=502, title="Sign-in failed", message=str(e))
        payload = base64.urlsafe_b64encode(
            json.dumps(
                {
                    "p": provider,
                    "s": started.state,
                    "n": started.nonce,
                    "v": started.code_verifier,
                    "next": _safe_next(next),
                    "exp": int(time.time()) + SIGNIN_SECONDS,
                }
            ).encode()
        ).decode()
        resp = RedirectResponse(started.url, status_code=303)
        resp.set_cookie(
            SIGNIN_COOKIE,
            f"{payload}.{_sign(web.core_of(request), 'web-signin', payload)}",
            max_age=SIGNIN_SECONDS,
            httponly=True,
            secure=web.config.cookie_secure,
            samesite="lax",  # sent on the provider's top-level redirect back to us
            path="/auth/",
        )
        return resp

    @router.get("/auth/{provider}/callback")
    async def callback(
        request: Request,
        provider: str,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
    ) -> Response:
        core = web.core_of(request)

        def refused(message: str) -> Response:
            resp = render(request, "error.html", status_code=400, title="Sign-in refused", message=message,
                          again=True)  # fmt: skip
            resp.delete_cookie(SIGNIN_COOKIE, path="/auth/")
            return resp

        p = web.config.providers.get(provider)
        raw = _unsign(core, "web-signin", request.cookies.get(SIGNIN_COOKIE))
        if p is None or raw is None:
            return refused("This sign-in was not started here, or it took too long. Start again.")
        pending = json.loads(base64.urlsafe_b64decode(raw))
        if pending["p"] != provider or pending["exp"] < time.time():
            return refused("This sign-in was not started here, or it took too long. Start again.")
        if error:
            return refused(f"The sign-in provider said: {error[:200]}")
        import hmac

        if not code or not state or not hmac.compare_digest(state, pending["s"]):
            return refused("The sign-in answer does not match the sign-in we started (state). Start again.")
        try:
            person: Person = await p.finish(
                code=code, redirect_uri=callback_url(provider), code_verifier=pending["v"], nonce=pending["n"]
            )
        except SignInRefused as e:
            log.warning("web: sign-in with %s refused: %s", provider, e)
            return refused(str(e))
        async with tx(core) as session:
            _, token = await web_sessions.create(
                session, subject=person.subject, display=person.display, provider=person.provider,
                lifetime=web.config.session_lifetime,
            )  # fmt: skip
        log.info("web: %s signed in with %s", person.subject, provider)
        resp = _back(_safe_next(pending.get("next")))
        resp.delete_cookie(SIGNIN_COOKIE, path="/auth/")
        resp.set_cookie(
            web.cookie_name,
            f"{token}.{_sign(core, 'web-session', token)}",
            max_age=int(web.config.session_lifetime.total_seconds()),
            httponly=True,
            secure=web.config.cookie_secure,
            samesite="lax",
            path="/",
        )
        return resp

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        async with tx(web.core_of(request)) as session:
            me, _ = await signed_in(request, session)
            await form_of(request, me)
            live = await session.get(models.WebSession, me.session_id)
            assert live is not None
            await web_sessions.revoke(session, row=live)
        resp = _back("/signin")
        resp.delete_cookie(web.cookie_name, path="/", secure=web.config.cookie_secure, httponly=True)
        return resp


# ---------------------------------------------------------------- pages and forms


@dataclass(frozen=True, kw_only=True)
class AppRow:
    app: models.App
    current_revision: int | None
    last: models.Deployment | None
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
                last=last,
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


def _deploy_state(d: models.Deployment) -> dict[str, Any]:
    return {
        "id": d.id,
        "status": d.status,
        "tone": tone(d.status),
        "ready": d.ready,
        "desired": d.desired,
        "revision": d.revision_number,
        "image": d.image,
        "actor": d.actor,
        "error": d.error or "",
        "created": exact(d.created_at),
    }


def _page_routes(router: APIRouter, web: Web) -> None:
    async def refused(request: Request, row: Me, exc: UserError, *, back: str | None = None) -> Response:
        # Core's message, as written, with core's status (403 role, 404 unknown, 409 locked...).
        return render(request, "error.html", status_code=exc.status_code, row=row, title="Not done",
                      message=str(exc), back=back)  # fmt: skip

    @router.get("/")
    async def home(request: Request) -> Response:
        async with tx(web.core_of(request)) as session:
            row, actor = await signed_in(request, session)
            plist = await projects.list_visible(session, actor=actor)
            app_list = await apps.list_visible(session, actor=actor)
            counts: dict[int, int] = {}
            for a in app_list:
                counts[a.project_id] = counts.get(a.project_id, 0) + 1
            roles = {p.id: await identity.role_of(session, actor=actor, project_id=p.id) for p in plist}
            return render(request, "projects.html", row=row, title="Projects", projects=plist,
                          counts=counts, roles=roles)  # fmt: skip

    @router.get("/projects/{name}")
    async def project_page(request: Request, name: str) -> Response:
        async with tx(web.core_of(request)) as session:
            row, actor = await signed_in(request, session)
            try:
                members = await projects.members(session, actor=actor, project_name=name)
            except UserError as e:
                return await refused(request, row, e)
            project = await projects.get(session, name=name)
            app_rows = await _app_rows(session, await apps.list_visible(session, actor=actor, project=name))
            role = await identity.role_of(session, actor=actor, project_id=project.id)
            return render(request, "project.html", row=row, title=name, project=project, apps=app_rows,
                          members=members, role=role)  # fmt: skip

    @router.get("/apps/{name}")
    async def app_page(request: Request, name: str, env: str | None = None) -> Response:
        async with tx(web.core_of(request)) as session:
            row, actor = await signed_in(request, session)
            # An app in several environments: one row per page, the first environment unless ?env= says.
            envs = await environments_of(session, name=name)
            env = env or (envs[0] if len(envs) > 1 else None)
            try:
                st = await status.read(session, actor=actor, app_name=name, env=env)
            except UserError as e:
                return await refused(request, row, e)
            app = await apps.get(session, actor=actor, name=name, env=env)
            history = await deploys.history(session, actor=actor, app_name=name, limit=20, env=env)
            revisions = await deploys.revisions(session, actor=actor, app_name=name, env=env)
            (app_row,) = await _app_rows(session, [app])
            role = await identity.role_of(session, actor=actor, project_id=app.project_id)
            secret_keys = await secrets.list_keys(session, actor=actor, app_name=name, env=env)
            return render(request, "app.html", row=row, title=name, app=app, st=st, history=history,
                          revisions=revisions, info=app_row, role=role, secret_keys=secret_keys,
                          envs=envs if len(envs) > 1 else [], env_q=app_row.env_q,
                          changes=revision_changes(revisions),
                          can_admin=role is not None and role >= identity.Role.ADMIN,
                          can_deploy=role is not None and role >= identity.Role.DEVELOPER,
                          latest=history[0] if history else None)  # fmt: skip

    @router.get("/apps/{name}/events")
    async def app_events(request: Request, name: str, env: str | None = None) -> Response:
        core = web.core_of(request)
        async with tx(core) as session:
            row, actor = await signed_in(request, session)
            app = await apps.get(session, actor=actor, name=name, env=env)
            await apps.authorize(session, actor=actor, app=app, role=identity.Role.VIEWER,
                                 action="reading deploys")  # fmt: skip
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
                    state = _deploy_state(d)
                    if sent.get(d.id) != state:
                        sent[d.id] = state
                        quiet_since = time.monotonic()
                        yield f"event: deploy\ndata: {json.dumps(state)}\n\n".encode()
                if time.monotonic() - quiet_since > SSE_HEARTBEAT_SECONDS:
                    quiet_since = time.monotonic()
                    yield b": still here\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), SSE_POLL_SECONDS)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    @router.get("/apps/{name}/logs")
    async def logs_page(request: Request, name: str, env: str | None = None) -> Response:
        """The last lines of the app's pods, served whole; the page's script then follows new ones."""
        core = web.core_of(request)
        async with tx(core) as session:
            row, actor = await signed_in(request, session)
            try:
                target = await status.target(session, ctx=core, actor=actor, app_name=name, env=env)
            except UserError as e:
                return await refused(request, row, e)
        lines: list[str] = []
        problem = None
        try:
            async with asyncio.timeout(LOG_READ_SECONDS):
                async for line in status.logs(ctx=core, target=target, tail_lines=LOG_TAIL, follow=False):
                    lines.append(line.rstrip("\n"))
        except (UserError, ShipitError) as e:  # no pods yet, cluster unreachable: say so on the page
            problem = str(e)
        except TimeoutError:
            problem = "the cluster did not send the logs in time"
        return render(request, "logs.html", row=row, title=f"{name} logs", app_name=name, lines=lines,
                      problem=problem, env_q=env_query(env))  # fmt: skip

    @router.get("/apps/{name}/logs/follow")
    async def logs_follow(request: Request, name: str, env: str | None = None) -> Response:
        core = web.core_of(request)
        async with tx(core) as session:
            _, actor = await signed_in(request, session)
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

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})  # fmt: skip

    async def act(request: Request, fn: Callable[[AsyncSession, Actor, dict[str, str]], Any],
                  back: str) -> Response:  # fmt: skip
        """One form post: ONE transaction around the session and CSRF checks and the core call.

        `fn` answers None (back to `back`), a path to go to, or a whole response.  Core's refusal rolls
        the transaction back and shows a page that says why, with core's status code.
        """
        core = web.core_of(request)
        me: Me | None = None
        try:
            async with core.sessionmaker.begin() as session:
                me, actor = await signed_in(request, session)
                form = await form_of(request, me)
                result = await fn(session, actor, form)
        except UserError as e:
            assert me is not None
            return await refused(request, me, e, back=back)
        if isinstance(result, Response):
            return result
        return _back(result if isinstance(result, str) else back)

    @router.post("/apps/{name}/deploy")
    async def deploy(request: Request, name: str, env: str | None = None) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await deploys.request(session, ctx=web.core_of(request), actor=actor, app_name=name,
                                  image=form.get("image", "").strip(), trigger=actor.channel, env=env)  # fmt: skip

        return await act(request, run, f"/apps/{name}{env_query(env)}")

    @router.post("/apps/{name}/rollback")
    async def rollback(request: Request, name: str, env: str | None = None) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            revision = form.get("revision", "")
            await deploys.rollback(session, ctx=web.core_of(request), actor=actor, app_name=name, env=env,
                                   revision=int(revision) if revision.isdigit() else None)  # fmt: skip

        return await act(request, run, f"/apps/{name}{env_query(env)}")

    @router.post("/apps/{name}/lock")
    @router.post("/apps/{name}/unlock")
    @router.post("/apps/{name}/pause")
    @router.post("/apps/{name}/resume")
    async def lock(request: Request, name: str, env: str | None = None) -> Response:
        verb = request.url.path.rsplit("/", 1)[-1]
        flag, on = {"lock": ("lock", True), "unlock": ("lock", False), "pause": ("pause", True),
                    "resume": ("pause", False)}[verb]  # fmt: skip

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await apps.set_flag(session, actor=actor, name=name, flag=flag, on=on, env=env,
                                reason=form.get("reason") or None)  # fmt: skip

        return await act(request, run, f"/apps/{name}{env_query(env)}")

    @router.post("/apps/{name}/scale")
    async def scale(request: Request, name: str, env: str | None = None) -> Response:
        def number(form: dict[str, str], key: str) -> int | None:
            text = form.get(key, "").strip()
            if not text:
                return None
            if not text.isdigit():
                raise InvalidInput(f"{key} must be a whole number, got {text!r}", field=key)
            return int(text)

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await autoscaling.scale(
                session, ctx=web.core_of(request), actor=actor, app_name=name,
                replicas=number(form, "replicas"), min_replicas=number(form, "min_replicas"),
                max_replicas=number(form, "max_replicas"), cpu_target=number(form, "cpu_target"),
                autoscaling_off=form.get("autoscaling") == "off", env=env,
            )  # fmt: skip

        return await act(request, run, f"/apps/{name}{env_query(env)}")

    @router.post("/apps/{name}/secrets")
    async def set_secret(request: Request, name: str, env: str | None = None) -> Response:
        """Write-only: the value goes to core encrypted and is never shown back (nor logged, nor audited)."""

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            core = web.core_of(request)
            key = form.get("key", "").strip()
            await deploys.set_secrets(session, ctx=core, actor=actor, app_name=name, env=env,
                                      values={key: form.get("value", "")})  # fmt: skip

        return await act(request, run, f"/apps/{name}{env_query(env)}")

    @router.post("/apps/{name}/secrets/{key}/delete")
    async def delete_secret(request: Request, name: str, key: str, env: str | None = None) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            core = web.core_of(request)
            await deploys.unset_secrets(session, ctx=core, actor=actor, app_name=name, keys=[key], env=env)

        return await act(request, run, f"/apps/{name}{env_query(env)}")

    @router.post("/deploys/{deployment_id}/approve")
    @router.post("/deploys/{deployment_id}/reject")
    async def approve(request: Request, deployment_id: int) -> Response:
        yes = request.url.path.endswith("/approve")

        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> str:
            d = await deploys.approve(session, ctx=web.core_of(request), actor=actor,
                                      deployment_id=deployment_id, approve=yes)  # fmt: skip
            app = await session.get(models.App, d.app_id)
            if app is None:
                return "/"
            several = len(await environments_of(session, name=app.name)) > 1
            return f"/apps/{app.name}{env_query(await apps.env_name(session, app=app)) if several else ''}"

        return await act(request, run, "/")

    @router.get("/audit")
    async def audit_page(request: Request, action: str | None = None, target: str | None = None,
                         actor_filter: str | None = None) -> Response:  # fmt: skip
        async with tx(web.core_of(request)) as session:
            row, actor = await signed_in(request, session)
            visible = await identity.visible_project_ids(session, actor=actor)
            events = await audit.query(session, project_ids=visible, target=target or None,
                                       action=action or None, actor=actor_filter or None,
                                       limit=200)  # fmt: skip
            return render(request, "audit.html", row=row, title="Audit log", events=events,
                          action=action or "", target=target or "", actor_filter=actor_filter or "")  # fmt: skip

    @router.get("/clusters")
    async def clusters_page(request: Request) -> Response:
        """Every cluster and which projects may use it: for global admins only (SHIPIT_WEB_ADMINS)."""
        async with tx(web.core_of(request)) as session:
            row, actor = await signed_in(request, session)
            if not actor.is_admin:
                # Like any page that does not exist: nobody learns that it does.
                return render(request, "error.html", status_code=404, row=row, title="Not found",
                              message="There is no such page.", back=None)  # fmt: skip
            found = await clusters.list_all(session)
            by_cluster: dict[str, list[claims.ProjectGrant]] = {}
            for g in await claims.grants(session):
                by_cluster.setdefault(g.cluster, []).append(g)
            return render(request, "clusters.html", row=row, title="Clusters", clusters=found,
                          grants=by_cluster)  # fmt: skip

    @router.get("/tokens")
    async def tokens_page(request: Request) -> Response:
        async with tx(web.core_of(request)) as session:
            row, actor = await signed_in(request, session)
            mine = await tokens.list_tokens(session, actor=actor)
            return render(request, "tokens.html", row=row, title="API tokens", tokens=mine, created=None)

    @router.post("/tokens")
    async def create_token(request: Request) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> Response:
            _, plaintext = await tokens.create(session, actor=actor, name=form.get("name", ""))
            mine = await tokens.list_tokens(session, actor=actor)
            # Shown once, on this answer only (no-store), never again.
            me, _ = await signed_in(request, session)
            return render(request, "tokens.html", status_code=201, row=me, title="API tokens", tokens=mine,
                          created=plaintext)  # fmt: skip

        return await act(request, run, "/tokens")

    @router.post("/tokens/{token_id}/revoke")
    async def revoke_token(request: Request, token_id: int) -> Response:
        async def run(session: AsyncSession, actor: Actor, form: dict[str, str]) -> None:
            await tokens.revoke(session, actor=actor, token_id=token_id)

        return await act(request, run, "/tokens")


__all__ = ["Config", "GitHub", "Oidc", "Web", "install"]
