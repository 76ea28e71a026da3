"""Signed outgoing webhooks: each webhook target receives every event it wants as JSON.

The body is signed like GitHub signs its webhooks (X-Shipit-Signature-256:
sha256=HMAC-SHA256(secret, body)) so receivers can verify it with code they already have (the
README shows it).  With format "cloudevents" the body is a CloudEvents 1.0 event in structured mode
(Content-Type application/cloudevents+json; specversion, id, source, type, time, datacontenttype,
data), signed the same way.  429 and 5xx are retried by the job queue, honouring Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from core.context import Core
from core.notices import Audience, Delivered, Notice, delivery

NAME = "webhook"
CLOUDEVENTS = "cloudevents"


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
        "environment": notice.environment,
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


def cloudevent(notice: Notice, *, source: str) -> dict[str, Any]:
    """CloudEvents 1.0, structured mode: the attributes, and our usual body as `data`."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(notice.event_id),
        "source": source,
        "type": f"dev.shipit.{notice.kind}",
        "time": notice.created_at.isoformat(),
        "datacontenttype": "application/json",
        "data": payload(notice),
    }
    if notice.app is not None:
        event["subject"] = notice.app.name
    return event


class WebhookNotifier:
    name = NAME

    def __init__(self, *, ctx: Core) -> None:
        self.ctx = ctx
        self.client = delivery.client()
        self.pacer = delivery.Pacer(rate=5.0, burst=20)

    def wants(self, kind: str) -> bool:
        return True

    def wants_event(self, audience: Audience) -> bool:
        return audience.target is not None

    async def close(self) -> None:
        await self.client.aclose()

    async def deliver(self, notice: Notice) -> Delivered | None:
        target = notice.target
        if target is None:
            return None
        headers = {
            "User-Agent": "shipit-webhook/1",
            "X-Shipit-Event": notice.kind,
            "X-Shipit-Delivery": str(notice.event_id),
        }
        if target.format == CLOUDEVENTS:
            project = notice.project.name if notice.project else "-"
            source = f"{self.ctx.config.public_url.rstrip('/')}/projects/{project}"
            data: dict[str, Any] = cloudevent(notice, source=source)
            headers["Content-Type"] = "application/cloudevents+json; charset=utf-8"
        else:
            data = payload(notice)
            headers["Content-Type"] = "application/json"
        body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        secret = await delivery.secret(self.ctx, target=target)
        if secret:
            headers["X-Shipit-Signature-256"] = signature(secret=secret, body=body)
        await delivery.post(self.client, target=target, content=body, headers=headers, pacer=self.pacer)
        return None
