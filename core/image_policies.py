"""Deploys from the registry (Keel, Flux image automation): a new matching tag deploys by itself.

A policy belongs to one app row (an app in one environment) and names a repository and which of its
tags count: a semver range (`^1.4`, `>=2.0.0 <3`), a glob (`main-*`), or a regex that must match the
whole tag and is ordered by its named group `key` (numerically or alphabetically).  Two triggers:

- registry notifications (webhooks.registry and GitHub's `package` events) call `on_pushed` inside
  the delivery's transaction: a notification that carries the digest deploys at once; one without
  (Docker Hub, GitHub) queues a `registry.tag` job that looks the digest up first;
- polling: `poll_due` lists the tags of every policy whose `next_poll_at` has come, with exponential
  backoff after failures (`failures` and `last_error` are kept and shown).

Only a tag strictly newer than what runs (and than what the policy last deployed) deploys, pinned to
its digest; the deploy's dedupe key is the app and the digest, so a redelivered notification or a
poll racing a notification deploys once.  Glob policies have no order of their own: a notification
is newer by arriving, a poll takes the alphabetically last tag.  Paused or locked apps are skipped.
With `promote_to`, the image of a registry deploy that succeeded is requested on the app's row in
that environment (`promote`, the one place to switch to core.promotion).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, deploys, environments, events, images, jobs, promotion, registries, semver
from core.context import Core
from core.errors import InvalidInput, TransientError, UserError
from core.gitops import DEPLOY, SKIP, WAIT, Decision, Outcome
from core.identity import Actor, Role
from core.worker import Handler
from storage import models

log = logging.getLogger(__name__)

KINDS = ("semver", "glob", "regex")
SORTS = ("numeric", "alpha")
TRIGGER = "registry"
TAG_JOB = "registry.tag"
POLL_MIN_SECONDS = 10
POLL_MAX_SECONDS = 7 * 86400
BACKOFF_CAP_SECONDS = 6 * 3600
# A claimed poll is not claimed again (by this or another replica) within this while it runs.
POLL_LEASE_SECONDS = 120
ACTOR = Actor(subject="system:registry", channel="system", display="registry", is_admin=True)


# ---------------------------------------------------------------------------- choosing tags


@dataclass(frozen=True)
class Matcher:
    """Which tags a policy accepts, and their order: `key(tag)` is None for a tag that does not match."""

    kind: str
    pattern: str
    key: Callable[[str], Any]

    @property
    def ordered(self) -> bool:
        return self.kind != "glob"

    def newest(self, tags: list[str]) -> str | None:
        keyed = [(k, t) for t in tags if (k := self.key(t)) is not None]
        return max(keyed)[1] if keyed else None

    def newer(self, tag: str, *, than: list[str]) -> bool:
        """Is `tag` strictly newer than every one of `than` (those the policy matches)?"""
        mine = self.key(tag)
        if mine is None:
            return False
        others = [k for t in than if (k := self.key(t)) is not None]
        if not self.ordered:
            return tag not in than
        return all(mine > k for k in others)


def matcher(*, kind: str, pattern: str, sort: str = "") -> Matcher:
    """Build (and so validate) a policy's matcher; InvalidInput names the field that is wrong."""
    if kind == "semver":
        spec = semver.parse_range(pattern, field="semver")

        def semver_key(tag: str) -> Any:
            version = semver.parse(tag)
            return version.key() if version is not None and version in spec else None

        return Matcher(kind=kind, pattern=pattern, key=semver_key)
    if kind == "glob":
        if not pattern:
            raise InvalidInput("glob is empty: give a pattern such as main-*", field="glob")

        def glob_key(tag: str) -> Any:
            return tag if fnmatch.fnmatchcase(tag, pattern) else None

        return Matcher(kind=kind, pattern=pattern, key=glob_key)
    if kind == "regex":
        try:
            compiled = re.compile(pattern)
        except (re.error, OverflowError, RecursionError, ValueError) as e:
            raise InvalidInput(f"regex does not compile: {e}", field="regex") from None
        if "key" not in compiled.groupindex:
            raise InvalidInput(
                "regex needs a named group `key` to order tags by, like main-(?P<key>\\d+)", field="regex"
            )
        if sort not in SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(SORTS)}", field="sort")

        def regex_key(tag: str) -> Any:
            m = compiled.fullmatch(tag)
            if m is None or m.group("key") is None:
                return None
            value = m.group("key")
            if sort == "numeric":
                return int(value) if value.isdigit() else None
            return value

        return Matcher(kind=kind, pattern=pattern, key=regex_key)
    raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", field="kind")


def _matcher_of(policy: models.ImagePolicy) -> Matcher:
    return matcher(kind=policy.kind, pattern=policy.pattern, sort=policy.sort)


# ---------------------------------------------------------------------------- managing policies


@dataclass(frozen=True, kw_only=True)
class Policy:
    app: str
    environment: str
    repository: str
    kind: str
    pattern: str
    sort: str
    poll_interval_seconds: int | None
    next_poll_at: dt.datetime | None
    last_polled_at: dt.datetime | None
    failures: int
    last_error: str | None
    last_tag: str | None
    promote_to: str | None
    created_by: str
    updated_at: dt.datetime


async def _view(session: AsyncSession, *, app: models.App, policy: models.ImagePolicy) -> Policy:
    env = await environments.of_app(session, app=app)
    return Policy(
        app=app.name,
        environment=env.name,
        repository=policy.repository,
        kind=policy.kind,
        pattern=policy.pattern,
        sort=policy.sort,
        poll_interval_seconds=policy.poll_interval_seconds,
        next_poll_at=policy.next_poll_at,
        last_polled_at=policy.last_polled_at,
        failures=policy.failures,
        last_error=policy.last_error,
        last_tag=policy.last_tag,
        promote_to=policy.promote_to,
        created_by=policy.created_by,
        updated_at=policy.updated_at,
    )


async def app_row(
    session: AsyncSession, *, actor: Actor, name: str, environment: str | None = None
) -> models.App:
    """The app's row in `environment`, or its only row (core.apps.get words the errors)."""
    return await apps.get(session, actor=actor, name=name, env=environment)


async def _policy_of(session: AsyncSession, *, app: models.App) -> models.ImagePolicy | None:
    return await session.scalar(select(models.ImagePolicy).where(models.ImagePolicy.app_id == app.id))


def _repository(text: str, *, field: str = "repository") -> str:
    ref = images.parse(text, field=field)
    return ref.name


async def set_policy(
    session: AsyncSession,
    *,
    actor: Actor,
    app_name: str,
    kind: str,
    pattern: str,
    environment: str | None = None,
    sort: str | None = None,
    repository: str | None = None,
    poll_interval_seconds: int | None = None,
    promote_to: str | None = None,
) -> Policy:
    """Create or replace the app's policy (project admins: it deploys without anyone asking)."""
    app = await app_row(session, actor=actor, name=app_name, environment=environment)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="setting an image policy")
    sort = (sort or ("numeric" if kind == "regex" else "")) if kind == "regex" else ""
    matcher(kind=kind, pattern=pattern, sort=sort)
    if len(pattern) > 300:
        raise InvalidInput("the pattern is longer than 300 characters", field=kind)
    if repository:
        repo = _repository(repository)
    elif app.image:
        repo = _repository(app.image, field="image")
    else:
        raise InvalidInput(f"{app.name} has no image yet: give --repository", field="repository")
    if (
        poll_interval_seconds is not None
        and not POLL_MIN_SECONDS <= poll_interval_seconds <= POLL_MAX_SECONDS
    ):
        raise InvalidInput(
            f"poll must be between {POLL_MIN_SECONDS}s and {POLL_MAX_SECONDS // 86400} days", field="poll"
        )
    own_env = await environments.of_app(session, app=app)
    if promote_to is not None:
        target = await environments.get(session, project_id=app.project_id, name=promote_to)
        if target.id == own_env.id:
            raise InvalidInput(f"{app.name} already runs in {promote_to}", field="promote_to")
    policy = await _policy_of(session, app=app)
    created = policy is None
    if policy is None:
        policy = models.ImagePolicy(app_id=app.id, created_by=actor.subject)
        session.add(policy)
    policy.repository, policy.kind, policy.pattern, policy.sort = repo, kind, pattern, sort
    policy.poll_interval_seconds = poll_interval_seconds
    policy.next_poll_at = models.utcnow() if poll_interval_seconds else None
    policy.failures, policy.last_error = 0, None
    policy.promote_to = promote_to
    policy.updated_at = models.utcnow()
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="image_policy.set" if created else "image_policy.update",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={
            "environment": own_env.name,
            "repository": repo,
            "kind": kind,
            "pattern": pattern,
            "sort": sort,
            "poll_interval_seconds": poll_interval_seconds,
            "promote_to": promote_to,
        },
    )
    return await _view(session, app=app, policy=policy)


async def show(
    session: AsyncSession, *, actor: Actor, app_name: str, environment: str | None = None
) -> Policy | None:
    app = await app_row(session, actor=actor, name=app_name, environment=environment)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading the image policy")
    policy = await _policy_of(session, app=app)
    return await _view(session, app=app, policy=policy) if policy else None


async def clear(
    session: AsyncSession, *, actor: Actor, app_name: str, environment: str | None = None
) -> bool:
    app = await app_row(session, actor=actor, name=app_name, environment=environment)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="clearing an image policy")
    policy = await _policy_of(session, app=app)
    if policy is None:
        return False
    await session.delete(policy)
    await session.flush()
    await audit.record(
        session, actor=actor, action="image_policy.clear", target=f"app/{app.name}", project_id=app.project_id
    )
    return True


# ---------------------------------------------------------------------------- deciding and deploying


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
    return Decision(
        app=app.name,
        action=DEPLOY,
        reason=f"deploy #{deployment.id} {deployment.status}: {image}",
        deployment_id=deployment.id,
        image=image,
    )


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
    m = _matcher_of(policy)
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


async def _credentials(
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
        credentials = await _credentials(session, ctx=ctx, app=app, repository=repository)
    pinned = await registries.resolve(ctx=ctx, image=f"{repository}:{tag}", credentials=credentials)
    async with ctx.sessionmaker.begin() as session:
        policy = await session.get(models.ImagePolicy, policy_id)
        app = await session.get(models.App, policy.app_id) if policy else None
        if policy is None or app is None:
            return
        if pinned.digest is None:
            policy.last_error = f"{tag}: {pinned.note}"[:2000]
        else:
            decision = await _decide_and_deploy(
                session, ctx=ctx, policy=policy, app=app, tag=tag, digest=pinned.digest,
                why=str(job.payload.get("why") or f"{repository}:{tag} pushed"),
            )  # fmt: skip
            log.info("registry tag job %s: %s: %s", job.id, app.name, decision.reason)
    if pinned.digest is None:
        raise TransientError(f"cannot pin {repository}:{tag}: {pinned.note}", retry_after=30)


async def _decide_and_deploy(
    session: AsyncSession,
    *,
    ctx: Core,
    policy: models.ImagePolicy,
    app: models.App,
    tag: str,
    digest: str,
    why: str,
) -> Decision:
    blocked = _why_not(app) or _stale(_matcher_of(policy), policy, app, tag=tag)
    if blocked:
        return Decision(app=app.name, action=SKIP, reason=blocked)
    return await _deploy(session, ctx=ctx, policy=policy, app=app, tag=tag, digest=digest, why=why)


# ---------------------------------------------------------------------------- polling


def backoff_seconds(*, interval: int | None, failures: int) -> float:
    """After `failures` failed polls in a row: the interval doubled that many times, capped."""
    base = float(interval or 60)
    delay: float = min(base * 2.0 ** min(failures, 20), max(base, float(BACKOFF_CAP_SECONDS)))
    return delay


async def _claim_due(ctx: Core, *, now: dt.datetime, limit: int) -> list[int]:
    async with ctx.sessionmaker.begin() as session:
        q = (
            select(models.ImagePolicy)
            .where(models.ImagePolicy.next_poll_at.is_not(None), models.ImagePolicy.next_poll_at <= now)
            .order_by(models.ImagePolicy.next_poll_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        due = list(await session.scalars(q))
        for policy in due:
            # Claimed: nobody polls it again until this poll records its result (or the lease runs out).
            policy.next_poll_at = now + dt.timedelta(seconds=POLL_LEASE_SECONDS)
        return [p.id for p in due]


async def poll_due(ctx: Core, *, now: dt.datetime | None = None, limit: int = 20) -> list[Decision]:
    """Poll every policy that is due (safe on every replica: a policy is claimed before it is polled)."""
    now = now or models.utcnow()
    decisions: list[Decision] = []
    for policy_id in await _claim_due(ctx, now=now, limit=limit):
        try:
            decision = await poll_one(ctx, policy_id=policy_id)
        except Exception:
            log.exception("registry poll of policy %s failed", policy_id)
            continue
        if decision is not None:
            decisions.append(decision)
    return decisions


async def poll_one(ctx: Core, *, policy_id: int) -> Decision | None:
    """List the repository's tags and deploy the newest matching one if it is newer than what runs."""
    async with ctx.sessionmaker() as session:
        policy = await session.get(models.ImagePolicy, policy_id)
        app = await session.get(models.App, policy.app_id) if policy else None
        if policy is None or app is None:
            return None
        repository, m = policy.repository, _matcher_of(policy)
        credentials = await _credentials(session, ctx=ctx, app=app, repository=repository)
    error: str | None = None
    tag: str | None = None
    digest: str | None = None
    try:
        tags = await registries.list_tags(ctx=ctx, repository=repository, credentials=credentials)
        tag = m.newest(tags)
    except registries.RegistryUnavailable as e:
        error = str(e)
    if tag is not None:
        pinned = await registries.resolve(ctx=ctx, image=f"{repository}:{tag}", credentials=credentials)
        digest = pinned.digest
        if digest is None:
            error = f"{tag}: {pinned.note}"
    async with ctx.sessionmaker.begin() as session:
        policy = await session.get(models.ImagePolicy, policy_id)
        app = await session.get(models.App, policy.app_id) if policy else None
        if policy is None or app is None:
            return None
        now = models.utcnow()
        policy.last_polled_at = now
        if error is not None:
            policy.failures += 1
            policy.last_error = error[:2000]
            delay = backoff_seconds(interval=policy.poll_interval_seconds, failures=policy.failures)
            policy.next_poll_at = now + dt.timedelta(seconds=delay) if policy.poll_interval_seconds else None
            log.warning(
                "registry poll of %s for %s failed (%d in a row, next in %.0fs): %s",
                repository, app.name, policy.failures, delay, error,
            )  # fmt: skip
            return Decision(app=app.name, action=SKIP, reason=error)
        policy.failures, policy.last_error = 0, None
        interval = policy.poll_interval_seconds
        policy.next_poll_at = now + dt.timedelta(seconds=interval) if interval else None
        if tag is None or digest is None:
            return Decision(app=app.name, action=SKIP, reason=f"no tag of {repository} matches the policy")
        return await _decide_and_deploy(
            session, ctx=ctx, policy=policy, app=app, tag=tag, digest=digest,
            why=f"{repository}:{tag} found by polling",
        )  # fmt: skip


async def poll_forever(*, ctx: Core, every: float) -> None:
    """The poller: every `every` seconds, poll the policies that are due."""
    while True:
        await asyncio.sleep(every)
        try:
            await poll_due(ctx)
        except Exception:
            log.exception("registry poller pass failed; trying again in %.0fs", every)


# ---------------------------------------------------------------------------- promotion


async def after_success(session: AsyncSession, *, ctx: Core, deployment_id: int) -> deploys.Requested | None:
    """A registry deploy succeeded: with promote_to, promote what now runs (its exact digest)."""
    deployment = await session.get(models.Deployment, deployment_id)
    if deployment is None or deployment.trigger != TRIGGER or deployment.preview_id is not None:
        return None
    app = await session.get(models.App, deployment.app_id)
    policy = await _policy_of(session, app=app) if app else None
    if app is None or policy is None or not policy.promote_to:
        return None
    try:
        async with session.begin_nested():
            result = await promotion.promote(
                session, ctx=ctx, actor=ACTOR, app_name=app.name,
                source=await apps.env_name(session, app=app), target=policy.promote_to,
                dedupe_key=f"registry-promote:{deployment.id}:{policy.promote_to}",
            )  # fmt: skip
    except UserError as e:
        policy.last_error = f"promotion to {policy.promote_to} refused: {e}"[:2000]
        return None
    policy.last_error = None
    return result


class Promoter:
    """Listens to deploy.succeeded (as notifiers do: a durable notify job) and promotes registry deploys."""

    name = "registry-promote"

    def __init__(self, *, ctx: Core) -> None:
        self.ctx = ctx

    def wants(self, kind: str) -> bool:
        return kind == events.DEPLOY_SUCCEEDED

    def wants_event(self, audience: events.Audience) -> bool:
        return audience.trigger == TRIGGER and not audience.preview

    async def deliver(self, notice: events.Notice) -> events.Delivered | None:
        if notice.deployment is None:
            return None
        async with self.ctx.sessionmaker.begin() as session:
            await after_success(session, ctx=self.ctx, deployment_id=notice.deployment.id)
        return None

    async def close(self) -> None:
        return None


HANDLERS = {TAG_JOB: Handler(run=run_tag_job)}
