"""The dashboard: its configuration, the signed-in session, rendering, and `install`.

A thin channel: each page or form finds the signed-in person, opens ONE transaction, calls core
services as `Actor(subject, channel="web")` and renders the result.  Core's refusals (a viewer
deploying, someone approving their own deploy) come back as a page that says why, with core's status.
The routes live by concern in web/signin.py, web/pages.py (with the live rollout stream),
web/actions.py (the forms) and web/link_pages.py; `install` adds them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncSession

from core import deploys, web_sessions
from core.context import Core
from core.errors import UserError
from core.identity import Actor
from storage import models
from web.auth import GitHub, Oidc, Provider

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
USAGE_READ_SECONDS = 10.0
USAGE_PODS_SHOWN = 20  # rows of the per-pod table; the total covers every pod
RUNS_READ_SECONDS = 10.0
RUNS_SHOWN = 10  # the app page's newest one-off runs; `shipit runs list` has them all
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


def sign(core: Core, purpose: str, value: str) -> str:
    return core.cipher.digest(f"{purpose}:{value}".encode())[:43]


def unsign(core: Core, purpose: str, signed: str | None) -> str | None:
    if not signed or "." not in signed:
        return None
    value, _, sig = signed.rpartition(".")
    return value if hmac.compare_digest(sig, sign(core, purpose, value)) else None


@contextlib.asynccontextmanager
async def tx(core: Core) -> AsyncIterator[AsyncSession]:
    async with core.sessionmaker.begin() as session:
        yield session


def safe_next(path: str | None) -> str:
    # Only our own paths: never //evil.example or https://evil.example.
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


async def _session_row(request: Request, session: AsyncSession) -> models.WebSession | None:
    web = _web(request)
    token = unsign(web.core_of(request), "web-session", request.cookies.get(web.cookie_name))
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


def go_to(path: str) -> RedirectResponse:
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
    # They render with this module's helpers, hence imported here.
    from web import actions, link_pages, pages, signin

    for routes in (signin, pages, actions, link_pages):
        routes.add_routes(router, web)
    app.include_router(router)

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if request.method != "GET":
            return render(request, "error.html", status_code=401, title="Signed out",
                          message="Your session has ended. Sign in again.")  # fmt: skip
        return go_to(f"/signin?next={quote(exc.next_path, safe='')}")

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return render(request, "error.html", status_code=403, title="Refused",
                      message="This form is missing its security token, or it is stale. "
                      "Go back, reload the page and try again.")  # fmt: skip

    log.info("web: dashboard on, sign-in with %s", ", ".join(config.providers))
    return web


async def refused(request: Request, row: Me, exc: UserError, *, back: str | None = None) -> Response:
    """A page saying why core refused: its message as written, with its status (403, 404, 409...)."""
    # Core's message, as written, with core's status (403 role, 404 unknown, 409 locked...).
    return render(request, "error.html", status_code=exc.status_code, row=row, title="Not done",
                  message=str(exc), back=back)  # fmt: skip


__all__ = ["Config", "GitHub", "Oidc", "Web", "install"]
