"""Managing an app row's image policy (project admins): set, show, clear."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, environments, images
from core.errors import InvalidInput
from core.identity import Actor, Role
from core.image_policies.tags import Matcher, matcher
from storage import models

POLL_MIN_SECONDS = 10
POLL_MAX_SECONDS = 7 * 86400


def matcher_of(policy: models.ImagePolicy) -> Matcher:
    return matcher(kind=policy.kind, pattern=policy.pattern, sort=policy.sort)


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


async def policy_of(session: AsyncSession, *, app: models.App) -> models.ImagePolicy | None:
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
    policy = await policy_of(session, app=app)
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
    policy = await policy_of(session, app=app)
    return await _view(session, app=app, policy=policy) if policy else None


async def clear(
    session: AsyncSession, *, actor: Actor, app_name: str, environment: str | None = None
) -> bool:
    app = await app_row(session, actor=actor, name=app_name, environment=environment)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="clearing an image policy")
    policy = await policy_of(session, app=app)
    if policy is None:
        return False
    await session.delete(policy)
    await session.flush()
    await audit.record(
        session, actor=actor, action="image_policy.clear", target=f"app/{app.name}", project_id=app.project_id
    )
    return True
