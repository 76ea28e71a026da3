"""Deploys from the registry against a real registry (Debian's docker-registry) and the real cluster.

The registry's own notifications (`notifications.endpoints`) POST to shipit over real HTTP with the
real token; polling lists the same registry's tags.  A matching newer tag deploys pinned by digest, a
tag outside the range or older than what runs does not, a redelivered notification deploys once,
and polling backs off while the registry is gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core import apps, deploys, image_policies
from core.worker import run_until_idle
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN, LiveServer, World
from tests.core.test_deploys import _kube
from tests.core.test_promotion import _staging
from tests.core.test_registries import _allow_http, _create, _deployment_image
from tests.testenv.registry import Registry, push_image, start_registry
from tests.webhooks.test_registry_webhook import envelope

pytestmark = pytest.mark.both_databases

TOKEN = "registry-notify-" + "5" * 24


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"registry_webhook_token": SecretStr(TOKEN)})


async def _until(check: Callable[[], Awaitable[Any]], *, within: float = 90.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("gave up waiting")
        await asyncio.sleep(0.1)


async def _registry_deploys(w: World) -> list[models.Deployment]:
    async with w.rt.sessionmaker() as session:
        return list(
            await session.scalars(
                select(models.Deployment)
                .where(models.Deployment.trigger == image_policies.TRIGGER)
                .order_by(models.Deployment.id)
            )
        )


async def _finished(w: World, n: int) -> list[models.Deployment] | None:
    found = await _registry_deploys(w)
    return found if len(found) >= n and all(d.status in deploys.TERMINAL for d in found) else None


async def _set_policy(w: World, **kwargs: Any) -> None:
    async with w.rt.sessionmaker.begin() as session:
        await image_policies.set_policy(session, actor=ADMIN, app_name="web", **kwargs)


async def _policy(w: World) -> models.ImagePolicy:
    async with w.rt.sessionmaker() as session:
        policy = await session.scalar(select(models.ImagePolicy))
        assert policy is not None
        return policy


async def _assert_runs(w: World, image: str, digest: str) -> None:
    kube = await _kube(w)
    assert (await _deployment_image(kube, w.namespace))[0] == image
    async with w.rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None and app.image == image
        assert app.current_revision_id is not None
        revision = await session.get(models.Revision, app.current_revision_id)
        assert revision is not None and revision.image == image
        assert (revision.snapshot or {}).get("digest") in (digest, None)


async def _deliveries(w: World) -> int:
    async with w.rt.sessionmaker() as session:
        rows = await session.scalars(
            select(models.WebhookDelivery).where(models.WebhookDelivery.source == "registry")
        )
        return len(list(rows))


async def test_registry_notifications_deploy_newer_matching_tags_only(
    world: World, live_server: LiveServer, tmp_path: Path
) -> None:
    endpoint = {
        "name": "shipit",
        "url": f"{live_server.url}/registry/webhook",
        "headers": {"Authorization": [f"Bearer {TOKEN}"]},
        "timeout": "5s",
        "threshold": 5,
        "backoff": "1s",
    }
    with start_registry(tmp_path / "registry", notifications=[endpoint]) as reg:
        _allow_http(world.rt, reg.host)
        repo = f"{reg.host}/acme/web"
        push_image(reg, name="acme/web", tag="1.4.0", marker="one")
        await _create(world, f"{repo}:1.4.0")
        await _set_policy(world, kind="semver", pattern="^1.4")
        # The 1.4.0 notification (before the policy, or not newer after it) deploys nothing.
        await _until(lambda: _at_least(world, 1))

        digest = push_image(reg, name="acme/web", tag="1.5.0", marker="two")
        [d] = await _until(lambda: _finished(world, 1))
        assert d.status == deploys.SUCCEEDED, d.error
        assert d.image == f"{repo}:1.5.0@{digest}"
        await _assert_runs(world, f"{repo}:1.5.0@{digest}", digest)
        assert (await _policy(world)).last_tag == "1.5.0"

        push_image(reg, name="acme/web", tag="2.0.0", marker="three")  # outside ^1.4
        push_image(reg, name="acme/web", tag="1.4.5", marker="four")  # a downgrade
        push_image(reg, name="acme/web", tag="1.6.0-rc.1", marker="five")  # a pre-release
        await _until(lambda: _at_least(world, 5))
        await run_until_idle(world.rt.core, handlers=world.rt.handlers(), within=60)
        assert [x.id for x in await _registry_deploys(world)] == [d.id]

        # A notification delivered again (same event id), and another one naming the same image.
        async with httpx.AsyncClient(timeout=30) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            url = f"{live_server.url}/registry/webhook"
            same = envelope(host=reg.host, path="acme/web", tag="1.5.0", digest=digest, event_id="again")
            first = (await client.post(url, json=same, headers=auth)).json()["events"][0]
            second = (await client.post(url, json=same, headers=auth)).json()["events"][0]
            retagged = envelope(host=reg.host, path="acme/web", tag="1.5.0", digest=digest, event_id="other")
            third = (await client.post(url, json=retagged, headers=auth)).json()["events"][0]
        assert first["result"] == "accepted" and first["decisions"][0]["action"] == "skip"
        assert second["result"] == "duplicate"
        assert third["decisions"][0]["action"] == "skip"
        assert [x.id for x in await _registry_deploys(world)] == [d.id]


async def _at_least(w: World, n: int) -> bool:
    return await _deliveries(w) >= n


async def test_polling_finds_a_new_tag_deploys_staging_promotes_and_backs_off_while_the_registry_is_gone(
    world: World, tmp_path: Path, kube_api: Any
) -> None:
    rt = world.rt
    with start_registry(tmp_path / "registry") as reg:
        _allow_http(rt, reg.host)
        repo = f"{reg.host}/acme/web"
        push_image(reg, name="acme/web", tag="main-7", marker="one")
        await _create(world, f"{repo}:main-7")  # production, in the world's namespace
        # web also runs in staging (its own namespace); staging follows the registry, production is promoted to.
        stg_ns = await _staging(world, kube_api)
        async with rt.sessionmaker.begin() as session:
            await apps.create(
                session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web",
                namespace=stg_ns, env="staging", changes=apps.AppChanges(),
            )  # fmt: skip
        await _set_policy(
            world,
            environment="staging",
            kind="regex",
            pattern=r"main-(?P<key>\d+)",
            sort="numeric",
            poll_interval_seconds=60,
            promote_to="production",
        )
        digest = push_image(reg, name="acme/web", tag="main-12", marker="two")
        push_image(reg, name="acme/web", tag="main-9", marker="three")
        push_image(reg, name="acme/web", tag="feature-99", marker="four")

        [decision] = await image_policies.poll_due(rt.core)
        assert decision.action == "deploy", decision.reason
        await run_until_idle(rt.core, handlers=rt.handlers(), within=120)
        [d] = await _registry_deploys(world)
        assert d.status == deploys.SUCCEEDED, d.error
        assert d.image == f"{repo}:main-12@{digest}"
        kube = await _kube(world)
        assert (await _deployment_image(kube, stg_ns))[0] == f"{repo}:main-12@{digest}"
        # The success reached the promoter: production runs the very same digest, by digest.
        async with rt.sessionmaker() as session:
            promoted = list(
                await session.scalars(select(models.Deployment).where(models.Deployment.trigger == "promote"))
            )
        assert [(p.namespace, p.status) for p in promoted] == [(world.namespace, deploys.SUCCEEDED)]
        assert (await _deployment_image(kube, world.namespace))[0] == f"{repo}:main-12@{digest}"
        assert (await _policy(world)).last_error is None

        policy = await _policy(world)
        assert policy.failures == 0 and policy.last_polled_at is not None
        assert policy.next_poll_at is not None
        # Not due yet: nothing polled.
        assert await image_policies.poll_due(rt.core) == []
        # Due: nothing newer, nothing deployed.
        [same] = await image_policies.poll_due(rt.core, now=policy.next_poll_at)
        assert same.action == "skip"
        assert len(await _registry_deploys(world)) == 1

    # The registry is gone: each failed poll waits twice as long as the one before.
    delays: list[float] = []
    for n in (1, 2, 3):
        policy = await _policy(world)
        assert policy.next_poll_at is not None
        [failed] = await image_policies.poll_due(rt.core, now=policy.next_poll_at + dt.timedelta(seconds=1))
        assert failed.action == "skip"
        policy = await _policy(world)
        assert policy.failures == n
        assert policy.last_error and "unreachable" in policy.last_error
        assert policy.next_poll_at is not None and policy.last_polled_at is not None
        delays.append((policy.next_poll_at - policy.last_polled_at).total_seconds())
    assert delays == sorted(delays) and delays[0] >= 120 and delays[2] >= 4 * delays[0] - 1
    async with rt.sessionmaker() as session:
        shown = await image_policies.show(session, actor=ADMIN, app_name="web", environment="staging")
    assert shown is not None and shown.failures == 3 and shown.last_error


async def test_polling_with_bad_credentials_records_the_refusal(
    world: World, private_registry: Registry
) -> None:
    from core import registries

    rt = world.rt
    _allow_http(rt, private_registry.host)
    push_image(private_registry, name="acme/web", tag="1.0.0", marker="one")
    await _create(world, f"{private_registry.host}/acme/web:1.0.0")
    async with rt.sessionmaker.begin() as session:
        await registries.add(
            session, ctx=rt.core, actor=ADMIN, host=private_registry.host, username="deployer",
            password="wrong-password", project=world.project,
        )  # fmt: skip
    await _set_policy(world, kind="semver", pattern=">=1.0.0 <2", poll_interval_seconds=30)
    [failed] = await image_policies.poll_due(rt.core)
    assert failed.action == "skip"
    policy = await _policy(world)
    assert policy.failures == 1 and policy.last_error and "refused" in policy.last_error
    assert "wrong-password" not in policy.last_error
    assert await _registry_deploys(world) == []


async def test_a_notification_without_digest_is_pinned_by_the_worker(
    world: World, registry: Registry
) -> None:
    """Docker Hub's shape (a tag, no digest): the worker looks the digest up, then deploys."""
    rt = world.rt
    _allow_http(rt, registry.host)
    repo = f"{registry.host}/acme/web"
    push_image(registry, name="acme/web", tag="1.0.0", marker="one")
    await _create(world, f"{repo}:1.0.0")
    await _set_policy(world, kind="semver", pattern="^1")
    digest = push_image(registry, name="acme/web", tag="1.1.0", marker="two")
    pushed = image_policies.Pushed(
        repository=repo, tag="1.1.0", digest=None, source="Docker Hub", delivery="d1"
    )
    async with rt.sessionmaker.begin() as session:
        outcome = await image_policies.on_pushed(session, ctx=rt.core, pushed=pushed)
    assert [d.action for d in outcome.decisions] == ["wait"]
    await run_until_idle(rt.core, handlers=rt.handlers(), within=120)
    [d] = await _registry_deploys(world)
    assert d.status == deploys.SUCCEEDED, d.error
    assert d.image == f"{repo}:1.1.0@{digest}"
    await _assert_runs(world, f"{repo}:1.1.0@{digest}", digest)
