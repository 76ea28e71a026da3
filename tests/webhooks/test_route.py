"""POST /github/webhook over real HTTP: refusals, ping, the ignored list, dedupe, and push decisions.

The app runs without its worker here, so what a delivery queued is exactly what the jobs table holds.
"""

from __future__ import annotations

import json
import logging
import urllib.parse

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from core import apps, deliveries, deploys
from shipit.main import create_app
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    SHA_C,
    Hook,
    deployments,
    job_rows,
    load,
    make_app,
    offline_cluster,
    pr_payload,
    push_payload,
)


async def test_ping_is_answered(hook: Hook) -> None:
    r = await hook.post("ping", load("ping__hook"))
    assert r.status_code == 200
    assert r.json()["result"] == "pong"
    assert r.json()["zen"] == "Design for failure."


async def test_bad_signature_is_401_and_nothing_recorded(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("push", push_payload(), secret="not the secret")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "BadSignature"
    assert await job_rows(hook.rt) == []
    async with hook.rt.sessionmaker() as session:
        assert list(await session.scalars(select(models.WebhookDelivery))) == []


async def test_missing_signature_header_is_400(hook: Hook) -> None:
    r = await hook.post("push", push_payload(), sign=False)
    assert r.status_code == 400
    assert "X-Hub-Signature-256" in r.json()["error"]["message"]


async def test_missing_event_header_is_400(hook: Hook) -> None:
    r = await hook.post("push", push_payload(), headers={"X-GitHub-Event": ""})
    assert r.status_code == 400
    assert "X-GitHub-Event" in r.json()["error"]["message"]


async def test_malformed_json_is_400_even_when_signed(hook: Hook) -> None:
    r = await hook.post("push", body=b'{"ref": "refs/heads/main", ')
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "MalformedPayload"
    r = await hook.post("push", body=b"[1, 2, 3]")
    assert r.status_code == 400
    assert await job_rows(hook.rt) == []


async def test_a_push_without_the_fields_github_sends_is_400(hook: Hook) -> None:
    payload = push_payload()
    del payload["repository"]
    r = await hook.post("push", payload)
    assert r.status_code == 400
    assert "repository" in r.json()["error"]["message"]


async def test_body_over_25_mb_is_413(hook: Hook) -> None:
    body = b'{"pad": "' + b"x" * (25 * 1024 * 1024) + b'"}'
    r = await hook.post("push", body=body)
    assert r.status_code == 413


async def test_unknown_repository_is_a_clear_202_and_nothing_enqueued(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("push", push_payload(repo="acme/unknown"))
    assert r.status_code == 202
    assert r.json()["message"] == "no app is linked to acme/unknown; nothing to deploy"
    assert r.json()["decisions"] == []
    assert await job_rows(hook.rt) == []
    assert await deployments(hook.rt) == []


async def test_untracked_branch_is_a_clear_202_and_nothing_enqueued(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("push", push_payload(ref="refs/heads/feature/x"))
    assert r.status_code == 202
    message = r.json()["message"]
    assert "no app deploys branch feature/x of acme/web" in message
    assert "web: branch main" in message
    assert await job_rows(hook.rt) == []


async def test_a_branch_an_app_starts_tracking_deploys_at_the_next_push(hook: Hook) -> None:
    """The untracked answer comes from the apps' tracking columns, kept with the read cache: a change
    of branch is seen by the very next push, and the branch left behind stops deploying."""
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("push", push_payload(ref="refs/heads/release", sha=SHA_A))
    assert "no app deploys branch release of acme/web (tracked: web: branch main)" in r.json()["message"]
    async with hook.rt.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=hook.rt.core, actor=ADMIN, name="web", changes=apps.AppChanges(git_branch="release")
        )
    r = await hook.post("push", push_payload(ref="refs/heads/release", sha=SHA_B))
    assert r.status_code == 202
    assert [d["action"] for d in r.json()["decisions"]] == ["deploy"]
    assert [d.git_sha for d in await deployments(hook.rt)] == [SHA_B]
    r = await hook.post("push", push_payload(ref="refs/heads/main", sha=SHA_C))
    assert "no app deploys branch main of acme/web (tracked: web: branch release)" in r.json()["message"]
    assert len(await deployments(hook.rt)) == 1


async def test_deleted_branch_does_not_deploy(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("push", load("push__deleted"))
    assert r.status_code == 202
    assert "was deleted" in r.json()["message"]
    assert await job_rows(hook.rt) == []


async def test_ignored_events_and_actions_are_answered_202(hook: Hook) -> None:
    r = await hook.post("issues", load("issues__opened"))
    assert r.status_code == 202
    assert r.json()["result"] == "ignored"
    assert "issues events are ignored" in r.json()["message"]
    unlabeled = load("pull_request__labeled")
    unlabeled["action"] = "unlabeled"
    r = await hook.post("pull_request", unlabeled)
    assert r.status_code == 202
    assert r.json()["message"] == "pull_request.unlabeled is ignored: nothing to deploy"
    # labeled is handled (shipit:preview approves fork previews); any other label does nothing.
    r = await hook.post("pull_request", load("pull_request__labeled"))
    assert r.status_code == 202
    assert r.json()["message"] == "label 'ui' means nothing to shipit; shipit:preview approves previews"
    r = await hook.post("sponsorship", {"action": "created"})
    assert r.status_code == 202
    assert r.json()["message"] == "sponsorship events are not handled by shipit"
    assert await job_rows(hook.rt) == []


async def test_push_queues_a_deploy_of_the_rendered_image(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, image_template="ghcr.io/acme/web:{branch}-{short_sha}")
    r = await hook.post("push", push_payload(sha=SHA_A))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["result"] == "accepted"
    [decision] = body["decisions"]
    assert decision["action"] == "deploy"
    assert decision["image"] == f"ghcr.io/acme/web:main-{SHA_A[:7]}"
    [deployment] = await deployments(hook.rt)
    assert deployment.id == decision["deployment"]
    assert (deployment.trigger, deployment.status, deployment.actor) == ("push", "queued", "github:octocat")
    assert (deployment.git_sha, deployment.git_ref) == (SHA_A, "refs/heads/main")
    assert deployment.image == f"ghcr.io/acme/web:main-{SHA_A[:7]}"
    [job] = await job_rows(hook.rt, kind=deploys.DEPLOY_JOB)
    # Ids, not objects (a trace context rides along when tracing is on in this process).
    assert {k: v for k, v in job.payload.items() if k != "traceparent"} == {"deployment_id": deployment.id}
    async with hook.rt.sessionmaker() as session:
        audit = await session.scalar(
            select(models.AuditEvent).where(models.AuditEvent.action == "deploy.request")
        )
    assert audit is not None and (audit.actor, audit.channel) == ("github:octocat", "github")


async def test_form_encoded_delivery_is_accepted(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    body = urllib.parse.urlencode({"payload": json.dumps(push_payload())}).encode()
    r = await hook.post("push", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 202, r.text
    assert r.json()["decisions"][0]["action"] == "deploy"


@pytest.mark.both_databases
async def test_duplicate_delivery_deploys_once(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    first = await hook.post("push", push_payload(), delivery="d-1")
    again = await hook.post("push", push_payload(), delivery="d-1")
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["result"] == "duplicate"
    assert len(await deployments(hook.rt)) == 1
    assert len(await job_rows(hook.rt, kind=deploys.DEPLOY_JOB)) == 1


@pytest.mark.both_databases
async def test_redelivery_of_a_delivery_that_never_committed_runs(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    # The first attempt recorded the delivery but its transaction rolled back (a crash mid-request).
    async with hook.rt.sessionmaker() as session, session.begin():
        assert await deliveries.first_time(session, source="github", delivery_id="d-2")
        await session.rollback()
    r = await hook.post("push", push_payload(), delivery="d-2")
    assert r.status_code == 202
    assert r.json()["result"] == "accepted"
    assert len(await deployments(hook.rt)) == 1


@pytest.mark.both_databases
async def test_newest_push_wins(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    await hook.post("push", push_payload(sha=SHA_B))
    await hook.post("push", push_payload(sha=SHA_C))
    rows = await deployments(hook.rt)
    assert [(d.git_sha, d.status) for d in rows] == [
        (SHA_A, "superseded"),
        (SHA_B, "superseded"),
        (SHA_C, "queued"),
    ]
    states = [j.state for j in await job_rows(hook.rt, kind=deploys.DEPLOY_JOB)]
    assert states == ["cancelled", "cancelled", "queued"]


async def test_the_same_commit_pushed_again_deploys_once(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    r = await hook.post("push", push_payload(sha=SHA_A))
    assert r.json()["decisions"][0]["action"] == "skip"
    assert "already deployed" in r.json()["decisions"][0]["reason"]
    assert len(await deployments(hook.rt)) == 1


async def test_paused_app_does_not_deploy_and_the_answer_says_so(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    async with hook.rt.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ADMIN, name="web", flag="pause", on=True, reason="incident 42")
    r = await hook.post("push", push_payload(sha=SHA_A))
    assert r.status_code == 202
    [decision] = r.json()["decisions"]
    assert decision["action"] == "skip"
    assert "auto-deploy is paused (incident 42)" in decision["reason"]
    assert await job_rows(hook.rt) == []
    async with hook.rt.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ADMIN, name="web", flag="pause", on=False)
    r = await hook.post("push", push_payload(sha=SHA_B))
    assert r.json()["decisions"][0]["action"] == "deploy"


async def test_locked_app_does_not_deploy(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    async with hook.rt.sessionmaker.begin() as session:
        await apps.set_flag(session, actor=ADMIN, name="web", flag="lock", on=True, reason="freeze")
    r = await hook.post("push", push_payload())
    [decision] = r.json()["decisions"]
    assert decision["action"] == "skip" and "locked" in decision["reason"]
    assert await job_rows(hook.rt) == []


async def test_branch_and_tag_pushes_deploy_different_apps(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, name="web-staging", namespace="staging")
    await make_app(
        hook.rt,
        name="web-prod",
        namespace="prod",
        git_ref_type="tag",
        git_branch="v*",
        image_template="ghcr.io/acme/web:{tag}",
    )
    r = await hook.post("push", push_payload(ref="refs/heads/main", sha=SHA_A))
    assert [(d["app"], d["action"]) for d in r.json()["decisions"]] == [("web-staging", "deploy")]
    r = await hook.post("push", push_payload(ref="refs/tags/v1.4.0", sha=SHA_A))
    assert [(d["app"], d["action"], d["image"]) for d in r.json()["decisions"]] == [
        ("web-prod", "deploy", "ghcr.io/acme/web:v1.4.0")
    ]
    r = await hook.post("push", push_payload(ref="refs/tags/nightly", sha=SHA_B))
    assert r.json()["decisions"] == []
    assert "no app deploys tag nightly" in r.json()["message"]
    rows = await deployments(hook.rt)
    assert [(d.namespace, d.git_ref) for d in rows] == [
        ("staging", "refs/heads/main"),
        ("prod", "refs/tags/v1.4.0"),
    ]


@pytest.mark.both_databases
async def test_deploy_on_ci_waits_for_a_successful_run_of_that_commit(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, deploy_on="ci")
    r = await hook.post("push", push_payload(sha=SHA_A))
    [decision] = r.json()["decisions"]
    assert decision["action"] == "wait"
    assert f"waiting for a successful check suite or workflow run on {SHA_A[:7]}" in decision["reason"]
    assert await job_rows(hook.rt) == []

    failed = load("check_suite__completed")
    failed["check_suite"]["conclusion"] = "failure"
    r = await hook.post("check_suite", failed)
    assert r.status_code == 202
    assert "concluded failure" in r.json()["message"]
    assert await deployments(hook.rt) == []

    other_branch = load("workflow_run__completed")
    other_branch["workflow_run"]["head_branch"] = "feature/x"
    r = await hook.post("workflow_run", other_branch)
    assert await deployments(hook.rt) == []

    r = await hook.post("check_suite", load("check_suite__completed"))
    assert r.status_code == 202
    [decision] = r.json()["decisions"]
    assert decision["action"] == "deploy"
    [deployment] = await deployments(hook.rt)
    assert (deployment.git_sha, deployment.image) == (SHA_A, f"ghcr.io/acme/web:{SHA_A}")

    # The workflow run of the same commit reports success too: still one deploy.
    r = await hook.post("workflow_run", load("workflow_run__completed"))
    assert r.json()["decisions"][0]["action"] == "skip"
    assert len(await deployments(hook.rt)) == 1


async def test_ci_events_do_not_deploy_apps_that_deploy_on_push(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, deploy_on="push")
    r = await hook.post("check_suite", load("check_suite__completed"))
    assert r.status_code == 202
    assert "waits for CI" in r.json()["message"]
    assert await job_rows(hook.rt) == []


async def test_pull_request_for_an_app_without_previews_is_a_clear_202(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("pull_request", pr_payload("opened"))
    assert r.status_code == 202
    assert r.json()["message"] == "previews are off for the apps linked to acme/web (web); no preview"
    assert await job_rows(hook.rt) == []


async def test_channel_switched_off_answers_503_with_a_reason(
    rt: Runtime, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    off = settings.model_copy(update={"github_webhook_secret": None})
    with caplog.at_level(logging.INFO, logger="webhooks.channel"):
        app = create_app(off)
    assert [r.getMessage() for r in caplog.records if r.name == "webhooks.channel"] == [
        "github: switched off (SHIPIT_GITHUB_WEBHOOK_SECRET is not set)"
    ]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shipit") as client:
        r = await client.post("/github/webhook", content=b"{}", headers={"X-GitHub-Event": "ping"})
    assert r.status_code == 503
    assert "SHIPIT_GITHUB_WEBHOOK_SECRET is not set" in r.json()["error"]["message"]


async def test_ci_deploys_a_tag_app_only_for_its_tag_pattern(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, name="web-prod", git_ref_type="tag", git_branch="v*", deploy_on="ci",
                   image_template="ghcr.io/acme/web:{tag}")  # fmt: skip
    await make_app(
        hook.rt, name="web-any", namespace="any", git_ref_type="tag", git_branch=None, deploy_on="ci"
    )
    run = load("workflow_run__completed")  # head_branch main: a branch, deploys neither
    r = await hook.post("workflow_run", run)
    assert r.json()["decisions"] == []
    run["workflow_run"]["head_branch"] = "v2.1.0"
    r = await hook.post("workflow_run", run)
    assert [(d["app"], d["image"]) for d in r.json()["decisions"]] == [
        ("web-prod", "ghcr.io/acme/web:v2.1.0")
    ]
    [deployment] = await deployments(hook.rt)
    assert deployment.git_ref == "refs/tags/v2.1.0"


@pytest.mark.both_databases
async def test_an_answered_delivery_is_already_in_the_database_and_a_redelivery_does_nothing(
    hook: Hook,
) -> None:
    # The route is a plain ASGI app behind the edge (issue 13): its answer still comes only after
    # the delivery's transaction committed, and still carries the edge's headers.
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    r = await hook.post("push", push_payload(ref="refs/heads/feature/y"), delivery="durable-1")
    assert r.status_code == 202 and r.json()["result"] == "accepted"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-request-id"]
    # Read through a connection of its own, not the app's: committed, not merely flushed.
    engine = create_async_engine(hook.rt.settings.database_url)
    try:
        async with engine.connect() as conn:
            kinds = (
                await conn.execute(
                    text("SELECT kind FROM webhook_deliveries WHERE id = :id"), {"id": "github:durable-1"}
                )
            ).scalars()
            assert list(kinds) == ["push."]
    finally:
        await engine.dispose()
    again = await hook.post("push", push_payload(ref="refs/heads/main"), delivery="durable-1")
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert await job_rows(hook.rt) == [] and await deployments(hook.rt) == []
    metrics = (await hook.client.get(f"{hook.url}/metrics")).text
    assert 'shipit_http_requests_total{method="POST",route="/github/webhook",status="202"}' in metrics


async def test_other_methods_on_the_webhook_are_405_naming_post(hook: Hook) -> None:
    for method in ("GET", "HEAD", "PUT"):
        r = await hook.client.request(method, f"{hook.url}/github/webhook")
        assert r.status_code == 405, method
        assert r.headers["allow"] == "POST"
