"""Environments and promotion against the real local control plane: staging and production in their
own namespaces, promote moves the exact digest, production keeps its own replicas and secrets."""

from __future__ import annotations

import base64

import pytest
from kubernetes_asyncio import client

from core import apps, deploys, environment_admin, promotion, secrets
from core.errors import Conflict, InvalidInput
from storage import models
from tests.conftest import ADMIN, World
from tests.core.test_deploys import _drain, _kube, _reload
from tests.testenv.plugin import _wait_for_default_serviceaccount

DIGEST = "sha256:" + "ab" * 32


async def _staging(world: World, kube_api: client.ApiClient) -> str:
    """A staging environment before production, with a namespace of its own."""
    ns = f"{world.namespace}-stg"
    core = client.CoreV1Api(kube_api)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    await _wait_for_default_serviceaccount(core, ns)
    async with world.rt.sessionmaker.begin() as session:
        view = await environment_admin.create(
            session, actor=ADMIN, project=world.project, name="staging", namespace=ns, before="production"
        )
        assert view.position == 0
        order = await environment_admin.list_views(session, actor=ADMIN, project=world.project)
        assert [e.name for e in order] == ["staging", "production"]
    return ns


async def test_promote_moves_the_exact_digest_and_keeps_the_targets_own_settings(
    world: World, kube_api: client.ApiClient
) -> None:
    stg_ns = await _staging(world, kube_api)
    async with world.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster=world.cluster,
            name="web",
            env="production",
            changes=apps.AppChanges(
                image="ghcr.io/acme/web:1.0", replicas=2, env={"MODE": "prod"}, progress_deadline_seconds=20
            ),
        )
        # The app's row in staging copies the definition, takes its own overrides and namespace.
        stg = await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster="",
            name="web",
            env="staging",
            changes=apps.AppChanges(replicas=1, env={"MODE": "staging"}, release_command="echo migrate"),
        )
        assert (stg.namespace, stg.image, stg.progress_deadline_seconds) == (
            stg_ns,
            "ghcr.io/acme/web:1.0",
            20,
        )
        await secrets.set_values(
            session,
            ctx=world.rt.core,
            actor=ADMIN,
            app_name="web",
            env="production",
            values={"API_KEY": "prod"},
        )
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", env="staging", values={"API_KEY": "stg"}
        )
    async with world.rt.sessionmaker() as session:
        # Two environments: no guessing which one is meant.
        with pytest.raises(InvalidInput) as ambiguous:
            await apps.get(session, actor=ADMIN, name="web")
        assert ambiguous.value.field == "env" and "staging" in str(ambiguous.value)
        # Nothing succeeded in staging yet: nothing to promote.
        with pytest.raises(Conflict, match="nothing to promote"):
            await promotion.promote(
                session, ctx=world.rt.core, actor=ADMIN, app_name="web", source="staging", target="production"
            )

    async with world.rt.sessionmaker.begin() as session:
        staged = await deploys.request(
            session,
            ctx=world.rt.core,
            actor=ADMIN,
            app_name="web",
            env="staging",
            image=f"ghcr.io/acme/web@{DIGEST}",
            trigger="api",
        )
    await _drain(world.rt)
    assert (await _reload(world.rt, staged.deployment.id)).status == deploys.SUCCEEDED

    async with world.rt.sessionmaker.begin() as session:
        promoted = await promotion.promote(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", source="staging", target="production"
        )
        assert promoted.deployment.trigger == "promote" and promoted.deployment.namespace == world.namespace
    await _drain(world.rt)
    done = await _reload(world.rt, promoted.deployment.id)
    assert done.status == deploys.SUCCEEDED, done.error

    async with world.rt.sessionmaker() as session:
        source = await apps.get(session, actor=ADMIN, name="web", env="staging")
        revision = await session.get(models.Revision, source.current_revision_id)
        assert revision is not None
        moved = deploys.snapshots.of_revision(revision).image_ref
        target_rev = await session.get(models.Revision, done.revision_id)
        assert target_rev is not None
        assert deploys.snapshots.of_revision(target_rev).release_command == "echo migrate"

    kube = await _kube(world)
    prod = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    staging = await kube.get(kind="Deployment", name="web", namespace=stg_ns)
    assert prod is not None and staging is not None
    prod_container = prod["spec"]["template"]["spec"]["containers"][0]
    assert moved == f"ghcr.io/acme/web@{DIGEST}"
    assert prod_container["image"] == moved == staging["spec"]["template"]["spec"]["containers"][0]["image"]
    assert (prod["spec"]["replicas"], staging["spec"]["replicas"]) == (2, 1)
    assert {"name": "MODE", "value": "prod"} in prod_container["env"]
    prod_secret = await kube.get(kind="Secret", name="web-secrets", namespace=world.namespace)
    stg_secret = await kube.get(kind="Secret", name="web-secrets", namespace=stg_ns)
    assert prod_secret is not None and stg_secret is not None
    assert base64.b64decode(prod_secret["data"]["API_KEY"]) == b"prod"
    assert base64.b64decode(stg_secret["data"]["API_KEY"]) == b"stg"


async def test_environment_rows_stay_in_one_project_and_one_place(
    world: World, kube_api: client.ApiClient
) -> None:
    await _staging(world, kube_api)
    async with world.rt.sessionmaker.begin() as session:
        await apps.create(
            session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web", env="production",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
        )  # fmt: skip
        with pytest.raises(Conflict, match="already exists in production"):
            await apps.create(
                session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web",
                env="production", changes=apps.AppChanges(),
            )  # fmt: skip
        # Two environments in one namespace would overwrite each other's objects.
        with pytest.raises(Conflict, match="own namespace"):
            await apps.create(
                session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web", env="staging",
                namespace=world.namespace, changes=apps.AppChanges(),
            )  # fmt: skip
        # An environment with apps is not deleted; a single-environment app needs no env anywhere.
        with pytest.raises(Conflict, match="still has apps"):
            await environment_admin.delete(session, actor=ADMIN, project=world.project, name="production")
        assert (await apps.get(session, actor=ADMIN, name="web")).name == "web"
