"""The dashboard's sign-in: start at a provider (OIDC or GitHub OAuth), come back, sign out.

The pending sign-in travels in a signed, short-lived cookie; the session is a row (core.web_sessions)
and its cookie carries only a signed token."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from core import web_sessions
from core.errors import NotFound
from storage import models
from web import channel
from web.auth import Person, SignInRefused

log = logging.getLogger("shipit.web")


def add_routes(router: APIRouter, web: channel.Web) -> None:
    def callback_url(provider: str) -> str:
        return f"{web.config.public_url.rstrip('/')}/auth/{provider}/callback"

    @router.get("/signin")
    async def signin_page(request: Request, next: str | None = None) -> Response:
        return channel.render(request, "signin.html", next=channel.safe_next(next), title="Sign in")

    @router.get("/auth/{provider}/start")
    async def start(request: Request, provider: str, next: str | None = None) -> Response:
        p = web.config.providers.get(provider)
        if p is None:
            raise NotFound(f"no sign-in provider {provider!r}")
        try:
            started = await p.start(redirect_uri=callback_url(provider))
        except SignInRefused as e:
            return channel.render(
                request, "error.html", status_code=502, title="Sign-in failed", message=str(e)
            )
        payload = base64.urlsafe_b64encode(
            json.dumps(
                {
                    "p": provider,
                    "s": started.state,
                    "n": started.nonce,
                    "v": started.code_verifier,
                    "next": channel.safe_next(next),
                    "exp": int(time.time()) + channel.SIGNIN_SECONDS,
                }
            ).encode()
        ).decode()
        resp = RedirectResponse(started.url, status_code=303)
        resp.set_cookie(
            channel.SIGNIN_COOKIE,
            f"{payload}.{channel.sign(web.core_of(request), 'web-signin', payload)}",
            max_age=channel.SIGNIN_SECONDS,
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
            resp = channel.render(
                request, "error.html", status_code=400, title="Sign-in refused", message=message, again=True
            )
            resp.delete_cookie(channel.SIGNIN_COOKIE, path="/auth/")
            return resp

        p = web.config.providers.get(provider)
        raw = channel.unsign(core, "web-signin", request.cookies.get(channel.SIGNIN_COOKIE))
        if p is None or raw is None:
            return refused("This sign-in was not started here, or it took too long. Start again.")
        pending = json.loads(base64.urlsafe_b64decode(raw))
        if pending["p"] != provider or pending["exp"] < time.time():
            return refused("This sign-in was not started here, or it took too long. Start again.")
        if error:
            return refused(f"The sign-in provider said: {error[:200]}")
        if not code or not state or not hmac.compare_digest(state, pending["s"]):
            return refused("The sign-in answer does not match the sign-in we started (state). Start again.")
        try:
            person: Person = await p.finish(
                code=code, redirect_uri=callback_url(provider), code_verifier=pending["v"], nonce=pending["n"]
            )
        except SignInRefused as e:
            log.warning("web: sign-in with %s refused: %s", provider, e)
            return refused(str(e))
        async with channel.tx(core) as session:
            _, token = await web_sessions.create(
                session,
                subject=person.subject,
                display=person.display,
                provider=person.provider,
                lifetime=web.config.session_lifetime,
            )
        log.info("web: %s signed in with %s", person.subject, provider)
        resp = channel.go_to(channel.safe_next(pending.get("next")))
        resp.delete_cookie(channel.SIGNIN_COOKIE, path="/auth/")
        resp.set_cookie(
            web.cookie_name,
            f"{token}.{channel.sign(core, 'web-session', token)}",
            max_age=int(web.config.session_lifetime.total_seconds()),
            httponly=True,
            secure=web.config.cookie_secure,
            samesite="lax",
            path="/",
        )
        return resp

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        async with channel.tx(web.core_of(request)) as session:
            me, _ = await channel.signed_in(request, session)
            await channel.form_of(request, me)
            live = await session.get(models.WebSession, me.session_id)
            assert live is not None
            await web_sessions.revoke(session, row=live)
        resp = channel.go_to("/signin")
        resp.delete_cookie(web.cookie_name, path="/", secure=web.config.cookie_secure, httponly=True)
        return resp
