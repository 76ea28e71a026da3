"""Answers to commands: status, usage, lists, secrets, dry runs, logs, identities."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bot.views.blocks import (
    MAX_TEXT,
    Message,
    channel_ref,
    clip,
    duration,
    env_flag,
    esc,
    long_message,
    reply,
    section_block,
    who,
)
from core import dryrun, environment_admin, previews, runs, status
from core import usage as usage_mod
from storage import models

DRY_RUN_LINES = 60
MAX_USAGE_PODS = 20  # one line each; the total covers the rest


def dry_run(result: dryrun.DryRun, *, env: str | None = None) -> Message:
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
    deploy = f"`/shipit deploy {esc(result.app)} {esc(result.image)}{env_flag(env)}`"
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
        if (hpa := live.autoscaler) is not None:
            cpu = (
                "not measured yet"
                if hpa.cpu_current_percent is None
                else f"{hpa.cpu_current_percent}% of requests"
            )
            target = "" if hpa.cpu_target_percent is None else f" (target {hpa.cpu_target_percent}%)"
            # 0 wanted is the controller not having decided yet (no metrics): never fewer than min.
            wants = f"wants {hpa.desired_replicas}" if hpa.desired_replicas else "no scaling decision yet"
            lines.append(
                f"• autoscaler: {hpa.current_replicas} pods, {wants} "
                f"(min {hpa.min_replicas}, max {hpa.max_replicas}); CPU {cpu}{target}"
                + _scales_down(hpa.scale_down_window_seconds)
            )
    elif st.live_error:
        lines.append(f"Cluster: could not read the Deployment: {esc(st.live_error)}")
    elif live_pending:
        lines.append("_Asking the cluster…_")
    text = "\n".join(lines)
    return Message(text=clip(text), blocks=[section_block(text)])


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


def revision_list(
    app: str, rows: Sequence[models.Revision], *, current: int | None, env: str | None = None
) -> Message:
    if not rows:
        return reply(f"*{app}* has no revisions yet.")
    lines = [f"*Revisions of {app}* (newest first):"]
    for r in rows:
        mark = " :arrow_left: running" if r.number == current else ""
        origin = f", rollback to {r.rollback_of}" if r.rollback_of else ""
        when = r.created_at.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"• *{r.number}* `{esc(r.image)}` {when} by {who(r.created_by)}{origin}{mark}")
    lines.append(f"`/shipit rollback {app} &lt;revision&gt;{env_flag(env)}` deploys one of these again.")
    return long_message("\n".join(lines))


def run_line(r: runs.RunView) -> str:
    """One one-off run: name, state, exit code, program and how many arguments (never them), who, when."""
    ended = f" (exit {r.exit_code})" if r.exit_code is not None else ""
    args = "" if r.args is None else f" and {r.args} argument" + ("" if r.args == 1 else "s")
    started = runs.time_of(r.started_at)
    when = f", started {started.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if started else ""
    took = "" if r.took_seconds is None else f", took {duration(r.took_seconds)}"
    return (
        f"• `{esc(r.name)}` *{esc(r.state)}*{ended}: `{esc(r.program)}`{args}, by {who(r.actor)}{when}{took}"
    )


def run_list(app: str, found: Sequence[runs.RunView], *, env: str | None = None) -> Message:
    """`runs APP`: the newest one-off runs, newest first."""
    if not found:
        return reply(
            f"No one-off runs for {esc(app)} yet. Start one with `shipit run {esc(app)}{env_flag(env)} -- COMMAND`."
        )
    lines = [f"*One-off runs of {esc(app)}* (newest first):", *(run_line(r) for r in found)]
    lines.append(f"More on one, and its output: `shipit runs show|logs {esc(app)} RUN{env_flag(env)}`.")
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:g}%"


def _scales_down(window: int | None) -> str:
    """The HPA's scale-down window, said only when set (else Kubernetes' default, 300 s)."""
    return "" if window is None else f"; scales down after {window}s"


def _figures(f: usage_mod.Figures) -> str:
    return (
        f"CPU {round(f.cpu_millicores, 1):g}m ({_pct(f.cpu_of_requests_percent)} of request, "
        f"{_pct(f.cpu_of_limits_percent)} of limit) · memory {f.memory_bytes / 2**20:.1f}Mi "
        f"({_pct(f.memory_of_requests_percent)} of request, {_pct(f.memory_of_limits_percent)} of limit)"
    )


def app_usage(u: usage_mod.AppUsage) -> Message:
    """`usage APP`: what its pods use now (the Metrics API), against their requests and limits."""
    a = u.per_pod
    head = (
        f"*{esc(u.app)}* ({esc(u.environment)}, namespace `{esc(u.namespace)}`): per pod "
        f"CPU {esc(a.cpu_request)}/{esc(a.cpu_limit)}, memory {esc(a.memory_request)}/{esc(a.memory_limit)} "
        "(request/limit)"
    )
    if not u.pods:
        return reply(
            "\n".join(
                [f"{head}\nNo pod metrics yet (no running pods, or measured too recently).", *_history(u)]
            )
        )
    count = f"{len(u.pods)} pod" + ("s" if len(u.pods) != 1 else "")
    lines = [head, f"*Total* ({count}): {_figures(u.total)}"]
    if u.autoscaling is not None:
        s = u.autoscaling
        lines.append(
            f"Autoscaling {s.min_replicas} to {s.max_replicas} pods at {s.cpu_target_percent}% of the CPU request; "
            f"now {_pct(u.total.cpu_of_requests_percent)}" + _scales_down(s.scale_down_window_seconds)
        )
    shown = u.pods[:MAX_USAGE_PODS]
    lines += [f"• `{esc(p.pod)}`: {_figures(p.usage)}" for p in shown]
    if len(u.pods) > len(shown):
        lines.append(f"… and {len(u.pods) - len(shown)} more pods")
    return reply("\n".join(lines + _history(u)))


def _history(u: usage_mod.AppUsage) -> list[str]:
    """The stored samples per window (totals over the pods) and the right-sizing hints."""
    lines = [
        f"*Last {w.window}* ({w.samples} samples): CPU avg {w.cpu_average_millicores:.1f}m, "
        f"peak {w.cpu_peak_millicores:.1f}m; memory avg {w.memory_average_bytes / 2**20:.1f}Mi, "
        f"peak {w.memory_peak_bytes / 2**20:.1f}Mi"
        for w in u.history.windows
    ]
    return lines + [f"_Hint_: {esc(h)}" for h in u.history.hints]


def log_lines(app: str, lines: Sequence[str], *, asked: int) -> Message:
    if not lines:
        return reply(f"*{app}* wrote no log lines.")
    body = "\n".join(line.rstrip() for line in lines).replace("```", "'''")
    if len(body) > MAX_TEXT - 60:
        body = "…" + body[-(MAX_TEXT - 61) :]
    return reply(f"Last {min(asked, len(lines))} log lines of *{app}*:\n```{esc(body)}```")


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


def addon_line(a: Any) -> str:
    """One add-on (core.addons.AddonView): kind, plan, state and why; never its password or URL."""
    why = a.error or a.detail
    return f"`{esc(a.kind)}` ({esc(a.plan)}): *{esc(a.state)}*" + (f" ({esc(why)})" if why else "")


def addon_changed(a: Any, *, destroyed: bool = False, delete_data: bool = False) -> Message:
    """After `addons create` / `addons destroy` (core.addons.AddonView): the work is queued."""
    if destroyed:
        data = "its data too" if delete_data else "its data volume is kept"
        return reply(f":wastebasket: Destroying the {addon_line(a)} add-on of *{esc(a.app)}* ({data}).")
    return reply(
        f":floppy_disk: Creating a {addon_line(a)} add-on for *{esc(a.app)}*: it gets "
        f"`{esc(a.secret_key)}` when the database is ready (`addons list {esc(a.app)}`)."
    )


def addon_list(app: str, rows: Sequence[Any], *, pending: bool = False) -> Message:
    if pending:
        return reply(f"Asking the cluster about the add-ons of *{esc(app)}*…")
    if not rows:
        return reply(f"*{esc(app)}* has no add-ons.")
    return reply(f"Add-ons of *{esc(app)}*:\n" + "\n".join(f"• {addon_line(a)}" for a in rows))
