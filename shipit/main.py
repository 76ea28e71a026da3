"""Everything wired together: the app factory plus the Slack and GitHub channels when configured."""

from __future__ import annotations

import asyncio
import datetime as dt

from fastapi import FastAPI, Request
from pydantic import SecretStr

from bot import channel as slack_channel
from core import previews
from core.context import Core
from shipit import routefast
from shipit.app import create_app as create_base_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from web import auth as web_auth
from web import channel as web_channel
from webhooks import channel as github_channel
from webhooks import registry as registry_webhook


def create_app(settings: Settings | None = None, *, rt: Runtime | None = None) -> FastAPI:
    settings = settings or (rt.settings if rt else Settings())
    app = create_base_app(settings, rt=rt)
    # Channels plug in here (bot.install / webhooks.install), each switched off when unconfigured.
    _install_github(app, settings=settings, rt=rt)
    token = settings.registry_webhook_token
    app.include_router(
        registry_webhook.router(token=token.get_secret_value() if token else None, core_of=_core_of)
    )
    _install_slack(app, rt=rt)
    _install_web(app, settings=settings)
    routefast.install(app)  # issue 13: requests skip routers whose paths cannot match
    return app


# ---------------------------------------------------------------- the dashboard (issue 11)


def _install_web(app: FastAPI, *, settings: Settings) -> None:
    """/, the sign-in routes and the pages; off (503) unless OIDC or GitHub OAuth is configured."""
    providers: dict[str, web_auth.Provider] = {}
    if settings.oidc_issuer and settings.oidc_client_id:
        providers["oidc"] = web_auth.Oidc(
            issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value()
            if settings.oidc_client_secret
            else None,
            scopes=settings.oidc_scopes,
        )
    if settings.github_oauth_client_id and settings.github_oauth_client_secret:
        providers["github"] = web_auth.GitHub(
            client_id=settings.github_oauth_client_id,
            client_secret=settings.github_oauth_client_secret.get_secret_value(),
            oauth_url=settings.github_oauth_url or web_auth.github_oauth_url(settings.github_api_url),
            api_url=settings.github_api_url,
        )
    web_channel.install(
        app,
        config=web_channel.Config(
            providers=providers,
            public_url=settings.url,
            cookie_secure=settings.web_cookie_secure,
            session_lifetime=dt.timedelta(hours=settings.web_session_hours),
            admins=settings.web_admin_subjects,
        ),
        core_of=_core_of,
    )


# ---------------------------------------------------------------- the GitHub channel (issue 5)

GITHUB_REAP_EVERY_SECONDS = 300.0


def _core_of(request: Request) -> Core:
    the_rt: Runtime = request.app.state.runtime
    return the_rt.core


def _install_github(app: FastAPI, *, settings: Settings, rt: Runtime | None) -> None:
    """POST /github/webhook, the GitHub notifier, the preview teardown jobs and the idle-preview reaper."""

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    channel = github_channel.install(
        app,
        config=github_channel.Config(
            webhook_secret=secret(settings.github_webhook_secret),
            token=secret(settings.github_token),
            app_id=settings.github_app_id,
            private_key=secret(settings.github_private_key),
            api_url=settings.github_api_url,
            seconds_between_requests=None,
            seconds_between_writes=settings.github_write_interval_seconds or None,
        ),
        core_of=_core_of,
    )
    if channel is None:
        return

    def wire(the_rt: Runtime) -> None:
        if channel.notifier is not None:
            # PR comments are serialised through the database, so replicas never write two.
            channel.notifier.sessionmaker = the_rt.core.sessionmaker
            the_rt.core.notifiers[channel.notifier.name] = channel.notifier
        the_rt.extra_handlers.update(channel.handlers)
        the_rt.closers.append(channel.close)

    # A caller-owned runtime (tests, benchmarks) may start its worker before the app's lifespan runs,
    # so its handlers and notifiers are wired now; a runtime the app builds itself, at startup.
    if rt is not None:
        wire(rt)

    async def start(_: FastAPI, the_rt: Runtime) -> None:
        if rt is None:
            wire(the_rt)
        if the_rt.settings.run_worker:
            reaper = previews.reap_forever(ctx=the_rt.core, every=GITHUB_REAP_EVERY_SECONDS)
            the_rt.background.append(asyncio.create_task(reaper, name="shipit-preview-reaper"))

    app.state.channels.append(start)


# ---------------------------------------------------------------- the Slack channel (issue 4)


def _install_slack(app: FastAPI, *, rt: Runtime | None) -> None:
    """POST /slack/events (+ the OAuth install routes), the deploy-card notifier, Socket Mode if asked.

    The routes exist from the start and find the channel on app.state.slack; the channel (the bolt
    app, built once) needs the core, so it is built as soon as a runtime exists.
    """
    app.include_router(slack_channel.routes(lambda request: getattr(request.app.state, "slack", None)))

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    def wire(the_rt: Runtime) -> slack_channel.SlackChannel:
        s = the_rt.settings
        channel = slack_channel.build(
            core=the_rt.core,
            signing_secret=secret(s.slack_signing_secret),
            bot_token=secret(s.slack_bot_token),
            api_url=s.slack_api_url,
            app_token=secret(s.slack_app_token),
            client_id=s.slack_client_id,
            client_secret=secret(s.slack_client_secret),
            public_url=s.url,
        )
        if channel.notifier is not None:
            the_rt.core.notifiers[channel.notifier.name] = channel.notifier
        the_rt.closers.append(channel.close)
        app.state.slack = channel
        return channel

    # As for GitHub: a caller-owned runtime may run its worker before the lifespan, so wire it now.
    early = wire(rt) if rt is not None else None

    async def start(_: FastAPI, the_rt: Runtime) -> None:
        await (early or wire(the_rt)).start()

    app.state.channels.append(start)
