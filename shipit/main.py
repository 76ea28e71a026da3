"""Everything wired together: the app factory plus the Slack and GitHub channels when configured."""

from __future__ import annotations

from fastapi import FastAPI

from shipit.app import create_app as create_base_app
from shipit.runtime import Runtime
from shipit.settings import Settings


def create_app(settings: Settings | None = None, *, rt: Runtime | None = None) -> FastAPI:
    app = create_base_app(settings, rt=rt)
    # Channels plug in here (bot.install / webhooks.install), each switched off when unconfigured.
    return app
