"""Releases you can trust, on the real control plane: the current revision, automatic rollback,
whole-snapshot rollback with secret values, and a status that keeps old and new pods apart."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select

from core import apps, autoscaling, deploys, events, secrets, status
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, World
from tests.core.test_deploys import _create, _deploy, _drain, _kube, _reload


async def _app(rt: Runtime) -> models.App:
    async with rt.sessionmaker() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        return app


async def _revision_number(rt: Runtime, revision_id: int | None) -> int | None:
    async with rt.sessionmaker() as session:
        rev = await session.get(models.Revision, revision_id) if revision_id else None
        return rev.number if rev else None


async def _deployed_image(w: World) -> str:
    dep = await (await _kube(w)).get(kind="Deployment", name="web", namespace=w.namespace)
    assert dep is not None
    return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])


async def _view(rt: Runtime, deployment_id: int) -> events.DeploymentView:
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None
        return await events.deployment_view(session, deployment=d)


async def test_a_failed_rollout_rolls_back_by_itself_and_later_changes_keep_the_good_image(
    world: World, simulated_failures: None
) -> None:
    await _create(world)
    good = await _deploy(world)
    assert good.status == deploys.SUCCEEDED, good.error

    failed = await _deploy(world, image="fail-1")  # the worker also runs the rollback it queues
    assert failed.status == deploys.FAILED
    assert failed.rolled_back_by_id is not None
    rollback = await _reload(world.rt, failed.rolled_back_by_id)
    assert rollback.trigger == deploys.AUTO_ROLLBACK and rollback.actor == "system"
    assert rollback.status == deploys.SUCCEEDED, rollback.error
    assert rollback.revision_number == good.revision_number and rollback.image == "ghcr.io/acme/web:1.0"
    assert await _deployed_image(world) == "ghcr.io/acme/web:1.0"

    app = await _app(world.rt)
    assert app.image == "ghcr.io/acme/web:1.0", "a failed image never becomes the app's image"
    assert await _revision_number(world.rt, app.current_revision_id) == good.revision_number

    # Every channel renders the same words from the failed deploy's view; the last event says so.
    view = await _view(world.rt, failed.id)
    assert view.outcome == f"failed, rolled back to revision {good.revision_number}"
    async with world.rt.sessionmaker() as session:
        last = await session.scalar(
            select(models.Event)
            .where(models.Event.deployment_id == failed.id)
            .order_by(models.Event.id.desc())
            .limit(1)
        )
        assert last is not None and last.kind == events.DEPLOY_FAILED
        assert last.payload["rolled_back_to"] == good.revision_number
        assert last.payload["rollback_status"] == deploys.SUCCEEDED

    async with world.rt.sessionmaker() as session:
        st = await status.read(session, actor=ADMIN, app_name="web")
    assert st.current_revision == good.revision_number and st.current_image == "ghcr.io/acme/web:1.0"
    assert st.last_attempt is not None and st.last_attempt.id == failed.id
    assert st.last_attempt.status == deploys.FAILED and st.last_attempt.error
    assert st.last_outcome == f"failed, rolled back to revision {good.revision_number}"

    # The next change builds on the current good revision, not on the failed candidate.
    async with world.rt.sessionmaker.begin() as session:
        scaled = (
            await autoscaling.scale(session, ctx=world.rt.core, actor=ADMIN, app_name="web", replicas=2)
        ).deployment
    await _drain(world.rt)
    scaled = await _reload(world.rt, scaled.id)
    assert scaled.status == deploys.SUCCEEDED, scaled.error
    assert scaled.image == "ghcr.io/acme/web:1.0"
    assert await _deployed_image(world) == "ghcr.io/acme/web:1.0"


async def test_auto_rollback_off_leaves_it_failed_and_status_keeps_old_and_new_pods_apart(
    world: World, simulated_failures: None
) -> None:
    await _create(world, auto_rollback=False)
    good = await _deploy(world)
    assert good.status == deploys.SUCCEEDED, good.error
    failed = await _deploy(world, image="fail-1")
    assert failed.status == deploys.FAILED and failed.rolled_back_by_id is None
    async with world.rt.sessionmaker() as session:
        triggers = list(await session.scalars(select(models.Deployment.trigger)))
        assert deploys.AUTO_ROLLBACK not in triggers
        target = await status.target(session, ctx=world.rt.core, actor=ADMIN, app_name="web")
        st = await status.read(session, actor=ADMIN, app_name="web")
    assert await _deployed_image(world) == "ghcr.io/acme/web:fail-1"  # nobody rolled back
    app = await _app(world.rt)
    assert app.image == "ghcr.io/acme/web:1.0" and not app.auto_rollback
    assert st.current_revision == good.revision_number and st.current_image == "ghcr.io/acme/web:1.0"
    assert st.last_attempt is not None and st.last_attempt.status == deploys.FAILED
    assert st.last_outcome == deploys.FAILED

    st = await status.with_live(ctx=world.rt.core, status=st, target=target)
    assert st.live is not None, st.live_error
    new = [rs for rs in st.live.replica_sets if rs.new]
    old = [rs for rs in st.live.replica_sets if not rs.new]
    assert len(new) == 1 and new[0].image == "ghcr.io/acme/web:fail-1" and new[0].ready == 0
    assert new[0].revision == str(failed.revision_number)
    assert old and old[0].image == "ghcr.io/acme/web:1.0" and old[0].ready == old[0].desired == 1
    assert old[0].revision == str(good.revision_number)


def _secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


async def test_rollback_restores_env_resources_autoscaling_and_secret_values(world: World) -> None:
    await _create(world, env={"MODE": "one"}, min_replicas=1, max_replicas=3, cpu_target=60)
    async with world.rt.sessionmaker.begin() as session:
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"TOKEN": "first"}
        )
    first = await _deploy(world)
    assert first.status == deploys.SUCCEEDED, first.error

    async with world.rt.sessionmaker.begin() as session:
        await apps.update(
            session,
            ctx=world.rt.core,
            actor=ADMIN,
            name="web",
            changes=apps.AppChanges(
                env={"MODE": "two"}, cpu_request="200m", min_replicas=2, max_replicas=5, cpu_target=70
            ),
        )
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"TOKEN": "second", "NEW": "x"}
        )
    second = await _deploy(world, image="1.1")
    assert second.status == deploys.SUCCEEDED, second.error
    kube = await _kube(world)
    secret = await kube.get(kind="Secret", name="web-secrets", namespace=world.namespace)
    assert secret is not None and _secret_value(secret, "TOKEN") == "second"

    async with world.rt.sessionmaker.begin() as session:
        rb = (await deploys.rollback(session, ctx=world.rt.core, actor=ADMIN, app_name="web")).deployment
    await _drain(world.rt)
    rb = await _reload(world.rt, rb.id)
    assert rb.status == deploys.SUCCEEDED, rb.error

    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/acme/web:1.0"
    assert {e["name"]: e.get("value") for e in container.get("env", [])}.get("MODE") == "one"
    assert container["resources"]["requests"]["cpu"] == "100m"
    hpa = await kube.get(kind="HorizontalPodAutoscaler", name="web", namespace=world.namespace)
    assert hpa is not None and hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    secret = await kube.get(kind="Secret", name="web-secrets", namespace=world.namespace)
    assert secret is not None and _secret_value(secret, "TOKEN") == "first"
    assert "NEW" not in (secret.get("data") or {})

    # The app's settings and its latest secrets follow the rolled-back revision ...
    app = await _app(world.rt)
    assert app.env == {"MODE": "one"} and app.cpu_request == "100m" and app.max_replicas == 3
    assert await _revision_number(world.rt, app.current_revision_id) == rb.revision_number
    async with world.rt.sessionmaker() as session:
        keys = [s.key for s in await secrets.list_keys(session, actor=ADMIN, app_name="web")]
    assert keys == ["TOKEN"]

    # ... so the next change builds on it: a scale ships the rolled-back env, image and secret.
    async with world.rt.sessionmaker.begin() as session:
        scaled = (
            await autoscaling.scale(
                session, ctx=world.rt.core, actor=ADMIN, app_name="web", min_replicas=1, max_replicas=4
            )
        ).deployment
    await _drain(world.rt)
    assert (await _reload(world.rt, scaled.id)).status == deploys.SUCCEEDED
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/acme/web:1.0"
    assert {e["name"]: e.get("value") for e in container.get("env", [])}.get("MODE") == "one"
    secret = await kube.get(kind="Secret", name="web-secrets", namespace=world.namespace)
    assert secret is not None and _secret_value(secret, "TOKEN") == "first"
