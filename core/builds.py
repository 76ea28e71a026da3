"""Builds from source: a push to an app that builds (`build_enabled`) becomes a build job, not a deploy.

`queue` runs in the push's transaction (core.gitops): one build per app and commit (a redelivery or
a second push of the same sha finds the row), and a newer push supersedes the branch's queued builds.
The `build` job runs only in `shipit builder` (a worker whose one handler is `handler(...)`): the
shipit server's pod may not run buildah.  The job fetches the commit's tarball through the GitHub
client the builder was given (`SourceFetcher`), unpacks it without trusting it (core.sources),
detects the pack (core.buildpacks), runs `buildah bud` and `buildah push` (vfs storage, a deadline,
output captured), and requests the deploy of `REPO@sha256:...` through the one deploy path
(core.deploys.request, trigger `push`, the commit recorded), in the transaction that marks the
build succeeded.  A build that fails deploys nothing: the row says why (with its log's tail), an
event `build.failed` is recorded and a log line names the app, build and commit.

Every change of a build's state records its event in the same transaction (`build.queued` with the
push, `build.started` and `build.succeeded` / `build.failed` with the builder's, `build.superseded`
with the newer push or the closed pull request): each redraws the build's Slack card (bot.notifier),
and notify jobs queued beside them lose nothing in a crash.

Layers are cached in the registry, beside the app's image (`cache_repo`, default `REPO/cache`):
`buildah bud --layers --cache-from/--cache-to` reuses every step whose inputs did not change, on any
builder replica, and the builder's own store keeps only the base images between builds (vfs keeps a
full copy per layer: the cache images a build pulled or made are removed when it ends).

A builder that dies mid-build loses its lease; the job is claimed again and builds the commit again
from the start (the push of the same tag is idempotent, and the deploy is deduplicated per build).

A pull request of an app with previews queues the build of its head too (core.previews, the
webhook's transaction, `pr_number` set): the same row rules (a commit the branch built is not built
again), and a newer head supersedes only that pull request's queued build.  Its success deploys no
app, only the previews waiting at the commit: `Builder.done` (core.previews.after_build, given by
the composition root) runs in the transaction that marks any build succeeded or failed.  The same
hook (core.pr_commands.after_build) deploys the `.deploy to ENV` comments waiting on the row
(`waiting`) and ties a `.deploy` comment waiting there to its preview's deploy; a newer push does
not supersede a build a comment waits for.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Text, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import (
    apps,
    audit,
    buildpacks,
    deploys,
    environments,
    events,
    images,
    jobs,
    logctx,
    notices,
    registries,
    sources,
    validation,
)
from core.context import Core
from core.errors import Conflict, NotFound, PermanentError, TransientError, UserError
from core.identity import Actor, Role
from core.worker import Handler
from storage import models

log = logging.getLogger(__name__)

BUILD_JOB = "build"

QUEUED = "queued"
BUILDING = "building"
SUCCEEDED = "succeeded"
FAILED = "failed"
SUPERSEDED = "superseded"
STATUSES = (QUEUED, BUILDING, SUCCEEDED, FAILED, SUPERSEDED)

BUILD_QUEUED = "build.queued"
BUILD_STARTED = "build.started"  # the builder took it: in the transaction that marks it building
BUILD_SUCCEEDED = "build.succeeded"
BUILD_SUPERSEDED = "build.superseded"  # a queued build a newer push (or a closed pull request) replaced
BUILD_FAILED = notices.BUILD_FAILED  # announced on the targets that take failures (core.notices)

LOG_TAIL_BYTES = 16 * 1024
CACHE_REPO = "{image}/cache"


class BuildFailed(PermanentError):
    """The build itself failed (buildah's exit status, a refused tarball, no pack): not retried."""


class SourceFetcher(Protocol):
    """Fetches a commit's tarball (GitHub's tarball API); plugged in by the composition root."""

    async def tarball(self, *, repo: str, sha: str, dest: Path, max_bytes: int) -> None:
        """Write the gzip'd tarball of `repo` at `sha` to `dest`; TransientError when worth a retry."""
        ...


class BuildDone(Protocol):
    """What else waits for a build's end, in the transaction that records it: the previews of the
    commit (core.previews.after_build), plugged in by the composition root (core.previews imports
    this module, not the other way round)."""

    async def __call__(
        self, session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build
    ) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Builder:
    """What the builder process was configured with (SHIPIT_BUILD_* settings)."""

    fetcher: SourceFetcher
    bases: dict[str, str] = field(default_factory=lambda: dict(buildpacks.DEFAULT_BASES))
    buildah: str = "buildah"
    # buildah's own image store; None: its default (/var/lib/containers/storage).
    root: str | None = None
    runroot: str | None = None
    isolation: str = "chroot"
    workdir: str | None = None  # where sources are unpacked (a temporary directory per build)
    timeout_seconds: float = 1800.0
    max_source_bytes: int = 500 * 1024 * 1024
    # The layer cache's repository, "{image}" standing for the app's build_image (its own
    # repository, so only the app's project can write what its builds reuse); None: no cache.
    cache_repo: str | None = CACHE_REPO
    # How many builds use the store now: dangling layers are pruned only when none does.
    store: _StoreUse = field(default_factory=lambda: _StoreUse())
    # Called when a build succeeds or fails (the previews waiting for its commit); None: nothing waits.
    done: BuildDone | None = None

    def cache_of(self, image: str) -> str | None:
        return self.cache_repo.replace("{image}", image) if self.cache_repo else None


class _StoreUse:
    """Builds running on one buildah store (one builder process owns its store)."""

    def __init__(self) -> None:
        self.active = 0


def handler(builder: Builder) -> Handler:
    """The `build` job's handler, for the builder's worker only."""

    async def run(*, ctx: Core, job: jobs.JobView) -> None:
        await run_job(ctx=ctx, job=job, builder=builder)

    async def failed(*, session: AsyncSession, ctx: Core, job: jobs.JobView, error: str) -> None:
        await job_failed(session=session, ctx=ctx, job=job, error=error, done=builder.done)

    return Handler(run=run, failed=failed)


# ---------------------------------------------------------------------------- queueing (a push)


@dataclass(frozen=True, kw_only=True)
class Queued:
    build: models.Build
    created: bool  # queued by this request (a new row, or a superseded one queued again)
    deployed: bool = False  # a branch push of a commit built for a pull request: its deploy requested now


async def queue(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    sha: str,
    ref: str,
    pr_number: int | None = None,
) -> Queued:
    """Queue the build of `sha` for `app`, in the caller's transaction (once per app and commit).

    `pr_number`: for that pull request's preview (core.previews); its success deploys the previews at
    `sha`, not the app.  A push of a commit already built (or building) for a pull request adopts that
    build for the branch: the same row, its digest deployed now if it is pushed already."""
    b = models.Build
    # Locked: a builder finishing this row at the same moment either commits first (we see its end)
    # or waits for us (and then sees the preview that waits for it, or the branch that adopted it).
    existing = await session.scalar(select(b).where(b.app_id == app.id, b.sha == sha).with_for_update())
    if existing is not None and existing.status != SUPERSEDED:
        deployed = False
        if pr_number is None and existing.pr_number is not None:
            deployed = await _adopt_for_branch(session, ctx=ctx, app=app, build=existing, ref=ref)
        return Queued(build=existing, created=False, deployed=deployed)
    assert app.build_image is not None  # apps._check_consistent: build_enabled needs build_image
    now = models.utcnow()
    # A newer push supersedes the branch's builds still waiting, a newer head of a pull request that
    # pull request's (one already building finishes; its deploy is then superseded by this one's, as
    # deploys are).  A commit an open preview waits for is left queued: that preview needs it.
    superseded = await _supersede(
        session, ctx=ctx, app=app, pr_number=pr_number, now=now, why=f"superseded by the push of {sha[:7]}"
    )
    if existing is None:
        build = b(
            app_id=app.id, sha=sha, ref=ref, actor=actor.subject, status=QUEUED, image=app.build_image,
            pr_number=pr_number,
        )  # fmt: skip
        session.add(build)
    else:
        # Superseded before it ran (a newer push, a closed pull request): this request wants it again.
        build = existing
        build.ref, build.actor, build.pr_number = ref, actor.subject, pr_number
    await _run_again(session, ctx=ctx, app=app, build=build, fresh=existing is None)
    await audit.record(
        session,
        actor=actor,
        action="build.queue",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={
            "build": build.id,
            "sha": sha,
            "ref": ref,
            "image": app.build_image,
            "superseded": superseded,
            **({"pr": pr_number} if pr_number is not None else {}),
        },
    )
    _logger(app=app, build=build).info(
        "build: queued %s@%s for %s%s",
        ref, sha[:7], app.build_image, f" (pull request #{pr_number})" if pr_number is not None else "",
    )  # fmt: skip
    return Queued(build=build, created=True)


async def _run_again(
    session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build, fresh: bool
) -> None:
    """Queue a run of `build` (a new row, or one superseded or failed before): its job and its queued
    event.  Each run has its own job key, so a run queued again is not taken for the last one."""
    assert app.build_image is not None  # queue() and retry() check build_enabled and build_image
    if not fresh:
        build.runs += 1
        build.status = QUEUED
        build.image = app.build_image
        build.error = build.log = build.pack = build.digest = None
        build.started_at = build.finished_at = None
    await session.flush()
    await jobs.enqueue(
        session,
        kind=BUILD_JOB,
        payload={"build_id": build.id, "app": app.name},
        dedupe_key=_job_key(build.id, build.runs),
        concurrency_key=f"build:{app.id}",
        max_attempts=3,
    )
    await _emit(session, ctx=ctx, build=build, app=app, kind=BUILD_QUEUED)


async def lock(session: AsyncSession, *, app: models.App, sha: str) -> None:
    """Lock the build of `sha` (if any) before a pull request's preview row is written: the lock
    order of a builder ending it (build, then the previews waiting for it), so the two never deadlock."""
    b = models.Build
    await session.execute(select(b.id).where(b.app_id == app.id, b.sha == sha).with_for_update())


async def _adopt_for_branch(
    session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build, ref: str
) -> bool:
    """The tracked branch reached a commit built for a pull request: the build is the branch's too."""
    if build.status in (QUEUED, BUILDING):
        build.pr_number, build.ref = None, ref  # its success deploys the app as well
        return False
    if build.status != SUCCEEDED or build.digest is None:
        return False  # failed: `shipit builds retry` runs it again, for the branch this time
    # deployment_id named the preview's deploy: from now on the branch's (None when it is refused).
    build.pr_number, build.ref, build.deployment_id = None, ref, None
    await _deploy_branch(session, ctx=ctx, app=app, build=build)
    return build.deployment_id is not None


async def _supersede(
    session: AsyncSession, *, ctx: Core, app: models.App, pr_number: int | None, now: dt.datetime, why: str
) -> list[int]:
    """Supersede the queued builds of the branch (`pr_number` None) or of one pull request, cancel
    their jobs and record their `build.superseded` events (their Slack cards say so); a commit an
    open preview or a `.deploy to ENV` comment waits for stays queued."""
    b = models.Build
    waited_for = select(models.Preview.head_sha).where(
        models.Preview.app_id == app.id, models.Preview.closed_at.is_(None)
    )
    mine = b.pr_number.is_(None) if pr_number is None else b.pr_number == pr_number
    # Nor one a `.deploy` comment waits for (core.pr_commands; to ENV or the preview): it asked for that commit.
    # None is stored as JSON's null (models.Json), an old row's as SQL's NULL.
    no_comment_waits = func.coalesce(cast(b.waiting, Text), "null") == "null"
    rows = (
        await session.execute(
            update(b)
            .where(b.app_id == app.id, b.status == QUEUED, mine, b.sha.not_in(waited_for), no_comment_waits)
            .values(status=SUPERSEDED, finished_at=now, error=why)
            .returning(b.id, b.runs, b.sha, b.ref, b.actor)
        )
    ).all()
    if not rows:
        return []
    await jobs.cancel_where(session, dedupe_keys=[_job_key(i, runs) for i, runs, *_ in rows])
    await events.emit_all(
        session,
        ctx=ctx,
        events=[
            events.NewEvent(
                kind=BUILD_SUPERSEDED,
                dedupe_key=f"build:{i}:{BUILD_SUPERSEDED}" + (f":{runs}" if runs else ""),
                project_id=app.project_id,
                app_id=app.id,
                payload={
                    "build": i,
                    "app": app.name,
                    "sha": sha,
                    "ref": ref,
                    "actor": actor,
                    "status": SUPERSEDED,
                    "error": why,
                },
            )
            for i, runs, sha, ref, actor in rows
        ],
    )
    return [i for i, *_ in rows]


async def cancel_for_pull_request(
    session: AsyncSession, *, ctx: Core, app: models.App, number: int
) -> list[int]:
    """A pull request closed: its builds still queued are not run (call it once its preview is closed).

    One already building finishes and deploys nothing: the previews it would deploy are closed."""
    ids = await _supersede(
        session,
        ctx=ctx,
        app=app,
        pr_number=number,
        now=models.utcnow(),
        why=f"pull request #{number} was closed",
    )
    if ids:
        logctx.ContextLogger(log, {"app": app.name}).info(
            "build: %s of pull request #%s not run: it was closed", ", ".join(f"#{i}" for i in ids), number
        )
    return ids


def _job_key(build_id: int, runs: int = 0) -> str:
    return f"build:{build_id}" + (f":{runs}" if runs else "")


async def retry(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, build_id: int, env: str | None = None
) -> models.Build:
    """Build a failed build's commit again (developer role): the same row, queued once more.

    A push of the same commit does not (one build per app and commit), so this is how a build that
    failed for a passing reason (a registry down past the job's retries, a base image missing) is
    run again without a new commit.  Refused while a newer build of the same line (the branch's, or
    the same pull request's) is queued, building or succeeded: its commit would be deployed over by
    this older one.  A pull request's build, once built, deploys the previews still at its commit."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="retrying builds")
    b = models.Build
    build = await session.get(b, build_id)
    if build is None or build.app_id != app.id:
        raise NotFound(f"{app_name} has no build #{build_id}")
    if build.status != FAILED:
        raise Conflict(
            f"build #{build_id} is {build.status}: only a failed build is run again", field="build_id"
        )
    if not app.build_enabled or app.build_image is None:
        raise Conflict(f"{app.name} does not build from source now (apps update --build)", field="build_id")
    # Of the same line only: the branch's builds, or one pull request's (each deploys its own place).
    line = b.pr_number.is_(None) if build.pr_number is None else b.pr_number == build.pr_number
    newer = await session.scalar(
        select(b.id)
        .where(b.app_id == app.id, b.id > build.id, b.status.in_((QUEUED, BUILDING, SUCCEEDED)), line)
        .order_by(b.id)
        .limit(1)
    )
    if newer is not None:
        raise Conflict(f"build #{newer} of a newer commit is {app.name}'s: not built again", field="build_id")
    await _run_again(session, ctx=ctx, app=app, build=build, fresh=False)
    await audit.record(
        session,
        actor=actor,
        action="build.retry",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"build": build.id, "sha": build.sha, "run": build.runs + 1},
    )
    _logger(app=app, build=build).info("build: queued again (run %d) by %s", build.runs + 1, actor.subject)
    return build


async def _emit(session: AsyncSession, *, ctx: Core, build: models.Build, app: models.App, kind: str) -> None:
    await events.emit(
        session,
        ctx=ctx,
        kind=kind,
        dedupe_key=f"build:{build.id}:{kind}" + (f":{build.runs}" if build.runs else ""),
        project_id=app.project_id,
        app_id=app.id,
        deployment_id=build.deployment_id,
        payload={
            "build": build.id,
            "app": app.name,
            "sha": build.sha,
            "ref": build.ref,
            "actor": build.actor,  # who pushed: what a failed build's notice names
            "status": build.status,
            "pack": build.pack,
            "digest": build.digest,
            "error": build.error,
        },
    )


async def logs_command(session: AsyncSession, *, app: models.App, build: models.Build) -> str:
    """`shipit builds logs APP ID`, with `--env` when the project has several environments (the
    deploy card's rule, as the notices of a failed build say it)."""
    several = len(await environments.list_for(session, project_id=app.project_id)) > 1
    env = await apps.env_name(session, app=app) if several else None
    return notices.build_logs_command(app=app.name, build=build.id, env=env)


def _logger(*, app: models.App, build: models.Build) -> logctx.ContextLogger:
    return logctx.ContextLogger(log, {"app": app.name, "build": build.id, "sha": build.sha[:12]})


# ---------------------------------------------------------------------------- reading


async def list_for(
    session: AsyncSession, *, actor: Actor, app_name: str, env: str | None = None, limit: int = 20
) -> list[models.Build]:
    """The app's builds, newest first (viewer role; an app of a project you hold no role in is missing)."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading builds")
    b = models.Build
    return list(await session.scalars(select(b).where(b.app_id == app.id).order_by(b.id.desc()).limit(limit)))


async def get_for(
    session: AsyncSession, *, actor: Actor, app_name: str, build_id: int, env: str | None = None
) -> models.Build:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="reading builds")
    build = await session.get(models.Build, build_id)
    if build is None or build.app_id != app.id:
        raise NotFound(f"{app_name} has no build #{build_id}")
    return build


# ---------------------------------------------------------------------------- running (the builder)


def actor_of(build: models.Build) -> Actor:
    # The push's actor (core.gitops.github_actor): admin on the linked app only, by the link itself.
    login = build.actor.removeprefix("github:")
    return Actor(subject=build.actor, channel="github", display=login, is_admin=True)


async def _start(
    ctx: Core, build_id: int
) -> tuple[models.Build, models.App, registries.Credentials | None] | None:
    """Mark the build building (its own transaction); None when there is nothing to build any more."""
    async with ctx.sessionmaker.begin() as session:
        build = await session.get(models.Build, build_id)
        if build is None or build.status not in (QUEUED, BUILDING):
            return None  # superseded, or finished by an earlier run of this job
        app = await session.get(models.App, build.app_id)
        if app is None:
            return None
        started = build.status == QUEUED  # BUILDING: a builder died mid-build and this one takes over
        build.status = BUILDING
        build.started_at = models.utcnow()
        build.error = None
        if started:
            await _emit(session, ctx=ctx, build=build, app=app, kind=BUILD_STARTED)
        host = images.parse(build.image + ":x", field="build_image").domain
        credentials = await registries.credentials_for(session, ctx=ctx, project_id=app.project_id, host=host)
        await session.flush()
        session.expunge_all()  # plain values for the build, which runs outside any transaction
    return build, app, credentials


async def run_job(*, ctx: Core, job: jobs.JobView, builder: Builder) -> None:
    build_id = int(job.payload["build_id"])
    started = await _start(ctx, build_id)
    if started is None:
        return
    build, app, credentials = started
    blog = _logger(app=app, build=build)
    blog.info("build: building %s@%s of %s", build.ref, build.sha[:7], app.git_repo)
    output = _Output(secrets=_secrets_of(credentials))
    try:
        pack, digest = await _build(
            ctx=ctx, builder=builder, build=build, app=app, credentials=credentials, output=output
        )
    except (PermanentError, UserError) as e:
        # buildah failed, a refused tarball, no pack, GitHub's 404...: fails now, with the log so far.
        await _finish_failed(ctx, build_id=build_id, error=str(e), log_tail=output.tail(), done=builder.done)
        return
    except TransientError as e:
        output.note(f"will retry: {e}")
        async with ctx.sessionmaker.begin() as session:
            row = await session.get(models.Build, build_id)
            if row is not None:
                row.log = output.tail()
        raise
    await _finish_succeeded(
        ctx, build_id=build_id, pack=pack, digest=digest, log_tail=output.tail(), done=builder.done
    )


async def _build(
    *,
    ctx: Core,
    builder: Builder,
    build: models.Build,
    app: models.App,
    credentials: registries.Credentials | None,
    output: _Output,
) -> tuple[str, str]:
    """Fetch, unpack, detect, build, push: (pack, digest).  Everything on disk goes with the tmp dir."""
    if not app.git_repo:
        raise BuildFailed(f"{app.name} has no git_repo to build from")
    work = await asyncio.to_thread(_workdir, builder.workdir, build.id)
    try:
        archive = work / "source.tar.gz"
        output.note(f"fetching {app.git_repo}@{build.sha}")
        await builder.fetcher.tarball(
            repo=app.git_repo, sha=build.sha, dest=archive, max_bytes=builder.max_source_bytes
        )
        prepared = await asyncio.to_thread(
            _prepare, work=work, app=app, builder=builder, credentials=credentials, output=output
        )
        tag = f"{build.image}:{build.sha}"
        validation.image(tag, field="build_image")
        cache = builder.cache_of(build.image)
        insecure = set(ctx.config.registry_insecure_hosts)
        host = images.parse(tag, field="build_image").domain
        # bud's --tls-verify covers its pulls and, with a cache, the cache's pulls and pushes too.
        bud_hosts = _from_hosts(prepared.text) + ([host] if cache else [])
        bud_insecure = any(h in insecure for h in bud_hosts)
        layers = ["--layers", "--cache-from", cache, "--cache-to", cache] if cache else ["--layers=false"]
        deadline = asyncio.get_running_loop().time() + builder.timeout_seconds
        env = _environment(work)
        authfile = str(work / "auth.json")
        digestfile = work / "digest"
        builder.store.active += 1
        try:
            await _buildah(
                builder, output, deadline=deadline, env=env,
                args=[
                    "bud", "--isolation", builder.isolation, *layers, "--authfile", authfile,
                    f"--tls-verify={'false' if bud_insecure else 'true'}",
                    "-f", str(prepared.containerfile), "-t", tag, str(prepared.context),
                ],
            )  # fmt: skip
            await _buildah(
                builder, output, deadline=deadline, env=env,
                args=[
                    "push", "--authfile", authfile, f"--tls-verify={'false' if host in insecure else 'true'}",
                    "--digestfile", str(digestfile), tag, f"docker://{tag}",
                ],
            )  # fmt: skip
            digest = (await asyncio.to_thread(digestfile.read_text)).strip()
        finally:
            builder.store.active -= 1
            # vfs keeps a full copy per image: never let built images pile up on the builder.
            await _forget(builder, env=env, tag=tag, cache=cache)
        if not digest.startswith("sha256:"):
            raise BuildFailed(f"buildah push wrote no digest ({validation.shown(digest)})")
        output.note(f"pushed {tag} as {digest}")
        return prepared.pack, digest
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def _forget(builder: Builder, *, env: dict[str, str], tag: str, cache: str | None) -> None:
    """Remove what a build left in the store but the base images: its tag, the cache images it
    pulled or made (they live in the registry), and, when no other build runs, dangling layers."""
    with contextlib.suppress(Exception):
        await _buildah(builder, None, deadline=None, env=env, args=["rmi", "--force", tag])
    if cache is None:
        return
    with contextlib.suppress(Exception):
        listed = await _buildah(
            builder, None, deadline=None, env=env, args=["images", "--format", "{{.Name}}:{{.Tag}}"]
        )
        mine = [name for name in listed.split() if name.rpartition(":")[0] == cache]
        if mine:
            await _buildah(builder, None, deadline=None, env=env, args=["rmi", "--force", *mine])
    if builder.store.active == 0:
        # An intermediate layer of a running build is dangling for a moment: prune only when idle.
        with contextlib.suppress(Exception):
            await _buildah(builder, None, deadline=None, env=env, args=["rmi", "--prune"])


def _workdir(parent: str | None, build_id: int) -> Path:
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"shipit-build-{build_id}-", dir=parent))


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    pack: str
    context: Path
    containerfile: Path
    text: str


def _prepare(
    *,
    work: Path,
    app: models.App,
    builder: Builder,
    credentials: registries.Credentials | None,
    output: _Output,
) -> _Prepared:
    """Unpack the tarball, detect the pack, write the Containerfile and the registry auth file (0600)."""
    archive = work / "source.tar.gz"
    unpacked = sources.unpack(archive, dest=work / "src", max_bytes=builder.max_source_bytes)
    archive.unlink()
    output.note(f"unpacked {unpacked.files} entries, {unpacked.bytes} bytes")
    context = sources.subdirectory(unpacked.root, context=app.build_context)
    plan = buildpacks.detect(context)
    output.note(f"pack {plan.pack}: {plan.reason}")
    if plan.containerfile is not None:
        containerfile = context / plan.containerfile
        text = containerfile.read_text(errors="replace")
    else:
        text = buildpacks.containerfile(plan, bases=builder.bases, files=buildpacks.top_level_files(context))
        containerfile = work / "Containerfile"  # outside the context: the source cannot overwrite it
        containerfile.write_text(text)
        output.note("generated Containerfile:\n" + text)
    fd = os.open(work / "auth.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(_auths(credentials), f)
    return _Prepared(pack=plan.pack, context=context, containerfile=containerfile, text=text)


def _auths(credentials: registries.Credentials | None) -> dict[str, Any]:
    if credentials is None:
        return {"auths": {}}
    raw = f"{credentials.username}:{credentials.password}".encode()
    return {"auths": {credentials.host: {"auth": base64.b64encode(raw).decode()}}}


def _secrets_of(credentials: registries.Credentials | None) -> list[str]:
    if credentials is None:
        return []
    raw = f"{credentials.username}:{credentials.password}".encode()
    return [s for s in (credentials.password, base64.b64encode(raw).decode()) if s]


def _from_hosts(containerfile: str) -> list[str]:
    """The registry hosts a Containerfile's FROM lines pull from (to know which are plain HTTP)."""
    hosts = []
    for line in containerfile.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM":
            ref = next((w for w in words[1:] if not w.startswith("--")), "")
            with contextlib.suppress(UserError):
                hosts.append(images.parse(ref, field="FROM").domain)
    return hosts


_PASSED = frozenset(
    {"PATH", "LANG", "LC_ALL", "TZ", "XDG_RUNTIME_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
     "http_proxy", "https_proxy", "no_proxy"}
)  # fmt: skip


def _environment(work: Path) -> dict[str, str]:
    # No inherited secrets (SHIPIT_*) in buildah's environment: only what it and its proxies need.
    env = {k: v for k, v in os.environ.items() if k in _PASSED or k.startswith(("CONTAINERS_", "BUILDAH_"))}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["HOME"] = str(work)
    env["TMPDIR"] = str(work)
    return env


class _Output:
    """A bounded tail of what the build printed, with the registry credentials scrubbed."""

    def __init__(self, *, secrets: Sequence[str], limit: int = LOG_TAIL_BYTES) -> None:
        self.secrets = list(secrets)
        self.limit = limit
        self.chunks: collections.deque[str] = collections.deque()
        self.size = 0

    def add(self, text: str) -> None:
        for s in self.secrets:
            text = text.replace(s, "***")
        self.chunks.append(text)
        self.size += len(text)
        while self.size > self.limit * 2 and len(self.chunks) > 1:
            self.size -= len(self.chunks.popleft())

    def note(self, text: str) -> None:
        self.add(f"--> {text}\n")

    def tail(self) -> str:
        text = "".join(self.chunks)
        for s in self.secrets:  # again over the whole text: a secret split between two reads
            text = text.replace(s, "***")
        return text[-self.limit :]


async def _buildah(
    builder: Builder, output: _Output | None, *, args: list[str], deadline: float | None, env: dict[str, str]
) -> str:
    """Run buildah; its output goes to `output` (the build's log) or, when None, is returned."""
    command = [builder.buildah, "--storage-driver", "vfs"]
    if builder.root:
        command += ["--root", builder.root]
    if builder.runroot:
        command += ["--runroot", builder.runroot]
    command += args
    if output is not None:
        output.add(f"$ buildah {' '.join(args)}\n")
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a deadline kills buildah's children too
        )
    except FileNotFoundError:
        raise BuildFailed(f"{builder.buildah} is not installed on this builder") from None
    assert process.stdout is not None

    kept: list[str] = []

    async def pump() -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(8192):
            text = chunk.decode("utf-8", errors="replace")
            if output is not None:
                output.add(text)
            elif sum(map(len, kept)) < LOG_TAIL_BYTES * 16:
                kept.append(text)
        await process.wait()

    loop = asyncio.get_running_loop()
    timeout = None if deadline is None else max(0.0, deadline - loop.time())
    try:
        await asyncio.wait_for(pump(), timeout=timeout)
    except (TimeoutError, asyncio.CancelledError) as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        raise BuildFailed(f"buildah {args[0]} did not finish within the build's deadline") from None
    if process.returncode != 0:
        raise BuildFailed(f"buildah {args[0]} failed (exit status {process.returncode}); see the build's log")
    return "".join(kept)


async def _finish_failed(
    ctx: Core, *, build_id: int, error: str, log_tail: str | None, done: BuildDone | None = None
) -> None:
    async with ctx.sessionmaker.begin() as session:
        await _mark_failed(session, ctx=ctx, build_id=build_id, error=error, log_tail=log_tail, done=done)


async def _mark_failed(
    session: AsyncSession,
    *,
    ctx: Core,
    build_id: int,
    error: str,
    log_tail: str | None,
    done: BuildDone | None = None,
) -> None:
    build = await session.get(models.Build, build_id, with_for_update=True)  # see queue()
    if build is None or build.status not in (QUEUED, BUILDING):
        return
    app = await session.get(models.App, build.app_id)
    if app is None:
        return
    build.status = FAILED
    build.error = error[:2000]
    if log_tail is not None:
        build.log = log_tail
    build.finished_at = models.utcnow()
    await _emit(session, ctx=ctx, build=build, app=app, kind=BUILD_FAILED)
    if done is not None:
        await done(session, ctx=ctx, app=app, build=build)
    _logger(app=app, build=build).warning(
        "build: %s@%s failed, nothing deployed: %s", build.ref, build.sha[:7], error
    )


async def job_failed(
    *, session: AsyncSession, ctx: Core, job: jobs.JobView, error: str, done: BuildDone | None = None
) -> None:
    """The job gave up (retries spent, an unexpected error): the build fails, nothing is deployed."""
    await _mark_failed(
        session, ctx=ctx, build_id=int(job.payload["build_id"]), error=error, log_tail=None, done=done
    )


async def _finish_succeeded(
    ctx: Core, *, build_id: int, pack: str, digest: str, log_tail: str, done: BuildDone | None = None
) -> None:
    """Mark it succeeded and request the deploy of the digest (the app's for a push, the previews' at
    the commit for a pull request), in one transaction."""
    async with ctx.sessionmaker.begin() as session:
        build = await session.get(models.Build, build_id, with_for_update=True)  # see queue()
        if build is None or build.status != BUILDING:
            return
        app = await session.get(models.App, build.app_id)
        if app is None:
            return
        build.status = SUCCEEDED
        build.pack = pack
        build.digest = digest
        build.log = log_tail
        build.finished_at = models.utcnow()
        if build.pr_number is None:
            await _deploy_branch(session, ctx=ctx, app=app, build=build)
        if done is not None:
            await done(session, ctx=ctx, app=app, build=build)
        await _emit(session, ctx=ctx, build=build, app=app, kind=BUILD_SUCCEEDED)
        _logger(app=app, build=build).info(
            "build: %s@%s pushed as %s; %s",
            build.ref, build.sha[:7], f"{build.image}@{digest}",
            f"deploy #{build.deployment_id} requested" if build.deployment_id
            else build.error or f"for pull request #{build.pr_number}",
        )  # fmt: skip


async def _deploy_branch(session: AsyncSession, *, ctx: Core, app: models.App, build: models.Build) -> None:
    """Request the app's deploy of the built digest, as the push's actor (`build.error` says why not)."""
    assert build.digest is not None
    if app.auto_deploy_paused:
        build.error = f"built, not deployed: auto-deploy is paused ({app.paused_reason or 'paused'})"
        return
    try:
        async with session.begin_nested():
            result = await deploys.request(
                session,
                ctx=ctx,
                actor=actor_of(build),
                app_name=app.name,
                image=f"{build.image}@{build.digest}",
                trigger="push",
                dedupe_key=validation.dedupe_key(f"build:{build.id}"),
                git_sha=build.sha,
                git_ref=build.ref,
                reason=f"build #{build.id} of {build.sha[:7]}",
                env=await apps.env_name(session, app=app),
            )
        build.deployment_id = result.deployment.id
    except UserError as e:
        build.error = f"built, not deployed: {e}"
