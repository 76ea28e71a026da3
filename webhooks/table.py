"""The typed table of GitHub events shipit acts on, and the explicit list of those it ignores.

Each handled (event, action) has a parser that turns the JSON into a small
frozen value (a malformed payload is refused with 400 before the database is
touched) and a function that calls one core service inside the delivery's
transaction.  Everything else is answered 202 with the reason it was ignored,
so GitHub's delivery log shows what happened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from core import gitops, image_policies, previews
from core.context import Core
from core.gitops import Outcome
from webhooks import comments, registry

P = TypeVar("P")


class BadPayload(Exception):
    """The body is JSON but not the shape GitHub sends for this event (answered 400)."""


def _obj(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    if not isinstance(value, Mapping):
        raise BadPayload(f"{key} is missing or not an object")
    return value


def _str(d: Mapping[str, Any], key: str, *, where: str = "") -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise BadPayload(f"{where}{key} is missing or not a string")
    return value


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) and value else None


def _repo(payload: Mapping[str, Any]) -> tuple[str, str | None]:
    repository = _obj(payload, "repository")
    return _str(repository, "full_name", where="repository."), _opt_str(repository, "default_branch")


def _sender(payload: Mapping[str, Any]) -> str:
    sender = payload.get("sender")
    if isinstance(sender, Mapping) and isinstance(sender.get("login"), str):
        return str(sender["login"])
    return "unknown"


@dataclass(frozen=True, kw_only=True)
class Push(gitops.PushRef):
    """A push event: what `gitops.prefetch_pushes` looks up (so a batch hands its pushes over as they
    are), and who pushed."""

    sender: str


@dataclass(frozen=True, kw_only=True)
class PullRequest:
    repo: str
    number: int
    action: str
    head_sha: str
    head_ref: str
    sender: str
    # The repository the head branch lives in: None when that fork was deleted.
    head_repo: str | None = None
    # From a fork: the head lives in another repository (or in a deleted one), so its code is untrusted.
    is_fork: bool = False
    label: str | None = None  # the label added or removed, for labeled / unlabeled
    closed: bool = False  # pull_request.state: a label on a closed pull request approves nothing


@dataclass(frozen=True, kw_only=True)
class CiCompleted:
    repo: str
    sha: str
    head_branch: str | None
    conclusion: str | None
    source: str
    sender: str
    default_branch: str | None


def parse_push(payload: Mapping[str, Any]) -> Push:
    repo, default_branch = _repo(payload)
    return Push(
        repo=repo,
        ref=_str(payload, "ref"),
        sha=_str(payload, "after"),
        deleted=bool(payload.get("deleted")),
        sender=_sender(payload),
        default_branch=default_branch,
    )


def parse_pull_request(payload: Mapping[str, Any]) -> PullRequest:
    repo, _ = _repo(payload)
    pr = _obj(payload, "pull_request")
    number = payload.get("number", pr.get("number"))
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise BadPayload("number is missing or not a positive integer")
    head = _obj(pr, "head")
    head_repo_obj = head.get("repo")
    head_repo = (
        _str(head_repo_obj, "full_name", where="pull_request.head.repo.")
        if isinstance(head_repo_obj, Mapping)
        else None
    )
    # The base is where the PR is merged to; `repository` is the same repository, so fall back to it.
    base = pr.get("base")
    base_repo_obj = base.get("repo") if isinstance(base, Mapping) else None
    base_repo = _opt_str(base_repo_obj, "full_name") if isinstance(base_repo_obj, Mapping) else None
    base_repo = base_repo or repo
    label = payload.get("label")
    return PullRequest(
        repo=repo,
        number=number,
        action=_str(payload, "action"),
        head_sha=_str(head, "sha", where="pull_request.head."),
        head_ref=_str(head, "ref", where="pull_request.head."),
        sender=_sender(payload),
        head_repo=head_repo,
        # GitHub names repositories case-insensitively; a deleted fork (head.repo null) is a fork.
        is_fork=head_repo is None or head_repo.lower() != base_repo.lower(),
        label=_opt_str(label, "name") if isinstance(label, Mapping) else None,
        closed=pr.get("state") == "closed",
    )


def _parse_ci(key: str) -> Callable[[Mapping[str, Any]], CiCompleted]:
    def parse(payload: Mapping[str, Any]) -> CiCompleted:
        repo, default_branch = _repo(payload)
        run = _obj(payload, key)
        return CiCompleted(
            repo=repo,
            sha=_str(run, "head_sha", where=f"{key}."),
            head_branch=_opt_str(run, "head_branch"),
            conclusion=_opt_str(run, "conclusion"),
            source=key.replace("_", " "),
            sender=_sender(payload),
            default_branch=default_branch,
        )

    return parse


async def _on_push(session: AsyncSession, ctx: Core, e: Push) -> Outcome:
    return await gitops.on_push(
        session,
        ctx=ctx,
        repo=e.repo,
        ref=e.ref,
        sha=e.sha,
        sender=e.sender,
        deleted=e.deleted,
        default_branch=e.default_branch,
    )


async def _on_pull_request(session: AsyncSession, ctx: Core, e: PullRequest) -> Outcome:
    return await previews.on_pull_request(
        session,
        ctx=ctx,
        repo=e.repo,
        number=e.number,
        action=e.action,
        head_sha=e.head_sha,
        head_ref=e.head_ref,
        sender=e.sender,
        head_repo=e.head_repo,
        is_fork=e.is_fork,
    )


async def _on_labeled(session: AsyncSession, ctx: Core, e: PullRequest) -> Outcome:
    return await previews.on_label(
        session,
        ctx=ctx,
        repo=e.repo,
        number=e.number,
        label=e.label or "",
        head_sha=e.head_sha,
        head_ref=e.head_ref,
        head_repo=e.head_repo,
        is_fork=e.is_fork,
        closed=e.closed,
        sender=e.sender,
    )


async def _on_ci(session: AsyncSession, ctx: Core, e: CiCompleted) -> Outcome:
    return await gitops.on_ci_passed(
        session,
        ctx=ctx,
        repo=e.repo,
        sha=e.sha,
        head_branch=e.head_branch,
        conclusion=e.conclusion,
        source=e.source,
        sender=e.sender,
        default_branch=e.default_branch,
    )


def _parse_comment(payload: Mapping[str, Any]) -> comments.CommentEvent:
    try:
        return comments.parse(payload)
    except comments.BadComment as e:
        raise BadPayload(str(e)) from None


@dataclass(frozen=True, kw_only=True)
class PackagePublished:
    pushed: image_policies.Pushed | None  # None: not a container image


def _parse_package(key: str) -> Callable[[Mapping[str, Any]], PackagePublished]:
    def parse(payload: Mapping[str, Any]) -> PackagePublished:
        try:
            return PackagePublished(pushed=registry.parse_github_package(payload, key=key))
        except registry.BadPayload as e:
            raise BadPayload(str(e)) from None

    return parse


async def _on_package(session: AsyncSession, ctx: Core, e: PackagePublished) -> Outcome:
    if e.pushed is None:
        return Outcome(summary="not a container image; nothing to deploy")
    return await image_policies.on_pushed(session, ctx=ctx, pushed=e.pushed)


@dataclass(frozen=True, kw_only=True)
class Handler(Generic[P]):
    parse: Callable[[Mapping[str, Any]], P]
    run: Callable[[AsyncSession, Core, P], Awaitable[Outcome]]
    # Called once for all of a batch's new deliveries of this handler before any runs (webhooks.ingest):
    # work that one statement can do for all of them (looking up their dedupe keys).
    prepare: Callable[[AsyncSession, list[P]], Awaitable[None]] | None = None


async def _prepare_pushes(session: AsyncSession, pushes: list[Push]) -> None:
    await gitops.prefetch_pushes(session, pushes=pushes)


# (event, action) -> handler; action None for events without one (push).
HANDLERS: dict[tuple[str, str | None], Handler[Any]] = {
    ("push", None): Handler(parse=parse_push, run=_on_push, prepare=_prepare_pushes),
    ("pull_request", "opened"): Handler(parse=parse_pull_request, run=_on_pull_request),
    ("pull_request", "reopened"): Handler(parse=parse_pull_request, run=_on_pull_request),
    ("pull_request", "synchronize"): Handler(parse=parse_pull_request, run=_on_pull_request),
    ("pull_request", "closed"): Handler(parse=parse_pull_request, run=_on_pull_request),
    # The shipit:preview label approves the preview of a pull request from a fork.
    ("pull_request", "labeled"): Handler(parse=parse_pull_request, run=_on_labeled),
    ("check_suite", "completed"): Handler(parse=_parse_ci("check_suite"), run=_on_ci),
    ("workflow_run", "completed"): Handler(parse=_parse_ci("workflow_run"), run=_on_ci),
    # `.deploy`, `.noop`, `.lock`... in a pull request comment (webhooks.comments).
    ("issue_comment", "created"): Handler(parse=_parse_comment, run=comments.on_comment),
    # A container image published to GitHub Packages: apps with an image policy on it may deploy.
    ("package", "published"): Handler(parse=_parse_package("package"), run=_on_package),
    ("registry_package", "published"): Handler(parse=_parse_package("registry_package"), run=_on_package),
}

# Handled events a GitHub App cannot subscribe to (repository and organisation webhooks send them).
REPOSITORY_HOOK_ONLY = frozenset({"package"})

# Events a GitHub App or repository webhook commonly sends that need nothing from shipit.
IGNORED_EVENTS: dict[str, str] = {
    "check_run": "shipit follows whole check suites, not single check runs",
    "commit_comment": "comments do not deploy",
    "create": "branch and tag pushes arrive as push events",
    "delete": "deleted refs do not deploy",
    "deployment": "shipit creates deployments itself",
    "deployment_status": "shipit reports deployment statuses itself",
    "fork": "forks do not deploy",
    "github_app_authorization": "nothing to do",
    "installation": "installations need no action",
    "installation_repositories": "installations need no action",
    "installation_target": "installations need no action",
    "issues": "issues do not deploy",
    "label": "labels do not deploy",
    "member": "collaborators are managed in shipit projects",
    "meta": "nothing to do",
    "pull_request_review": "reviews do not deploy",
    "pull_request_review_comment": "comments do not deploy",
    "pull_request_review_thread": "reviews do not deploy",
    "release": "tags deploy through push events",
    "repository": "nothing to do",
    "star": "stars do not deploy",
    "status": "shipit follows check suites and workflow runs",
    "watch": "stars do not deploy",
    "workflow_dispatch": "workflow runs are followed when they complete",
    "workflow_job": "shipit follows whole workflow runs, not single jobs",
}

# Actions of handled events that need nothing.
IGNORED_ACTIONS: dict[str, frozenset[str]] = {
    "pull_request": frozenset(
        {
            "assigned",
            "unassigned",
            "unlabeled",
            "edited",
            "review_requested",
            "review_request_removed",
            "ready_for_review",
            "converted_to_draft",
            "locked",
            "unlocked",
            "auto_merge_enabled",
            "auto_merge_disabled",
            "milestoned",
            "demilestoned",
            "enqueued",
            "dequeued",
        }
    ),
    "check_suite": frozenset({"requested", "rerequested"}),
    # An edited comment is not a new command (edits would replay it), a deleted one asks for nothing.
    "issue_comment": frozenset({"edited", "deleted"}),
    "workflow_run": frozenset({"requested", "in_progress"}),
}


def lookup(event: str, action: str | None) -> Handler[Any] | str:
    """The handler for this event and action, or the reason it is ignored."""
    handler = HANDLERS.get((event, None)) or HANDLERS.get((event, action))
    if handler is not None:
        return handler
    if event in IGNORED_EVENTS:
        return f"{event} events are ignored: {IGNORED_EVENTS[event]}"
    if action is not None and action in IGNORED_ACTIONS.get(event, frozenset()):
        return f"{event}.{action} is ignored: nothing to deploy"
    if any(e == event for e, _ in HANDLERS):
        return f"{event}.{action} is not handled by shipit"
    return f"{event} events are not handled by shipit"
