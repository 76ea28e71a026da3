"""Discord: a channel webhook gets one embed per deploy outcome: {"embeds": [{title, color, fields}]}.

A 429 carries Retry-After (seconds), honoured by the job queue.  The webhook URL is the secret: never
logged or shown whole.
"""

from __future__ import annotations

import json
from typing import Any

from core.context import Core
from core.notices import OUTCOMES, Audience, Delivered, Notice, delivery, render

NAME = "discord"


def embed_body(notice: Notice, *, link: str) -> dict[str, Any]:
    s = render.summary(notice)
    description = s.error or ""
    if s.logs:
        description += "\n```\n" + "\n".join(s.logs[-10:])[-1500:] + "\n```"
    embed: dict[str, Any] = {
        "title": s.title[:256],
        "url": link,
        "color": s.color,
        "fields": [{"name": k, "value": v[:1024] or "-", "inline": True} for k, v in s.facts][:25],
        "timestamp": notice.created_at.isoformat(),
        "footer": {"text": "shipit"},
    }
    if description:
        embed["description"] = description[:4096]
    return {"username": "shipit", "embeds": [embed], "allowed_mentions": {"parse": []}}


class DiscordNotifier:
    name = NAME

    def __init__(self, *, ctx: Core) -> None:
        self.ctx = ctx
        self.client = delivery.client()
        self.pacer = delivery.Pacer()

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
        link = delivery.link(self.ctx, app=notice.app.name if notice.app else None)
        body = json.dumps(embed_body(notice, link=link)).encode()
        await delivery.post(
            self.client,
            target=notice.target,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": "shipit-notify/1"},
            pacer=self.pacer,
        )
        return None
