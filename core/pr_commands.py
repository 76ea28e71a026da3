"""Deploys asked for in a pull request comment (`.deploy`, `.noop`, `.rollback`, `.lock`, `.unlock`,
`.approve`, `.reject`).

The GitHub channel parses the comment and reads from GitHub what a payload does not hold (the PR's
head commit, the commenter's permission on the repository); this module decides, with the same
services every other channel uses.  Who acts: `github:<login>`, WITHOUT the admin rights a push gets
(core.gitops.github_actor): the commenter needs write permission on the repository (GitHub says) AND
the developer role in the project of the apps the repository deploys (shipit says).

Which apps: those linked to the repository (apps.git_repo).  Which of their rows: `to ENV` picks the
app rows in that environment; without it `.deploy` deploys the pull request's preview and the other
commands act on the project's first environment.  A deploy carries the comment id in its dedupe key
(a comment redelivered or a job run twice deploys once) and in its notify_refs, so the GitHub
notifier keeps the command's one status comment up to date as the deploy runs.

An app that builds from source (core.builds) deploys the head commit's digest.  `.deploy to ENV`: at
once when the commit is built; else the comment waits on the build row (`builds.waiting`, the build
queued when there is none) and `after_build` (the builder's `Builder.done`, in the transaction that
ends the build, the build row locked first) requests the deploy, or emits PR_COMMAND_NOT_DEPLOYED
(the GitHub notifier tells the pull request which build failed and how to read its log).  `.deploy`
alone builds for the preview (core.previews), which then waits for its build itself; the comment
waits on the build row as well, and `after_build` ties it to the preview's deploy (its status
comment and final reaction follow that deploy).  The status comment is drawn by `report`.

`.approve` and `.reject` go through core.deploys.approve like the Slack button and the API: the
commenter's person, role and the environment's approver role apply, and nobody approves their own
deploy from another of their accounts.  Which deploy: the number given, else the one deploy waiting
for approval that this pull request's commands asked for, else the one waiting deploy of the
repository's apps (in `to ENV`, when given); more than one is refused with their numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    apps,
    builds,
    deploys,
    dryrun,
    environments,
    events,
    gitops,
    identity,
    previews,
    protection,
)
from core.context import Core
from core.errors import UserError
from core.identity import Actor, Role
from storage import models

log = logging.getLogger(__name__)

DEPLOY = "deploy"
NOOP = "noop"
ROLLBACK = "rollback"
LOCK = "lock"
UNLOCK = "unlock"
HELP = "help"
APPROVE = "approve"
REJECT = "reject"
VERBS = (DEPLOY, NOOP, ROLLBACK, LOCK, UNLOCK, APPROVE, REJECT, HELP)
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
# The notify_refs key under the GitHub notifier's own refs that marks a deploy asked for in a comment.
REF_KEY = "command"
# ... and the one under which a deploy keeps the `.approve`/`.reject` comments that decided on it.
APPROVALS_KEY = "approvals"


class Refused(UserError):
    """The command is not run; the message is shown in the pull request as written."""


@dataclass(frozen=True, kw_only=True)
class Command:
    verb: str
    environment: str | None = None
    reason: str | None = None
    deployment: int | None = None  # `.approve 42`, `.reject 42`


@dataclass(frozen=True, kw_only=True)
class PullRequest:
    """Where the comment was made and what the pull request's head is now (read from GitHub)."""

    repo: str
    number: int
    comment_id: int
    login: str
    permission: str  # the commenter's permission on `repo`: admin, maintain, write, triage, read, none
    head_sha: str
    head_ref: str
    head_repo: str | None
    is_fork: bool
    open: bool = True


@dataclass(kw_only=True)
class Result:
    """What happened: deploys queued (the notifier reports their progress) and lines for the reply."""

    lines: list[str] = field(default_factory=list)  # for a deploy: one per app left out, saying why
    deployment_ids: list[int] = field(default_factory=list)
    ok: bool = True  # False: an app was left out; its command ends `confused` however the others do
    noop: list[dryrun.Plan] = field(default_factory=list)
    repeated: bool = False  # the comment was handled before: nothing new was done
    approved: int | None = None  # the deploy an `.approve` queued: its comment follows it to the end
    waiting: list[int] = field(default_factory=list)  # builds a `.deploy` waits for (deploys after)
    # Of those, which app's and whether its preview's: {"build", "app_id", "app", "preview"}.
    waits: list[dict[str, Any]] = field(default_factory=list)
    # The command as its status comment is drawn from (`report`): None for the verbs with no such comment.
    command: dict[str, Any] | None = None


def actor_for(login: str) -> Actor:
    return Actor(subject=f"github:{login}", channel="github", display=login)


def dedupe_prefix(comment_id: int) -> str:
    return f"pr-comment:{comment_id}:"


def command_ref(pr: PullRequest, *, environment: str | None, text: str) -> dict[str, Any]:
    return {
        "text": text,
        "repo": pr.repo,
        "number": pr.number,
        "comment_id": pr.comment_id,
        "environment": environment,
        "login": pr.login,
    }


async def earlier(session: AsyncSession, *, comment_id: int) -> list[models.Deployment]:
    """The deploys a comment already asked for (a redelivered comment, a job run twice)."""
    return list(
        await session.scalars(
            select(models.Deployment)
            .where(models.Deployment.dedupe_key.startswith(dedupe_prefix(comment_id), autoescape=True))
            .order_by(models.Deployment.id)
        )
    )


async def refs_of(session: AsyncSession, *, deployment_id: int) -> dict[str, Any]:
    row = await session.get(models.Deployment, deployment_id)
    return dict(row.notify_refs or {}) if row is not None else {}


async def _authorize(session: AsyncSession, *, pr: PullRequest, linked: list[models.App], verb: str) -> None:
    """Write permission on GitHub, then the developer role in every project the repository deploys to.

    Someone without a role learns nothing about the projects (not their names, not their environments).
    """
    if pr.permission not in WRITE_PERMISSIONS:
        raise Refused(
            f"@{pr.login} has `{pr.permission}` permission on {pr.repo}; `.{verb}` needs write permission "
            "on the repository (and the developer role in shipit)."
        )
    actor = actor_for(pr.login)
    for project_id in sorted({a.project_id for a in linked}):
        role = await identity.role_of(session, actor=actor, project_id=project_id)
        if role is None:
            raise Refused(
                f"@{pr.login} has no role in shipit for the apps of this repository. A project admin can "
                f"add `github:{pr.login}`, or link your GitHub account to your shipit identity."
            )
        if role < Role.DEVELOPER:
            raise Refused(f"`.{verb}` needs the developer role in shipit; @{pr.login} has {role.label}.")


async def _targets(
    session: AsyncSession, *, linked: list[models.App], environment: str | None
) -> list[models.App]:
    """The app rows in `environment` (default: each project's first environment)."""
    chosen: list[models.App] = []
    found_env = environment is None
    names: set[str] = set()
    for project_id in sorted({a.project_id for a in linked}):
        if environment is None:
            env = await environments.default_for(session, project_id=project_id)
        else:
            try:
                env = await environments.get(session, project_id=project_id, name=environment)
            except UserError:
                names.update(e.name for e in await environments.list_for(session, project_id=project_id))
                continue
            found_env = True
        for app in linked:
            if app.project_id == project_id and (await environments.of_app(session, app=app)).id == env.id:
                chosen.append(app)
    if not found_env:
        raise Refused(
            f"no environment named `{environment}`; environments: {', '.join(sorted(names)) or 'none'}"
        )
    if not chosen:
        raise Refused(f"no app of this repository runs in environment `{environment or 'default'}`")
    return chosen


async def run(session: AsyncSession, *, ctx: Core, command: Command, pr: PullRequest) -> Result:
    """Run one command in the caller's transaction.  Refusals raise Refused (nothing is changed)."""
    if command.verb == HELP:
        return Result()
    previous = await earlier(session, comment_id=pr.comment_id)
    if previous:
        return Result(deployment_ids=[d.id for d in previous], repeated=True)
    linked = await gitops.linked_apps(session, repo=pr.repo)
    if not linked:
        raise Refused(f"no shipit app deploys {pr.repo}.")
    await _authorize(session, pr=pr, linked=linked, verb=command.verb)
    if not pr.open and command.verb in (DEPLOY, NOOP):
        raise Refused(f"pull request #{pr.number} is closed.")
    actor = actor_for(pr.login)
    if command.verb in (APPROVE, REJECT):
        return await _approve(session, ctx=ctx, pr=pr, linked=linked, actor=actor, command=command)
    if command.verb == DEPLOY and command.environment is None:
        result = await _deploy_preview(session, ctx=ctx, pr=pr, linked=linked, actor=actor)
        await _keep_notes(session, result=result, ref=command_ref(pr, environment=None, text=".deploy"))
        return result
    targets = await _targets(session, linked=linked, environment=command.environment)
    environment = command.environment or (await environments.of_app(session, app=targets[0])).name
    match command.verb:
        case "deploy":
            result = await _deploy(
                session, ctx=ctx, pr=pr, targets=targets, actor=actor, environment=environment
            )
        case "noop":
            return await _noop(session, ctx=ctx, pr=pr, targets=targets, actor=actor)
        case "rollback":
            result = await _rollback(
                session, ctx=ctx, pr=pr, targets=targets, actor=actor, environment=environment
            )
        case "lock" | "unlock":
            return await _lock(
                session, pr=pr, targets=targets, actor=actor, command=command, environment=environment
            )
        case _:
            raise Refused(f"unknown command `.{command.verb}`")
    text = f".{command.verb} to {environment}"
    await _keep_notes(session, result=result, ref=command_ref(pr, environment=environment, text=text))
    return result


async def _keep_notes(session: AsyncSession, *, result: Result, ref: dict[str, Any]) -> None:
    """Apps left out (locked, no revision to go back to) and the builds the command waits for go with
    the command's ref on each of its deploys and on each build row's wait: every later drawing of
    its status comment (`report`), whichever deploy's or build's notice draws it, in any process,
    knows them all.  A note is an app left out, so a command with notes never ends `rocket`."""
    if not result.lines and not result.waits:
        return
    extra = {"notes": list(result.lines), "waits": list(result.waits)}
    comment_id = int(ref["comment_id"])
    for deployment_id in result.deployment_ids:
        row = await session.get(models.Deployment, deployment_id)
        if row is None:
            continue
        refs = dict(row.notify_refs or {})
        mine = dict(refs.get("github") or {})
        mine[REF_KEY] = {**(mine.get(REF_KEY) or {}), **extra}
        refs["github"] = mine
        row.notify_refs = refs
        result.command = result.command or dict(mine[REF_KEY])
    for build_id in sorted({w["build"] for w in result.waits}):
        build = await session.get(models.Build, build_id)  # locked already: builds.queue
        if build is None:
            continue
        entries, changed = [], False
        for e in build.waiting or []:
            waiting_ref = dict(e.get(REF_KEY) or {})
            if waiting_ref.get("comment_id") == comment_id:
                e, changed = {**e, REF_KEY: {**waiting_ref, **extra}}, True
                result.command = result.command or dict(e[REF_KEY])
            entries.append(e)
        if changed:  # (an empty list is not "nothing waits": it would keep the build from being superseded)
            build.waiting = entries
    if result.command is None:  # nothing deployed yet, and no wait on a build row names the comment
        result.command = {**ref, **extra}


async def _mark(
    session: AsyncSession,
    *,
    deployment_id: int,
    pr: PullRequest,
    app: models.App,
    environment: str | None,
    text: str,
) -> None:
    """Tie a deploy made by another service (a preview's) to this comment: dedupe key and notify_refs."""
    row = await session.get(models.Deployment, deployment_id)
    assert row is not None
    _tie(row, app=app, ref=command_ref(pr, environment=environment, text=text))


def _tie(row: models.Deployment, *, app: models.App, ref: dict[str, Any]) -> None:
    row.dedupe_key = f"{dedupe_prefix(int(ref['comment_id']))}{app.id}"
    refs = dict(row.notify_refs or {})
    refs["github"] = {**refs.get("github", {}), REF_KEY: ref}
    row.notify_refs = refs


async def _wait_on(
    session: AsyncSession, *, pr: PullRequest, app: models.App, build_id: int, result: Result, preview: bool
) -> None:
    """The comment waits on the build row (`after_build` follows it up), once however often it runs."""
    build = await session.get(models.Build, build_id)  # locked already: builds.queue
    assert build is not None
    wait = {
        REF_KEY: command_ref(pr, environment=None, text=".deploy"),
        "head_ref": pr.head_ref,
        "preview": preview,
    }
    entries = list(build.waiting or [])
    if not any((e.get(REF_KEY) or {}).get("comment_id") == pr.comment_id for e in entries):
        build.waiting = [*entries, wait]
    result.waiting.append(build.id)
    result.waits.append({"build": build.id, "app_id": app.id, "app": app.name, "preview": preview})


async def _deploy_preview(
    session: AsyncSession, *, ctx: Core, pr: PullRequest, linked: list[models.App], actor: Actor
) -> Result:
    with_previews = [
        a
        for a in linked
        if a.previews_enabled
        and a.preview_domain
        and (a.image_template or (a.build_enabled and a.build_image))
    ]
    if not with_previews:
        raise Refused(
            "previews are off for the apps of this repository: say `.deploy to <environment>` instead."
        )
    result = Result()
    for app in with_previews:
        if pr.is_fork and app.previews_from_forks == apps.FORKS_NEVER:
            result.ok = False
            result.lines.append(f"`{app.name}`: previews of pull requests from forks are off.")
            continue
        decision = await previews.open_or_update(
            session, ctx=ctx, app=app, actor=actor, repo=pr.repo, number=pr.number, head_sha=pr.head_sha,
            head_ref=pr.head_ref, head_repo=pr.head_repo, is_fork=pr.is_fork,
        )  # fmt: skip
        if decision.action == gitops.WAIT:
            # A fork's commit waiting for approval: a developer asking for its deploy approves it.
            decision = (
                await previews.approve(
                    session,
                    ctx=ctx,
                    actor=actor,
                    app_name=app.name,
                    number=pr.number,
                    env=await apps.env_name(session, app=app),
                )
            ).decision
        if decision.action == gitops.BUILD and decision.build_id is not None:
            # The preview itself waits for its build (core.previews.after_build deploys it); this
            # comment waits on the build row too, and `after_build` ties it to the preview's deploy.
            await _wait_on(session, pr=pr, app=app, build_id=decision.build_id, result=result, preview=True)
            continue
        if decision.action != gitops.DEPLOY or decision.deployment_id is None:
            result.ok = False
            result.lines.append(f"`{app.name}`: {decision.reason}")
            continue
        await _mark(
            session, deployment_id=decision.deployment_id, pr=pr, app=app, environment=None, text=".deploy"
        )
        result.deployment_ids.append(decision.deployment_id)
    if not result.deployment_ids and not result.waiting:
        raise Refused("\n".join(result.lines) or "nothing to deploy")
    return result


async def _deploy(
    session: AsyncSession,
    *,
    ctx: Core,
    pr: PullRequest,
    targets: list[models.App],
    actor: Actor,
    environment: str,
) -> Result:
    if pr.is_fork:
        # Its head can change after the comment, and the deploy would run it with the app's secrets.
        raise Refused(
            f"pull request #{pr.number} comes from a fork: it deploys only to its preview (`.deploy`)."
        )
    text = f".deploy to {environment}"
    waits = Result()  # only its waits are used

    async def ask(app: models.App) -> deploys.Requested | str:
        if app.build_enabled and app.build_image:
            return await _built_or_wait(
                session, ctx=ctx, pr=pr, app=app, actor=actor, environment=environment, waits=waits
            )
        assert app.image_template is not None
        image = gitops.render_image(app.image_template, sha=pr.head_sha, branch=pr.head_ref)
        return await deploys.request(
            session, ctx=ctx, actor=actor, app_name=app.name, image=image, trigger="pr",
            env=await apps.env_name(session, app=app),
            dedupe_key=f"{dedupe_prefix(pr.comment_id)}{app.id}", git_sha=pr.head_sha,
            git_ref=f"refs/heads/{pr.head_ref}",
            reason=f"`.deploy to {environment}` on pull request #{pr.number} by {pr.login}",
            notify_refs={"github": {REF_KEY: command_ref(pr, environment=environment, text=text)}},
        )  # fmt: skip

    result = await _each(session, targets=targets, ask=ask)
    result.waiting, result.waits = waits.waiting, waits.waits
    return result


async def _each(
    session: AsyncSession,
    *,
    targets: list[models.App],
    ask: Callable[[models.App], Awaitable[deploys.Requested | str]],
) -> Result:
    """Ask for a deploy of each app; one refused does not stop the others, all refused is a refusal.
    A line instead of a deploy: the app's deploy waits for its build (the reply says so from the
    build row, `report`: not a note, which would outlive the wait)."""
    result = Result()
    waiting = False
    for app in targets:
        try:
            async with session.begin_nested():
                requested = await ask(app)
        except UserError as e:
            result.ok = False
            result.lines.append(f"`{app.name}`: {e}")
            continue
        if isinstance(requested, str):
            waiting = True
            continue
        result.deployment_ids.append(requested.deployment.id)
    if not result.deployment_ids and not waiting:
        raise Refused("\n".join(result.lines))
    return result


# ------------------------------------------------ `.deploy to ENV` of an app that builds from source


async def _failed_line(session: AsyncSession, *, app: models.App, build: models.Build) -> str:
    error = (build.error or "").strip().splitlines()
    logs = await builds.logs_command(session, app=app, build=build)
    return (
        f"not deployed: build #{build.id} of {build.sha[:7]} failed ({error[0] if error else 'see its log'}); "
        f"`{logs}` shows why"
    )


async def _built_or_wait(
    session: AsyncSession,
    *,
    ctx: Core,
    pr: PullRequest,
    app: models.App,
    actor: Actor,
    environment: str,
    waits: Result,
) -> deploys.Requested | str:
    """The head commit's digest deployed at once when built; else the comment waits on the build row
    (queued now when there is none: one build per app and commit), and `after_build` deploys it.

    A fork's pull request never gets here (`_deploy` refuses it): its code is built for its preview only."""
    # The build row is locked from here on: the lock order of a builder ending it.
    queued = await builds.queue(
        session, ctx=ctx, app=app, actor=actor, sha=pr.head_sha, ref=f"refs/heads/{pr.head_ref}",
        pr_number=pr.number,
    )  # fmt: skip
    build = queued.build
    text = f".deploy to {environment}"
    wait = {REF_KEY: command_ref(pr, environment=environment, text=text), "head_ref": pr.head_ref}
    if build.status == builds.SUCCEEDED and build.digest:
        return await _deploy_built(session, ctx=ctx, app=app, build=build, wait=wait)
    if build.status == builds.FAILED:
        raise Refused(await _failed_line(session, app=app, build=build))
    entries = list(build.waiting or [])
    if not any((e.get(REF_KEY) or {}).get("comment_id") == pr.comment_id for e in entries):
        build.waiting = [*entries, wait]  # a job run twice waits once
    waits.waiting.append(build.id)
    waits.waits.append({"build": build.id, "app_id": app.id, "app": app.name, "preview": False})
    log.info(
        "pr command %s on %s#%s: %s waits for build #%s of %s (%s)",
        pr.comment_id, pr.repo, pr.number, app.name, build.id, pr.head_sha[:7], build.status,
    )  # fmt: skip
    return (
        f"`{app.name}`: build #{build.id} of {pr.head_sha[:7]} {'queued' if queued.created else build.status}; "
        "deployed once built."
    )


async def _deploy_built(
    session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build, wait: dict[str, Any]
) -> deploys.Requested:
    """The deploy of the built digest a comment asked for: the same request, dedupe key and refs as an
    image template's (`_deploy`), as the commenter."""
    assert build.digest is not None
    ref = dict(wait[REF_KEY])
    return await deploys.request(
        session, ctx=ctx, actor=actor_for(str(ref["login"])), app_name=app.name,
        image=f"{build.image}@{build.digest}", trigger="pr", env=await apps.env_name(session, app=app),
        dedupe_key=f"{dedupe_prefix(int(ref['comment_id']))}{app.id}", git_sha=build.sha,
        git_ref=f"refs/heads/{wait['head_ref']}",
        reason=f"`{ref['text']}` on pull request #{ref['number']} by {ref['login']}",
        notify_refs={"github": {REF_KEY: ref}},
    )  # fmt: skip


async def after_build(session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build) -> None:
    """A build ended (core.builds.BuildDone, in the transaction that marks it, the build row locked):
    the previews waiting for its commit (core.previews.after_build), then the comments waiting on the
    row: a `.deploy to ENV` deployed with the digest, a `.deploy` tied to the deploy of its preview,
    or told on the pull request why not (what each came to is kept for its status comment)."""
    await previews.after_build(session, ctx=ctx, app=app, build=build)
    if not build.waiting:
        return
    entries, build.waiting = list(build.waiting), None
    for wait in entries:
        ref = dict(wait.get(REF_KEY) or {})
        if build.status != builds.SUCCEEDED or not build.digest:
            line = await _failed_line(session, app=app, build=build)
        elif wait.get("preview"):
            why = await _follow_preview(session, app=app, build=build, ref=ref)
            if why is None:
                continue
            line = why
        else:
            try:
                async with session.begin_nested():
                    requested = await _deploy_built(session, ctx=ctx, app=app, build=build, wait=wait)
                log.info(
                    "pr command %s on %s#%s: build #%s ended, deploy #%s of %s requested",
                    ref.get("comment_id"), ref.get("repo"), ref.get("number"), build.id,
                    requested.deployment.id, app.name,
                )  # fmt: skip
                continue
            except UserError as e:
                line = f"built, not deployed: {e}"
        line = f"`{app.name}`: {line}"
        log.info(
            "pr command %s on %s#%s: %s", ref.get("comment_id"), ref.get("repo"), ref.get("number"), line
        )  # fmt: skip
        await _record_end(session, comment_id=int(ref["comment_id"]), build=build, line=line)
        await events.emit(
            session,
            ctx=ctx,
            kind=events.PR_COMMAND_NOT_DEPLOYED,
            dedupe_key=f"pr-comment:{ref.get('comment_id')}:{app.id}:build:{build.id}:{build.runs}",
            project_id=app.project_id,
            app_id=app.id,
            payload={**ref, "line": line, "build": build.id},
        )


async def _follow_preview(
    session: AsyncSession, *, app: models.App, build: models.Build, ref: dict[str, Any]
) -> str | None:
    """Tie the deploy of the pull request's preview that this build just asked for to the `.deploy`
    comment (its status comment and reaction follow it, as when the preview deploys at once);
    else a line saying there is none."""
    found = await session.scalar(
        select(models.Deployment)
        .join(models.Preview, models.Preview.id == models.Deployment.preview_id)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.image == f"{build.image}@{build.digest}",
            models.Preview.pr_number == int(ref["number"]),
            models.Preview.closed_at.is_(None),
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )
    if found is None:
        # The preview closed, moved to a newer commit, or refused the deploy: its own comment says which.
        return f"built, not deployed: the preview did not take {build.sha[:7]} (its comment says why)"
    if found.dedupe_key and found.dedupe_key.startswith("pr-comment:"):
        # A deploy follows one comment: another `.deploy` that waited for the same build is told where.
        return f"built; the preview's deploy #{found.id} is followed by an earlier `.deploy` comment"
    _tie(found, app=app, ref=ref)
    log.info(
        "pr command %s on %s#%s: build #%s ended, the preview's deploy #%s of %s follows it",
        ref.get("comment_id"), ref.get("repo"), ref.get("number"), build.id, found.id, app.name,
    )  # fmt: skip
    return None


async def _record_end(session: AsyncSession, *, comment_id: int, build: models.Build, line: str) -> None:
    """What a waited-for build came to, kept on the comment's deploys (locked: the notifier records its
    refs on them too) so every later drawing of its status comment shows it."""
    rows = await session.scalars(
        select(models.Deployment)
        .where(models.Deployment.dedupe_key.startswith(dedupe_prefix(comment_id), autoescape=True))
        .order_by(models.Deployment.id)
        .with_for_update()
    )
    for row in rows:
        refs = dict(row.notify_refs or {})
        mine = dict(refs.get("github") or {})
        ref = dict(mine.get(REF_KEY) or {})
        ref["ended"] = {**(ref.get("ended") or {}), str(build.id): line}
        mine[REF_KEY] = ref
        refs["github"] = mine
        row.notify_refs = refs


async def _rollback(
    session: AsyncSession,
    *,
    ctx: Core,
    pr: PullRequest,
    targets: list[models.App],
    actor: Actor,
    environment: str,
) -> Result:
    text = f".rollback to {environment}"

    async def ask(app: models.App) -> deploys.Requested:
        return await deploys.rollback(
            session, ctx=ctx, actor=actor, app_name=app.name, env=await apps.env_name(session, app=app),
            dedupe_key=f"{dedupe_prefix(pr.comment_id)}{app.id}",
            notify_refs={"github": {REF_KEY: command_ref(pr, environment=environment, text=text)}},
        )  # fmt: skip

    return await _each(session, targets=targets, ask=ask)


async def _noop(
    session: AsyncSession, *, ctx: Core, pr: PullRequest, targets: list[models.App], actor: Actor
) -> Result:
    """Plans only: the channel asks the cluster (dryrun.run) after this transaction; nothing is stored."""
    result = Result()
    for app in targets:
        if app.build_enabled and app.build_image:
            image = await _built_image(session, app=app, sha=pr.head_sha)
        else:
            assert app.image_template is not None
            image = gitops.render_image(app.image_template, sha=pr.head_sha, branch=pr.head_ref)
        plan = await dryrun.plan(
            session,
            ctx=ctx,
            actor=actor,
            app_name=app.name,
            image=image,
            env=await apps.env_name(session, app=app),
        )
        result.noop.append(plan)
    return result


async def _built_image(session: AsyncSession, *, app: models.App, sha: str) -> str:
    """The digest a dry run of an app that builds compares with: the commit's build, built already."""
    b = models.Build
    build = await session.scalar(select(b).where(b.app_id == app.id, b.sha == sha))
    if build is None or build.status != builds.SUCCEEDED or not build.digest:
        state = f"build #{build.id} is {build.status}" if build is not None else "it has no build"
        raise Refused(f"`{app.name}` builds from source and {sha[:7]} is not built yet ({state}).")
    return f"{build.image}@{build.digest}"


async def _lock(
    session: AsyncSession,
    *,
    pr: PullRequest,
    targets: list[models.App],
    actor: Actor,
    command: Command,
    environment: str,
) -> Result:
    """Lock (or unlock) the environment itself, in each project the repository deploys to there."""
    on = command.verb == LOCK
    result = Result()
    reason = command.reason or f"locked from pull request #{pr.number}"
    projects_done: set[int] = set()
    for app in targets:
        if app.project_id in projects_done:
            continue
        projects_done.add(app.project_id)
        project = await session.get(models.Project, app.project_id)
        assert project is not None
        if on:
            await protection.lock_env(
                session, actor=actor, project=project.name, env=environment, reason=reason
            )
        else:
            await protection.unlock_env(session, actor=actor, project=project.name, env=environment)
        result.lines.append(f"`{environment}` is {'locked: ' + reason if on else 'unlocked'}.")
    return result


async def _where(session: AsyncSession, *, deployment: models.Deployment) -> str:
    app = await session.get(models.App, deployment.app_id)
    if app is None:
        return f"#{deployment.id}"
    return f"#{deployment.id} (`{app.name}` in {await apps.env_name(session, app=app)})"


async def _waiting(
    session: AsyncSession, *, pr: PullRequest, linked: list[models.App], environment: str | None
) -> list[models.Deployment]:
    """The deploys `.approve` without a number means: this pull request's own first, else the repository's."""
    if environment is not None:
        linked = await _targets(session, linked=linked, environment=environment)
    rows = list(
        await session.scalars(
            select(models.Deployment)
            .where(
                models.Deployment.app_id.in_([a.id for a in linked]),
                models.Deployment.status == deploys.AWAITING_APPROVAL,
            )
            .order_by(models.Deployment.id)
        )
    )

    def from_this_pr(d: models.Deployment) -> bool:
        ref = ((d.notify_refs or {}).get("github") or {}).get(REF_KEY) or {}
        return str(ref.get("repo") or "").lower() == pr.repo.lower() and ref.get("number") == pr.number

    return [d for d in rows if from_this_pr(d)] or rows


async def _last_approved(
    session: AsyncSession, *, linked: list[models.App], environment: str | None
) -> models.Deployment | None:
    if environment is not None:
        linked = await _targets(session, linked=linked, environment=environment)
    return await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id.in_([a.id for a in linked]),
            models.Deployment.approved_by.is_not(None),
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


async def _last_rejected(
    session: AsyncSession, *, linked: list[models.App], environment: str | None
) -> models.Deployment | None:
    """The latest rejected deploy of the apps, when it is newer than any approved one."""
    if environment is not None:
        linked = await _targets(session, linked=linked, environment=environment)
    latest = await session.scalar(
        select(models.Deployment)
        .where(
            models.Deployment.app_id.in_([a.id for a in linked]),
            models.Deployment.approved_by.is_not(None)
            | models.Deployment.rejected_by.is_not(None)
            # A rejection older than the column that migration 0014 could not fill in: its error text.
            | (
                (models.Deployment.status == deploys.CANCELLED)
                & models.Deployment.error.startswith(deploys.REJECTED_BY, autoescape=True)
            ),
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )
    return latest if latest is not None and deploys.rejected_by(latest) is not None else None


async def _approve(
    session: AsyncSession,
    *,
    ctx: Core,
    pr: PullRequest,
    linked: list[models.App],
    actor: Actor,
    command: Command,
) -> Result:
    """Approve (or reject) one deploy through core.deploys.approve, as the Slack button and the API do."""
    answered = await _answered(session, linked=linked, comment_id=pr.comment_id)
    if answered is not None:  # the job ran again after the approval committed: the same answer, once
        return answered
    yes = command.verb == APPROVE
    if command.deployment is not None:
        chosen = await session.get(models.Deployment, command.deployment)
        if chosen is None or chosen.app_id not in {a.id for a in linked}:
            raise Refused(f"deploy #{command.deployment} is not a deploy of the apps of {pr.repo}.")
    else:
        waiting = await _waiting(session, pr=pr, linked=linked, environment=command.environment)
        if not waiting:
            done = await _last_approved(session, linked=linked, environment=command.environment)
            if yes and done is not None:
                raise Refused(
                    f"nothing waits for approval: deploy {await _where(session, deployment=done)} "
                    f"is already approved ({done.status})."
                )
            gone = (
                None if yes else await _last_rejected(session, linked=linked, environment=command.environment)
            )
            if gone is not None:  # a second `.reject`: say it was done, and by whom
                raise Refused(
                    f"nothing waits for approval: deploy {await _where(session, deployment=gone)} "
                    f"was already rejected by {deploys.rejected_by(gone)}."
                )
            raise Refused(f"no deploy of the apps of {pr.repo} waits for approval.")
        if len(waiting) > 1:
            listed = ", ".join([await _where(session, deployment=d) for d in waiting])
            raise Refused(
                f"{len(waiting)} deploys wait for approval: {listed}. "
                f"Say which one: `.{command.verb} {waiting[0].id}`."
            )
        chosen = waiting[0]
    if chosen.status != deploys.AWAITING_APPROVAL and chosen.approved_by is not None and yes:
        raise Refused(
            f"deploy {await _where(session, deployment=chosen)} is already approved ({chosen.status})."
        )
    where = await _where(session, deployment=chosen)
    deployment = await deploys.approve(session, ctx=ctx, actor=actor, deployment_id=chosen.id, approve=yes)
    tally = await protection.tally(session, deployment=deployment) if yes else None
    count = f" ({tally.text})" if tally is not None else ""
    if not yes:
        line = f"deploy {where} is rejected: it will not run."
    elif deployment.status == deploys.AWAITING_APPROVAL:
        line = f"deploy {where} is approved{count}: it waits for another person's approval."
    else:
        line = f"deploy {where} is approved{count}: it is {deployment.status} and runs now."
    queued = yes and deployment.status != deploys.AWAITING_APPROVAL
    entry = {
        "line": line,
        "repo": pr.repo,
        "number": pr.number,
        "comment_id": pr.comment_id,
        "login": pr.login,
        "text": f".{command.verb}"
        + (f" {command.deployment}" if command.deployment is not None else "")
        + (f" to {command.environment}" if command.environment and command.deployment is None else ""),
        "follow": queued,  # the GitHub notifier redraws this comment as the deploy runs
    }
    refs = dict(deployment.notify_refs or {})
    mine = dict(refs.get("github") or {})
    mine[APPROVALS_KEY] = {**(mine.get(APPROVALS_KEY) or {}), str(pr.comment_id): entry}
    refs["github"] = mine
    deployment.notify_refs = refs
    return Result(lines=[line], approved=deployment.id if queued else None)


async def _answered(session: AsyncSession, *, linked: list[models.App], comment_id: int) -> Result | None:
    """What an `.approve`/`.reject` comment already did, from the deploy it decided on (recent ones only)."""
    recent = await session.scalars(
        select(models.Deployment)
        .where(models.Deployment.app_id.in_([a.id for a in linked]))
        .order_by(models.Deployment.id.desc())
        .limit(50)
    )
    for d in recent:
        done = (((d.notify_refs or {}).get("github") or {}).get(APPROVALS_KEY) or {}).get(str(comment_id))
        if isinstance(done, dict):
            followed = d.id if done.get("follow") else None
            return Result(lines=[str(done.get("line"))], repeated=True, approved=followed)
    return None


@dataclass(frozen=True, kw_only=True)
class DeployState:
    app: str
    deployment: int
    status: str
    outcome: str
    image: str
    environment: str | None
    url: str | None
    error: str | None


async def states(session: AsyncSession, *, comment_id: int) -> list[DeployState]:
    """The deploys a comment asked for, as they are now (what its status comment shows)."""
    return await _states(session, await earlier(session, comment_id=comment_id))


async def _states(session: AsyncSession, rows: list[models.Deployment]) -> list[DeployState]:
    out: list[DeployState] = []
    for d in rows:
        app = await session.get(models.App, d.app_id)
        preview = await session.get(models.Preview, d.preview_id) if d.preview_id else None
        view = await _view(session, d)
        ref = ((d.notify_refs or {}).get("github") or {}).get(REF_KEY) or {}
        out.append(
            DeployState(
                app=app.name if app else "?",
                deployment=d.id,
                status=d.status,
                outcome=view,
                image=d.image,
                environment=f"preview {preview.namespace}" if preview else ref.get("environment"),
                url=preview.url if preview else (f"https://{app.domain}" if app and app.domain else None),
                error=d.error,
            )
        )
    return out


@dataclass(frozen=True, kw_only=True)
class Report:
    """A deploy command as its status comment shows it now."""

    states: list[DeployState]
    lines: list[str]  # apps left out, then each waited-for build not deployed (yet)
    pending: bool  # a build it waits for has not ended: not finished, whatever the deploys say
    # An app it targeted was not deployed, whenever that was decided: refused when asked (a lock, a
    # deploy window, a freeze, no revision to go back to), its build failed, or refused once built.
    failed: bool

    @property
    def partly(self) -> bool:
        """Finished with every deploy it made succeeded, but an app was left out (its line says why)."""
        return self.finished and self.failed and bool(self.states) and self._all_succeeded

    @property
    def finished(self) -> bool:
        return not self.pending and all(s.status in FINISHED for s in self.states)

    @property
    def _all_succeeded(self) -> bool:
        return all(s.status == "succeeded" for s in self.states)

    @property
    def ok(self) -> bool:
        """The command did what it asked: EVERY app it targeted was deployed, and each deploy succeeded."""
        return bool(self.states) and not self.failed and self._all_succeeded


FINISHED = ("succeeded", "failed", "superseded", "cancelled")


async def report(session: AsyncSession, *, command: dict[str, Any]) -> Report:
    """The command's deploys, notes and waited-for builds from the database now: the notes, waits and
    ends kept on each of its deploys (and on `command`, a build's wait or an event's) are merged, so a
    redraw from any one notice is the whole story and a build's wait never outlives it."""
    comment_id = int(command["comment_id"])
    rows = await earlier(session, comment_id=comment_id)
    refs = [command, *[((d.notify_refs or {}).get("github") or {}).get(REF_KEY) or {} for d in rows]]
    notes: list[str] = []
    waits: dict[int, dict[str, Any]] = {}
    ended: dict[str, str] = {}
    for ref in refs:
        notes += [str(n) for n in ref.get("notes") or [] if str(n) not in notes]
        waits.update({int(w["build"]): w for w in ref.get("waits") or []})
        ended.update(ref.get("ended") or {})
    states = await _states(session, rows)
    deployed = {d.app_id for d in rows}
    lines, pending, failed = list(notes), False, bool(notes)
    for build_id, w in sorted(waits.items()):
        build = await session.get(models.Build, build_id)
        if build is None or int(w.get("app_id") or 0) in deployed:
            continue
        if build.status in (builds.QUEUED, builds.BUILDING):
            pending = True
            then = "its preview deploys once built" if w.get("preview") else "deployed once built"
            lines.append(f"`{w.get('app')}`: build #{build.id} of {build.sha[:7]} {build.status}; {then}.")
            continue
        failed = True
        line = ended.get(str(build_id))
        if line is None:
            app = await session.get(models.App, build.app_id)
            line = (
                f"`{w.get('app')}`: {await _failed_line(session, app=app, build=build)}"
                if app is not None and build.status == builds.FAILED
                else f"`{w.get('app')}`: build #{build.id} of {build.sha[:7]} {build.status}; not deployed."
            )
        lines.append(line)
    return Report(states=states, lines=lines, pending=pending, failed=failed)


async def _view(session: AsyncSession, d: models.Deployment) -> str:
    return (await events.deployment_view(session, deployment=d)).outcome
