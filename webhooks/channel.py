"""Installing the GitHub channel: the route always (503 with a reason when off), the notifier when
configured.  The preview job handlers are not here: every replica registers every job kind
(shipit.runtime.job_handlers), GitHub settings or not.  The composition root (shipit) passes plain settings in and wires
what comes back into its runtime, so this package never imports shipit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request

from core.context import Core
from core.worker import Handler
from webhooks import comments, link_comment, route
from webhooks.client import Credentials, GitHubClient
from webhooks.ingest import Ingest
from webhooks.notifier import GitHubNotifier

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Config:
    webhook_secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    app_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    api_url: str = "https://api.github.com"
    seconds_between_requests: float | None = 0.25
    seconds_between_writes: float | None = 1.0


@dataclass(kw_only=True)
class Channel:
    notifier: GitHubNotifier | None
    handlers: dict[str, Handler]
    ingest: Ingest

    async def close(self) -> None:
        await self.ingest.close()
        if self.notifier is not None:
            await self.notifier.close()


def _pem(key: str | None) -> str | None:
    # A PEM pasted into one environment variable line often arrives with literal "\n".
    if key and "\n" not in key and "\\n" in key:
        return key.replace("\\n", "\n")
    return key


def install(app: FastAPI, *, config: Config, core_of: Callable[[Request], Core]) -> Channel | None:
    """Add POST /github/webhook to `app`; None when the channel is off (no webhook secret)."""
    if not config.webhook_secret:
        reason = "SHIPIT_GITHUB_WEBHOOK_SECRET is not set"
        app.include_router(route.router(secret=None, off_reason=reason, core_of=core_of))
        log.info("github: switched off (%s)", reason)
        return None
    if config.app_id and not config.app_id.strip().isdigit():
        raise ValueError(f"SHIPIT_GITHUB_APP_ID must be the App's numeric id, got {config.app_id!r}")
    ingest = Ingest()
    app.include_router(
        route.router(secret=config.webhook_secret, off_reason="", core_of=core_of, ingest=ingest)
    )
    credentials = Credentials(
        api_url=config.api_url,
        token=config.token,
        app_id=config.app_id.strip() if config.app_id else None,
        private_key=_pem(config.private_key),
        seconds_between_requests=config.seconds_between_requests,
        seconds_between_writes=config.seconds_between_writes,
    )
    notifier = None
    handlers: dict[str, Handler] = {}
    if credentials.mode is None:
        log.warning(
            "github: webhooks on at %s, reporting to GitHub off (set SHIPIT_GITHUB_TOKEN, or "
            "SHIPIT_GITHUB_APP_ID and SHIPIT_GITHUB_PRIVATE_KEY)",
            route.PATH,
        )
    else:
        notifier = GitHubNotifier(client=GitHubClient(credentials=credentials))
        handlers[link_comment.REPLY_JOB] = link_comment.reply_handler(notifier.client)
        log.info(
            "github: on at %s, reporting to %s as %s",
            route.PATH,
            credentials.api_url,
            f"GitHub App {credentials.app_id}" if credentials.mode == "app" else "a token",
        )
    if notifier is not None:
        # Comment commands answer through the notifier's client: without GitHub credentials they wait.
        handlers.update(comments.handlers(notifier))
    return Channel(notifier=notifier, handlers=handlers, ingest=ingest)
