"""The deploy card (one message per deploy, redrawn on every event), its failure thread, and the
build card (one message per build from source, redrawn likewise)."""

from __future__ import annotations

from bot.views.blocks import (
    ACTION_APPROVE,
    ACTION_CANCEL,
    ACTION_PROMOTE,
    ACTION_REJECT,
    ACTION_ROLLBACK,
    MAX_TEXT,
    Block,
    Message,
    button_block,
    button_value,
    context_block,
    duration,
    env_flag,
    esc,
    section_block,
    who,
)
from core import events

THREAD_LOG_LINES = 30


def _progress_bar(ready: int, desired: int, width: int = 10) -> str:
    if desired <= 0:
        return ""
    filled = min(width, round(width * ready / desired))
    return "▰" * filled + "▱" * (width - filled)


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
    blocks: list[Block] = [section_block(headline)]

    fields = [
        f"*Revision*\n{d.revision if d.revision is not None else '?'}",
        f"*Requested by*\n{who(d.actor)}",
        f"*Where*\n{_where(app)}`{esc(d.namespace)}`",
        f"*Trigger*\n{esc(d.trigger)}" + (f" `{esc(d.git_sha[:7])}`" if d.git_sha else ""),
    ]
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]})

    detail = _detail(d)
    if detail:
        blocks.append(section_block(detail))

    buttons = _buttons(d, app_name=app_name)
    if d.status == "succeeded" and not rollback and app is not None and app.next_environment:
        # Offered only toward the next environment of the project's order (the CLI and API take any).
        buttons.append(
            button_block(
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
            f"`/shipit resume {app_name}{env_flag(app.environment if app.environments > 1 else None)}` "
            "deploys on push again."
        )
    blocks.append(context_block(*notes))
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
            line += f" {d.approvals or 0} of {d.approvals_needed} approvals"
            # Who approved so far, so nobody asks again (and the next approver knows who is left).
            line += (": " + ", ".join(who(s) for s in d.approvers) + ".") if d.approvers else "."
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
            button_block("Approve", action_id=ACTION_APPROVE, value=value, style="primary"),
            button_block("Reject", action_id=ACTION_REJECT, value=value, style="danger"),
        ]
    if d.status == "queued":
        return [button_block("Cancel", action_id=ACTION_CANCEL, value=value)]
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
        return [button_block("Roll back", action_id=ACTION_ROLLBACK, value=value, confirm=confirm)]
    return []


def failure_thread(*, deployment: events.DeploymentView, app_name: str) -> Message:
    """The failure details, posted once in the card's thread."""
    d = deployment
    text = f":x: Deploy #{d.id} of *{app_name}* failed: {esc(d.error or 'unknown reason')}"
    blocks = [section_block(text)]
    lines = [line.rstrip() for line in d.logs[-THREAD_LOG_LINES:]]
    if lines:
        body = "\n".join(lines).replace("```", "'''")
        # Keep the end of the log: the last lines are the ones that explain the crash.
        body = body if len(body) <= MAX_TEXT - 20 else "…" + body[-(MAX_TEXT - 21) :]
        blocks.append(section_block(f"Last log lines:\n```{esc(body)}```"))
    return Message(text=f"deploy #{d.id} of {app_name} failed: {d.error or 'unknown reason'}", blocks=blocks)


_BUILD_HEADLINES = {
    "queued": ":hourglass_flowing_sand: Build #{id} of *{where}* is queued",
    "building": ":hammer_and_wrench: Build #{id} of *{where}* is building",
    "succeeded": ":package: Build #{id} of *{where}* is built",
    "failed": ":x: Build #{id} of *{where}* failed, nothing deployed",
    "superseded": ":fast_forward: Build #{id} of *{where}* was superseded",
}
_BUILD_STATES = {"queued": "queued", "building": "building", "succeeded": "built", "failed": "failed"}


def build_card(
    *,
    build: events.BuildView,
    app: events.AppView | None,
    project: events.ProjectView | None,
    where: str,
    logs: str,
) -> Message:
    """The one message per build (and run), redrawn from the build's current state on every event.
    Only the build row's facts: its error is scrubbed of credentials already (core.builds)."""
    b = build
    sha = esc(b.sha[:7])
    state = _BUILD_STATES.get(b.status, b.status)
    headline = _BUILD_HEADLINES.get(b.status, "Build #{id} of *{where}*: {state}").format(
        id=b.id, where=esc(where), state=esc(state)
    )
    repo = app.git_repo if app is not None else None
    commit = f"<https://github.com/{esc(repo)}/commit/{esc(b.sha)}|`{sha}`>" if repo else f"`{sha}`"
    line = f"PR #{b.pr_number}" if b.pr_number is not None else esc(b.ref.removeprefix("refs/heads/"))
    fields = [
        f"*Commit*\n{commit}",
        f"*{'Pull request' if b.pr_number is not None else 'Branch'}*\n{line}",
        f"*Pushed by*\n{who(b.actor)}",
        f"*State*\n{esc(state)}",
    ]
    blocks: list[Block] = [
        section_block(headline),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    detail = _build_detail(b, logs=logs)
    if detail:
        blocks.append(section_block(detail))
    app_name = app.name if app is not None else where
    blocks.append(context_block(f"build #{b.id}" + (f" · project {esc(project.name)}" if project else "")))
    text = f"{app_name} build #{b.id} of {b.sha[:7]}: {state}"
    return Message(text=text, blocks=blocks)


def _build_detail(b: events.BuildView, *, logs: str) -> str:
    if b.status == "succeeded":
        lines = [f"*Digest* `{esc(b.digest or '?')}`"]
        if b.deployment_id is not None and b.pr_number is None:
            lines.append(f"Deploying — see the deploy card (deploy #{b.deployment_id}).")
        elif b.pr_number is not None:
            lines.append(f"Deploying the previews of pull request #{b.pr_number}.")
        elif b.error:
            lines.append(esc(b.error.splitlines()[0]))  # built, not deployed: why
        return "\n".join(lines)
    if b.status == "failed":
        error = (b.error or "").strip()
        first = error.splitlines()[0] if error else "failed"
        return f"*Error:* {esc(first)[: MAX_TEXT // 2]}\nLog: `{esc(logs)}`"
    if b.status == "superseded":
        return esc((b.error or "superseded").splitlines()[0])
    return ""
