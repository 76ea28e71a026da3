"""`help`: the list of commands, or one in detail, read from the registry (so it never goes stale)."""

from __future__ import annotations

from bot.commands.registry import BY_NAME, Help, command, unknown_command, words_of


@command(
    "help",
    usage="help [command]",
    summary="this list, or one command in detail",
    examples=("help", "help scale"),
)
def _parse_help(rest: str) -> Help:
    words = words_of(rest)
    topic = words[0].lower() if words else None
    if topic is not None and topic not in BY_NAME:
        raise unknown_command(topic)
    return Help(topic=topic)


def help_text(topic: str | None = None) -> str:
    if topic is not None:
        spec = BY_NAME[topic]
        examples = "\n".join(f"• `/shipit {e}`" for e in spec.examples)
        return f"*`/shipit {spec.usage}`*\n{spec.summary}\nExamples:\n{examples}"
    lines = ["*shipit* deploys, rolls back, scales and keeps secrets from Slack. Commands:"]
    for spec in BY_NAME.values():
        lines.append(f"• `/shipit {spec.usage}` — {spec.summary}. e.g. `/shipit {spec.examples[0]}`")
    lines.append("Deploy cards in the project channel carry Approve / Reject / Cancel / Roll back buttons.")
    return "\n".join(lines)
