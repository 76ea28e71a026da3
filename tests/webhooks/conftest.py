"""Fixtures for the GitHub channel: settings pointing at the fake GitHub, a signed-delivery client,
the real app served over loopback (with or without its worker), and helpers to set up linked apps."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core import apps, clusters, events, jobs, projects
from core.apps import AppChanges
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key
from tests.conftest import ADMIN, LiveServer, as_served, free_port
from tests.fakes.github_api import FakeGitHub
from webhooks import signature, table
from webhooks.ingest import Ingest

SECRET = "It's a Secret to Everybody, but not this one"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "github"
SHA_A = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
SHA_B = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
SHA_C = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"

# A kubeconfig that parses but reaches nothing: for tests that stop before the worker talks to a cluster.
OFFLINE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: default}}]
current-context: c
users: [{name: u, user: {token: not-a-real-token}}]
"""


def load(name: str) -> dict[str, Any]:
    """A fixture payload from tests/fixtures/github (a fresh copy: tests edit them)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return copy.deepcopy(data)


def push_payload(*, ref: str = "refs/heads/main", sha: str = SHA_A, repo: str = "acme/web") -> dict[str, Any]:
    payload = load("push__tag" if ref.startswith("refs/tags/") else "push__branch")
    payload["ref"], payload["after"] = ref, sha
    payload["repository"]["full_name"] = repo
    payload["repository"]["name"] = repo.split("/")[1]
    if payload.get("head_commit"):
        payload["head_commit"]["id"] = sha
    return payload


def pr_payload(
    action: str, *, number: int = 7, sha: str = SHA_A, repo: str = "acme/web", ref: str = "feature/checkout"
) -> dict[str, Any]:
    name = {"opened": "pull_request__opened", "synchronize": "pull_request__synchronize"}.get(
        action, f"pull_request__{action}"
    )
    payload = load(name)
    payload["action"] = action
    payload["number"] = number
    pr = payload["pull_request"]
    pr["number"] = number
    pr["head"]["sha"], pr["head"]["ref"] = sha, ref
    payload["repository"]["full_name"] = repo
    # A branch of the same repository: head and base live in `repo` (fork_pr_payload moves the head).
    for side in ("head", "base"):
        pr[side]["repo"]["full_name"] = repo
        pr[side]["repo"]["name"] = repo.split("/")[1]
    return payload


def fork_pr_payload(
    action: str,
    *,
    number: int = 7,
    sha: str = SHA_A,
    repo: str = "acme/web",
    fork: str | None = "contributor/web",
    ref: str = "feature/checkout",
    sender: str = "contributor",
    label: str | None = None,
) -> dict[str, Any]:
    """A pull request whose head lives in another repository, as GitHub sends it for a fork
    (`fork=None`: the fork was deleted, and GitHub sends head.repo as null)."""
    payload = pr_payload("labeled" if label else action, number=number, sha=sha, repo=repo, ref=ref)
    payload["action"] = action
    pr = payload["pull_request"]
    owner = (fork or "ghost/x").split("/")[0]
    if fork is None:
        pr["head"]["repo"] = None
    else:
        head_repo = copy.deepcopy(pr["base"]["repo"])
        head_repo.update(full_name=fork, name=fork.split("/")[1], fork=True, private=False)
        head_repo["owner"] = {**head_repo["owner"], "login": owner}
        pr["head"]["repo"] = head_repo
    pr["head"]["label"] = f"{owner}:{ref}"
    pr["head"]["user"] = {**pr["head"]["user"], "login": owner}
    pr["user"] = {**pr["user"], "login": owner}
    payload["sender"] = {**payload["sender"], "login": sender}
    if label is not None:
        payload["label"] = {**payload["label"], "name": label}
    return payload


@pytest.fixture
def settings(db_url: str, tmp_path: Path, fake_github: FakeGitHub) -> Settings:
    return Settings(
        _env_file=None,
        database_url=db_url,
        data_dir=tmp_path / "var",
        master_key=SecretStr(generate_key()),
        job_lease_seconds=5,
        job_poll_seconds=0.1,
        approval_ttl_seconds=600,
        github_webhook_secret=SecretStr(SECRET),
        github_token=SecretStr(fake_github.token),
        github_api_url=fake_github.url,
        github_write_interval_seconds=0,
    )


@dataclass
class Hook:
    """Posts deliveries signed the way GitHub signs them."""

    url: str
    rt: Runtime
    client: httpx.AsyncClient
    sent: list[str] = field(default_factory=list)

    async def post(
        self,
        event: str,
        payload: dict[str, Any] | None = None,
        *,
        body: bytes | None = None,
        delivery: str | None = None,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
        sign: bool = True,
    ) -> httpx.Response:
        raw = body if body is not None else json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        self.sent.append(delivery)
        h = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/5a1b2c3",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "481234567",
        }
        if sign:
            h["X-Hub-Signature-256"] = signature.sign(secret=secret, body=raw)
        h.update(headers or {})
        return await self.client.post(f"{self.url}/github/webhook", content=raw, headers=h)


async def _serve(rt: Runtime) -> AsyncIterator[str]:
    from shipit.main import create_app

    port = free_port()
    app = create_app(rt=rt)
    server = as_served(app, port=port, settings=rt.settings)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def hook(rt: Runtime) -> AsyncIterator[Hook]:
    """The real app over loopback WITHOUT its worker: deliveries are answered and queued, nothing runs."""
    async for url in _serve(rt):
        async with httpx.AsyncClient(timeout=30) as client:
            yield Hook(url=url, rt=rt, client=client)


@pytest.fixture
async def live_hook(live_server: LiveServer) -> AsyncIterator[Hook]:
    """The real app with its worker running (tests/conftest.py live_server)."""
    async with httpx.AsyncClient(timeout=30) as client:
        yield Hook(url=live_server.url, rt=live_server.rt, client=client)


async def offline_cluster(rt: Runtime) -> None:
    """Project acme and a cluster `test` that is never contacted."""
    async with rt.sessionmaker.begin() as session:
        if await session.scalar(select(models.Project.id).where(models.Project.name == "acme")) is None:
            await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        if await session.scalar(select(models.Cluster.id).where(models.Cluster.name == "test")) is None:
            await clusters.add(
                session,
                ctx=rt.core,
                actor=ADMIN,
                name="test",
                kubeconfig_text=OFFLINE_KUBECONFIG,
                default_namespace="default",
                version="v1.36.3",
            )
            await clusters.grant(session, actor=ADMIN, cluster="test", project="acme", namespace="default")


async def make_app(
    rt: Runtime, *, name: str = "web", namespace: str | None = None, **changes: Any
) -> models.App:
    defaults: dict[str, Any] = {
        "image": "ghcr.io/acme/web:0.1",
        "git_repo": "acme/web",
        "git_branch": "main",
        "image_template": "ghcr.io/acme/web:{sha}",
    }
    async with rt.sessionmaker.begin() as session:
        return await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="test",
            name=name,
            namespace=namespace,
            changes=AppChanges(**{**defaults, **changes}),
        )


async def job_rows(rt: Runtime, *, kind: str | None = None) -> list[models.Job]:
    async with rt.sessionmaker() as session:
        q = select(models.Job).order_by(models.Job.id)
        if kind:
            q = q.where(models.Job.kind == kind)
        return list(await session.scalars(q))


async def deployments(rt: Runtime) -> list[models.Deployment]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))


async def deliver_notifications(rt: Runtime) -> int:
    """Run the queued `notify` jobs in order, as the worker would (the other jobs stay queued)."""
    ran = 0
    while True:
        async with rt.sessionmaker() as session:
            job = await session.scalar(
                select(models.Job)
                .where(models.Job.kind == events.NOTIFY_JOB, models.Job.state == jobs.QUEUED)
                .order_by(models.Job.id)
                .limit(1)
            )
        if job is None:
            return ran
        view = jobs.JobView(
            id=job.id,
            kind=job.kind,
            payload=dict(job.payload),
            attempts=1,
            max_attempts=job.max_attempts,
            lease_owner="test",
        )
        await events.run_notify_job(ctx=rt.core, job=view)
        async with rt.sessionmaker.begin() as session:
            row = await session.get(models.Job, job.id)
            assert row is not None
            row.state, row.finished_at = jobs.DONE, models.utcnow()
        ran += 1


async def submit_together(rt: Runtime, pushes: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Submit these (delivery, push payload) at once: they are queued before the writer first runs."""
    ingest = Ingest()
    handler = table.HANDLERS[("push", None)]
    try:
        return await asyncio.gather(
            *[
                ingest.submit(ctx=rt.core, delivery=d, kind="push.", handler=handler, parsed=handler.parse(p))
                for d, p in pushes
            ]
        )
    finally:
        await ingest.close()
