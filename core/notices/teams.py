"""Microsoft Teams: an incoming webhook (a Workflows or connector URL) gets an Adaptive Card.

The body is the envelope Teams documents for incoming webhooks:
{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
"content": {"type": "AdaptiveCard", "version": "1.4", ...}}]}.  The URL is the secret: it is never
logged or shown whole (errors say "teams target #7").
"""

from __future__ import annotations

from typing import Any

from core.notices import Notice, delivery, render

NAME = "teams"


def card(notice: Notice, *, link: str) -> dict[str, Any]:
    s = render.summary(notice)
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": s.title,
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            "color": {"succeeded": "Good", "failed": "Attention"}.get(s.status, "Default"),
        },
        {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in s.facts]},
    ]
    if s.error:
        body.append({"type": "TextBlock", "text": s.error, "wrap": True, "color": "Attention"})
    if s.logs:
        body.append(
            {"type": "TextBlock", "text": "\n".join(s.logs[-10:]), "wrap": True, "fontType": "Monospace"}
        )
    content = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "actions": [{"type": "Action.OpenUrl", "title": "Open in shipit", "url": link}],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": content}
        ],
    }


class TeamsNotifier(delivery.ChatWebhook):
    name = NAME

    @staticmethod
    def body(notice: Notice, link: str) -> dict[str, Any]:
        return card(notice, link=link)
