"""Signed outgoing webhooks: each project can name a URL that receives every event as JSON.

The body is signed like GitHub signs its webhooks (X-Shipit-Signature-256:
sha256=HMAC-SHA256(secret, body)) so receivers can verify it with code they
already have.  429 and 5xx are retried by the job queue, honouring Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from core import metrics
from core.errors import PermanentError, TransientError, retry_after_seconds
from core.events import Audience, Delivered, Notice

log = logging.getLogger(__name__)


def signature(*, secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(notice: Notice) -> dict[str, Any]:
    d = notice.deployment
    return {
        "id": notice.event_id,
        "event": notice.kind,
        "at": notice.created_at.isoformat(),
        "project": notice.project.name if notice.project else None,
        "app": notice.app.name if notice.app else None,
        "deployment": {
            "id": d.id,
            "status": d.status,
            "trigger": d.trigger,
            "actor": d.actor,
            "image": d.image,
            "revision": d.revision,
            "namespace": d.namespace,
            "error": d.error,
            "ready": d.ready,
            "desired": d.desired,
            "git_sha": d.git_sha,
            "outcome": d.outcome,
            "rolled_back_by": d.rolled_back_by,
            "rolled_back_to": d.rolled_back_to,
        }
        if d
        else None,
        "preview": {
            "pr": notice.preview.pr_number,
            "url": notice.preview.url,
            "status": notice.preview.status,
        }
        if notice.preview
        else None,
        "details": notice.payload,
    }


class WebhookNotifier:
    name = "webhook"

    def __init__(self, *, secret_for: Any, timeout: float = 10.0) -> None:
        # secret_for(project_id) -> str | None, resolved at delivery so rotation is picked up
        self._secret_for = secret_for
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    def wants(self, kind: str) -> bool:
        return True

    def wants_event(self, audience: Audience) -> bool:
        return audience.project is not None and bool(audience.project.webhook_url)

    async def close(self) -> None:
        await self._client.aclose()

    async def deliver(self, notice: Notice) -> Delivered | None:
        if notice.project is None or not notice.project.webhook_url:
            return None
        body = json.dumps(payload(notice), separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "shipit-webhook/1",
            "X-Shipit-Event": notice.kind,
            "X-Shipit-Delivery": str(notice.event_id),
        }
        secret = await self._secret_for(notice.project.id)
        if secret:
            headers["X-Shipit-Signature-256"] = signature(secret=secret, body=body)
        url = notice.project.webhook_url
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as e:
            metrics.NOTIFICATIONS.labels(notifier=self.name, outcome="retry").inc()
            raise TransientError(f"webhook to project {notice.project.name}: {type(e).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            metrics.NOTIFICATIONS.labels(notifier=self.name, outcome="retry").inc()
            retry_after = retry_after_seconds(response.headers, default=None)
            raise TransientError(
                f"webhook to project {notice.project.name} answered {response.status_code}",
                retry_after=retry_after,
            )
        if response.status_code >= 400:
            metrics.NOTIFICATIONS.labels(notifier=self.name, outcome="failed").inc()
            raise PermanentError(f"webhook to project {notice.project.name} answered {response.status_code}")
        metrics.NOTIFICATIONS.labels(notifier=self.name, outcome="ok").inc()
        return None
