"""What every HTTP-posting notifier shares: pacing per target, one mapping of answers to retries,
and error messages that name the target by id, never by its URL (Teams and Discord URLs are secrets).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Hashable
from typing import Any

import httpx

from core import metrics, tls
from core.context import Core
from core.errors import PermanentError, TransientError, retry_after_seconds
from core.notices import OUTCOMES, Audience, Delivered, Notice, TargetView
from storage import models

PURPOSE = "project-webhook-secret"  # the same as projects.webhook_secret_enc: migrated rows keep theirs


def where(target: TargetView) -> str:
    return f"{target.kind} target #{target.id}"


class Pacer:
    """Per-target token bucket (in this process): `rate` posts a second, bursts of `burst`.

    A post that would wait longer than `max_wait` goes back to the queue (TransientError with
    retry_after) instead of holding a worker slot.
    """

    def __init__(self, *, rate: float = 1.0, burst: int = 5, max_wait: float = 3.0) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self.max_wait = max_wait
        self._next: dict[Hashable, float] = {}

    async def wait(self, key: Hashable) -> None:
        now = time.monotonic()
        slot = max(self._next.get(key, 0.0), now - (self.burst - 1) * self.interval)
        delay = slot - now
        if delay > self.max_wait:
            raise TransientError(f"pacing notices to {key}", retry_after=delay)
        self._next[key] = slot + self.interval
        if delay > 0:
            await asyncio.sleep(delay)

    def backoff(self, key: Hashable, seconds: float) -> None:
        self._next[key] = max(self._next.get(key, 0.0), time.monotonic() + seconds)


async def post(
    client: httpx.AsyncClient,
    *,
    target: TargetView,
    content: bytes,
    headers: dict[str, str],
    pacer: Pacer | None = None,
) -> httpx.Response:
    """POST to the target's address; 429/5xx/unreachable -> TransientError, other 4xx -> PermanentError."""
    what = where(target)
    if pacer is not None:
        await pacer.wait(f"target #{target.id}")
    try:
        response = await client.post(target.address, content=content, headers=headers)
    except httpx.HTTPError as e:
        metrics.NOTIFICATIONS_BY.labels(target.kind, "retry").inc()
        raise TransientError(f"{what}: {type(e).__name__}") from None
    if response.status_code == 429 or response.status_code >= 500:
        metrics.NOTIFICATIONS_BY.labels(target.kind, "retry").inc()
        wait = retry_after_seconds(response.headers, default=None)
        if pacer is not None and wait:
            pacer.backoff(f"target #{target.id}", wait)
        raise TransientError(f"{what} answered {response.status_code}", retry_after=wait)
    if response.status_code >= 400:
        metrics.NOTIFICATIONS_BY.labels(target.kind, "failed").inc()
        raise PermanentError(f"{what} answered {response.status_code}")
    metrics.NOTIFICATIONS_BY.labels(target.kind, "ok").inc()
    return response


async def secret(ctx: Core, *, target: TargetView) -> str | None:
    """The target's secret, decrypted at delivery time (so key rotation is picked up)."""
    if not target.has_secret:
        return None
    async with ctx.sessionmaker() as session:
        row = await session.get(models.NotificationTarget, target.id)
        if row is None or row.secret_enc is None:
            return None
        return ctx.cipher.decrypt_text(row.secret_enc, purpose=PURPOSE)


def client(timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=tls.client_context())


def link(ctx: Core, *, app: str | None) -> str:
    """The dashboard's page of the app (or its front page)."""
    base = ctx.config.public_url.rstrip("/")
    return f"{base}/apps/{app}" if app else base


class ChatWebhook:
    """A chat's incoming webhook (Teams, Discord): one JSON message per deploy outcome, built by `body`."""

    name: str
    body: Callable[[Notice, str], dict[str, Any]]

    def __init__(self, *, ctx: Core) -> None:
        self.ctx = ctx
        self.client = client()
        self.pacer = Pacer()

    def wants(self, kind: str) -> bool:
        return kind in OUTCOMES

    def wants_event(self, audience: Audience) -> bool:
        # A preview reports on its pull request; a chat or inbox hears about real environments.
        return audience.target is not None and not audience.preview

    async def close(self) -> None:
        await self.client.aclose()

    async def deliver(self, notice: Notice) -> Delivered | None:
        if notice.target is None:
            return None
        message = type(self).body(notice, link(self.ctx, app=notice.app.name if notice.app else None))
        await post(
            self.client,
            target=notice.target,
            content=json.dumps(message).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "shipit-notify/1"},
            pacer=self.pacer,
        )
        return None
