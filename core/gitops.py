"""Git-driven deploys: which app a push (or a green CI run) deploys, and with which image.

Channels (the GitHub webhook) parse their payloads into plain values and call
these functions inside the transaction that records the delivery, so the
answer is sent as soon as the deploys are queued.  Nothing here talks to
GitHub or Kubernetes.

An app that builds from source (`build_enabled`) gets a build queued instead (core.builds): its
deploy is requested by the builder once the image is pushed, as the same actor.

Who acts: a push deploys as `github:<sender login>` with admin rights *on the
linked app only*.  The authorisation is the link itself: an admin of the
project set `git_repo` on the app, which says "pushes to this repository may
deploy this app".  The sender is recorded for the audit log and the cards,
not checked against project roles (most committers never talk to shipit).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, builds, deploys, logctx, readcache, validation
from core.context import Core
from core.errors import UserError
from core.identity import Actor
from storage import models

log = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

DEPLOY = "deploy"
BUILD = "build"  # the app builds from source: a build is queued, its deploy follows (core.builds)
SKIP = "skip"
WAIT = "wait"


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """What happened for one app: deployed (with the deploy id), skipped or waiting, and why."""

    app: str
    action: str  # deploy | skip | wait
    reason: str
    deployment_id: int | None = None
    image: str | None = None
    preview: str | None = None
    build_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    summary: str
    decisions: list[Decision] = field(default_factory=list)

    @property
    def deployed(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == DEPLOY]


@functools.lru_cache(maxsize=1024)  # an Actor is frozen: one per sender will do (issue 13: once a push)
def github_actor(login: str) -> Actor:
    """The identity a GitHub event acts as (see the module docstring for why it is admin)."""
    login = login or "unknown"
    return Actor(subject=f"github:{login}", channel="github", display=login, is_admin=True)


def parse_ref(ref: str) -> tuple[str, str] | None:
    """refs/heads/main -> ("branch", "main"); refs/tags/v1 -> ("tag", "v1"); anything else None."""
    # Written out (not a loop over the prefixes): twice per push of a webhook batch (issue 13).
    if ref.startswith("refs/heads/"):
        return ("branch", ref[11:]) if len(ref) > 11 else None
    if ref.startswith("refs/tags/"):
        return ("tag", ref[10:]) if len(ref) > 10 else None
    return None


def image_tag_safe(value: str) -> str:
    """Branch names may hold characters an image tag cannot (feature/x -> feature-x), as CI tools do."""
    return _TAG_UNSAFE.sub("-", value)[:128]


def render_image(template: str, *, sha: str, branch: str = "", tag: str = "") -> str:
    return template.format(sha=sha, short_sha=sha[:7], branch=image_tag_safe(branch), tag=image_tag_safe(tag))


def tracks(app: models.App | Tracking, *, kind: str, name: str, default_branch: str | None) -> bool:
    """Does `app` deploy pushes to this branch/tag?  git_branch is a glob (release/*, v*)."""
    if app.git_ref_type != kind:
        return False
    pattern = app.git_branch or (default_branch if kind == "branch" else "*")
    return bool(pattern) and fnmatch.fnmatchcase(name, pattern or "")


def _describe_tracking(apps: Iterable[models.App | Tracking]) -> str:
    return ", ".join(f"{a.name}: {a.git_ref_type} {a.git_branch or 'default'}" for a in apps)


def _for_transaction(session: AsyncSession, name: str) -> dict[Any, Any]:
    """A dict kept in the session for the rest of its current transaction (a new one starts empty)."""
    transaction = session.sync_session.get_transaction()
    held = session.info.get(name)
    if held is None or held[0] is not transaction:
        held = session.info[name] = (transaction, {})
    cache: dict[Any, Any] = held[1]
    return cache


async def linked_apps(session: AsyncSession, *, repo: str) -> list[models.App]:
    """Apps whose git_repo is `repo` (GitHub treats owner/name case-insensitively).

    Remembered for the rest of the transaction: deliveries are ingested in batches sharing one
    transaction (webhooks.ingest), and a burst of pushes to one repository then costs one query.
    Nothing in that transaction adds, removes or relinks apps, and the rows are the session's own
    identity-mapped objects, so changes made to them (app.image) are seen through the cache.
    """
    cache: dict[str, list[models.App]] = _for_transaction(session, "gitops.linked_apps")
    key = repo.lower()
    if key not in cache:
        # From the process's copies while the read-cache stamp is unchanged (core.readcache): a batch
        # then reads the stamp, one small row, instead of the apps (issue 13).
        cache[key] = await readcache.rows(
            session,
            ("gitops.linked_apps", key),
            lambda: (
                select(models.App).where(func.lower(models.App.git_repo) == key).order_by(models.App.name)
            ),
        )
    return list(cache[key])


@dataclass(frozen=True, kw_only=True, slots=True)
class Tracking:
    """What a push needs of a linked app to tell whether it deploys it (an app's columns, no ORM row)."""

    id: int
    name: str
    git_ref_type: str
    git_branch: str | None
    deploy_on: str
    build_enabled: bool = False


async def linked_tracking(session: AsyncSession, *, repo: str) -> tuple[Tracking, ...]:
    """What `linked_apps` would say of each app's tracking, in the same order, without ORM rows.

    Most pushes are to a branch no app tracks: those are answered from this alone, so a batch of them
    attaches no row to its session (issue 13: attaching the apps, and flushing and expunging them at
    commit, was a fifth of such a batch's CPU).  Remembered for the transaction, as `linked_apps`.
    """
    cache: dict[str, tuple[Tracking, ...]] = _for_transaction(session, "gitops.linked_tracking")
    key = repo.lower()
    found = cache.get(key)
    if found is None:

        async def load() -> tuple[Tracking, ...]:
            a = models.App
            result = await session.execute(
                select(a.id, a.name, a.git_ref_type, a.git_branch, a.deploy_on, a.build_enabled)
                .where(func.lower(a.git_repo) == key)
                .order_by(a.name)
            )
            return tuple(
                Tracking(id=i, name=n, git_ref_type=t, git_branch=b, deploy_on=d, build_enabled=bool(e))
                for i, n, t, b, d, e in result
            )

        found = cache[key] = await readcache.value(session, ("gitops.linked_tracking", key), load)
    return found


async def _untracked(
    session: AsyncSession, *, repo: str, kind: str, name: str, default_branch: str | None
) -> str | None:
    """Why no app deploys this push (the answer's summary), or None when one may; remembered for the
    transaction (a batch's pushes are mostly to a few branches)."""
    known: dict[tuple[str, str, str, str | None], str | None] = _for_transaction(session, "gitops.untracked")
    key = (repo, kind, name, default_branch)
    if key not in known:
        tracking = await linked_tracking(session, repo=repo)
        if not tracking:
            known[key] = f"no app is linked to {repo}; nothing to deploy"
        elif not any(tracks(t, kind=kind, name=name, default_branch=default_branch) for t in tracking):
            known[key] = (
                f"no app deploys {kind} {name} of {repo} (tracked: {_describe_tracking(tracking)}); "
                "nothing to deploy"
            )
        else:
            known[key] = None
    return known[key]


@functools.lru_cache(maxsize=1024)
def _ref_digest(ref: str) -> str:
    # A batch's pushes are mostly to one ref, each looked up twice (issue 13: CPU per push).
    return hashlib.sha256(ref.encode()).hexdigest()[:16]


def _dedupe_key(*, app_id: int, ref: str, sha: str) -> str:
    # One deploy per app, ref and commit: a push and the CI run that follows it, or two
    # CI systems reporting success for the same commit, deploy once.
    return f"git:{app_id}:{_ref_digest(ref)}:{sha}"


def _stored_key(*, app_id: int, ref: str, sha: str) -> str:
    return _stored_key_of(app_id, ref, sha)


@functools.lru_cache(maxsize=1024)
def _stored_key_of(app_id: int, ref: str, sha: str) -> str:
    # As the deployment row holds it (a key too long for its column is kept as its hash).  Remembered:
    # a batch's push is keyed twice, by `prefetch_pushes` and by `_deploy` (issue 13: CPU per push).
    return validation.dedupe_key(_dedupe_key(app_id=app_id, ref=ref, sha=sha))


# ------------------------------------------------------------------ batches of pushes (issue 13)
#
# Deliveries arriving together share one transaction (webhooks.ingest).  Three things make a push in
# such a batch cheaper, and none changes what it does:
# - `prefetch_pushes` looks up the dedupe keys of the whole batch's pushes in one SELECT, so a commit
#   deployed before is answered without running a deploy request, and a new one runs it without
#   looking its key up again (on SQLite the same SELECT reads what the batch numbers its rows from:
#   core.deploys.seed);
# - `all_or_nothing` drops the SAVEPOINT around each app's deploy: a deploy that a UserError refuses
#   (a window, a freeze...) then fails the whole batch instead (`RunAlone`), and the caller runs each
#   delivery again in its own transaction, where the savepoint keeps the other apps' deploys.
# - in such a transaction the deploy requests also leave some of their rows (the supersede of a
#   deploy the batch queued, the events, the audit rows, the prune) to one statement each for the
#   whole batch (core.deploys.defer), written by `finish` before the commit.

_ALL_OR_NOTHING = "gitops.all_or_nothing"
_KNOWN = "gitops.known"


class RunAlone(Exception):
    """A deploy in an all-or-nothing transaction was refused: run each delivery on its own instead."""


def all_or_nothing(session: AsyncSession) -> None:
    """This transaction is thrown away whole if any deploy in it is refused (see above); the caller
    must then run its deliveries again one per transaction, where refusals are answered.

    Its deploy requests also write some of their rows once for the whole batch (deploys.defer):
    the caller awaits `finish` after the last delivery, before it commits."""
    session.info[_ALL_OR_NOTHING] = session.sync_session.get_transaction()
    deploys.defer(session)


async def finish(session: AsyncSession) -> None:
    """Write what the deploys of an `all_or_nothing` transaction left for the whole batch."""
    await deploys.flush(session)


def _is_all_or_nothing(session: AsyncSession) -> bool:
    held = session.info.get(_ALL_OR_NOTHING)
    return held is not None and held is session.sync_session.get_transaction()


@dataclass(frozen=True, kw_only=True)
class PushRef:
    repo: str
    ref: str
    sha: str
    deleted: bool = False
    default_branch: str | None = None


@dataclass(kw_only=True)
class _Known:
    """The dedupe keys a transaction looked up at its start, and what it did with them since."""

    transaction: Any
    # key -> (deployment id, status, image) of the deploy that used it, as read by the look-up.
    earlier: dict[str, tuple[int, str, str]]
    checked: set[str]  # every key looked up (found or not)
    used: set[str] = field(default_factory=set)  # keys a deploy request of this transaction was run for
    # Apps this transaction queued a deploy for: the supersede may have changed their earlier rows.
    touched: set[int] = field(default_factory=set)


def _known(session: AsyncSession) -> _Known | None:
    known: _Known | None = session.info.get(_KNOWN)
    if known is None or known.transaction is not session.sync_session.get_transaction():
        return None
    return known


async def prefetch_pushes(session: AsyncSession, *, pushes: Iterable[PushRef]) -> None:
    """Look up, in one SELECT, whether the deploys these pushes would queue were queued before."""
    keys: dict[str, int] = {}  # dedupe key -> the app it would deploy
    linked: dict[str, list[Tracking]] = {}
    for push in pushes:
        if push.deleted or push.sha == ZERO_SHA:
            continue
        parsed = parse_ref(push.ref)
        if parsed is None:
            continue
        kind, name = parsed
        repo = push.repo.lower()
        if repo not in linked:
            # Apps that build from source queue a build, not a deploy: no deploy key to look up.
            linked[repo] = [
                a
                for a in await linked_tracking(session, repo=repo)
                if a.deploy_on != "ci" and not a.build_enabled
            ]
        for app in linked[repo]:
            if tracks(app, kind=kind, name=name, default_branch=push.default_branch):
                keys[_stored_key(app_id=app.id, ref=push.ref, sha=push.sha)] = app.id
    if not keys:
        return
    # SQLite: with what the batch numbers its rows from, in one statement (deploys.seed).
    earlier = await deploys.seed(session, app_ids=set(keys.values()), dedupe_keys=list(keys))
    if earlier is None:
        rows = await session.execute(_PREFETCH, {"p_keys": list(keys)})
        earlier = {key: (id_, status, image) for key, id_, status, image in rows if key is not None}
        # PostgreSQL: the apps the new keys deploy are locked and their rows numbered for the whole
        # batch (deploys.reserve): a monorepo push's twenty deploys in one INSERT per table.
        wanted: dict[int, int] = {}
        for key, app_id in keys.items():
            if key not in earlier:
                wanted[app_id] = wanted.get(app_id, 0) + 1
        await deploys.reserve(session, wanted=wanted)
    transaction = session.sync_session.get_transaction()
    known = _known(session)
    if known is None:
        session.info[_KNOWN] = _Known(transaction=transaction, earlier=earlier, checked=set(keys))
    else:
        known.earlier.update(earlier)
        known.checked |= keys.keys()


def _build_prefetch() -> Any:
    d = models.Deployment
    # An expanding IN: one cached statement whatever the batch's size (a plain IN-list of N keys
    # would be compiled again for every N).
    return select(d.dedupe_key, d.id, d.status, d.image).where(
        d.dedupe_key.in_(bindparam("p_keys", expanding=True))
    )


_PREFETCH = _build_prefetch()


async def _deploy(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    kind: str,
    name: str,
    sha: str,
    ref: str,
    why: str,
) -> Decision:
    if app.auto_deploy_paused:
        return Decision(
            app=app.name,
            action=SKIP,
            reason=f"auto-deploy is paused ({app.paused_reason or 'paused'}); "
            f"resume {app.name} to deploy pushes",
        )
    if app.locked_reason:
        return Decision(
            app=app.name, action=SKIP, reason=f"{app.name} is locked by {app.locked_by}: {app.locked_reason}"
        )
    if app.build_enabled:
        return await _build(session, ctx=ctx, app=app, actor=actor, sha=sha, ref=ref)
    assert app.image_template is not None  # apps.create refuses a git_repo without one
    image = render_image(
        app.image_template,
        sha=sha,
        branch=name if kind == "branch" else "",
        tag=name if kind == "tag" else "",
    )
    key = _stored_key(app_id=app.id, ref=ref, sha=sha)
    known = _known(session)
    fresh = False
    if known is not None and key in known.checked and key not in known.used:
        hit = known.earlier.get(key)
        if hit is None:
            fresh = True  # looked up in this transaction and not found: no need to look again
        elif app.id not in known.touched:
            # Deployed before (the actor is admin on a linked app: the request's role check would pass).
            return _already(app=app, sha=sha, deployment_id=hit[0], status=hit[1], image=hit[2])
    request_args: dict[str, Any] = dict(
        ctx=ctx,
        actor=actor,
        app_name=app.name,
        image=image,
        trigger="push",
        dedupe_key=key,
        dedupe_fresh=fresh,
        git_sha=sha,
        git_ref=ref,
        reason=why,
        env=await _env_name(session, app=app),
    )
    if known is not None:
        known.used.add(key)
    try:
        if _is_all_or_nothing(session):
            result = await deploys.request(session, **request_args)
        else:
            async with session.begin_nested():
                result = await deploys.request(session, **request_args)
    except UserError as e:
        if _is_all_or_nothing(session):
            # Whatever the refused request wrote before it was refused goes with the whole batch.
            raise RunAlone(f"{app.name}: {e}") from e
        return Decision(app=app.name, action=SKIP, reason=str(e), image=image)
    deployment = result.deployment
    if not result.created:
        return _already(
            app=app, sha=sha, deployment_id=deployment.id, status=deployment.status, image=deployment.image
        )
    if known is not None:
        known.touched.add(app.id)
    if log.isEnabledFor(logging.INFO):  # (issue 13: no logger built, once a push, for a line not logged)
        logctx.deploy_logger(log, deployment=deployment.id, app=app.name).info(
            "gitops: %s %s@%s (%s)", why, ref, sha[:7], image
        )
    return requested(app=app, deployment=deployment, image=image)


async def _build(
    session: AsyncSession, *, ctx: Core, app: models.App, actor: Actor, sha: str, ref: str
) -> Decision:
    """Queue the build of `sha` (core.builds); its deploy is requested when it has been pushed."""
    queued = await builds.queue(session, ctx=ctx, app=app, actor=actor, sha=sha, ref=ref)
    build = queued.build
    if queued.deployed:
        return Decision(
            app=app.name,
            action=DEPLOY,
            reason=f"{sha[:7]} was already built for a pull request (build #{build.id}): "
            f"deploy #{build.deployment_id} of {build.image}@{build.digest} queued",
            build_id=build.id,
            deployment_id=build.deployment_id,
            image=f"{build.image}@{build.digest}",
        )
    if not queued.created:
        return Decision(
            app=app.name,
            action=SKIP,
            reason=f"{sha[:7]} was already built for {app.name} (build #{build.id}, {build.status})",
            build_id=build.id,
            deployment_id=build.deployment_id,
        )
    return Decision(
        app=app.name,
        action=BUILD,
        reason=f"build #{build.id} queued: {build.image}:{sha} from {app.git_repo}@{sha[:7]}",
        build_id=build.id,
    )


def requested(*, app: models.App, deployment: models.Deployment, image: str) -> Decision:
    """A deploy requested for the app (queued, or waiting for an approval): what a push or a new
    registry tag reports."""
    return Decision(
        app=app.name,
        action=DEPLOY,
        reason=f"deploy #{deployment.id} {deployment.status}: {image}",
        deployment_id=deployment.id,
        image=image,
    )


def _already(*, app: models.App, sha: str, deployment_id: int, status: str, image: str) -> Decision:
    return Decision(
        app=app.name,
        action=SKIP,
        reason=f"{sha[:7]} was already deployed to {app.name} (deploy #{deployment_id}, {status})",
        deployment_id=deployment_id,
        image=image,
    )


async def _env_name(session: AsyncSession, *, app: models.App) -> str:
    # Remembered for the transaction while nothing the read cache holds is written (its write mark,
    # as deploys' batch checks are): a batch's pushes are mostly to one app (issue 13: CPU per push).
    mark = readcache.write_mark(session)
    if mark is None:
        return await apps.env_name(session, app=app)
    held: dict[Any, Any] = _for_transaction(session, "gitops.env_names")
    key = (mark, app.id, app.environment_id)
    name: str | None = held.get(key)
    if name is None:
        if held.get("mark") != mark:
            held.clear()
            held["mark"] = mark
        name = held[key] = await apps.env_name(session, app=app)
    return name


async def on_push(
    session: AsyncSession,
    *,
    ctx: Core,
    repo: str,
    ref: str,
    sha: str,
    sender: str,
    deleted: bool = False,
    default_branch: str | None = None,
) -> Outcome:
    """A push to `repo`: deploy every app that tracks this branch or tag (unless it waits for CI)."""
    if deleted or sha == ZERO_SHA:
        return Outcome(summary=f"{ref} was deleted; nothing to deploy")
    parsed = parse_ref(ref)
    if parsed is None:
        return Outcome(summary=f"{ref} is neither a branch nor a tag; nothing to deploy")
    kind, name = parsed
    # Whether any app deploys this push, from the apps' tracking columns: the ORM rows only if one does.
    untracked = await _untracked(session, repo=repo, kind=kind, name=name, default_branch=default_branch)
    if untracked is not None:
        return Outcome(summary=untracked)
    # Which linked apps deploy it, remembered for the transaction as `_untracked` is (issue 13: a
    # batch's pushes are mostly to one branch).
    known: dict[tuple[str, str, str, str | None], list[models.App]] = _for_transaction(
        session, "gitops.matching"
    )
    key = (repo, kind, name, default_branch)
    matching = known.get(key)
    if matching is None:
        linked = await linked_apps(session, repo=repo)
        if not linked:
            return Outcome(summary=f"no app is linked to {repo}; nothing to deploy")
        matching = [a for a in linked if tracks(a, kind=kind, name=name, default_branch=default_branch)]
        if not matching:
            return Outcome(
                summary=f"no app deploys {kind} {name} of {repo} (tracked: {_describe_tracking(linked)}); "
                "nothing to deploy"
            )
        known[key] = matching
    actor = github_actor(sender)
    decisions: list[Decision] = []
    for app in matching:
        if app.deploy_on == "ci":
            decisions.append(
                Decision(
                    app=app.name,
                    action=WAIT,
                    reason=f"{app.name} deploys after CI passes: waiting for a successful "
                    f"check suite or workflow run on {sha[:7]}",
                )
            )
            continue
        decisions.append(
            await _deploy(
                session,
                ctx=ctx,
                app=app,
                actor=actor,
                kind=kind,
                name=name,
                sha=sha,
                ref=ref,
                why=f"push by {actor.name}",
            )
        )
    return Outcome(summary=_summary(decisions), decisions=decisions)


async def on_ci_passed(
    session: AsyncSession,
    *,
    ctx: Core,
    repo: str,
    sha: str,
    head_branch: str | None,
    conclusion: str | None,
    source: str,
    sender: str,
    default_branch: str | None = None,
) -> Outcome:
    """CI finished for `sha` (a check suite or a workflow run): deploy apps with deploy_on=ci on success.

    `head_branch` is a branch name, or for runs started by a tag push the tag name.
    """
    if conclusion != "success":
        return Outcome(
            summary=f"{source} on {sha[:7]} concluded {conclusion or 'without result'}; nothing to deploy"
        )
    if not head_branch:
        return Outcome(summary=f"{source} on {sha[:7]} names no branch; nothing to deploy")
    linked = [a for a in await linked_apps(session, repo=repo) if a.deploy_on == "ci"]
    if not linked:
        return Outcome(summary=f"no app linked to {repo} waits for CI; nothing to deploy")
    actor = github_actor(sender)
    decisions: list[Decision] = []
    for app in linked:
        kind = app.git_ref_type
        # CI payloads do not say whether head_branch names a branch or a tag, so an app deploying
        # tags after CI must name its tag pattern (v*): "any tag" would match every branch too.
        if kind == "tag" and not app.git_branch:
            continue
        if not tracks(app, kind=kind, name=head_branch, default_branch=default_branch):
            continue
        ref = f"refs/heads/{head_branch}" if kind == "branch" else f"refs/tags/{head_branch}"
        decisions.append(
            await _deploy(
                session,
                ctx=ctx,
                app=app,
                actor=actor,
                kind=kind,
                name=head_branch,
                sha=sha,
                ref=ref,
                why=f"{source} passed",
            )
        )
    if not decisions:
        return Outcome(summary=f"no app waiting for CI deploys {head_branch} of {repo}; nothing to deploy")
    return Outcome(summary=_summary(decisions), decisions=decisions)


def _summary(decisions: list[Decision]) -> str:
    queued = [
        f"{d.app} (deploy #{d.deployment_id})" if d.action == DEPLOY else f"{d.app} (build #{d.build_id})"
        for d in decisions
        if d.action in (DEPLOY, BUILD)
    ]
    if queued:
        return "queued " + ", ".join(queued)
    return "; ".join(f"{d.app}: {d.reason}" for d in decisions) or "nothing to deploy"
