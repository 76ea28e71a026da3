"""Every real GitHub webhook body we hold (tests/fixtures/real-payloads/github: octokit/webhooks'
payload examples, see its SOURCES.md) through the real app over HTTP, signed as GitHub signs.

What the README and the table document: handled events are accepted (202, decisions), ignored ones
answered 202 with a reason naming the event (and action), ping is a pong; a real body is never a 5xx
and never refused as malformed.  For the handled events a second case links an app to the body's
repository so the handler's real path runs (a deploy queued, a preview created, a command queued).
One app (no worker, offline cluster: the tests see exactly what a delivery queued) serves the module.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s
from pydantic import SecretStr
from sqlalchemy import func, select

from core import apps, deploys, image_policies
from core.apps import AppChanges
from shipit import runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key
from tests import helpers
from tests.conftest import ADMIN, POSTGRES_URL, World, _drop_postgres, _fresh_postgres
from tests.fakes.github_api import FakeGitHub
from tests.webhooks.conftest import SECRET, Hook, _serve, offline_cluster
from webhooks import ingest

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "real-payloads" / "github"
FILES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*.json"))
assert len(FILES) == 159, "tests/fixtures/real-payloads/SOURCES.md lists 159 GitHub bodies"

# What the README's "GitHub" section says shipit acts on; everything else is ignored with a reason.
HANDLED: set[tuple[str, str | None]] = {
    ("push", None),
    *(("pull_request", a) for a in ("opened", "reopened", "synchronize", "closed", "labeled")),
    ("check_suite", "completed"),
    ("workflow_run", "completed"),
    ("issue_comment", "created"),
    ("package", "published"),
    ("registry_package", "published"),
}
# The events the README's GitHub App subscribes to: for these a second case links an app.
LINKABLE = {"push", "pull_request", "check_suite", "workflow_run", "issue_comment", "registry_package"}


def _body(name: str) -> tuple[str, bytes, dict[str, Any]]:
    raw = (ROOT / name).read_bytes()
    return name.split("/", 1)[0], raw, json.loads(raw)


def _action(payload: dict[str, Any]) -> str | None:
    action = payload.get("action")
    return action if isinstance(action, str) else None


@pytest_asyncio.fixture(
    scope="module", params=[b for b in ("sqlite", "postgres") if b == "sqlite" or POSTGRES_URL]
)
async def sweep(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Hook]:
    """One app per database: SQLite, and PostgreSQL when SHIPIT_TEST_POSTGRES_URL is set (the
    delivery records and the rows a delivery writes go through each dialect's own statements)."""
    tmp = tmp_path_factory.mktemp("real-github")
    if request.param == "postgres":
        assert POSTGRES_URL
        url, db_name = await _fresh_postgres(POSTGRES_URL)
    else:
        url, db_name = f"sqlite+aiosqlite:///{tmp / 'shipit.db'}", None
    try:
        async for hook in _app(tmp, url):
            yield hook
    finally:
        if db_name is not None:
            assert POSTGRES_URL
            await _drop_postgres(POSTGRES_URL, db_name)


async def _app(tmp: Path, url: str) -> AsyncIterator[Hook]:
    async with FakeGitHub() as github:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=url,
            data_dir=tmp / "var",
            master_key=SecretStr(generate_key()),
            job_lease_seconds=5,
            job_poll_seconds=0.1,
            github_webhook_secret=SecretStr(SECRET),
            github_token=SecretStr(github.token),
            github_api_url=github.url,
            github_write_interval_seconds=0,
            registry_pin_digests=False,
        )
        rt = await runtime.build(settings)
        try:
            await offline_cluster(rt)
            async for base in _serve(rt):
                async with httpx.AsyncClient(timeout=30) as client:
                    yield Hook(url=base, rt=rt, client=client)
        finally:
            await runtime.stop(rt)
        assert not github.errors, github.errors


async def _recorded(hook: Hook, delivery: str) -> int:
    async with hook.rt.sessionmaker() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(models.WebhookDelivery)
                .where(models.WebhookDelivery.id == f"{ingest.SOURCE}:{delivery}")
            )
            or 0
        )


@pytest.mark.parametrize("name", FILES)
async def test_every_real_body_is_answered_as_documented(
    sweep: Hook, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    try:
        await _answered_as_documented(sweep, name)
    finally:
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert SECRET not in caplog.text


async def _answered_as_documented(sweep: Hook, name: str) -> None:
    event, raw, payload = _body(name)
    action = _action(payload)
    delivery = str(uuid.uuid4())
    r = await sweep.post(event, body=raw, delivery=delivery)
    assert r.status_code < 500, r.text
    answer = r.json()
    if event == "ping":
        assert (r.status_code, answer["result"], answer["zen"]) == (200, "pong", payload["zen"])
        return
    assert r.status_code == 202, r.text
    assert (answer["event"], answer["action"], answer["delivery"]) == (event, action, delivery)
    if (event, action) not in HANDLED:
        assert answer["result"] == "ignored"
        # The reason names the event, and the action where other actions of the event are handled.
        named = f"{event}.{action}" if any(e == event for e, _ in HANDLED) else f"{event} events"
        assert answer["message"].startswith(named), answer
        assert await _recorded(sweep, delivery) == 0  # nothing recorded: a redelivery is ignored again
        return
    assert answer["result"] == "accepted", answer
    # No app follows these repositories here (test_a_linked_app_takes_the_real_path links them): the
    # message says why nothing happened, and nothing was decided.
    assert answer["decisions"] == [] and answer["message"], answer
    assert await _recorded(sweep, delivery) == 1
    again = await sweep.post(event, body=raw, delivery=delivery)
    assert (again.status_code, again.json()["result"]) == (200, "duplicate"), again.text
    assert await _recorded(sweep, delivery) == 1


LINKED = [
    f
    for f in FILES
    if f.split("/", 1)[0] in LINKABLE and (f.split("/", 1)[0], _action(_body(f)[2])) in HANDLED
]


async def _link(hook: Hook, *, name: str, event: str, payload: dict[str, Any]) -> str:
    """An app of project acme following the body's repository (and branch), with previews on: the
    handler's real path runs for it.  Returns its name."""
    ci = payload.get(event) if event in ("check_suite", "workflow_run") else None
    ref = str(payload.get("ref") or "refs/heads/main")
    branch = (ci or {}).get("head_branch") or ref.rsplit("/", 1)[-1]
    app_name = f"real{LINKED.index(name)}"
    async with hook.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="test",
            name=app_name,
            changes=AppChanges(
                image="ghcr.io/codertocat/hello-world:0.1",
                git_repo=payload["repository"]["full_name"],
                git_branch=branch,
                git_ref_type="tag" if ref.startswith("refs/tags/") else "branch",
                image_template="ghcr.io/codertocat/hello-world:{sha}",
                deploy_on="ci" if ci else "push",
                previews_enabled=True,
                preview_domain="preview.acme.dev",
            ),
        )
        if event == "registry_package":
            await image_policies.set_policy(session, actor=ADMIN, app_name=app_name, kind="glob", pattern="*")
    return app_name


async def _unlink(hook: Hook, app_name: str) -> None:
    """The next case's repository is often the same one: it must not see this app."""
    async with hook.rt.sessionmaker.begin() as session:
        await image_policies.clear(session, actor=ADMIN, app_name=app_name)
        await apps.update(
            session,
            ctx=hook.rt.core,
            actor=ADMIN,
            name=app_name,
            changes=AppChanges(git_repo=None, previews_enabled=False),
        )


def _mine(answer: dict[str, Any], app_name: str) -> dict[str, Any]:
    [decision] = [d for d in answer["decisions"] if d["app"] == app_name]
    return decision


async def _rows(hook: Hook, model: Any, app_name: str) -> list[Any]:
    async with hook.rt.sessionmaker() as session:
        app_id = await session.scalar(select(models.App.id).where(models.App.name == app_name))
        return list(await session.scalars(select(model).where(model.app_id == app_id).order_by(model.id)))


@pytest.mark.parametrize("name", LINKED)
async def test_a_linked_app_takes_the_real_path(sweep: Hook, name: str) -> None:
    event, raw, payload = _body(name)
    app_name = await _link(sweep, name=name, event=event, payload=payload)
    try:
        await _linked_case(sweep, name=name, event=event, raw=raw, payload=payload, app_name=app_name)
    finally:
        await _unlink(sweep, app_name)


async def _post(hook: Hook, event: str, raw: bytes) -> dict[str, Any]:
    r = await hook.post(event, body=raw)
    assert r.status_code == 202, r.text
    answer: dict[str, Any] = r.json()
    assert answer["result"] == "accepted", answer
    return answer


async def _linked_case(
    hook: Hook, *, name: str, event: str, raw: bytes, payload: dict[str, Any], app_name: str
) -> None:
    if event == "push" and payload["deleted"]:
        answer = await _post(hook, event, raw)
        assert answer["message"] == f"{payload['ref']} was deleted; nothing to deploy"
        assert await _rows(hook, models.Deployment, app_name) == []
    elif event in ("push", "check_suite", "workflow_run"):
        sha = payload["after"] if event == "push" else payload[event]["head_sha"]
        answer = await _post(hook, event, raw)
        decision = _mine(answer, app_name)
        assert (decision["action"], decision["image"]) == ("deploy", f"ghcr.io/codertocat/hello-world:{sha}")
        [deployment] = await _rows(hook, models.Deployment, app_name)
        assert (deployment.id, deployment.git_sha, deployment.status) == (
            decision["deployment"],
            sha,
            "queued",
        )
        assert deployment.trigger == "push"
    elif event == "pull_request" and payload["action"] == "labeled":
        answer = await _post(hook, event, raw)
        label = payload["label"]["name"]
        assert (
            answer["message"] == f"label '{label}' means nothing to shipit; shipit:preview approves previews"
        )
        assert await _rows(hook, models.Preview, app_name) == []
    elif event == "pull_request":
        number, head = payload["number"], payload["pull_request"]["head"]["sha"]
        if payload["action"] == "closed":  # the real opened body first, so there is a preview to close
            opened = (ROOT / "pull_request" / "opened.payload.json").read_bytes()
            _mine(await _post(hook, event, opened), app_name)
        answer = await _post(hook, event, raw)
        decision = _mine(answer, app_name)
        [preview] = await _rows(hook, models.Preview, app_name)
        assert (preview.pr_number, preview.namespace) == (number, f"{app_name}-pr-{number}")
        if payload["action"] == "closed":
            # The teardown is queued (a job deletes the namespace): "deploy" is the decisions' "work queued".
            namespace = f"{app_name}-pr-{number}"
            assert (decision["action"], decision["reason"]) == (
                "deploy",
                f"preview {namespace} is being deleted",
            )
            assert (preview.status, preview.closed_at is not None) == ("closing", True)
        else:
            assert (decision["action"], decision["preview"]) == ("deploy", f"{app_name}-pr-{number}")
            assert (preview.head_sha, preview.status) == (head, "deploying")
    elif event == "issue_comment":
        # As GitHub sent it: a comment on an issue, not a pull request; nothing queued.
        answer = await _post(hook, event, raw)
        assert answer["message"] == "comments on issues are ignored; commands work on pull requests"
        # The same real body as a `.deploy` on a pull request (GitHub adds issue.pull_request then).
        payload["comment"]["body"] = ".deploy"
        payload["issue"]["pull_request"] = {
            "url": f"{payload['issue']['url']}".replace("/issues/", "/pulls/")
        }
        comment_id, login = payload["comment"]["id"], payload["comment"]["user"]["login"]
        answer = await _post(hook, event, json.dumps(payload).encode())
        assert answer["message"] == f"comment {comment_id}: .deploy by {login} queued", answer
        async with hook.rt.sessionmaker() as session:
            job = await session.scalar(
                select(models.Job).where(models.Job.dedupe_key == f"github-comment:{comment_id}")
            )
        assert job is not None
        assert job.payload["command"]["verb"] == "deploy"
        assert (job.payload["repo"], job.payload["number"]) == (
            payload["repository"]["full_name"],
            payload["issue"]["number"],
        )
    else:
        assert event == "registry_package"
        answer = await _post(hook, event, raw)
        decision = _mine(answer, app_name)
        # GitHub names no tag here (container_metadata.tag.name is ""): the policy looks at the tag list.
        assert (decision["action"], decision["reason"]) == (
            "wait",
            "no tag in the notification: checking the tag list",
        )
        async with hook.rt.sessionmaker() as session:
            policy = await session.scalar(select(models.ImagePolicy).order_by(models.ImagePolicy.id.desc()))
        assert policy is not None and policy.repository == "ghcr.io/codertocat/hello-world"
        assert policy.next_poll_at is not None


async def test_a_real_push_body_rolls_out_on_the_cluster(
    world: World, live_hook: Hook, fake_github: FakeGitHub, kube_api: k8s.ApiClient
) -> None:
    """The real path to the end once, as tests/webhooks/test_e2e.py does for its own bodies: the
    real push to master deploys the body's commit on the real control plane and reports to GitHub."""
    _, raw, payload = _body("push/with-new-branch.payload.json")
    repo, sha = payload["repository"]["full_name"], payload["after"]
    fake_github.add_repo(repo, default_branch="master", branches={"master": sha}, private=False)
    async with world.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster=world.cluster,
            name="hello",
            namespace=world.namespace,
            changes=AppChanges(
                image="ghcr.io/codertocat/hello-world:0.1",
                git_repo=repo,
                git_branch="master",
                image_template="ghcr.io/codertocat/hello-world:{sha}",
                health_path=None,
            ),
        )
    r = await live_hook.post("push", body=raw)
    assert r.status_code == 202, r.text
    [decision] = r.json()["decisions"]

    async def finished() -> models.Deployment | None:
        async with live_hook.rt.sessionmaker() as session:
            row = await session.get(models.Deployment, decision["deployment"])
        return row if row is not None and row.status in deploys.TERMINAL else None

    done = await helpers.eventually(finished, what="the deploy to finish", timeout=90)
    assert done.status == "succeeded", done.error
    workload = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("hello", world.namespace)
    assert workload.spec.template.spec.containers[0].image == f"ghcr.io/codertocat/hello-world:{sha}"

    async def reported() -> bool:
        found = fake_github.deployments(repo)
        return bool(found) and fake_github.deployment_states(repo, found[0]["id"])[-1:] == ["success"]

    await helpers.eventually(reported, what="the GitHub deployment to say success", timeout=60)
    [gh] = fake_github.deployments(repo)
    assert gh["sha"] == sha
