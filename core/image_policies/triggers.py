"""Deciding and deploying: a notified or polled tag deploys when it is newer than what runs, pinned to
its digest; a notification without a digest queues a `registry.tag` job that looks it up first.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, deploys, images, jobs, registries
from core.context import Core
from core.errors import InvalidInput, TransientError, UserError
from core.gitops import DEPLOY, SKIP, WAIT, Decision, Outcome, requested
from core.identity import Actor
from core.image_policies.policies import matcher_of
from core.image_policies.tags import Matcher
from core.worker import Handler
from storage import models

log = logging.getLogger(__name__)

TRIGGER = "registry"
TAG_JOB = "registry.tag"
ACTOR = Actor(subject="system:registry", channel="system", display="registry", is_admin=True)


def _running(app: models.App, *, repository: str) -> tuple[str | None, str | None]:
    """The tag and digest the app's settings (its current, good revision) name, if of `repository`."""
    if not app.image:
        return None, None
    try:
        ref = images.parse(app.image)
    except InvalidInput:
        return None, None
    if ref.name != repository:
        return None, None
    return ref.tag, ref.digest


async def _running_digest(session: AsyncSession, *, app: models.App) -> str | None:
    if app.current_revision_id is None:
        return None
    revision = await session.get(models.Revision, app.current_revision_id)
    digest = (revision.snapshot or {}).get("digest") if revision is not None else None
    return digest if isinstance(digest, str) else None


def _why_not(app: models.App) -> str | None:
    if app.auto_deploy_paused:
        return (
            f"auto-deploy is paused ({app.paused_reason or 'paused'}); resume {app.name} to deploy new tags"
        )
    if app.locked_reason:
        return f"{app.name} is locked by {app.locked_by}: {app.locked_reason}"
    return None


def _stale(m: Matcher, policy: models.ImagePolicy, app: models.App, *, tag: str) -> str | None:
    """Why `tag` is not newer than what runs or what the policy last deployed, else None."""
    if m.key(tag) is None:
        how = f"{policy.kind} {policy.pattern}"
        return f"tag {tag} does not match the policy ({how})"
    running_tag, _ = _running(app, repository=policy.repository)
    than = [t for t in (running_tag, policy.last_tag) if t]
    if not m.newer(tag, than=than):
        return f"tag {tag} is not newer than {' / '.join(dict.fromkeys(than))}"
    return None


async def _deploy(
    session: AsyncSession,
    *,
    ctx: Core,
    policy: models.ImagePolicy,
    app: models.App,
    tag: str,
    digest: str,
    why: str,
) -> Decision:
    _, pinned = _running(app, repository=policy.repository)
    if digest in (pinned, await _running_digest(session, app=app)):
        return Decision(app=app.name, action=SKIP, reason=f"{app.name} already runs {digest[:19]}")
    image = f"{policy.repository}:{tag}@{digest}"
    try:
        async with session.begin_nested():
            result = await deploys.request(
                session,
                ctx=ctx,
                actor=ACTOR,
                app_name=app.name,
                image=image,
                trigger=TRIGGER,
                dedupe_key=f"registry:{app.id}:{digest}",
                reason=why,
                env=await apps.env_name(session, app=app),
            )
    except UserError as e:
        return Decision(app=app.name, action=SKIP, reason=str(e), image=image)
    deployment = result.deployment
    policy.last_tag = tag
    if not result.created:
        return Decision(
            app=app.name,
            action=SKIP,
            reason=f"{digest[:19]} was already deployed to {app.name} (deploy #{deployment.id})",
            deployment_id=deployment.id,
            image=deployment.image,
        )
    log.info("registry: %s -> deploy %s of %s (%s)", why, deployment.id, app.name, image)
    return requested(app=app, deployment=deployment, image=image)


@dataclass(frozen=True, kw_only=True)
class Pushed:
    """One image pushed, as a notification tells it: repository is registry/path, no tag."""

    repository: str
    tag: str | None
    digest: str | None
    source: str  # distribution, dockerhub, github
    delivery: str  # the notification's id (or a hash of it), for the job's dedupe key


def repository_of(text: str) -> str | None:
    """`127.0.0.1:5000/acme/web` or `acme/web` as a normalised repository name, None if it is not one."""
    try:
        return images.parse(text.strip().lower(), field="repository").name
    except InvalidInput:
        return None


def valid_digest(repository: str, digest: str | None) -> str | None:
    if not digest:
        return None
    try:
        images.parse(f"{repository}@{digest}")
    except InvalidInput:
        return None
    return digest


async def on_pushed(session: AsyncSession, *, ctx: Core, pushed: Pushed) -> Outcome:
    """A notification: deploy every policy's app for which this tag is newer (caller's transaction)."""
    policies = list(
        await session.scalars(
            select(models.ImagePolicy)
            .where(models.ImagePolicy.repository == pushed.repository)
            .order_by(models.ImagePolicy.id)
        )
    )
    if not policies:
        return Outcome(summary=f"no image policy follows {pushed.repository}; nothing to deploy")
    decisions: list[Decision] = []
    for policy in policies:
        app = await session.get(models.App, policy.app_id)
        if app is None:
            continue
        decisions.append(await _consider(session, ctx=ctx, policy=policy, app=app, pushed=pushed))
    deployed = [d for d in decisions if d.action == DEPLOY]
    summary = (
        "queued " + ", ".join(f"{d.app} (deploy #{d.deployment_id})" for d in deployed)
        if deployed
        else "; ".join(f"{d.app}: {d.reason}" for d in decisions) or "nothing to deploy"
    )
    return Outcome(summary=summary, decisions=decisions)


async def _consider(
    session: AsyncSession, *, ctx: Core, policy: models.ImagePolicy, app: models.App, pushed: Pushed
) -> Decision:
    blocked = _why_not(app)
    if blocked:
        return Decision(app=app.name, action=SKIP, reason=blocked)
    if not pushed.tag:
        # Pushed by digest only (GitHub often says no tag): look at the tag list soon instead.
        policy.next_poll_at = models.utcnow()
        return Decision(app=app.name, action=WAIT, reason="no tag in the notification: checking the tag list")
    m = matcher_of(policy)
    stale = _stale(m, policy, app, tag=pushed.tag)
    if stale:
        return Decision(app=app.name, action=SKIP, reason=stale)
    why = f"{pushed.repository}:{pushed.tag} pushed ({pushed.source})"
    if pushed.digest:
        return await _deploy(
            session, ctx=ctx, policy=policy, app=app, tag=pushed.tag, digest=pushed.digest, why=why
        )
    key = hashlib.sha256(f"{pushed.tag}\0{pushed.delivery}".encode()).hexdigest()[:32]
    await jobs.enqueue(
        session,
        kind=TAG_JOB,
        payload={"policy_id": policy.id, "tag": pushed.tag, "why": why[:300]},
        dedupe_key=f"registry-tag:{policy.id}:{key}",
        max_attempts=5,
    )
    return Decision(
        app=app.name, action=WAIT, reason=f"looking up the digest of {pushed.tag} before deploying"
    )


async def registry_credentials(
    session: AsyncSession, *, ctx: Core, app: models.App, repository: str
) -> registries.Credentials | None:
    host = images.parse(f"{repository}:x").domain
    return await registries.credentials_for(session, ctx=ctx, project_id=app.project_id, host=host)


async def run_tag_job(*, ctx: Core, job: jobs.JobView) -> None:
    """Worker: pin a notified tag to its digest (outside any transaction), then deploy it if still newer."""
    policy_id, tag = int(job.payload["policy_id"]), str(job.payload["tag"])
    async with ctx.sessionmaker() as session:
        policy = await session.get(models.ImagePolicy, policy_id)
        app = await session.get(models.App, policy.app_id) if policy else None
        if policy is None or app is None:
            return
        repository = policy.repository
        credentials = await registry_credentials(session, ctx=ctx, app=app, repository=repository)
    pinned = await registries.resolve(ctx=ctx, image=f"{repository}:{tag}", credentials=credentials)
    async with ctx.sessionmaker.begin() as session:
        policy = await session.get(models.ImagePolicy, policy_id)
        app = await session.get(models.App, policy.app_id) if policy else None
        if policy is None or app is None:
            return
        if pinned.digest is None:
            policy.last_error = f"{tag}: {pinned.note}"[:2000]
        else:
            decision = await decide_and_deploy(
                session, ctx=ctx, policy=policy, app=app, tag=tag, digest=pinned.digest,
                why=str(job.payload.get("why") or f"{repository}:{tag} pushed"),
            )  # fmt: skip
            log.info("registry tag job %s: %s: %s", job.id, app.name, decision.reason)
    if pinned.digest is None:
        raise TransientError(f"cannot pin {repository}:{tag}: {pinned.note}", retry_after=30)


async def decide_and_deploy(
    session: AsyncSession,
    *,
    ctx: Core,
    policy: models.ImagePolicy,
    app: models.App,
    tag: str,
    digest: str,
    why: str,
) -> Decision:
    blocked = _why_not(app) or _stale(matcher_of(policy), policy, app, tag=tag)
    if blocked:
        return Decision(app=app.name, action=SKIP, reason=blocked)
    return await _deploy(session, ctx=ctx, policy=policy, app=app, tag=tag, digest=digest, why=why)


HANDLERS = {TAG_JOB: Handler(run=run_tag_job)}
