"""Pull requests from forks over real HTTP (signed deliveries, the real app without its worker):
`never` deploys nothing and says so once, `approved` waits until a project developer approves the
head commit (label, API), a new push waits again, `always` deploys like any pull request.  The
cluster side (what a fork's preview gets of the app's secrets) is in test_fork_previews_e2e.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core import apps, deploys, previews, projects
from core.apps import AppChanges
from core.errors import Conflict
from storage import models
from tests.conftest import ADMIN
from tests.fakes.github_api import FakeGitHub
from tests.shipit.conftest import make_token
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    Hook,
    deliver_notifications,
    deployments,
    fork_pr_payload,
    job_rows,
    make_app,
    offline_cluster,
    pr_payload,
)
from webhooks import table


async def _preview_app(hook: Hook, **changes: Any) -> models.App:
    await offline_cluster(hook.rt)
    return await make_app(hook.rt, previews_enabled=True, preview_domain="preview.acme.dev", **changes)


async def _previews(hook: Hook) -> list[models.Preview]:
    async with hook.rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Preview).order_by(models.Preview.pr_number)))


async def _grant(hook: Hook, subject: str, role: str) -> None:
    async with hook.rt.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="acme", subject=subject, role=role)


async def _audit(hook: Hook, action: str) -> list[models.AuditEvent]:
    async with hook.rt.sessionmaker() as session:
        return list(
            await session.scalars(
                select(models.AuditEvent)
                .where(models.AuditEvent.action == action)
                .order_by(models.AuditEvent.id)
            )
        )


# ---------------------------------------------------------------- parsing the real payload shapes


def test_a_pull_request_is_from_a_fork_when_its_head_lives_in_another_repository() -> None:
    same = table.parse_pull_request(pr_payload("opened"))
    assert (same.is_fork, same.head_repo) == (False, "acme/web")
    fork = table.parse_pull_request(fork_pr_payload("opened"))
    assert (fork.is_fork, fork.head_repo, fork.repo) == (True, "contributor/web", "acme/web")
    # GitHub compares owner/name case-insensitively; so do we.
    shouting = pr_payload("opened")
    shouting["pull_request"]["head"]["repo"]["full_name"] = "ACME/Web"
    assert table.parse_pull_request(shouting).is_fork is False
    # A deleted fork: GitHub sends head.repo as null.  Still a fork, with no name.
    gone = table.parse_pull_request(fork_pr_payload("synchronize", fork=None))
    assert (gone.is_fork, gone.head_repo) == (True, None)
    labeled = table.parse_pull_request(fork_pr_payload("labeled", label="shipit:preview", sender="maint"))
    assert (labeled.action, labeled.label, labeled.sender, labeled.closed) == (
        "labeled",
        "shipit:preview",
        "maint",
        False,
    )


# ---------------------------------------------------------------- never (the default)


@pytest.mark.both_databases
async def test_never_a_fork_gets_no_preview_and_one_comment_saying_so(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    app = await _preview_app(hook)
    assert app.previews_from_forks == "never"  # the default
    opened = fork_pr_payload("opened", number=7, sha=SHA_A)
    fake_github.add_pull_from_event(opened)
    r = await hook.post("pull_request", opened)
    assert r.status_code == 202, r.text
    [decision] = r.json()["decisions"]
    assert decision["action"] == "skip"
    assert "comes from contributor/web and previews from forks are off for web" in decision["reason"]
    assert "previews_from_forks=never" in r.json()["message"]
    assert await _previews(hook) == []
    assert await deployments(hook.rt) == []
    assert await job_rows(hook.rt, kind=deploys.DEPLOY_JOB) == []

    await deliver_notifications(hook.rt)
    [comment] = fake_github.comments("acme/web", 7)
    assert "Previews from forks are off for `web`" in comment["body"]
    assert "contributor/web" in comment["body"]

    # Another push: still nothing, and no second comment.
    r = await hook.post("pull_request", fork_pr_payload("synchronize", number=7, sha=SHA_B))
    assert r.json()["decisions"][0]["action"] == "skip"
    await deliver_notifications(hook.rt)
    assert len(fake_github.comments("acme/web", 7)) == 1
    assert await deployments(hook.rt) == []

    # A label does not open a door that the setting keeps shut.
    await _grant(hook, "github:maint", "developer")
    r = await hook.post(
        "pull_request",
        fork_pr_payload("labeled", number=7, sha=SHA_B, label="shipit:preview", sender="maint"),
    )
    assert r.status_code == 202
    assert "nothing to approve" in r.json()["message"]
    assert await deployments(hook.rt) == []

    # A deleted fork is a fork too.
    r = await hook.post("pull_request", fork_pr_payload("synchronize", number=9, fork=None))
    assert "comes from a deleted fork" in r.json()["decisions"][0]["reason"]

    # Same-repository pull requests are untouched by the setting.
    r = await hook.post("pull_request", pr_payload("opened", number=8, sha=SHA_A))
    assert r.json()["decisions"][0]["action"] == "deploy"
    [preview] = await _previews(hook)
    assert (preview.pr_number, preview.is_fork, preview.head_repo) == (8, False, "acme/web")


# ---------------------------------------------------------------- approved


@pytest.mark.both_databases
async def test_approved_waits_for_a_developer_label_and_each_new_push_waits_again(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await _preview_app(hook, previews_from_forks="approved")
    await _grant(hook, "github:maint", "developer")
    await _grant(hook, "github:watcher", "viewer")
    opened = fork_pr_payload("opened", number=7, sha=SHA_A)
    fake_github.add_pull_from_event(opened)

    # Opened: a Preview row waits; nothing is deployed, no job is queued.
    r = await hook.post("pull_request", opened)
    assert r.status_code == 202, r.text
    [decision] = r.json()["decisions"]
    assert decision["action"] == "wait"
    assert decision["preview"] == "web-pr-7"
    assert "waits for approval of 6dcb09b from contributor/web" in decision["reason"]
    [preview] = await _previews(hook)
    assert (preview.status, preview.is_fork, preview.head_repo, preview.head_sha, preview.approved_by) == (
        "pending_approval",
        True,
        "contributor/web",
        SHA_A,
        None,
    )
    assert await deployments(hook.rt) == []
    assert await job_rows(hook.rt, kind=deploys.DEPLOY_JOB) == []
    await deliver_notifications(hook.rt)
    [comment] = fake_github.comments("acme/web", 7)
    assert "waits for approval" in comment["body"]
    assert "`shipit:preview`" in comment["body"] and "/shipit preview approve web 7" in comment["body"]

    # Other labels, and the label from people without the developer role, approve nothing.
    r = await hook.post("pull_request", fork_pr_payload("labeled", number=7, label="bug", sender="maint"))
    assert "means nothing to shipit" in r.json()["message"]
    # A viewer is told the role it lacks; someone with no role learns nothing about the app.
    refusals = {
        "watcher": "not approved: approving a preview from a fork in project acme needs the developer role",
        "contributor": "not approved: no app named 'web'",
    }
    for sender, reason in refusals.items():
        r = await hook.post(
            "pull_request", fork_pr_payload("labeled", number=7, label="shipit:preview", sender=sender)
        )
        assert r.status_code == 202
        [decision] = r.json()["decisions"]
        assert decision["action"] == "skip"
        assert reason in decision["reason"]
    assert await deployments(hook.rt) == []
    assert (await _previews(hook))[0].approved_by is None

    # A developer's label approves the head commit and deploys exactly it.
    r = await hook.post(
        "pull_request",
        fork_pr_payload("labeled", number=7, sha=SHA_A, label="shipit:preview", sender="maint"),
    )
    [decision] = r.json()["decisions"]
    assert decision["action"] == "deploy", decision
    assert decision["image"] == f"ghcr.io/acme/web:{SHA_A}"
    [preview] = await _previews(hook)
    assert (preview.status, preview.approved_by) == ("deploying", "github:maint")
    [deployment] = await deployments(hook.rt)
    assert (deployment.git_sha, deployment.actor, deployment.preview_id, deployment.namespace) == (
        SHA_A,
        "github:maint",
        preview.id,
        "web-pr-7",
    )
    assert len(await job_rows(hook.rt, kind=deploys.DEPLOY_JOB)) == 1
    [audit] = await _audit(hook, "preview.approve")
    assert (audit.actor, audit.details["sha"], audit.details["head_repo"]) == (
        "github:maint",
        SHA_A,
        "contributor/web",
    )
    await deliver_notifications(hook.rt)
    [comment] = fake_github.comments("acme/web", 7)  # the same comment, edited in place
    assert "deploying `6dcb09b`" in comment["body"]

    # A new push to the fork: the approval was for the old commit, so the new one waits.
    r = await hook.post("pull_request", fork_pr_payload("synchronize", number=7, sha=SHA_B))
    assert r.json()["decisions"][0]["action"] == "wait"
    [preview] = await _previews(hook)
    assert (preview.status, preview.head_sha, preview.approved_by) == ("pending_approval", SHA_B, None)
    assert len(await deployments(hook.rt)) == 1
    await deliver_notifications(hook.rt)
    [comment] = fake_github.comments("acme/web", 7)
    assert "waits for approval" in comment["body"] and f"`{SHA_B[:7]}`" in comment["body"]

    # A label event about the old head does not approve the new one.
    r = await hook.post(
        "pull_request",
        fork_pr_payload("labeled", number=7, sha=SHA_A, label="shipit:preview", sender="maint"),
    )
    [decision] = r.json()["decisions"]
    assert decision["action"] == "skip"
    assert f"is at {SHA_B[:7]} now, not {SHA_A[:7]}" in decision["reason"]
    assert len(await deployments(hook.rt)) == 1


@pytest.mark.both_databases
async def test_approved_through_the_api_needs_the_developer_role_and_deploys_the_waiting_commit(
    hook: Hook,
) -> None:
    await _preview_app(
        hook, previews_from_forks="approved", image_template="ghcr.io/acme/web:{branch}-{short_sha}"
    )
    await _grant(hook, "user:dev", "developer")
    await _grant(hook, "user:viewer", "viewer")
    dev, viewer = (
        await make_token(hook.rt, subject="user:dev", admin=False),
        await make_token(hook.rt, subject="user:viewer", admin=False),
    )
    await hook.post("pull_request", fork_pr_payload("opened", number=7, sha=SHA_A, ref="fix/typo"))
    await hook.post("pull_request", pr_payload("opened", number=8, sha=SHA_A))

    async with httpx.AsyncClient(base_url=f"{hook.url}/api/v1", timeout=30) as api:

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        r = await api.get("/apps/web/previews", headers=auth(viewer))
        assert r.status_code == 200
        assert [(p["pr"], p["status"], p["is_fork"]) for p in r.json()] == [
            (7, "pending_approval", True),
            (8, "deploying", False),
        ]
        r = await api.post("/apps/web/previews/7/approve", headers=auth(viewer))
        assert r.status_code == 403, r.text
        assert "needs the developer role" in r.json()["error"]["message"]
        r = await api.post("/apps/web/previews/8/approve", headers=auth(dev))
        assert r.status_code == 409
        assert "not from a fork" in r.json()["error"]["message"]
        r = await api.post("/apps/web/previews/99/approve", headers=auth(dev))
        assert r.status_code == 404

        r = await api.post("/apps/web/previews/7/approve", headers=auth(dev))
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["status"], body["approved_by"], body["head_sha"], body["head_repo"]) == (
            "deploying",
            "user:dev",
            SHA_A,
            "contributor/web",
        )
        deployment = next(d for d in await deployments(hook.rt) if d.id == body["deployment"])
        # The head branch recorded when the commit started waiting renders the image.
        assert deployment.image == f"ghcr.io/acme/web:fix-typo-{SHA_A[:7]}"
        assert (deployment.actor, deployment.status) == ("user:dev", "queued")

        r = await api.post("/apps/web/previews/7/approve", headers=auth(dev))
        assert r.status_code == 409
        assert "already approved by user:dev" in r.json()["error"]["message"]


async def test_a_label_opens_and_approves_a_fork_preview_made_before_the_setting_but_not_on_a_closed_pr(
    hook: Hook,
) -> None:
    await _preview_app(hook)  # never: the fork's pull request was refused when it was opened
    await _grant(hook, "github:maint", "developer")
    await hook.post("pull_request", fork_pr_payload("opened", number=7, sha=SHA_A))
    async with hook.rt.sessionmaker.begin() as session:
        await apps.update(
            session,
            ctx=hook.rt.core,
            actor=ADMIN,
            name="web",
            changes=AppChanges(previews_from_forks="approved"),
        )
    closed = fork_pr_payload("labeled", number=7, sha=SHA_A, label="shipit:preview", sender="maint")
    closed["pull_request"]["state"] = "closed"
    r = await hook.post("pull_request", closed)
    assert r.json()["message"] == "pull request #7 is closed; nothing to approve"
    assert await _previews(hook) == []
    r = await hook.post(
        "pull_request",
        fork_pr_payload("labeled", number=7, sha=SHA_A, label="shipit:preview", sender="maint"),
    )
    assert r.json()["decisions"][0]["action"] == "deploy", r.json()
    [preview] = await _previews(hook)
    assert (preview.status, preview.approved_by, preview.is_fork) == ("deploying", "github:maint", True)


async def test_waiting_fork_previews_do_not_use_up_the_cap(hook: Hook) -> None:
    await _preview_app(hook, previews_from_forks="approved", preview_max_open=1)
    for number in (1, 2, 3):
        r = await hook.post("pull_request", fork_pr_payload("opened", number=number, sha=SHA_A))
        assert r.json()["decisions"][0]["action"] == "wait"
    # Three forks waiting do not block the team's own pull request...
    r = await hook.post("pull_request", pr_payload("opened", number=4, sha=SHA_A))
    assert r.json()["decisions"][0]["action"] == "deploy"
    # ...and approving one more than the cap allows is refused with the reason, changing nothing.
    async with hook.rt.sessionmaker.begin() as session:
        with pytest.raises(Conflict, match=r"preview_max_open=1"):
            await previews.approve(session, ctx=hook.rt.core, actor=ADMIN, app_name="web", number=1)
    waiting = [p for p in await _previews(hook) if p.pr_number in (1, 2, 3)]
    assert {p.status for p in waiting} == {"pending_approval"} and not any(p.approved_by for p in waiting)


# ---------------------------------------------------------------- always


async def test_always_deploys_a_fork_like_any_pull_request(hook: Hook) -> None:
    await _preview_app(hook, previews_from_forks="always")
    r = await hook.post("pull_request", fork_pr_payload("opened", number=7, sha=SHA_A))
    assert r.json()["decisions"][0]["action"] == "deploy"
    [preview] = await _previews(hook)
    assert (preview.status, preview.is_fork, preview.approved_by) == ("deploying", True, None)
    assert len(await job_rows(hook.rt, kind=deploys.DEPLOY_JOB)) == 1


# ---------------------------------------------------------------- the setting


async def test_the_setting_is_validated_by_name_and_always_needs_an_admin(hook: Hook) -> None:
    await _preview_app(hook)
    await _grant(hook, "user:lead", "admin")
    await _grant(hook, "user:dev", "developer")
    lead = await make_token(hook.rt, subject="user:lead", admin=False)
    dev = await make_token(hook.rt, subject="user:dev", admin=False)
    async with httpx.AsyncClient(base_url=f"{hook.url}/api/v1", timeout=30) as api:
        r = await api.patch(
            "/apps/web",
            json={"previews_from_forks": "sometimes"},
            headers={"Authorization": f"Bearer {lead}"},
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "previews_from_forks"
        r = await api.patch(
            "/apps/web", json={"previews_from_forks": "always"}, headers={"Authorization": f"Bearer {dev}"}
        )
        assert r.status_code == 403
        assert "needs the admin role" in r.json()["error"]["message"]
        r = await api.patch(
            "/apps/web", json={"previews_from_forks": "always"}, headers={"Authorization": f"Bearer {lead}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["previews"]["from_forks"] == "always"
        r = await api.patch(
            "/apps/web", json={"previews_from_forks": "approved"}, headers={"Authorization": f"Bearer {lead}"}
        )
        assert r.json()["previews"]["from_forks"] == "approved"
    changes = await _audit(hook, "app.previews_from_forks")
    assert [(a.actor, a.details["from"], a.details["to"]) for a in changes] == [
        ("user:lead", "never", "always"),
        ("user:lead", "always", "approved"),
    ]
