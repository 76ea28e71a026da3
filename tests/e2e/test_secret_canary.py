"""One canary secret, driven through every channel, found nowhere but in the Kubernetes Secret.

A distinctive value per channel that can set a secret (the REST API, the CLI, Slack's `/shipit secrets
set`, the dashboard) and a rotated value are set on one app, on the real control plane with the worker
running, Slack and GitHub against their fakes, a loopback receiver for the project's outgoing webhook, a
real SMTP server for its mail target, Teams and Discord targets posting to the same receiver, and the
dashboard signed in through the fake OIDC provider; on SQLite and on PostgreSQL.  Then every path that
touches the app runs: deploys from the API, Slack, the CLI and a GitHub push, a deploy that crash-loops
(and rolls back by itself), a release command whose Job fails (the Job runs with the revision's secrets),
refused and invalid deploys and secret writes, dry runs
(API, CLI, Slack `diff`, a PR's `.noop`: a Secret's diff is the classic leak), rollbacks, a PR preview, status, logs,
the dashboard pages and its live stream, the audit log and its export, /metrics.

Everything is captured: each HTTP answer (body and headers), every log record of every logger at DEBUG
(tracebacks included), every request the fake Slack, the fake GitHub and the webhook receiver got, every
mail, CLI output, every row of every table, the database file itself, and every object in the namespace
except the Secrets.  None holds a canary in any form (its distinctive hex core survives JSON, URL, HTML
and repr escaping; its base64, standard and URL-safe, at each alignment, is what a Secret's `data` would
show).  The Secret shipit applied holds the current values, so a test that found nothing found nothing
for the right reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import random
import secrets as pysecrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from bot import notifier
from core import apps, deploys, projects
from shipit import cli, runtime
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import CHANNEL, SlackSender, User, slack_on
from tests.conftest import ADMIN, World, database_bytes, free_port, serving, serving_posts
from tests.fakes.github_api import FakeGitHub
from tests.fakes.oidc import FakeOidc
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually
from tests.notices_helpers import SmtpSink, smtp_server
from tests.shipit.conftest import make_token
from tests.web.conftest import csrf_of
from tests.webhooks.conftest import SECRET as GITHUB_SECRET
from tests.webhooks.conftest import Hook, pr_payload, push_payload
from tests.webhooks.test_pr_commands import comment_payload

ALICE = User("U0ALICE01", "alice")  # admin of acme on Slack, GitHub and the dashboard
CAROL = User("U0CAROL01", "carol")  # a viewer of acme on Slack and the API
EMAIL = "alice@example.com"
REPO = "acme/web"
SHA_PUSH = "b" * 40
SHA_PR = "c" * 40


@dataclasses.dataclass(frozen=True)
class Canary:
    """A secret value with a distinctive hex core and everything it can turn into on the way out."""

    value: str

    @classmethod
    def make(cls, tag: str) -> Canary:
        # '+', '/', '=' and '&' change under base64, URL and form encoding; the hex core does not.
        return cls(f"canary-{tag}-{pysecrets.token_hex(12)}+/=&")

    @property
    def core(self) -> str:
        return self.value.split("-")[2][:24]

    def needles(self) -> list[str]:
        out = [self.core]
        raw = self.value.encode()
        for pad in range(3):  # the value at each offset mod 3 inside a longer base64'd text
            for enc in (base64.b64encode, base64.urlsafe_b64encode):
                text = enc(b"\0" * pad + raw).decode().rstrip("=")
                # Drop the chunk that mixes in the padding and the last, partial one.
                out.append(text[4 if pad else 0 : -4])
        return out

    def found_in(self, text: str) -> str | None:
        for needle in self.needles():
            at = text.find(needle)
            if at >= 0:
                return text[max(0, at - 300) : at + 300]
        return None


class Capture:
    """Every text the sweep saw, by where it was seen."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: object) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts.append((where, text if isinstance(text, str) else json.dumps(text, default=str)))

    async def on_response(self, response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return  # an endless stream: the test reads it itself
        await response.aread()
        request = response.request
        self.add(f"HTTP {request.method} {request.url} -> {response.status_code}", _answer(response))

    def leaks(self, canaries: list[Canary]) -> list[str]:
        found = []
        for where, text in self.texts:
            for canary in canaries:
                context = canary.found_in(text)
                if context is not None:
                    found.append(f"{canary.value} in {where}:\n...{context}...")
        return found


def _answer(response: httpx.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{headers}\n\n{response.text}"


class _Records(logging.Handler):
    def __init__(self, capture: Capture) -> None:
        super().__init__(level=logging.DEBUG)
        self.capture = capture
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        extras = {k: v for k, v in record.__dict__.items() if k not in _PLAIN_RECORD}
        self.capture.add(f"log {record.name}", self.format(record) + " " + repr(extras))


_PLAIN_RECORD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextlib.contextmanager
def every_log_record(capture: Capture) -> Iterator[None]:
    """Every logger at DEBUG into `capture`, whatever levels and propagation were set before."""
    handler = _Records(capture)
    loggers = [logging.root] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    set_level = logging.Logger.setLevel
    # Libraries quiet their own loggers when their clients are built (kubernetes_asyncio's
    # Configuration sets WARNING): held at DEBUG, so nothing said at any level goes unread.
    logging.Logger.setLevel = lambda self, level: set_level(self, logging.DEBUG)  # type: ignore[method-assign]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        if not lg.propagate:
            lg.addHandler(handler)
    logging.root.addHandler(handler)
    try:
        yield
    finally:
        logging.Logger.setLevel = set_level  # type: ignore[method-assign]
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            lg.removeHandler(handler)


@pytest.fixture
def web_port() -> int:
    return free_port()


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, int]]:
    with smtp_server(login=("bot", "p@ss-w0rd")) as server:
        yield server


@pytest.fixture
def settings(
    settings: Settings,
    fake_slack: FakeSlack,
    fake_github: FakeGitHub,
    fake_oidc: FakeOidc,
    web_port: int,
    smtp: tuple[SmtpSink, int],
) -> Settings:
    """Every channel on: Slack, GitHub, mail, dashboard sign-in; the public URL known before the start."""
    return slack_on(settings, fake_slack).model_copy(
        update={
            "smtp_url": SecretStr(f"smtp://bot:p%40ss-w0rd@127.0.0.1:{smtp[1]}"),
            "smtp_from": "shipit@acme.io",
            "url": f"http://127.0.0.1:{web_port}",
            "github_webhook_secret": SecretStr(GITHUB_SECRET),
            "github_token": SecretStr(fake_github.token),
            "github_api_url": fake_github.url,
            "github_write_interval_seconds": 0,
            "oidc_issuer": fake_oidc.issuer,
            "oidc_client_id": fake_oidc.client_id,
            "oidc_client_secret": SecretStr(fake_oidc.client_secret),
            "web_cookie_secure": False,
        }
    )


@pytest.fixture
async def server(rt: Runtime, web_port: int) -> AsyncIterator[str]:
    """The real app, worker running, on the port the settings name."""
    from shipit.main import create_app

    app = create_app(rt=rt)
    await runtime.start(rt)
    async with serving(app, port=web_port, settings=rt.settings) as url:
        yield url


@pytest.fixture
async def preview_pr(kube_api: Any) -> AsyncIterator[int]:
    """A pull request number whose preview namespace no other run used; the namespace goes at the end."""
    number = random.randint(100, 99999)
    yield number
    with contextlib.suppress(ApiException):
        await k8s.CoreV1Api(kube_api).delete_namespace(f"web-pr-{number}")


async def _latest(rt: Runtime) -> models.Deployment | None:
    async with rt.sessionmaker() as session:
        return await session.scalar(select(models.Deployment).order_by(models.Deployment.id.desc()).limit(1))


async def _settled(rt: Runtime, *, after: int, what: str, timeout: float = 60) -> models.Deployment:
    """The newest deploy above id `after`, once it and every other deploy are final."""

    async def probe() -> models.Deployment | None:
        async with rt.sessionmaker() as session:
            rows = list(await session.scalars(select(models.Deployment).where(models.Deployment.id > after)))
        if rows and all(d.status in deploys.TERMINAL for d in rows):
            return max(rows, key=lambda d: d.id)
        return None

    return await eventually(probe, what=what, timeout=timeout)


async def _last_id(rt: Runtime) -> int:
    d = await _latest(rt)
    return d.id if d else 0


async def _outbox_drained(rt: Runtime) -> None:
    """Every notification job has run (cards, GitHub statuses, webhooks all sent)."""

    async def probe() -> bool:
        async with rt.sessionmaker() as session:
            rows = list(
                await session.scalars(
                    select(models.Job).where(models.Job.state.in_(("queued", "running", "retrying")))
                )
            )
        return not rows

    await eventually(probe, what="the queue to drain", timeout=60)


async def _dump_database(rt: Runtime, capture: Capture) -> None:
    async with rt.sessionmaker() as session:
        for table in models.Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).mappings():
                capture.add(f"db {table.name}", {k: v for k, v in row.items()})


async def _namespace_objects(kube_api: Any, namespace: str, capture: Capture) -> dict[str, dict[str, str]]:
    """Everything in the namespace but Secrets into `capture`; the Secrets' decoded data returned."""
    apps_v1, core_v1, batch_v1 = k8s.AppsV1Api(kube_api), k8s.CoreV1Api(kube_api), k8s.BatchV1Api(kube_api)
    for kind, lister in (
        ("Deployment", apps_v1.list_namespaced_deployment),
        ("ReplicaSet", apps_v1.list_namespaced_replica_set),
        ("Pod", core_v1.list_namespaced_pod),
        ("Service", core_v1.list_namespaced_service),
        ("ConfigMap", core_v1.list_namespaced_config_map),
        ("Event", core_v1.list_namespaced_event),
        ("Job", batch_v1.list_namespaced_job),
    ):
        for item in (await lister(namespace)).items:
            capture.add(f"kube {kind}/{item.metadata.name}", kube_api.sanitize_for_serialization(item))
    out = {}
    for s in (await core_v1.list_namespaced_secret(namespace)).items:
        out[s.metadata.name] = {k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()}
    return out


@pytest.mark.both_databases
async def test_a_canary_secret_appears_only_in_the_kubernetes_secret(
    world: World,
    server: str,
    kube_api: Any,
    fake_slack: FakeSlack,
    fake_github: FakeGitHub,
    fake_oidc: FakeOidc,
    smtp: tuple[SmtpSink, int],
    preview_pr: int,
) -> None:
    rt = world.rt
    ns = world.namespace
    api_canary, cli_canary, slack_canary = (Canary.make(t) for t in ("api", "cli", "slack"))
    old_canary, rotated_canary = Canary.make("old"), Canary.make("rotated")
    dash_canary, bad_canary = Canary.make("dash"), Canary.make("refused")
    canaries = [api_canary, cli_canary, slack_canary, old_canary, rotated_canary, dash_canary, bad_canary]
    capture = Capture()
    runner = CliRunner()
    hook_signing_key = f"hook-key-{uuid.uuid4().hex}"

    received: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(({**request.headers, "X-Shipit-Path": request.path}, await request.read()))
        return web.Response(status=204)

    async with rt.sessionmaker.begin() as session:
        await projects.update(session, ctx=rt.core, actor=ADMIN, name="acme", slack_channel=CHANNEL)
        for subject in (ALICE.subject, "github:alice", f"user:{EMAIL}"):
            await projects.set_access(
                session, actor=ADMIN, project_name="acme", subject=subject, role="admin"
            )
        for subject in (CAROL.subject, "user:carol"):
            await projects.set_access(
                session, actor=ADMIN, project_name="acme", subject=subject, role="viewer"
            )
    fake_github.set_role(REPO, "alice", "admin")
    # Slack's own pace (a write a second per channel) would hold the sweep ~40 s behind its cards;
    # the pacing has its own tests (tests/bot/test_notifier.py).
    rt.core.notifiers["slack"].pacer = notifier.Pacer(rate=1000.0, burst=100)  # type: ignore[attr-defined]
    token = await make_token(rt)
    env = {"SHIPIT_URL": server, "SHIPIT_TOKEN": token}

    def shipit(*args: str, stdin: str | None = None) -> None:
        result = runner.invoke(cli.app, list(args), env=env, input=stdin)
        capture.add(f"cli {' '.join(args)} (exit {result.exit_code})", result.stdout + result.stderr)
        if result.exception and not isinstance(result.exception, SystemExit):
            capture.add(f"cli {' '.join(args)} exception", repr(result.exception))

    with every_log_record(capture):
        async with (
            serving_posts(receive, paths=("/hook", "/teams", "/discord")) as receiver,
            httpx.AsyncClient(
                base_url=f"{server}/api/v1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
                event_hooks={"response": [capture.on_response]},
            ) as api,
            httpx.AsyncClient(timeout=60, event_hooks={"response": [capture.on_response]}) as plain,
        ):
            slack = SlackSender(url=server, fake=fake_slack)
            slack.http.event_hooks["response"] = [capture.on_response]
            hook = Hook(url=server, rt=rt, client=plain)
            try:
                # --- set up: a webhook target, the app (linked to the repo), a first secret.
                r = await api.post(
                    "/projects/acme/notify",
                    json={"kind": "webhook", "address": f"{receiver}/hook", "secret": hook_signing_key},
                )
                assert r.status_code == 201, r.text
                # Teams and Discord take the whole webhook URL as their address (the URL is their
                # secret); both post to the receiver, each under its own path.
                for kind in ("teams", "discord"):
                    r = await api.post(
                        "/projects/acme/notify", json={"kind": kind, "address": f"{receiver}/{kind}"}
                    )
                    assert r.status_code == 201, r.text
                # Mail is paced (a message a second): only the failure, the one with pod logs in it.
                r = await api.post(
                    "/projects/acme/notify",
                    json={"kind": "email", "address": "ops@acme.io", "events": "failed"},
                )
                assert r.status_code == 201, r.text
                r = await api.post(
                    "/apps",
                    json={"name": "web", "project": "acme", "cluster": world.cluster, "namespace": ns,
                          "image": "ghcr.io/acme/web:1.0", "deploy": False},
                )  # fmt: skip
                assert r.status_code == 201, r.text
                async with rt.sessionmaker.begin() as session:
                    await apps.update(
                        session,
                        ctx=rt.core,
                        actor=ADMIN,
                        name="web",
                        changes=apps.AppChanges(
                            git_repo=REPO,
                            git_branch="main",
                            image_template="ghcr.io/acme/web:{sha}",
                            progress_deadline_seconds=20,
                            health_path=None,
                        ),
                    )

                # --- REST API: set a secret, deploy.
                start = await _last_id(rt)
                r = await api.put("/apps/web/secrets", json={"values": {"API_KEY": old_canary.value}})
                assert r.status_code == 200, r.text
                r = await api.post("/apps/web/deploys", json={"image": "ghcr.io/acme/web:1.1"})
                assert r.status_code == 202, r.text
                assert (await _settled(rt, after=start, what="the API deploy")).status == deploys.SUCCEEDED

                # --- CLI: set a secret from stdin and wait for the redeploy; list, status, dry run.
                start = await _last_id(rt)
                await asyncio.to_thread(
                    shipit, "secrets", "set", "web", "--key", "CLI_KEY", "--value", "-", "--wait",
                    stdin=cli_canary.value,
                )  # fmt: skip
                assert (await _settled(rt, after=start, what="the CLI redeploy")).status == deploys.SUCCEEDED

                # --- Slack: set a secret (the redeploy runs), then what a developer reads.
                start = await _last_id(rt)
                capture.add("slack secrets set", await slack.command(
                    f"secrets set web SLACK_KEY={slack_canary.value}", user=ALICE))  # fmt: skip
                assert (
                    await _settled(rt, after=start, what="the Slack redeploy")
                ).status == deploys.SUCCEEDED

                # --- rotation: API_KEY gets a new value, not yet deployed; every dry run sees a change.
                r = await api.put(
                    "/apps/web/secrets", params={"deploy": "false"}, json={"values": {"API_KEY": rotated_canary.value,
                                                                                    "API_KEY2": api_canary.value}}
                )  # fmt: skip
                assert r.status_code == 200, r.text
                r = await api.post("/apps/web/deploys", json={"image": "1.2", "dry_run": True})
                assert r.status_code == 200, r.text
                assert "API_KEY" in r.text, r.text
                await asyncio.to_thread(shipit, "deploy", "web", "1.2", "--dry-run")
                await asyncio.to_thread(shipit, "deploy", "web", "1.2", "--dry-run", "--json")
                capture.add("slack diff", await slack.command("diff web 1.2", user=ALICE))
                fake_github.add_pull(REPO, 41, head_ref="feature/canary", head_sha=SHA_PR)
                comment = fake_github.add_comment(REPO, 41, ".noop", user="alice")
                r = await hook.post("issue_comment", comment_payload(comment, number=41, repo=REPO))
                assert r.status_code == 202, r.text

                async def noop_answered() -> bool:
                    return any("nothing was changed" in c["body"] for c in fake_github.comments(REPO, 41))

                await eventually(noop_answered, what="the .noop reply")

                # --- GitHub push deploys the rotated value; the dashboard's live stream watches it.
                async with fake_oidc_client(server, fake_oidc, capture) as browser:
                    events: list[bytes] = []

                    async def follow() -> None:
                        with contextlib.suppress(httpx.HTTPError):  # the server going away ends it
                            async with browser.stream("GET", "/apps/web/events") as stream:
                                capture.add("dashboard SSE headers", dict(stream.headers))
                                async for chunk in stream.aiter_bytes():
                                    events.append(chunk)

                    watching = asyncio.create_task(follow())
                    # The dashboard sets a secret too (no redeploy yet: the push below takes it).
                    page = await browser.get("/apps/web")
                    r = await browser.post(
                        "/apps/web/secrets",
                        data={"csrf": csrf_of(page.text), "key": "DASH_KEY", "value": dash_canary.value},
                    )
                    assert r.status_code == 200, r.text
                    r = await browser.post(
                        "/apps/web/secrets",
                        data={"csrf": csrf_of(page.text), "key": "bad key", "value": bad_canary.value},
                    )
                    assert r.status_code >= 400, r.text
                    r = await browser.post(
                        "/apps/web/secrets", data={"csrf": "forged", "key": "K", "value": bad_canary.value}
                    )
                    assert r.status_code >= 400, r.text
                    start = await _last_id(rt)
                    r = await hook.post("push", push_payload(sha=SHA_PUSH, repo=REPO))
                    assert r.status_code == 202, r.text
                    pushed = await _settled(rt, after=start, what="the push deploy")
                    assert pushed.status == deploys.SUCCEEDED, pushed.error

                    # --- a deploy that crash-loops fails and rolls back by itself.
                    start = await _last_id(rt)
                    r = await api.post("/apps/web/deploys", json={"image": "ghcr.io/acme/web:fail-canary"})
                    assert r.status_code == 202, r.text
                    await _settled(
                        rt, after=start, what="the failed deploy and its auto-rollback", timeout=90
                    )
                    async with rt.sessionmaker() as session:
                        failed = list(
                            await session.scalars(
                                select(models.Deployment).where(
                                    models.Deployment.id > start, models.Deployment.status == deploys.FAILED
                                )
                            )
                        )
                    assert failed, "the crash-looping deploy did not fail"

                    # --- a release command whose Job fails: the Job runs with the app's secrets, and
                    # its failure (pod reason, exit code, logs) goes to every notice target.
                    async with rt.sessionmaker.begin() as session:
                        await apps.update(
                            session, ctx=rt.core, actor=ADMIN, name="web",
                            changes=apps.AppChanges(release_command="./migrate --with-secrets"),
                        )  # fmt: skip
                    start = await _last_id(rt)
                    r = await api.post("/apps/web/deploys", json={"image": "ghcr.io/acme/web:fail-release"})
                    assert r.status_code == 202, r.text
                    await _settled(rt, after=start, what="the failed release", timeout=90)
                    async with rt.sessionmaker() as session:
                        released = await session.get(models.Deployment, start + 1)
                    assert released is not None and released.status == deploys.FAILED, released
                    assert (released.error or "").startswith("Error: release command failed"), released.error
                    async with rt.sessionmaker.begin() as session:
                        await apps.update(
                            session, ctx=rt.core, actor=ADMIN, name="web",
                            changes=apps.AppChanges(release_command=""),
                        )  # fmt: skip

                    # --- refused and invalid deploys, from every channel that takes them.
                    for body in ({"image": "not an image!"}, {"image": "ghcr.io/acme/web:1", "replicas": 3}):
                        r = await api.post("/apps/web/deploys", json=body)
                        assert r.status_code == 422, r.text
                    r = await api.put("/apps/web/secrets", json={"values": {"bad key": slack_canary.value}})
                    assert r.status_code == 422, r.text
                    capture.add(
                        "slack bad secret",
                        await slack.command(f"secrets set web bad.key!={slack_canary.value}", user=ALICE),
                    )
                    await asyncio.to_thread(shipit, "secrets", "set", "web", f"BAD KEY={cli_canary.value}")
                    await _refused_secret_writes(
                        api=api, slack=slack, shipit=shipit, server=server, rt=rt, value=bad_canary.value
                    )
                    r = await api.post("/apps/web/lock", json={"reason": "canary freeze"})
                    assert r.status_code == 200, r.text
                    r = await api.post("/apps/web/deploys", json={"image": "ghcr.io/acme/web:1.3"})
                    assert r.status_code in (409, 423), r.text
                    capture.add("slack locked deploy", await slack.command("deploy web 1.3", user=ALICE))
                    r = await api.post("/apps/web/unlock")
                    assert r.status_code == 200, r.text

                    # --- rollback (API), then Slack's rollback and status.
                    start = await _last_id(rt)
                    r = await api.post("/apps/web/rollback", json={})
                    assert r.status_code == 202, r.text
                    await _settled(rt, after=start, what="the rollback")
                    start = await _last_id(rt)
                    capture.add("slack rollback", await slack.command("rollback web", user=ALICE))
                    await _settled(rt, after=start, what="the Slack rollback")
                    # And forward again to the newest secrets, so the Secret holds them at the end.
                    start = await _last_id(rt)
                    r = await api.post("/apps/web/deploys", json={"image": "ghcr.io/acme/web:1.4"})
                    assert r.status_code == 202, r.text
                    final = await _settled(rt, after=start, what="the last deploy")
                    assert final.status == deploys.SUCCEEDED, final.error

                    # --- a pull request opens a preview (with the app's secrets) and comments on it.
                    async with rt.sessionmaker.begin() as session:
                        await apps.update(
                            session, ctx=rt.core, actor=ADMIN, name="web",
                            changes=apps.AppChanges(previews_enabled=True, preview_domain="preview.acme.dev"),
                        )  # fmt: skip
                    opened = pr_payload("opened", number=preview_pr, sha=SHA_PR, repo=REPO)
                    fake_github.add_pull_from_event(opened)
                    start = await _last_id(rt)
                    r = await hook.post("pull_request", opened)
                    assert r.status_code == 202, r.text
                    preview = await _settled(rt, after=start, what="the preview deploy")
                    assert preview.status == deploys.SUCCEEDED, preview.error
                    await _outbox_drained(rt)
                    watching.cancel()
                    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                        await watching
                    capture.add("dashboard SSE", b"".join(events))
                    assert b"event: deploy" in b"".join(events)

                    # --- every read: API, CLI, Slack, dashboard, metrics.
                    for path in (
                        "/apps", "/apps/web", "/apps/web/secrets", "/apps/web/deploys?limit=50",
                        f"/deploys/{final.id}", f"/deploys/{failed[0].id}", "/apps/web/revisions",
                        "/apps/web/status", "/apps/web/logs?tail=50", "/audit?limit=500",
                        "/audit?since=2000-01-01T00:00:00Z", "/projects/acme/notify", "/projects",
                    ):  # fmt: skip
                        await api.get(path)
                    for args in (
                        ("secrets", "list", "web"), ("status", "web"), ("revisions", "web"),
                        ("deploys", "web"), ("logs", "web"), ("audit",), ("audit", "--json"),
                    ):  # fmt: skip
                        await asyncio.to_thread(shipit, *args)
                    for text in ("status web", "revisions web", "logs web", "secrets list web"):
                        capture.add(f"slack {text}", await slack.command(text, user=ALICE))
                    for path in ("/", "/projects/acme", "/apps/web", "/apps/web/logs", "/audit", "/clusters"):
                        await browser.get(path)
                    await plain.get(f"{server}/metrics")
            finally:
                await slack.close()

    # --- what the fakes and the receiver got.
    for call in fake_slack.calls():
        capture.add(f"slack {call.api}", call.raw_body.decode("utf-8", "replace") + json.dumps(call.response))
    for call in fake_github.calls():
        capture.add(
            f"github {call.api}", call.raw_body.decode("utf-8", "replace") + json.dumps(call.response)
        )
    assert received, "the webhook target got nothing"
    reached = {h.get("X-Shipit-Path", "") for h, _ in received}
    assert {"/hook", "/teams", "/discord"} <= reached, reached
    for headers, body in received:
        capture.add("webhook", json.dumps(headers) + body.decode("utf-8", "replace"))
    assert smtp[0].got, "no mail was sent"
    for sent in smtp[0].got:
        capture.add(f"mail to {sent.recipients}", sent.message.as_string())
    await _dump_database(rt, capture)
    if rt.engine.dialect.name == "sqlite":  # PostgreSQL's rows are all in the dump above
        capture.add("sqlite file", database_bytes(rt))
    secrets_in_cluster = await _namespace_objects(kube_api, ns, capture)
    preview_secrets = await _namespace_objects(kube_api, f"web-pr-{preview_pr}", capture)

    # The right reason: the Secret holds the current values; the rotated-away one is gone from it too.
    # (The failed release's own Secret, `web-release-<n>`, holds that revision's values: a Secret too.)
    data = secrets_in_cluster["web-secrets"]
    assert data == {
        "API_KEY": rotated_canary.value,
        "API_KEY2": api_canary.value,
        "CLI_KEY": cli_canary.value,
        "SLACK_KEY": slack_canary.value,
        "DASH_KEY": dash_canary.value,
    }
    assert data in preview_secrets.values()
    assert len(capture.texts) > 200, len(capture.texts)
    leaks = capture.leaks(canaries)
    assert not leaks, "\n\n".join(leaks[:30])


@contextlib.asynccontextmanager
async def fake_oidc_client(server: str, oidc: FakeOidc, capture: Capture) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in to the dashboard through the fake OIDC provider."""
    async with httpx.AsyncClient(
        base_url=server, follow_redirects=True, timeout=60, event_hooks={"response": [capture.on_response]}
    ) as browser:
        oidc.sign_in_as(EMAIL)
        r = await browser.get("/auth/oidc/start", params={"next": "/"})
        assert r.status_code == 200, r.text
        yield browser


async def _refused_secret_writes(
    *, api: httpx.AsyncClient, slack: SlackSender, shipit: Any, server: str, rt: Runtime, value: str
) -> None:
    """Every way a secret write is refused (a bad key, a bad body, no such app, no role), with the value
    in it: the refusal names what was wrong, never the value."""
    for body in (
        {"values": {"bad key": value}},
        {"values": {"KEY": [value]}},
        {"values": {"KEY": {"nested": value}}},
        {"values": {"KEY": value}, "extra": value},
        {"values": [value]},
        {"value": {"KEY": value}},
    ):
        r = await api.put("/apps/web/secrets", json=body)
        assert r.status_code == 422, (body, r.text)
    r = await api.put(
        "/apps/web/secrets",
        content=f'{{"values": {{"KEY": "{value}"',
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (400, 422), r.text
    r = await api.put("/apps/nosuch/secrets", json={"values": {"KEY": value}})
    assert r.status_code == 404, r.text
    viewer = await make_token(rt, subject="user:carol", admin=False)
    r = await api.put(
        "/apps/web/secrets", json={"values": {"KEY": value}}, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert r.status_code == 403, r.text
    for user, text in (
        (ALICE, f"secrets set web bad.key!={value}"),
        (ALICE, f"secrets set web {value}"),
        (ALICE, f"secrets set web KEY {value}"),
        (ALICE, f"secrets set nosuch KEY={value}"),
        (ALICE, f"secret set web KEY={value}"),
        (ALICE, f"secrets sett web KEY={value}"),
        (ALICE, f"secrets unset web {value}"),
        (CAROL, f"secrets set web KEY={value}"),
    ):
        assert await slack.command(text, user=user), text  # an answer (captured by the client's hook)
    for args in (
        ("secrets", "set", "web", f"BAD KEY={value}"),
        ("secrets", "set", "web", value),
        ("secrets", "set", "nosuch", f"KEY={value}"),
        ("secrets", "set", "web", "--value", value),
    ):
        await asyncio.to_thread(shipit, *args)
