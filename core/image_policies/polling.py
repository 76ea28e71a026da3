"""Polling: list the tags of every policy that is due (claimed first, so replicas share the work),
with exponential backoff after failures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from sqlalchemy import select

from core import registries
from core.context import Core
from core.gitops import SKIP, Decision
from core.image_policies.policies import matcher_of
from core.image_policies.triggers import decide_and_deploy, registry_credentials
from storage import models

log = logging.getLogger(__name__)
BACKOFF_CAP_SECONDS = 6 * 3600
# A claimed poll is not claimed again (by this or another replica) within this while it runs.
POLL_LEASE_SECONDS = 120


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
        repository, m = policy.repository, matcher_of(policy)
        credentials = await registry_credentials(session, ctx=ctx, app=app, repository=repository)
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
        return await decide_and_deploy(
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
