"""Notices: what notifiers are given, the Notifier protocol, and the targets they deliver to.

This package imports nothing from core.context or core.events, so both can import it (the import
circle between them is gone).  Kinds of notice are registered in core/notices/registry.py; targets
(rows of notification_targets) are managed in core/notices/targets.py; each kind that core can
deliver by itself is a small module here (mail, teams, discord, webhook).  Slack and GitHub live in
bot/ and webhooks/ and are plugged in by shipit.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from core import logctx
from storage import models


@dataclass(frozen=True, kw_only=True)
class TargetView:
    """A notification target without its secret (a notifier asks targets.secret() when it signs)."""

    id: int
    project_id: int
    kind: str
    address: str
    environment: str | None
    events: str
    format: str
    has_secret: bool
    # The project's first target of its kind: it keeps the notifier's own refs key ("slack"), so a
    # project with one channel records its card where it always did.
    primary: bool = False


@dataclass(frozen=True, kw_only=True)
class ProjectView:
    id: int
    name: str
    # Where notices go is a list of targets now (TargetView); these stay for code that builds a view
    # by hand.  project_view() never fills them: no notifier reads the old project columns.
    slack_channel: str | None = None
    webhook_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class AppView:
    id: int
    name: str
    namespace: str
    cluster: str
    image: str | None
    protected: bool
    auto_deploy_paused: bool
    paused_reason: str | None
    git_repo: str | None
    github_environment: str | None
    domain: str | None = None  # the app's public host, for links such as GitHub's environment_url
    environment: str | None = None  # the environment this app row runs in
    environments: int = 1  # how many the project has: a card names the environment only among several
    # The next environment in the project's order where the app also runs: what a card offers to promote to.
    next_environment: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeploymentView:
    id: int
    status: str
    trigger: str
    actor: str
    image: str
    revision: int | None
    namespace: str
    error: str | None
    logs: list[str]
    ready: int
    desired: int
    queue_position: int | None
    approved_by: str | None
    git_sha: str | None
    git_ref: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    refs: dict[str, Any] = field(default_factory=dict)
    digest: str | None = None  # what the image tag was pinned to at deploy time
    digest_note: str | None = None  # why it was deployed by tag instead
    # A failed deploy that shipit rolled back by itself: the rollback deploy, its revision and status.
    rolled_back_by: int | None = None
    rolled_back_to: int | None = None
    rollback_status: str | None = None
    # A deploy that needs approval: approvals so far and needed (None for one that never needed any).
    approvals: int | None = None
    approvals_needed: int | None = None
    approvers: tuple[str, ...] = ()  # who approved so far (subjects), for "1 of 2 approvals: @bob"
    # Who rejected it (a subject; for a rejection older than migration 0014 maybe only a name).
    rejected_by: str | None = None

    @property
    def outcome(self) -> str:
        """The status in words, a failure's automatic rollback included: what every channel shows."""
        if self.status != "failed" or self.rolled_back_by is None:
            return self.status
        match self.rollback_status:
            case "succeeded":
                return f"failed, rolled back to revision {self.rolled_back_to}"
            case "failed" | "cancelled" | "superseded":
                return f"failed, and the rollback to revision {self.rolled_back_to} {self.rollback_status}"
            case _:
                return f"failed, rolling back to revision {self.rolled_back_to}"

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "superseded", "cancelled")

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@dataclass(frozen=True, kw_only=True)
class PreviewView:
    id: int
    pr_number: int
    repo: str
    head_sha: str
    namespace: str
    url: str | None
    status: str
    comment_id: int | None
    head_repo: str | None = None
    is_fork: bool = False
    approved_by: str | None = None


@dataclass(frozen=True, kw_only=True)
class BuildView:
    """A build from source as its card shows it: the row now (its error scrubbed already, core.builds)."""

    id: int
    runs: int
    sha: str
    ref: str
    actor: str
    status: str  # queued, building, succeeded, failed, superseded
    image: str
    digest: str | None
    error: str | None
    deployment_id: int | None
    pr_number: int | None


@dataclass(frozen=True, kw_only=True)
class Notice:
    event_id: int
    kind: str
    created_at: dt.datetime
    payload: dict[str, Any]
    project: ProjectView | None
    app: AppView | None
    deployment: DeploymentView | None
    preview: PreviewView | None
    # The target this delivery is for (None: the notifier's own default, e.g. the Slack channel a
    # command was typed in, or each app's GitHub repository) and the app's environment name.
    target: TargetView | None = None
    environment: str | None = None
    # Which attempt of its job this delivery is: above 1, an earlier attempt may have sent it already
    # (a crash, a lost lease or a failure after the send; our own pacing is not counted).
    attempt: int = 1
    # A build's events (BUILD_KINDS): the build as it is now, for the Slack build card.
    build: BuildView | None = None


def logger_for(logger: logging.Logger, notice: Notice) -> logctx.ContextLogger:
    """`logger` carrying what a notice is about (deploy, project, app, environment, outbox event), as
    every notifier's lines should."""
    d, app = notice.deployment, notice.app
    return logctx.deploy_logger(
        logger,
        deployment=d.id if d else None,
        project=notice.project.name if notice.project else None,
        app=app.name if app else None,
        environment=notice.environment or (app.environment if app else None),
        namespace=notice.preview.namespace if notice.preview else None,
        event=notice.event_id,
    )


@dataclass(frozen=True, kw_only=True)
class Delivered:
    """What a notifier wants remembered for next time, e.g. the Slack message ts."""

    deployment_refs: dict[str, Any] | None = None
    preview_comment_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Audience:
    """What a notifier may look at, at emit time, to decline an event before a job is queued for it."""

    kind: str
    project: ProjectView | None
    trigger: str | None
    git_sha: str | None
    preview: bool
    refs: dict[str, Any] = field(default_factory=dict)  # the deployment's notify_refs at emit time
    environment: str | None = None
    target: TargetView | None = None


class Notifier(Protocol):
    """One kind of notice (slack, github, email, ...): registered once, delivering to many targets."""

    name: str

    def wants(self, kind: str) -> bool:
        """The event kinds this notifier ever sends (a target's own filter narrows it further)."""
        ...

    def wants_event(self, audience: Audience) -> bool:
        """Decline an event at emit time, before a job is queued for it (audience.target set)."""
        ...

    async def deliver(self, notice: Notice) -> Delivered | None:
        """Send it.  Raise core.errors.TransientError (with retry_after) to be retried."""
        ...

    async def close(self) -> None: ...


def project_view(project: models.Project) -> ProjectView:
    return ProjectView(id=project.id, name=project.name)


def target_view(row: models.NotificationTarget, *, primary: bool = False) -> TargetView:
    return TargetView(
        id=row.id,
        project_id=row.project_id,
        kind=row.kind,
        address=row.address,
        environment=row.environment,
        events=row.events,
        format=row.format or "",
        has_secret=row.secret_enc is not None,
        primary=primary,
    )


def ref_key(notifier: str, target: TargetView | None) -> str:
    """Where a deploy remembers what a notifier did for one target (deployment.notify_refs[key]).

    A target without an address (GitHub: each app's own repository), the project's first target of
    the kind and the notifier's default share the notifier's own key, as before targets existed;
    every other target has its own.
    """
    if target is None or not target.address or target.primary:
        return notifier
    return f"{notifier}#{target.id}"


# Event kinds a target's filter may name, short ("failed") for deploy events or in full.
EVENT_KINDS = (
    "deploy.queued",
    "deploy.awaiting_approval",
    "deploy.started",
    "deploy.progress",
    "deploy.succeeded",
    "deploy.failed",
    "deploy.rolled_back",
    "deploy.superseded",
    "deploy.cancelled",
    "preview.ready",
    "preview.closed",
    "preview.refused",
    "preview.awaiting_approval",
    "preview.building",
    "preview.build_failed",
    "app.paused",
    "app.resumed",
    "app.protection_changed",
    "build.queued",
    "build.started",
    "build.succeeded",
    "build.failed",
    "build.superseded",
    "pr_command.not_deployed",
)
BUILD_FAILED = "build.failed"  # a build from source that failed: no deploy follows, so no card tells it
# A build's own events, each redrawing its Slack card (bot.notifier); core.builds records them.
BUILD_KINDS = frozenset(
    {"build.queued", "build.started", "build.succeeded", BUILD_FAILED, "build.superseded"}
)
# What ends a deploy, or a build that never got to one: one email (or chat message) each.
OUTCOMES = frozenset(
    {
        "deploy.succeeded",
        "deploy.failed",
        "deploy.rolled_back",
        "deploy.cancelled",
        "deploy.awaiting_approval",
        BUILD_FAILED,
    }
)
TEST_KIND = "notify.test"  # `shipit notify test`: a sample sent to one target, outside the outbox


def build_logs_command(*, app: str, build: int, env: str | None) -> str:
    """The command that prints a build's log, as every channel names it: among several environments
    an app name alone is refused ("say which"), so `env` is given then (see core.builds.logs_command)."""
    return f"shipit builds logs {app} {build}" + (f" --env {env}" if env else "")


def short_kind(kind: str) -> str:
    return kind.removeprefix("deploy.")


def matches(filter_: str, kind: str) -> bool:
    """A target's event filter: "*" or a comma list of kinds ("failed,rolled_back", "preview.ready")."""
    if kind == TEST_KIND:
        return True
    names = {n.strip() for n in filter_.split(",") if n.strip()}
    if "*" in names or kind in names or short_kind(kind) in names:
        return True
    # A target that takes failures ("failed") hears of a failed build too, as of a failed deploy.
    return kind == BUILD_FAILED and "failed" in names
