"""Block Kit builders: every message shipit shows in Slack is shaped here, not in handlers.

Pure functions from core's view types to (fallback text, blocks).  Anything a
person typed (lock reasons, error texts) is escaped, so a reason that says
`<!channel>` cannot ping a channel.  Nothing here ever receives a secret value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core import dryrun, environment_admin, events, previews, status
from storage import models

Block = dict[str, Any]

ACTION_APPROVE = "shipit.approve"
ACTION_REJECT = "shipit.reject"
ACTION_CANCEL = "shipit.cancel"
ACTION_ROLLBACK = "shipit.rollback"
ACTION_PROMOTE = "shipit.promote"
ACTIONS = (ACTION_APPROVE, ACTION_REJECT, ACTION_CANCEL, ACTION_ROLLBACK, ACTION_PROMOTE)

MAX_TEXT = 2900  # Slack's section text limit is 3000 characters
THREAD_LOG_LINES = 30


@dataclass(frozen=True, kw_only=True)
class Message:
    text: str  # fallback for notifications and screen readers
    blocks: list[Block]


def esc(text: str) -> str:
    """Escape for mrkdwn: &, < and > are the only control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}


def _context(*parts: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(p)} for p in parts if p]}


def _button(
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


def _progress_bar(ready: int, desired: int, width: int = 10) -> str:
    if desired <= 0:
        return ""
    filled = min(width, round(width * ready / desired))
    return "▰" * filled + "▱" * (width - filled)


# ---------------------------------------------------------------- the deploy card


_HEADLINES = {
    "queued": ":hourglass_flowing_sand: *{app}* `{image}` is queued",
    "awaiting_approval": ":raised_hand: *{app}* `{image}` is waiting for approval",
    "running": ":rocket: *{app}* is rolling out `{image}`",
    "succeeded": ":white_check_mark: *{app}* is live on `{image}`",
    "failed": ":x: *{app}* deploy of `{image}` failed",
    "cancelled": ":no_entry_sign: *{app}* deploy of `{image}` was cancelled",
    "superseded": ":fast_forward: *{app}* deploy of `{image}` was superseded",
}


def card(
    *,
    deployment: events.DeploymentView,
    app: events.AppView | None,
    project: events.ProjectView | None,
) -> Message:
    """The one message per deploy, redrawn from the deploy's current state on every event."""
    d = deployment
    app_name = app.name if app else "app"
    image = esc(d.image)
    rollback = d.trigger in ("rollback", "auto-rollback")
    if d.status == "failed" and d.rolled_back_by is not None:
        headline = f":x: *{app_name}* deploy of `{image}` {esc(d.outcome)}"
    elif rollback and d.status == "succeeded":
        headline = f":leftwards_arrow_with_hook: *{app_name}* is rolled back to `{image}`"
    elif rollback and d.status == "running":
        headline = f":leftwards_arrow_with_hook: *{app_name}* is rolling back to `{image}`"
    else:
        headline = _HEADLINES.get(d.status, "*{app}* `{image}`: {status}").format(
            app=app_name, image=image, status=esc(d.status)
        )
    blocks: list[Block] = [_section(headline)]

    fields = [
        f"*Revision*\n{d.revision if d.revision is not None else '?'}",
        f"*Requested by*\n{who(d.actor)}",
        f"*Where*\n{_where(app)}`{esc(d.namespace)}`",
        f"*Trigger*\n{esc(d.trigger)}" + (f" `{esc(d.git_sha[:7])}`" if d.git_sha else ""),
    ]
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]})

    detail = _detail(d)
    if detail:
        blocks.append(_section(detail))

    buttons = _buttons(d, app_name=app_name)
    if d.status == "succeeded" and not rollback and app is not None and app.next_environment:
        # Offered only toward the next environment of the project's order (the CLI and API take any).
        buttons.append(
            _button(
                f"Promote to {app.next_environment}",
                action_id=ACTION_PROMOTE,
                value=button_value(deployment_id=d.id, app=app_name),
                style="primary",
            )
        )
    if buttons:
        blocks.append({"type": "actions", "block_id": f"deploy-{d.id}", "elements": buttons})

    notes = [f"deploy #{d.id}" + (f" · project {esc(project.name)}" if project else "")]
    if app is not None and app.auto_deploy_paused:
        reason = esc(app.paused_reason or "paused")
        notes.append(
            f":double_vertical_bar: Auto-deploy is paused: {reason}. "
            f"`/shipit resume {app_name}` deploys on push again."
        )
    blocks.append(_context(*notes))
    return Message(text=card_text(d, app_name=app_name), blocks=blocks)


def _where(app: events.AppView | None) -> str:
    """The card's "Where" before the namespace: the environment too when the project has several."""
    if app is None:
        return "? / "
    env = f"*{esc(app.environment)}* · " if app.environment and app.environments > 1 else ""
    return f"{env}{esc(app.cluster)} / "


def card_text(d: events.DeploymentView, *, app_name: str) -> str:
    state = {
        "queued": "queued",
        "awaiting_approval": "waiting for approval",
        "running": f"rolling out ({d.ready}/{d.desired} ready)",
        "succeeded": "rolled back" if d.trigger in ("rollback", "auto-rollback") else "deployed",
        "failed": d.outcome,
        "cancelled": "cancelled",
        "superseded": "superseded",
    }.get(d.status, d.status)
    return f"{app_name} {d.image}: {state} (deploy #{d.id})"


def _detail(d: events.DeploymentView) -> str:
    if d.status == "queued":
        if d.queue_position is None or d.queue_position <= 1:
            line = "Next in line: starting in a moment."
        else:
            line = f"Position {d.queue_position} in the queue for this app."
        if d.approved_by:
            line += f" Approved by {who(d.approved_by)}."
        return line
    if d.status == "awaiting_approval":
        line = f"This deploy is protected: someone other than {who(d.actor)} must approve it."
        if d.approvals_needed:
            line += f" {d.approvals or 0} of {d.approvals_needed} approvals."
        return line
    if d.status == "running":
        if d.desired <= 0:
            return "Applied; waiting for the first pods."
        return f"{_progress_bar(d.ready, d.desired)}  {d.ready}/{d.desired} pods ready"
    if d.status == "succeeded":
        parts = [f"Took {duration(d.duration_seconds)}", f"revision {d.revision}", f"by {who(d.actor)}"]
        if d.approved_by:
            parts.append(f"approved by {who(d.approved_by)}")
        ready = f" · {d.ready}/{d.desired} pods ready" if d.desired else ""
        return " · ".join(parts) + ready
    if d.status == "failed":
        text = f"*Reason:* {esc(d.error or 'unknown')}"
        if d.logs:
            text += "\nThe last log lines are in the thread."
        if d.rolled_back_by is not None:
            text += (
                f"\nshipit rolled back by itself: deploy #{d.rolled_back_by} of revision {d.rolled_back_to}"
                f" ({esc(d.rollback_status or '?')}). The app keeps its current revision."
            )
        return text
    if d.status in ("cancelled", "superseded"):
        return esc(d.error or d.status)
    return ""


def _buttons(d: events.DeploymentView, *, app_name: str) -> list[Block]:
    value = button_value(deployment_id=d.id, app=app_name)
    if d.status == "awaiting_approval":
        return [
            _button("Approve", action_id=ACTION_APPROVE, value=value, style="primary"),
            _button("Reject", action_id=ACTION_REJECT, value=value, style="danger"),
        ]
    if d.status == "queued":
        return [_button("Cancel", action_id=ACTION_CANCEL, value=value)]
    if d.status in ("succeeded", "failed"):
        confirm = {
            "title": {"type": "plain_text", "text": "Roll back?"},
            "text": {
                "type": "mrkdwn",
                "text": f"Deploy what ran before deploy #{d.id} of *{app_name}* again, "
                "and pause auto-deploy?",
            },
            "confirm": {"type": "plain_text", "text": "Roll back"},
            "deny": {"type": "plain_text", "text": "Keep it"},
            "style": "danger",
        }
        return [_button("Roll back", action_id=ACTION_ROLLBACK, value=value, confirm=confirm)]
    return []


def failure_thread(*, deployment: events.DeploymentView, app_name: str) -> Message:
    """The failure details, posted once in the card's thread."""
    d = deployment
    text = f":x: Deploy #{d.id} of *{app_name}* failed: {esc(d.error or 'unknown reason')}"
    blocks = [_section(text)]
    lines = [line.rstrip() for line in d.logs[-THREAD_LOG_LINES:]]
    if lines:
        body = "\n".join(lines).replace("```", "'''")
        # Keep the end of the log: the last lines are the ones that explain the crash.
        body = body if len(body) <= MAX_TEXT - 20 else "…" + body[-(MAX_TEXT - 21) :]
        blocks.append(_section(f"Last log lines:\n```{esc(body)}```"))
    return Message(text=f"deploy #{d.id} of {app_name} failed: {d.error or 'unknown reason'}", blocks=blocks)


# ---------------------------------------------------------------- replies to commands


def reply(text: str) -> Message:
    return Message(text=text, blocks=[_section(text)])


def error(text: str) -> Message:
    return reply(f":warning: {esc(text)}")


def help_message(raw: str) -> Message:
    """Help text as written in bot.commands: `<app>` placeholders must not become Slack links."""
    return long_message(esc(raw))


def long_message(mrkdwn: str) -> Message:
    return Message(text=mrkdwn, blocks=[_section(chunk) for chunk in _chunks(mrkdwn)])


def _chunks(text: str, limit: int = MAX_TEXT) -> list[str]:
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


DRY_RUN_LINES = 60


def dry_run(result: dryrun.DryRun) -> Message:
    """A deploy's dry run: one line per field that would change (Secret keys only, never values)."""
    head = (
        f":mag: Dry run: deploying *{esc(result.app)}* `{esc(result.image)}` into `{esc(result.namespace)}`"
    )
    lines = result.lines()
    if not lines:
        return reply(f"{head} would change nothing: the cluster already runs this.")
    shown = [f"• `{esc(line)}`" for line in lines[:DRY_RUN_LINES]]
    if len(lines) > DRY_RUN_LINES:
        shown.append(f"…and {len(lines) - DRY_RUN_LINES} more")
    deploy = f"`/shipit deploy {esc(result.app)} {esc(result.image)}`"
    return long_message(
        "\n".join([f"{head} would change:", *shown, f"Nothing was changed. To deploy: {deploy}"])
    )


def queued(*, deployment: models.Deployment, app: str, channel: str | None, created: bool) -> Message:
    if not created:
        return reply(f"That was already requested: deploy #{deployment.id} of *{app}* ({deployment.status}).")
    where = f" Follow it in {channel_ref(channel)}." if channel else ""
    if deployment.status == "awaiting_approval":
        text = (
            f":raised_hand: Deploy #{deployment.id} of *{app}* `{esc(deployment.image)}` "
            f"(revision {deployment.revision_number}) waits for someone else's approval.{where}"
        )
    else:
        verb = "Rollback" if deployment.trigger == "rollback" else "Deploy"
        text = (
            f":hourglass_flowing_sand: {verb} #{deployment.id} of *{app}* `{esc(deployment.image)}` "
            f"(revision {deployment.revision_number}) is queued.{where}"
        )
    return reply(text)


def secrets_changed(*, app: str, keys: list[str], removed: bool, queued: Message | None) -> Message:
    """After `secrets set/unset`: which keys (never values), and the redeploy that rolls the pods, if any."""
    named = ", ".join(f"`{esc(k)}`" for k in keys)
    if removed:
        text = f":closed_lock_with_key: Removed {named} from *{app}*."
    else:
        text = f":closed_lock_with_key: Set {named} on *{app}* (values are stored encrypted and never shown)."
    if queued is not None:
        verb = "lose" if removed else "get"
        text += f" The pods {verb} them with a redeploy: {queued.text}"
    elif removed:
        text += " Nothing runs yet, so no pod has them."
    else:
        text += " Nothing runs yet: the first deploy takes them."
    return reply(text)


def preview_approved(*, app: str, approval: previews.Approval) -> Message:
    p, d = approval.preview, approval.decision
    return reply(
        f":white_check_mark: You approved commit `{p.head_sha[:7]}` of pull request #{p.pr_number} "
        f"(from `{esc(p.head_repo or 'a deleted fork')}`): deploy #{d.deployment_id} of *{esc(app)}* "
        f"to `{p.namespace}` is queued, without the app's secrets. A new push needs a new approval."
    )


def app_status(st: status.AppStatus, *, live_pending: bool = False) -> Message:
    lines = [f"*{st.app}* · project {esc(st.project)} · {esc(st.cluster)} / `{esc(st.namespace)}`"]
    if st.current_revision is not None:
        c = st.current
        when = c.finished_at.strftime("%Y-%m-%d %H:%M UTC") if c and c.finished_at else "?"
        lines.append(
            f":white_check_mark: Running revision {st.current_revision} `{esc(st.current_image or '?')}`"
            + (f", deployed {when} by {who(c.actor)} (deploy #{c.id})" if c else "")
        )
    elif st.current is not None:
        c = st.current
        lines.append(f":white_check_mark: Running revision {c.revision} `{esc(c.image)}` (deploy #{c.id})")
    else:
        lines.append(f"Nothing deployed yet. Image on record: `{esc(st.image or 'none')}`")
    la = st.last_attempt
    if la is not None and (la.status != "succeeded" or la.id != (st.current.id if st.current else None)):
        mark = ":x:" if la.status == "failed" else ":white_check_mark:"
        reason = f": {esc(la.error)}" if la.status == "failed" and la.error else ""
        lines.append(
            f"{mark} Last attempt: deploy #{la.id} of revision {la.revision} `{esc(la.image)}` "
            f"{esc(la.outcome)}{reason}"
        )
    for a in st.active:
        state = {
            "queued": f"queued (position {a.queue_position})",
            "awaiting_approval": "waiting for approval",
            "running": f"rolling out {a.ready}/{a.desired}",
        }.get(a.status, a.status)
        lines.append(f"• deploy #{a.id} `{esc(a.image)}` by {who(a.actor)}: {state}")
    if st.locked:
        lines.append(f":lock: Locked: {esc(st.locked)}")
    if st.paused:
        lines.append(f":double_vertical_bar: Auto-deploy paused: {esc(st.paused)}")
    if st.live is not None:
        live = st.live
        lines.append(
            f"Cluster: Deployment at revision {esc(live.revision or '?')} `{esc(live.image)}`"
            + ("" if live.replica_sets else f", {live.ready}/{live.desired} ready")
        )
        for rs in live.replica_sets:
            lines.append(
                f"• {'new' if rs.new else 'old'} pods, revision {esc(rs.revision or '?')} `{esc(rs.image)}`: "
                f"{rs.ready}/{rs.desired} ready"
            )
    elif st.live_error:
        lines.append(f"Cluster: could not read the Deployment: {esc(st.live_error)}")
    elif live_pending:
        lines.append("_Asking the cluster…_")
    text = "\n".join(lines)
    return Message(text=_clip(text), blocks=[_section(text)])


def status_overview(statuses: Sequence[status.AppStatus], *, more: int = 0) -> Message:
    if not statuses:
        return reply("You can see no apps yet. A project owner can give you a role with `/shipit access`.")
    lines = ["*Apps you can see:*"]
    for st in statuses:
        current = (
            f"revision {st.current.revision} `{esc(st.current.image)}`" if st.current else "not deployed"
        )
        extra = ""
        if st.active:
            extra += f", {len(st.active)} deploy(s) in progress"
        if st.locked:
            extra += ", :lock: locked"
        if st.paused:
            extra += ", auto-deploy paused"
        lines.append(f"• *{st.app}* ({esc(st.project)}): {current}{extra}")
    if more:
        lines.append(
            f"…and {more} more: `/shipit apps` lists them, `/shipit status <app>` shows one.".replace(
                "<", "&lt;"
            ).replace(">", "&gt;")
        )
    return long_message("\n".join(lines))


def app_list(rows: Sequence[models.App], *, environments: Mapping[int, str]) -> Message:
    """One line per app row; an app in several environments has a row (and a line) in each."""
    if not rows:
        return reply("You can see no apps yet. A project owner can give you a role with `/shipit access`.")
    lines = ["*Apps you can see:*"]
    for a in rows:
        flags = []
        if a.protected:
            flags.append("protected")
        if a.locked_reason:
            flags.append("locked")
        if a.auto_deploy_paused:
            flags.append("auto-deploy paused")
        suffix = f" ({', '.join(flags)})" if flags else ""
        env = environments.get(a.id)
        where = f" · {esc(env)}" if env else ""
        lines.append(f"• *{a.name}*{where} `{esc(a.image or 'no image')}` in `{esc(a.namespace)}`{suffix}")
    return long_message("\n".join(lines))


def environments(project: str, rows: Sequence[environment_admin.EnvironmentView]) -> Message:
    """A project's environments in promotion order, each with where it runs and its apps."""
    lines = [f"*Environments of {esc(project)}* (in promotion order):"]
    for e in rows:
        where = f"`{esc(e.cluster or '-')}/{esc(e.namespace or '-')}`"
        names = ", ".join(f"*{a}*" for a in e.apps) or "no apps"
        lines.append(f"{e.position + 1}. *{esc(e.name)}* {where}: {names}")
    return long_message("\n".join(lines))


def revision_list(app: str, rows: Sequence[models.Revision], *, current: int | None) -> Message:
    if not rows:
        return reply(f"*{app}* has no revisions yet.")
    lines = [f"*Revisions of {app}* (newest first):"]
    for r in rows:
        mark = " :arrow_left: running" if r.number == current else ""
        origin = f", rollback to {r.rollback_of}" if r.rollback_of else ""
        when = r.created_at.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"• *{r.number}* `{esc(r.image)}` {when} by {who(r.created_by)}{origin}{mark}")
    lines.append(f"`/shipit rollback {app} &lt;revision&gt;` deploys one of these again.")
    return long_message("\n".join(lines))


def secret_keys(app: str, keys: Sequence[str]) -> Message:
    if not keys:
        return reply(f"*{app}* has no secrets.")
    listed = ", ".join(f"`{esc(k)}`" for k in keys)
    return reply(f"Secrets of *{app}* (keys only; values are write-only): {listed}")


def notify_targets(project: str, rows: Sequence[Any]) -> Message:
    """A project's notification targets (core.notices.targets.Listed), never a secret."""
    if not rows:
        return reply(f"*{esc(project)}* has no notification targets.")
    lines = []
    for t in rows:
        where = esc(t.address) if t.address else "each app's repository"
        state = (
            f":warning: failing ({t.failures} in a row): {esc(t.last_error or '')}"
            if t.failing
            else (f"{t.failures} failure(s): {esc(t.last_error or '')}" if t.failures else "ok")
        )
        secret = ", secret: set" if t.secret else ""
        fmt = f" ({esc(t.format)})" if t.format else ""
        lines.append(
            f"#{t.id} *{esc(t.kind)}*{fmt} {where}, events `{esc(t.events)}`, "
            f"env `{esc(t.environment or '*')}`{secret}: {state}"
        )
    return long_message(f"Notification targets of *{esc(project)}*:\n" + "\n".join(lines))


def notify_tested(target_id: int, *, ok: bool, message: str) -> Message:
    icon = ":white_check_mark:" if ok else ":x:"
    return reply(f"{icon} test notice to target #{target_id}: {esc(message)}")


def log_lines(app: str, lines: Sequence[str], *, asked: int) -> Message:
    if not lines:
        return reply(f"*{app}* wrote no log lines.")
    body = "\n".join(line.rstrip() for line in lines).replace("```", "'''")
    if len(body) > MAX_TEXT - 60:
        body = "…" + body[-(MAX_TEXT - 61) :]
    return reply(f"Last {min(asked, len(lines))} log lines of *{app}*:\n```{esc(body)}```")


__all__ = [
    "ACTIONS",
    "ACTION_APPROVE",
    "ACTION_CANCEL",
    "ACTION_PROMOTE",
    "ACTION_REJECT",
    "ACTION_ROLLBACK",
    "Message",
    "app_list",
    "app_status",
    "button_value",
    "card",
    "error",
    "failure_thread",
    "parse_button_value",
    "reply",
    "secrets_changed",
]


def link_code(*, subject: str, code: str, url: str, minutes: int) -> str:
    """The one-time code of `/shipit link github LOGIN`, and the two ways to present it as that login."""
    login = esc(subject.partition(":")[2])
    return (
        f"To prove that GitHub *{login}* is you, within {minutes} minutes, signed in to GitHub as {login}, either:\n"
        f"• comment `.link {code}` on any pull request of a repository whose webhooks reach shipit, or\n"
        f"• open <{esc(url)}|this link> and sign in with GitHub.\n"
        "The code works once, only for that login. Do not share it."
    )


def whoami(*, subject: str, subjects: list[str]) -> str:
    others = [s for s in subjects if s != subject]
    text = f"You are `{esc(subject)}`."
    if others:
        text += " Linked to you (your roles hold for all of them): " + ", ".join(
            f"`{esc(s)}`" for s in others
        )
    else:
        text += " No other identity is linked to you: `/shipit link github <login>` links your GitHub login."
    return text
