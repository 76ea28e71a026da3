"""Handlers of deploys and what runs: deploy, diff, rollback, status, usage, apps, revisions, logs, runs,
scale."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import commands, views
from bot.handlers.base import STATUS_OVERVIEW_LIMIT, Caller, Outcome, handles, queued_card
from core import apps, autoscaling, deploys, dryrun, runs, status, usage
from core.context import Core


@handles(commands.Deploy, keyed=True)
async def _deploy(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Deploy) -> Outcome:
    result = await deploys.request(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, image=cmd.image, trigger="slack", env=cmd.env,
        dedupe_key=caller.replay_key, dedupe_fresh=caller.replay_key is not None,
    )  # fmt: skip
    return Outcome(message=await queued_card(session, caller=caller, result=result, app=cmd.app))


@handles(commands.Diff)
async def _diff(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Diff) -> Outcome:
    # The role check and the rendering happen now; the cluster is asked after the ack.
    plan = await dryrun.plan(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, image=cmd.image, env=cmd.env
    )

    async def compare() -> views.Message:
        return views.dry_run(await dryrun.run(ctx=core, plan=plan), env=cmd.env)

    return Outcome(
        message=views.reply(
            f"Comparing *{views.esc(plan.app)}* `{views.esc(plan.spec.image)}` with the cluster (dry run)…"
        ),
        later=compare,
    )


@handles(commands.Rollback)
async def _rollback(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Rollback) -> Outcome:
    result = await deploys.rollback(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, revision=cmd.revision, env=cmd.env
    )
    return Outcome(message=await queued_card(session, caller=caller, result=result, app=cmd.app))


@handles(commands.Status)
async def _status(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Status) -> Outcome:
    if cmd.app is None:
        rows = await apps.list_visible(session, actor=caller.actor)
        found = [
            await status.read(
                session, actor=caller.actor, app_name=a.name, env=await apps.env_name(session, app=a)
            )
            for a in rows[:STATUS_OVERVIEW_LIMIT]
        ]
        return Outcome(message=views.status_overview(found, more=max(0, len(rows) - len(found))))
    st = await status.read(session, actor=caller.actor, app_name=cmd.app, env=cmd.env)
    target = await status.target(session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env)

    async def live() -> views.Message:
        return views.app_status(await status.with_live(ctx=core, status=st, target=target))

    return Outcome(message=views.app_status(st, live_pending=True), later=live)


@handles(commands.Usage)
async def _usage(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Usage) -> Outcome:
    # The role check and the settings now; the Metrics API is asked after the ack.
    plan = await usage.plan(session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env)

    async def measure() -> views.Message:
        return views.app_usage(await usage.read(ctx=core, plan=plan))

    return Outcome(message=views.reply(f"Reading what *{views.esc(plan.app)}*'s pods use…"), later=measure)


@handles(commands.Apps)
async def _apps(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Apps) -> Outcome:
    rows = await apps.list_visible(session, actor=caller.actor)
    names = {a.id: await apps.env_name(session, app=a) for a in rows}  # one query per environment
    return Outcome(message=views.app_list(rows, environments=names))


@handles(commands.Revisions)
async def _revisions(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Revisions) -> Outcome:
    rows = await deploys.revisions(session, actor=caller.actor, app_name=cmd.app, env=cmd.env)
    app = await apps.get(session, actor=caller.actor, name=cmd.app, env=cmd.env)
    current = await deploys.current_revision(session, app=app)
    return Outcome(
        message=views.revision_list(app.name, rows, current=current.number if current else None, env=cmd.env)
    )


@handles(commands.Logs)
async def _logs(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Logs) -> Outcome:
    target = await status.target(session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env)

    async def fetch() -> views.Message:
        lines: list[str] = []
        # N lines of the app, shared among its pods: a per-pod tail cut to its last N lines would show
        # only the last pod listed, hiding the others (perhaps the failing one).
        async for line in status.logs(
            ctx=core, target=target, tail_lines=cmd.lines, follow=False, shared_tail=True
        ):
            lines.append(line)
        return views.log_lines(target.app, lines[-cmd.lines :], asked=cmd.lines)

    return Outcome(
        message=views.reply(f"Fetching the last {cmd.lines} log lines of *{target.app}*…"), later=fetch
    )


@handles(commands.Runs)
async def _runs(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Runs) -> Outcome:
    # runs.list_runs in its two halves: the role check and the history in this transaction, the
    # cluster's Jobs after the ack (read only: starting or cancelling a run is the CLI's and the API's).
    history = await runs.history_of(
        session, ctx=core, actor=caller.actor, app_name=cmd.app, env=cmd.env, limit=commands.RUNS_SHOWN
    )

    async def live() -> views.Message:
        return views.run_list(history.where.app, await runs.with_live(ctx=core, history=history), env=cmd.env)

    return Outcome(
        message=views.reply(f"Reading the one-off runs of *{views.esc(history.where.app)}*…"), later=live
    )


@handles(commands.Scale)
async def _scale(session: AsyncSession, core: Core, caller: Caller, cmd: commands.Scale) -> Outcome:
    window = cmd.scale_down_window  # None: not said (keep); "default": Kubernetes' own
    result = await autoscaling.scale(
        session,
        ctx=core,
        actor=caller.actor,
        app_name=cmd.app,
        replicas=cmd.replicas,
        min_replicas=cmd.min_replicas,
        max_replicas=cmd.max_replicas,
        cpu_target=cmd.cpu_target,
        scale_down_window=apps.UNSET if window is None else None if window == "default" else window,
        autoscaling_off=cmd.autoscaling_off,
        env=cmd.env,
    )
    return Outcome(message=await queued_card(session, caller=caller, result=result, app=cmd.app))
