"""The building blocks of every Slack message: `Message`, escaping, sections, buttons and their values,
channel references, and the plain replies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

Block = dict[str, Any]

ACTION_APPROVE = "shipit.approve"
ACTION_REJECT = "shipit.reject"
ACTION_CANCEL = "shipit.cancel"
ACTION_ROLLBACK = "shipit.rollback"
ACTION_PROMOTE = "shipit.promote"
ACTIONS = (ACTION_APPROVE, ACTION_REJECT, ACTION_CANCEL, ACTION_ROLLBACK, ACTION_PROMOTE)

MAX_TEXT = 2900  # Slack's section text limit is 3000 characters


@dataclass(frozen=True, kw_only=True)
class Message:
    text: str  # fallback for notifications and screen readers
    blocks: list[Block]


def esc(text: str) -> str:
    """Escape for mrkdwn: &, < and > are the only control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def env_flag(environment: str | None) -> str:
    """` --env NAME` in a command an answer suggests: without it an app in several environments is refused."""
    return f" --env {esc(environment)}" if environment else ""


def who(subject: str | None) -> str:
    """A subject as people read it: Slack users are mentioned, others named."""
    if not subject:
        return "someone"
    kind, _, name = subject.partition(":")
    if kind == "slack" and name:
        return f"<@{name}>"
    if kind == "github" and name:
        return f"{esc(name)} (GitHub)"
    if kind in ("user", "system") and name:
        return esc(name)
    return esc(subject)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def section_block(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text)}}


def context_block(*parts: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(p)} for p in parts if p]}


def button_block(
    text: str, *, action_id: str, value: str, style: str | None = None, confirm: Block | None = None
) -> Block:
    button: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": text, "emoji": True},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def button_value(*, deployment_id: int, app: str) -> str:
    return json.dumps({"deployment": deployment_id, "app": app}, separators=(",", ":"))


def parse_button_value(value: str) -> tuple[int, str]:
    """(deployment id, app name) from a button we rendered; ValueError if it is not one of ours."""
    data = json.loads(value)
    return int(data["deployment"]), str(data["app"])


def split_channel(channel: str) -> tuple[str | None, str]:
    """A project's channel setting: "C123", "#deploys", or "T123/C123" for a workspace installed by OAuth."""
    team, sep, rest = channel.partition("/")
    return (team, rest) if sep and team.startswith(("T", "E")) else (None, channel)


def channel_ref(channel: str) -> str:
    _, name = split_channel(channel)
    if name[:1] in ("C", "G") and name.isalnum() and name.isupper():
        return f"<#{name}>"
    return esc("#" + name.lstrip("#"))


def reply(text: str) -> Message:
    return Message(text=text, blocks=[section_block(text)])


def error(text: str) -> Message:
    return reply(f":warning: {esc(text)}")


def help_message(raw: str) -> Message:
    """Help text as written in bot.commands: `<app>` placeholders must not become Slack links."""
    return long_message(esc(raw))


def long_message(mrkdwn: str) -> Message:
    return Message(text=mrkdwn, blocks=[section_block(chunk) for chunk in chunks(mrkdwn)])


def chunks(text: str, limit: int = MAX_TEXT) -> list[str]:
    out: list[str] = []
    current = ""
    for line in text.split("\n"):
        if current and len(current) + len(line) + 1 > limit:
            out.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        out.append(current)
    return out
