"""Reporting to GitHub: a Deployment per push or PR deploy, its statuses, and one PR comment per preview.

The notifier is driven by core's outbox (one `notify` job per event), and it
renders from the state at delivery time rather than from the event kind: the
GitHub status posted is the one that matches the deploy's *current* status,
and the last state posted is remembered in the deployment's notify_refs.  So a
notification retried late, or delivered out of order, can never move GitHub
backwards (queued after success), and a replay posts nothing new.

Creating a GitHub Deployment is made idempotent by looking for one that
carries our deploy id in its payload before creating one, so a crash between
GitHub answering and us saving its id does not leave a duplicate behind.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from github import GithubException
from github.Repository import Repository

from core import builds, events, metrics, notices, shared
from core.errors import PermanentError, TransientError
from core.events import Delivered, DeploymentView, Notice, PreviewView
from webhooks import comments
from webhooks.client import GitHubClient

log = logging.getLogger(__name__)

NAME = "github"
TRIGGERS = ("push", "pr")
# A build's end is a commit status (context `shipit/build (<app>)`); only the end, so a late queued
# status can never overwrite it.  The deploy that follows reports as a GitHub Deployment as usual.
BUILD_STATES = {builds.BUILD_SUCCEEDED: "success", builds.BUILD_FAILED: "failure"}
DEPLOY_KINDS = frozenset(
    {
        events.DEPLOY_QUEUED,
        events.DEPLOY_AWAITING_APPROVAL,
        events.DEPLOY_STARTED,
        events.DEPLOY_SUCCEEDED,
        events.DEPLOY_ROLLED_BACK,  # a rollback's success (asked for with `.rollback`)
        events.DEPLOY_FAILED,
        events.DEPLOY_SUPERSEDED,
        events.DEPLOY_CANCELLED,
    }
)
COMMENT_KINDS = frozenset({events.DEPLOY_QUEUED, events.DEPLOY_SUCCEEDED, events.DEPLOY_FAILED})
STATE_OF = {
    "queued": "queued",
    "awaiting_approval": "pending",
    "running": "in_progress",
    "succeeded": "success",
    "failed": "failure",
    "superseded": "inactive",
    "cancelled": "inactive",
}
DESCRIPTION_MAX = 140  # GitHub refuses longer deployment status descriptions


def _short(text: str, limit: int = DESCRIPTION_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def environment_of(notice: Notice) -> str:
    """preview/<app>-pr-<n> for previews; else the app's setting, else by ref: tags production."""
    if notice.preview is not None:
        return f"preview/{notice.preview.namespace}"
    if notice.app is not None and notice.app.github_environment:
        return notice.app.github_environment
    command = comments.command_of(notice.deployment.refs) if notice.deployment else None
    if command and command.get("environment"):
        return str(command["environment"])  # `.deploy to staging`: shipit's environment
    ref = notice.deployment.git_ref if notice.deployment else None
    return "production" if ref and ref.startswith("refs/tags/") else "staging"


def environment_url_of(notice: Notice) -> str | None:
    if notice.preview is not None:
        return notice.preview.url
    if notice.app is not None and notice.app.domain:
        return f"https://{notice.app.domain}"
    return None


def describe(d: DeploymentView) -> str:
    match d.status:
        case "queued":
            text = f"shipit deploy #{d.id} queued: {d.image}"
        case "awaiting_approval":
            text = f"shipit deploy #{d.id} waits for approval"
        case "running":
            text = f"rolling out {d.image}"
        case "succeeded":
            text = f"live: {d.image} ({d.ready}/{d.desired} ready)"
        case "failed" if d.rolled_back_by is not None:
            text = f"{d.outcome}: {d.error or 'unknown error'}"
        case "failed":
            text = f"failed: {d.error or 'unknown error'}"
        case _:
            text = d.error or d.status
    return _short(text)


def comment_marker(app: str) -> str:
    return f"<!-- shipit:preview app={app} -->"


def refused_marker(app: str) -> str:
    return f"<!-- shipit:preview-refused app={app} -->"


def comment_body(
    *,
    app: str,
    preview: PreviewView,
    deployment: DeploymentView | None,
    reason: str | None = None,
    build: dict[str, Any] | None = None,
) -> str:
    """The one PR comment of a preview: its state, URL, commit and image (an app that builds from
    source: `build`, the payload of the preview.building / preview.build_failed event)."""
    status = preview.status
    if status == "pending_approval":
        source = preview.head_repo or "a deleted fork"
        return (
            f"{comment_marker(app)}\n🔒 **Preview `{preview.namespace}`** — waits for approval\n\n"
            f"This pull request comes from `{source}`, and `{app}` deploys previews from forks only once a "
            f"project developer approves the commit (`{preview.head_sha[:7]}`): add the label "
            f"`shipit:preview`, or run `/shipit preview approve {app} {preview.pr_number}` in Slack. "
            "Each new push needs a new approval, and a fork's preview never gets the app's secrets.\n\n"
            "<sub>Updated in place by shipit.</sub>"
        )
    if status in ("closing", "closed"):
        state = f"deleted ({reason})" if reason else "deleted"
        head = f"🗑️ **Preview `{preview.namespace}`** — {state}"
    elif status == "ready":
        head = f"✅ **Preview `{preview.namespace}`** — ready at {preview.url}"
    elif status == "failed" and build is not None:
        error = str(build.get("error") or "see its log")
        head = (
            f"❌ **Preview `{preview.namespace}`** — build #{build.get('build')} of "
            f"`{preview.head_sha[:7]}` failed, nothing deployed: {_short(error, 300)}\n\n"
            f"Its log: `{build.get('logs')}`. The next push to this pull request builds again."
        )
    elif status == "failed":
        error = deployment.error if deployment and deployment.error else "see shipit for details"
        head = f"❌ **Preview `{preview.namespace}`** — deploy failed: {_short(error, 300)}"
    elif status == "building" and build is not None:
        head = (
            f"🔨 **Preview `{preview.namespace}`** — building `{preview.head_sha[:7]}` "
            f"(build #{build.get('build')}); deployed once built…"
        )
    else:
        head = f"⏳ **Preview `{preview.namespace}`** — deploying `{preview.head_sha[:7]}`…"
    rows = [
        ("URL", preview.url or "-"),
        ("Commit", f"`{preview.head_sha[:7]}`"),
    ]
    if build is not None:
        rows.append(("Build", f"#{build.get('build')}"))
    if deployment is not None:
        rows.append(("Image", f"`{deployment.image}`"))
        rows.append(("Deploy", f"#{deployment.id} ({deployment.status})"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"{comment_marker(app)}\n{head}\n\n| | |\n|---|---|\n{table}\n\n"
        "<sub>Updated in place by shipit. The preview is deleted when this pull request closes "
        "or after a while without pushes.</sub>"
    )


class GitHubNotifier:
    name = NAME

    def __init__(self, *, client: GitHubClient, sessionmaker: Any = None) -> None:
        self.client = client
        # One comment per preview: serialise comment writes per pull request, across replicas when
        # the database is given (an advisory lock on PostgreSQL), else in this process.
        self.sessionmaker = sessionmaker
        self._comment_locks: dict[tuple[str, int, str], asyncio.Lock] = {}

    def wants(self, kind: str) -> bool:
        return (
            kind in DEPLOY_KINDS
            or kind in BUILD_STATES
            or kind
            in (
                events.PREVIEW_CLOSED,
                events.PREVIEW_REFUSED,
                events.PREVIEW_AWAITING_APPROVAL,
                events.PREVIEW_BUILDING,
                events.PREVIEW_BUILD_FAILED,
                events.PR_COMMAND_NOT_DEPLOYED,
            )
        )

    def wants_event(self, audience: events.Audience) -> bool:
        if audience.kind in DEPLOY_KINDS:
            # Only deploys that came from GitHub (a commit, a pull request comment) are reported there.
            from_commit = audience.trigger in TRIGGERS and bool(audience.git_sha)
            return (
                from_commit
                or comments.command_of(audience.refs) is not None
                or bool(comments.approvals_of(audience.refs))
            )
        return True

    async def close(self) -> None:
        await self.client.close()

    async def deliver(self, notice: Notice) -> Delivered | None:
        try:
            result = await self._deliver(notice)
        except TransientError:
            metrics.NOTIFICATIONS_BY.labels(NAME, "retry").inc()
            raise
        except PermanentError:
            metrics.NOTIFICATIONS_BY.labels(NAME, "failed").inc()
            raise
        metrics.NOTIFICATIONS_BY.labels(NAME, "ok").inc()
        return result

    async def _deliver(self, notice: Notice) -> Delivered | None:
        if notice.kind in BUILD_STATES:
            await self._build_status(notice)
            return None
        if notice.kind == events.PREVIEW_REFUSED:
            await self._refused(notice)
            return None
        if notice.kind == events.PREVIEW_CLOSED:
            return await self._closed(notice)
        if notice.kind == events.PREVIEW_AWAITING_APPROVAL:
            return await self._awaiting(notice)
        if notice.kind == events.PR_COMMAND_NOT_DEPLOYED:
            await comments.not_deployed(self, payload=notice.payload)
            return None
        if notice.kind in (events.PREVIEW_BUILDING, events.PREVIEW_BUILD_FAILED):
            return await self._preview_build(notice)
        if notice.deployment is not None:
            # `.approve` comments that queued this deploy follow it (a Slack-asked deploy included).
            for entry in comments.approvals_of(notice.deployment.refs):
                await comments.refresh_approval(self, entry=entry, deployment_id=notice.deployment.id)
        command = comments.command_of(notice.deployment.refs) if notice.deployment else None
        if command is None:
            return await self._report(notice)
        # A deploy asked for in a PR comment: its GitHub Deployment (when it has a commit), then the
        # command's status comment, redrawn from the current state of all its deploys.
        delivered = await self._report(notice)
        await comments.refresh(self, command=command)
        return delivered

    async def _build_status(self, notice: Notice) -> None:
        app, payload = notice.app, notice.payload
        sha = str(payload.get("sha") or "")
        if app is None or not app.git_repo or not sha:
            return
        state = BUILD_STATES[notice.kind]
        if state == "success":
            description = f"build #{payload.get('build')} pushed {str(payload.get('digest') or '')[:19]}"
        else:
            description = (
                f"build #{payload.get('build')} failed: {payload.get('error') or 'see shipit builds logs'}"
            )
        context = f"shipit/build ({app.name})"
        await self.client.call(
            repo=app.git_repo,
            what=f"build status for {sha[:7]}",
            fn=lambda r: r.get_commit(sha).create_status(
                state, description=description[:140], context=context
            ),
        )

    async def _report(self, notice: Notice) -> Delivered | None:
        d, app = notice.deployment, notice.app
        if d is None or app is None or d.trigger not in TRIGGERS or not d.git_sha:
            return None
        repo = notice.preview.repo if notice.preview else app.git_repo
        if not repo:
            return None
        mine: dict[str, Any] = dict(d.refs.get(NAME) or {})
        state = STATE_OF.get(d.status)
        if state is None:
            return None
        new: dict[str, Any] = {}
        gh_id = mine.get("deployment_id")
        environment = environment_of(notice)
        if gh_id is None:
            if state == "inactive":
                return None  # superseded or cancelled before GitHub ever heard of it
            gh_id = await self._find_or_create(repo=repo, notice=notice, environment=environment)
            new.update(deployment_id=gh_id, repo=repo, environment=environment)
        unreported_start = mine.get("state") in (None, "queued", "pending") and d.started_at is not None
        if state in ("success", "failure") and unreported_start:
            # The rollout finished before its start was reported: GitHub still gets the
            # in_progress -> final sequence its UI (and other integrations) expect.
            await self._status(
                repo=repo,
                gh_id=int(gh_id),
                state="in_progress",
                description=_short(f"rolling out {d.image}"),
                environment_url=None,
            )
        if mine.get("state") != state:
            await self._status(
                repo=repo,
                gh_id=int(gh_id),
                state=state,
                description=describe(d),
                environment_url=environment_url_of(notice) if state == "success" else None,
            )
            new["state"] = state
            notices.logger_for(log, notice).info(
                "github: %s %s (deployment %s, environment %s)", repo, state, gh_id, environment
            )
        comment_id = None
        if notice.preview is not None and notice.kind in COMMENT_KINDS:
            comment_id = await self._upsert_comment(
                repo=repo,
                number=notice.preview.pr_number,
                app=app.name,
                known=notice.preview.comment_id,
                marker=comment_marker(app.name),
                body=comment_body(app=app.name, preview=notice.preview, deployment=d),
            )
        if not new and comment_id is None:
            return None
        return Delivered(deployment_refs=new or None, preview_comment_id=comment_id)

    async def _find_or_create(self, *, repo: str, notice: Notice, environment: str) -> int:
        d = notice.deployment
        app = notice.app
        assert d is not None and app is not None and d.git_sha
        sha, is_preview = d.git_sha, notice.preview is not None
        payload = {"shipit_deployment": d.id, "app": app.name, "image": d.image}

        def run(r: Repository) -> int:
            for existing in r.get_deployments(sha=sha, environment=environment):
                found = existing.payload
                if isinstance(found, dict) and found.get("shipit_deployment") == d.id:
                    return int(existing.id)
            created = r.create_deployment(
                ref=sha,
                task="deploy",
                auto_merge=False,
                required_contexts=[],
                payload=payload,
                environment=environment,
                description=_short(f"{app.name}: {d.image}"),
                transient_environment=is_preview,
                production_environment=environment == "production",
            )
            return int(created.id)

        return await self.client.call(repo=repo, what=f"create deployment of {repo}@{sha[:7]}", fn=run)

    async def _status(
        self, *, repo: str, gh_id: int, state: str, description: str, environment_url: str | None
    ) -> None:
        def run(r: Repository) -> None:
            extra: dict[str, Any] = {}
            if environment_url:
                extra["environment_url"] = environment_url
            r.get_deployment(gh_id).create_status(state, description=description, **extra)

        await self.client.call(repo=repo, what=f"deployment {gh_id} status {state}", fn=run)

    async def _upsert_comment(
        self, *, repo: str, number: int, app: str, known: int | None, marker: str, body: str
    ) -> int:
        def run(r: Repository) -> int:
            issue = r.get_issue(number)
            if known is not None:
                try:
                    issue.get_comment(known).edit(body)
                    return known
                except GithubException as e:
                    if e.status != 404:
                        raise
                    # Someone deleted our comment: write a new one below.
            for comment in issue.get_comments():
                if marker in (comment.body or ""):
                    comment.edit(body)
                    return int(comment.id)
            return int(issue.create_comment(body).id)

        if self.sessionmaker is not None:
            async with shared.hold(
                self.sessionmaker, name=f"github-comment:{repo.lower()}#{number}:{marker}"
            ):
                return await self.client.call(repo=repo, what=f"comment on {repo}#{number}", fn=run)
        lock = self._comment_locks.setdefault((repo.lower(), number, marker), asyncio.Lock())
        async with lock:
            return await self.client.call(repo=repo, what=f"comment on {repo}#{number}", fn=run)

    async def _closed(self, notice: Notice) -> Delivered | None:
        preview, app = notice.preview, notice.app
        if preview is None or app is None:
            return None
        reason = str(notice.payload.get("reason") or "closed")
        for refs in notice.payload.get("deployment_refs") or []:
            mine = refs.get(NAME) if isinstance(refs, dict) else None
            if not isinstance(mine, dict) or mine.get("deployment_id") is None:
                continue
            if mine.get("state") == "inactive":
                continue
            await self._status(
                repo=str(mine.get("repo") or preview.repo),
                gh_id=int(mine["deployment_id"]),
                state="inactive",
                description=_short(f"preview deleted: {reason}"),
                environment_url=None,
            )
        comment_id = await self._upsert_comment(
            repo=preview.repo,
            number=preview.pr_number,
            app=app.name,
            known=preview.comment_id,
            marker=comment_marker(app.name),
            body=comment_body(app=app.name, preview=preview, deployment=notice.deployment, reason=reason),
        )
        notices.logger_for(log, notice).info(
            "github: preview closed on %s#%s", preview.repo, preview.pr_number
        )
        return Delivered(
            deployment_refs={"state": "inactive"} if notice.deployment is not None else None,
            preview_comment_id=comment_id,
        )

    async def _awaiting(self, notice: Notice) -> Delivered | None:
        """The preview's own comment says it waits; the deploy, once approved, edits the same comment."""
        preview, app = notice.preview, notice.app
        if preview is None or app is None:
            return None
        comment_id = await self._upsert_comment(
            repo=preview.repo,
            number=preview.pr_number,
            app=app.name,
            known=preview.comment_id,
            marker=comment_marker(app.name),
            body=comment_body(app=app.name, preview=preview, deployment=None),
        )
        return Delivered(preview_comment_id=comment_id)

    async def _preview_build(self, notice: Notice) -> Delivered | None:
        """A preview's build runs or failed: its comment says so.  Drawn only while the preview still
        is in that state at that commit, so a late delivery never overwrites what came after."""
        preview, app, payload = notice.preview, notice.app, notice.payload
        if preview is None or app is None or preview.head_sha != payload.get("sha"):
            return None
        wanted = "building" if notice.kind == events.PREVIEW_BUILDING else "failed"
        if preview.status != wanted:
            return None
        comment_id = await self._upsert_comment(
            repo=preview.repo,
            number=preview.pr_number,
            app=app.name,
            known=preview.comment_id,
            marker=comment_marker(app.name),
            body=comment_body(app=app.name, preview=preview, deployment=None, build=dict(payload)),
        )
        notices.logger_for(log, notice).info(
            "github: preview of %s#%s %s (build #%s)", preview.repo, preview.pr_number, wanted,
            payload.get("build"),
        )  # fmt: skip
        return Delivered(preview_comment_id=comment_id)

    async def _refused(self, notice: Notice) -> None:
        repo = notice.payload.get("repo")
        number = notice.payload.get("pr_number")
        app = notice.app.name if notice.app else "app"
        if not isinstance(repo, str) or not isinstance(number, int):
            return
        message = str(notice.payload.get("message") or "No preview for this pull request.")
        body = f"{refused_marker(app)}\n⚠️ **No preview environment for `{app}`**\n\n{message}"
        await self._upsert_comment(
            repo=repo, number=number, app=app, known=None, marker=refused_marker(app), body=body
        )
