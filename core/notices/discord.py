"""Discord: a channel webhook gets one embed per deploy outcome: {"embeds": [{title, color, fields}]}.

A 429 carries Retry-After (seconds), honoured by the job queue.  The webhook URL is the secret: never
logged or shown whole.
"""

from __future__ import annotations

from typing import Any

from core.notices import Notice, delivery, render

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


class DiscordNotifier(delivery.ChatWebhook):
    name = NAME

    @staticmethod
    def body(notice: Notice, link: str) -> dict[str, Any]:
        return embed_body(notice, link=link)
