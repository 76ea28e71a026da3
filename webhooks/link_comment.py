"""`.link CODE` in a PR (or issue) comment: the author proves they are github:<login> to shipit.

`/shipit link github LOGIN` in Slack hands out a one-time code for github:login; GitHub vouches for
who wrote a comment, so a comment by that login carrying the code links the two identities
(core.identities.redeem_link_code).  The code is redeemed in the delivery's transaction; the answer
on GitHub (a short comment that never repeats the code) is a job, so nothing slow happens before
the webhook is answered and a GitHub hiccup is retried.

The PR-comment command dispatcher (webhooks.comments) hands `.link` comments here, on issues too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from core import identities, jobs
from core.context import Core
from core.errors import UserError
from core.gitops import Outcome
from core.worker import Handler
from webhooks.client import GitHubClient

log = logging.getLogger(__name__)

REPLY_JOB = "github.link_reply"
_LINK = re.compile(r"\s*\.link\s+([A-Za-z0-9-]{1,40})\s*", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class LinkComment:
    repo: str
    number: int
    login: str  # the comment's author, as GitHub vouches
    code: str | None = field(default=None, repr=False)  # None: not a `.link` comment


def from_comment(*, repo: str, number: int, login: str, body: str) -> LinkComment | None:
    """A `.link CODE` comment (the dispatcher in webhooks.comments has already left out bots)."""
    m = _LINK.fullmatch(body)
    if m is None or not login:
        return None
    return LinkComment(repo=repo, number=number, login=login, code=m.group(1))


async def run(session: AsyncSession, ctx: Core, e: LinkComment) -> Outcome:
    """Redeem the code as github:<author>; queue the answer on the pull request."""
    if e.code is None:
        return Outcome(summary="comment ignored: not a shipit command")
    try:
        await identities.redeem_link_code(session, subject=f"github:{e.login}", code=e.code)
    except UserError as refused:
        ok, text = False, f"@{e.login} {refused}"
    else:
        ok, text = True, f"@{e.login} is linked: your shipit roles now hold here and in Slack alike."
    if "github" in ctx.notifiers:  # a replica that can talk to GitHub answers; without one, nobody can
        await jobs.enqueue(
            session,
            kind=REPLY_JOB,
            payload={"repo": e.repo, "number": e.number, "body": text},
            max_attempts=5,
        )
    return Outcome(summary=f"link by {e.login}: {'linked' if ok else 'refused'}")


def reply_handler(client: GitHubClient) -> Handler:
    """The job that comments the outcome on the pull request (the text never holds the code)."""

    async def reply(*, ctx: Core, job: jobs.JobView) -> None:
        repo, number, body = str(job.payload["repo"]), int(job.payload["number"]), str(job.payload["body"])
        await client.call(
            repo=repo,
            what=f"answer the .link comment on {repo}#{number}",
            fn=lambda r: r.get_issue(number).create_comment(body),
        )

    return Handler(run=reply)
