"""Commands in pull request comments: `.deploy`, `.deploy to ENV`, `.noop`, `.rollback`, `.lock`, `.unlock`,
`.approve`, `.reject`, `.help`.

The delivery only records the command: a job (queued in the delivery's transaction, deduplicated by
the comment id) does the GitHub calls and the work, so GitHub is answered in milliseconds and a
redelivered comment runs once.  The job puts `eyes` on the comment, reads the pull request's head
and the commenter's permission from GitHub (an issue_comment payload holds neither), asks
core.pr_commands, and answers in ONE status comment per command, edited in place: the GitHub
notifier redraws it (`refresh`) as each deploy moves, and puts a reaction on the command at the end:
`rocket` only when EVERY app it targeted was deployed and each deploy succeeded, else `confused`.  An
app left out, whenever that was decided (refused when asked: a lock, a deploy window, a freeze; its
build failed; refused once built), makes it `confused` while the comment still shows what did deploy
and why each other app did not.  What was left out is kept in the database with the command's refs
(pr_commands.report), so a redraw from any notice, in any process, reacts the same.  A refusal of
every app, a dry run, a lock or an approval is answered at once (a deploy asked for by `.deploy to
ENV` keeps its own status comment up to date once approved).

Only comments that start with `.` and a known word are commands; `.something` else, or a known word
with arguments it does not take, gets a short help reply.  Bots, edits and deletions are ignored.
`.link` belongs to identity linking and is left alone here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from github import GithubException
from github.Repository import Repository
from sqlalchemy.ext.asyncio import AsyncSession

from core import dryrun, events, jobs, pr_commands, shared
from core.context import Core
from core.errors import PermanentError, UserError
from core.gitops import Outcome
from core.pr_commands import Command
from core.worker import Handler
from storage import models
from webhooks import link_comment

if TYPE_CHECKING:
    from webhooks.notifier import GitHubNotifier

log = logging.getLogger(__name__)

COMMAND_JOB = "github.pr_command"
LEFT_TO_OTHERS = frozenset({"link"})  # `.link CODE`: identity linking (webhooks.link_comment)
_WORD = re.compile(r"\.([A-Za-z][A-Za-z0-9_-]*)(?:\s+(.*))?", re.DOTALL)
_ENV = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NUMBER = re.compile(r"#?([0-9]{1,18})")
REASON_MAX = 200

HELP = (
    "**shipit commands** (comment on a pull request; needs write permission on the repository and the "
    "developer role in shipit):\n\n"
    "| Command | What it does |\n|---|---|\n"
    "| `.deploy` | deploy this pull request's head to its preview |\n"
    "| `.deploy to ENV` | deploy this pull request's head to environment ENV |\n"
    "| `.noop [to ENV]` | show what `.deploy to ENV` would change; changes nothing |\n"
    "| `.rollback [to ENV]` | roll back to the previous good revision |\n"
    "| `.lock [ENV] [reason]` | lock an environment: no deploys until `.unlock` |\n"
    "| `.unlock [ENV]` | unlock it |\n"
    "| `.approve [N \\| to ENV]` | approve deploy N, or the one deploy waiting for approval |\n"
    "| `.reject [N \\| to ENV]` | reject it: it will not run |\n"
    "| `.help` | this list |\n\n"
    "Without ENV, `.noop`, `.rollback`, `.lock` and `.unlock` act on the project's first environment. "
    "Without N, `.approve` and `.reject` take the deploy this pull request's commands asked for, else the "
    "one deploy of the repository's apps waiting for approval (in ENV); approving needs the environment's "
    "approver role, and nobody approves their own deploy."
)


class BadComment(Exception):
    """Not the shape GitHub sends for an issue comment (answered 400 by the route)."""


@dataclass(frozen=True, kw_only=True)
class CommentEvent:
    repo: str
    number: int
    comment_id: int
    login: str
    body: str
    from_bot: bool
    on_pull_request: bool


def _obj(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    if not isinstance(value, Mapping):
        raise BadComment(f"{key} is missing or not an object")
    return value


def _int(d: Mapping[str, Any], key: str, *, where: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadComment(f"{where}{key} is missing or not a positive integer")
    return value


def parse(payload: Mapping[str, Any]) -> CommentEvent:
    repository, issue, comment = _obj(payload, "repository"), _obj(payload, "issue"), _obj(payload, "comment")
    repo = repository.get("full_name")
    if not isinstance(repo, str) or not repo:
        raise BadComment("repository.full_name is missing or not a string")
    user = comment.get("user") if isinstance(comment.get("user"), Mapping) else payload.get("sender")
    user = user if isinstance(user, Mapping) else {}
    sender = payload.get("sender") if isinstance(payload.get("sender"), Mapping) else {}
    login = str(user.get("login") or "")
    body = comment.get("body")
    bot = any(
        isinstance(who, Mapping)
        and (who.get("type") == "Bot" or str(who.get("login") or "").endswith("[bot]"))
        for who in (user, sender)
    )
    return CommentEvent(
        repo=repo,
        number=_int(issue, "number", where="issue."),
        comment_id=_int(comment, "id", where="comment."),
        login=login,
        body=body if isinstance(body, str) else "",
        from_bot=bot or not login,
        on_pull_request=isinstance(issue.get("pull_request"), Mapping),
    )


def parse_command(body: str) -> Command | str | None:
    """A command, the reason a `.word` comment is not one (answered with help), or None (not for us)."""
    first = body.strip().split("\n", 1)[0].strip()
    m = _WORD.fullmatch(first)
    if m is None:
        return None
    word, rest = m.group(1).lower(), (m.group(2) or "").split()
    if word in LEFT_TO_OTHERS:
        return None
    if word not in pr_commands.VERBS:
        return f"`.{word[:40]}` is not a shipit command."
    usage = {
        "deploy": "`.deploy` or `.deploy to ENV`",
        "noop": "`.noop` or `.noop to ENV`",
        "rollback": "`.rollback` or `.rollback to ENV`",
        "lock": "`.lock`, `.lock ENV` or `.lock ENV reason`",
        "unlock": "`.unlock` or `.unlock ENV`",
        "approve": "`.approve`, `.approve N` or `.approve to ENV`",
        "reject": "`.reject`, `.reject N` or `.reject to ENV`",
        "help": "`.help`",
    }[word]
    malformed = f"`.{word}` takes {usage}."
    env: str | None = None
    reason: str | None = None
    number: int | None = None
    if word in ("approve", "reject"):
        if len(rest) == 1 and (n := _NUMBER.fullmatch(rest[0])):
            number = int(n.group(1))
        elif len(rest) == 2 and rest[0].lower() == "to":
            env = rest[1]
        elif rest:
            return malformed
    elif word in ("deploy", "noop", "rollback"):
        if rest:
            if len(rest) != 2 or rest[0].lower() != "to":
                return malformed
            env = rest[1]
    elif word == "lock":
        if rest:
            env, reason = rest[0], " ".join(rest[1:]) or None
            if reason is not None and len(reason) > REASON_MAX:
                return f"the reason of `.lock` is longer than {REASON_MAX} characters."
    elif word == "unlock":
        if len(rest) > 1:
            return malformed
        env = rest[0] if rest else None
    elif rest:
        return malformed
    if env is not None:
        env = env.lower()
        if not _ENV.fullmatch(env):
            return f"{env[:40]!r} is not an environment name. {malformed}"
    return Command(verb=word, environment=env, reason=reason, deployment=number)


async def on_comment(session: AsyncSession, ctx: Core, e: CommentEvent) -> Outcome:
    """In the delivery's transaction: queue the command's job (once per comment), or say why not."""
    if e.from_bot:
        return Outcome(summary="comments by bots are ignored")
    link = link_comment.from_comment(repo=e.repo, number=e.number, login=e.login, body=e.body)
    if link is not None:  # proving a GitHub login works on any issue or pull request
        return await link_comment.run(session, ctx, link)
    if not e.on_pull_request:
        return Outcome(summary="comments on issues are ignored; commands work on pull requests")
    parsed = parse_command(e.body)
    if parsed is None:
        return Outcome(summary="not a shipit command")
    payload: dict[str, Any] = {
        "repo": e.repo,
        "number": e.number,
        "comment_id": e.comment_id,
        "login": e.login,
    }
    if isinstance(parsed, str):
        payload["error"] = parsed
        summary = f"comment {e.comment_id}: {parsed} (answered with help)"
    else:
        payload["command"] = {"verb": parsed.verb, "environment": parsed.environment, "reason": parsed.reason}
        if parsed.deployment is not None:
            payload["command"]["deployment"] = parsed.deployment
        summary = f"comment {e.comment_id}: .{parsed.verb} by {e.login} queued"
    await jobs.enqueue(
        session,
        kind=COMMAND_JOB,
        payload=payload,
        dedupe_key=f"github-comment:{e.comment_id}",
        concurrency_key=f"github-comment:{e.repo.lower()}#{e.number}",
        max_attempts=6,
    )
    return Outcome(summary=summary)


# ---------------------------------------------------------------- the job and the status comment


def marker(comment_id: int) -> str:
    return f"<!-- shipit:command comment={comment_id} -->"


def approvals_of(refs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The `.approve` comments that queued a deploy and follow it to the end, from its notify_refs."""
    mine = (refs or {}).get("github")
    found = mine.get(pr_commands.APPROVALS_KEY) if isinstance(mine, Mapping) else None
    if not isinstance(found, Mapping):
        return []
    return [dict(e) for e in found.values() if isinstance(e, Mapping) and e.get("follow")]


def command_of(refs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The PR command a deploy was asked for by, from its notify_refs (None: not from a comment)."""
    mine = (refs or {}).get("github")
    found = mine.get(pr_commands.REF_KEY) if isinstance(mine, Mapping) else None
    return dict(found) if isinstance(found, Mapping) and found.get("comment_id") else None


async def react(notifier: GitHubNotifier, *, repo: str, comment_id: int, number: int, content: str) -> None:
    def run(r: Repository) -> None:
        r.get_issue(number).get_comment(comment_id).create_reaction(content)

    await notifier.client.call(repo=repo, what=f"react {content} to comment {comment_id}", fn=run)


@contextlib.asynccontextmanager
async def _held(notifier: GitHubNotifier, *, repo: str, number: int, mark: str) -> AsyncIterator[None]:
    # The notifier's own per-comment lock: one writer at a time, across replicas on PostgreSQL.
    if notifier.sessionmaker is not None:
        async with shared.hold(notifier.sessionmaker, name=f"github-comment:{repo.lower()}#{number}:{mark}"):
            yield
        return
    lock = notifier._comment_locks.setdefault((repo.lower(), number, mark), asyncio.Lock())
    async with lock:
        yield


async def write(
    notifier: GitHubNotifier, *, repo: str, number: int, comment_id: int, render: Callable[[], Awaitable[str]]
) -> int:
    """Create or edit the command's one status comment; `render` runs under the lock (latest state wins)."""
    mark = marker(comment_id)
    async with _held(notifier, repo=repo, number=number, mark=mark):
        body = f"{mark}\n{await render()}\n\n<sub>Updated in place by shipit.</sub>"

        def run(r: Repository) -> int:
            issue = r.get_issue(number)
            for comment in issue.get_comments():
                if mark in (comment.body or ""):
                    if comment.body != body:
                        comment.edit(body)
                    return int(comment.id)
            return int(issue.create_comment(body).id)

        return await notifier.client.call(repo=repo, what=f"status comment on {repo}#{number}", fn=run)


_ICON = {"succeeded": "✅", "failed": "❌", "superseded": "⏭️", "cancelled": "🚫", "running": "🔄"}
_FINISHED = pr_commands.FINISHED


def _deploys_body(*, text: str, login: str, report: pr_commands.Report) -> str:
    lines = "".join(f"\n- {n}" for n in report.lines)
    if not report.states:  # nothing deployed (yet): every app waits for its build, or was not deployed
        if report.pending:
            return f"🏗️ **`{text}`** by @{login}: waiting for the build\n{lines}"
        return f"🚫 **`{text}`** by @{login}: not deployed\n{lines}"
    if not report.finished:
        head = "⏳ working on it"
    elif report.ok:
        head = "✅ done"
    elif report.partly:  # what did deploy succeeded; each app left out has its line below
        head = (
            f"⚠️ partly done: {len(report.states)} of {len(report.states) + len(report.lines)} apps deployed"
        )
    else:
        head = "❌ did not succeed"
    rows = "\n".join(
        f"| `{s.app}` | {s.environment or '-'} | #{s.deployment} `{s.image}` | "
        f"{_ICON.get(s.status, '⏳')} {s.outcome}{': ' + ' '.join(s.error.split())[:200] if s.error else ''} |"
        + (f" {s.url} |" if s.url else " - |")
        for s in report.states
    )
    return (
        f"🚀 **`{text}`** by @{login}: {head}\n\n| App | Where | Deploy | Status | URL |\n"
        f"|---|---|---|---|---|\n{rows}{lines}"
    )


async def refresh(notifier: GitHubNotifier, *, command: Mapping[str, Any]) -> None:
    """Redraw a command's status comment from the current state of its deploys and of the builds it
    waits for (pr_commands.report); react when it is finished: nothing running, nothing to wait for."""
    sessionmaker = notifier.sessionmaker
    if sessionmaker is None:
        return
    repo, number, comment_id = str(command["repo"]), int(command["number"]), int(command["comment_id"])
    seen: list[pr_commands.Report] = []

    async def render() -> str:
        async with sessionmaker() as session:
            seen[:] = [await pr_commands.report(session, command=dict(command))]
        return _deploys_body(
            text=str(command.get("text") or ".deploy"),
            login=str(command.get("login") or "someone"),
            report=seen[0],
        )

    await write(notifier, repo=repo, number=number, comment_id=comment_id, render=render)
    if seen and seen[0].finished:
        await react(
            notifier, repo=repo, comment_id=comment_id, number=number,
            content="rocket" if seen[0].ok else "confused",
        )  # fmt: skip


async def not_deployed(notifier: GitHubNotifier, *, payload: Mapping[str, Any]) -> None:
    """A `.deploy` that waited for a build was not deployed (the build failed, the deploy was refused
    once built, its preview moved on): its status comment says why, beside what else it did."""
    if notifier.sessionmaker is not None:
        ended = {**(payload.get("ended") or {}), str(payload.get("build")): str(payload.get("line"))}
        await refresh(notifier, command={**payload, "ended": ended})
        return
    repo, number, comment_id = str(payload["repo"]), int(payload["number"]), int(payload["comment_id"])

    async def render() -> str:
        return f"🚫 **`{payload.get('text')}`** by @{payload.get('login')}: not deployed\n\n- {payload.get('line')}"

    await write(notifier, repo=repo, number=number, comment_id=comment_id, render=render)
    await react(notifier, repo=repo, comment_id=comment_id, number=number, content="confused")


async def refresh_approval(notifier: GitHubNotifier, *, entry: Mapping[str, Any], deployment_id: int) -> None:
    """Redraw an `.approve` comment's answer with the deploy it queued; react when the deploy is done."""
    sessionmaker = notifier.sessionmaker
    if sessionmaker is None:
        return
    repo, number, comment_id = str(entry["repo"]), int(entry["number"]), int(entry["comment_id"])
    status: list[str] = []

    async def render() -> str:
        async with sessionmaker() as session:
            d = await session.get(models.Deployment, deployment_id)
            if d is None:
                return f"👍 **`{entry.get('text')}`** by @{entry.get('login')}:\n\n- {entry.get('line')}"
            outcome = (await events.deployment_view(session, deployment=d)).outcome
        status[:] = [d.status]
        error = f": {' '.join(d.error.split())[:200]}" if d.error else ""
        return (
            f"👍 **`{entry.get('text')}`** by @{entry.get('login')}:\n\n- {entry.get('line')}\n"
            f"- {_ICON.get(d.status, '⏳')} deploy #{d.id}: {outcome}{error}"
        )

    await write(notifier, repo=repo, number=number, comment_id=comment_id, render=render)
    if status and status[0] in _FINISHED:
        ok = status[0] == "succeeded"
        await react(
            notifier, repo=repo, comment_id=comment_id, number=number, content="rocket" if ok else "confused"
        )


def _permission(r: Repository, login: str) -> str:
    try:
        return str(r.get_collaborator_permission(login))
    except GithubException as e:
        if e.status == 404:  # no such user (or not visible): no permission
            return "none"
        raise


def _pull(r: Repository, number: int) -> dict[str, Any]:
    pull = r.get_pull(number)
    head_repo = pull.head.repo.full_name if pull.head.repo is not None else None
    return {
        "head_sha": pull.head.sha,
        "head_ref": pull.head.ref,
        "head_repo": head_repo,
        "is_fork": head_repo is None or head_repo.lower() != r.full_name.lower(),
        "open": pull.state == "open",
    }


def _noop_body(*, login: str, text: str, runs: list[dryrun.DryRun]) -> str:
    parts = [f"🔍 **`{text}`** by @{login}: nothing was changed. What `.deploy` would do:"]
    for run in runs:
        lines = run.lines() or ["no change"]
        parts.append(
            f"\n**`{run.app}`** in `{run.namespace}`: `{run.current_image or '-'}` → `{run.image}` "
            f"(revision {run.revision})\n```diff\n" + "\n".join(lines)[:6000] + "\n```"
        )
    return "\n".join(parts)


def handlers(notifier: GitHubNotifier) -> dict[str, Handler]:
    async def run_job(*, ctx: Core, job: jobs.JobView) -> None:
        p = job.payload
        repo, number, comment_id, login = (
            str(p["repo"]),
            int(p["number"]),
            int(p["comment_id"]),
            str(p["login"]),
        )

        async def answer(text: str, reaction: str) -> None:
            async def render() -> str:
                return text

            await write(notifier, repo=repo, number=number, comment_id=comment_id, render=render)
            await react(notifier, repo=repo, comment_id=comment_id, number=number, content=reaction)

        try:
            await react(notifier, repo=repo, comment_id=comment_id, number=number, content="eyes")
        except PermanentError as e:
            log.info(
                "pr command %s on %s#%s: the comment is gone (%s); nothing to do", comment_id, repo, number, e
            )
            return
        if "error" in p:
            await answer(f"🤔 {p['error']}\n\n{HELP}", "confused")
            return
        c = p["command"]
        command = Command(
            verb=c["verb"],
            environment=c.get("environment"),
            reason=c.get("reason"),
            deployment=c.get("deployment"),
        )
        if command.verb == pr_commands.HELP:
            await answer(HELP, "rocket")
            return
        text = f".{command.verb}" + (f" {command.environment}" if command.environment else "")
        if command.deployment is not None:
            text += f" {command.deployment}"
        elif command.environment and command.verb in (pr_commands.APPROVE, pr_commands.REJECT):
            text = f".{command.verb} to {command.environment}"
        permission = await notifier.client.call(
            repo=repo, what=f"permission of {login} on {repo}", fn=lambda r: _permission(r, login)
        )
        head = await notifier.client.call(
            repo=repo, what=f"pull request {repo}#{number}", fn=lambda r: _pull(r, number)
        )
        pr = pr_commands.PullRequest(
            repo=repo, number=number, comment_id=comment_id, login=login, permission=permission, **head
        )
        try:
            async with ctx.sessionmaker.begin() as session:
                result = await pr_commands.run(session, ctx=ctx, command=command, pr=pr)
        except UserError as e:
            log.info(
                "pr command %s (%s) on %s#%s by %s refused: %s", comment_id, text, repo, number, login, e
            )
            await answer(f"🚫 **`{text}`** by @{login} was not run: {e}", "confused")
            return
        if result.noop:
            try:
                runs = [await dryrun.run(ctx=ctx, plan=plan) for plan in result.noop]
            except UserError as e:
                await answer(f"🚫 **`{text}`** by @{login}: the dry run failed: {e}", "confused")
                return
            await answer(_noop_body(login=login, text=text, runs=runs), "rocket")
            return
        if result.approved is not None:  # the last approval: the comment follows the deploy it queued
            await refresh_approval(
                notifier, entry={"repo": repo, "number": number, "comment_id": comment_id, "login": login,
                                 "text": text, "line": result.lines[0]},
                deployment_id=result.approved,
            )  # fmt: skip
            return
        if result.command is not None:  # drawn from the state now: a build that ended since wins
            if result.waiting:
                log.info(
                    "pr command %s (%s) on %s#%s by %s waits for build(s) %s",
                    comment_id, text, repo, number, login, ", ".join(f"#{b}" for b in result.waiting),
                )  # fmt: skip
            await refresh(notifier, command=result.command)
            return
        if result.deployment_ids:
            async with ctx.sessionmaker() as session:
                command_ref = command_of(
                    await pr_commands.refs_of(session, deployment_id=result.deployment_ids[0])
                )
            if command_ref is not None:
                await refresh(notifier, command=command_ref)
            return
        icon = {pr_commands.APPROVE: "👍", pr_commands.REJECT: "🛑"}.get(command.verb, "🔒")
        await answer(
            f"{icon} **`{text}`** by @{login}:\n\n" + "\n".join(f"- {line}" for line in result.lines),
            "rocket",
        )

    return {COMMAND_JOB: Handler(run=run_job)}
