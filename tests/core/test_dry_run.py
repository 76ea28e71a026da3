"""Dry run of a deploy against the real control plane: the difference is right and nothing changes."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import func, select

from core import apps, dryrun, projects, secrets
from core.errors import PermissionDenied
from core.identity import Actor
from core.kube.client import Kube
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, World
from tests.core.test_deploys import _create, _deploy, _kube

OBJECTS = (
    ("Deployment", "web"),
    ("Service", "web"),
    ("Secret", "web-secrets"),
    ("HorizontalPodAutoscaler", "web"),
)


async def row_counts(rt: Runtime) -> dict[str, int]:
    async with rt.sessionmaker() as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in models.Base.metadata.sorted_tables
        }


async def versions(kube: Kube, namespace: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for kind, name in (*OBJECTS, ("Ingress", "web")):
        obj = await kube.get(kind=kind, name=name, namespace=namespace)
        out[f"{kind}/{name}"] = obj["metadata"]["resourceVersion"] if obj else None
    return out


async def dry_run(w: World, image: str | None, actor: Actor = ADMIN) -> dryrun.DryRun:
    async with w.rt.sessionmaker.begin() as session:
        plan = await dryrun.plan(session, ctx=w.rt.core, actor=actor, app_name="web", image=image)
    return await dryrun.run(ctx=w.rt.core, plan=plan)


async def test_a_dry_run_shows_the_difference_and_changes_nothing(world: World) -> None:
    await _create(world, env={"MODE": "prod"}, min_replicas=1, max_replicas=3, release_command="migrate")
    async with world.rt.sessionmaker.begin() as session:
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"DB": "first-value"}
        )
    deployed = await _deploy(world)
    assert deployed.status == "succeeded", deployed.error

    # Changed since: an env value, a secret value, autoscaling off, a domain on (none deployed yet).
    async with world.rt.sessionmaker.begin() as session:
        await apps.update(
            session,
            ctx=world.rt.core,
            actor=ADMIN,
            name="web",
            changes=apps.AppChanges(
                env={"MODE": "staging"}, min_replicas=None, max_replicas=None, domain="web.example.com"
            ),
        )
        await secrets.set_values(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"DB": "second-value"}
        )
    kube = await _kube(world)
    before_versions = await versions(kube, world.namespace)
    before_rows = await row_counts(world.rt)

    result = await dry_run(world, "1.6")

    lines = result.lines()
    assert (
        "Deployment/web spec.template.spec.containers[0].image: ghcr.io/acme/web:1.0 → ghcr.io/acme/web:1.6"
        in lines
    ), lines
    assert "Deployment/web spec.template.spec.containers[0].env[MODE].value: prod → staging" in lines, lines
    assert "Secret/web-secrets data.DB: changed" in lines, lines
    assert "create Ingress/web" in lines and "delete HorizontalPodAutoscaler/web" in lines, lines
    assert lines[0] == "release command runs first: migrate"
    assert result.revision == 2 and result.current_image == "ghcr.io/acme/web:1.0"
    # Bookkeeping is no change anyone reviews; secret values never show, in any encoding.
    text = "\n".join(lines)
    for hidden in ("resourceVersion", "managedFields", "generation", "shipit.dev/revision", "status."):
        assert hidden not in text, hidden
    for value in (b"first-value", b"second-value"):
        assert value.decode() not in text and base64.b64encode(value).decode() not in text

    # Nothing changed on the cluster, nothing was written.
    assert await versions(kube, world.namespace) == before_versions
    assert await row_counts(world.rt) == before_rows
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert (
        dep is not None
        and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.0"
    )
    assert await kube.get(kind="Job", name="web-release-2", namespace=world.namespace) is None


async def test_a_dry_run_of_what_runs_shows_no_difference(world: World) -> None:
    await _create(world, env={"MODE": "prod"})
    assert (await _deploy(world)).status == "succeeded"
    result = await dry_run(world, None)
    assert result.lines() == [] and result.diff.empty


async def test_a_dry_run_before_the_first_deploy_lists_what_would_be_created(world: World) -> None:
    await _create(world)
    result = await dry_run(world, "1.1")
    assert result.diff.changes == []
    assert set(result.diff.create) == {"Secret/web-secrets", "Deployment/web", "Service/web"}


async def test_a_dry_run_needs_the_deploy_role(world: World) -> None:
    await _create(world)
    viewer = Actor(subject="user:vera", channel="api", display="vera")
    async with world.rt.sessionmaker.begin() as session:
        await projects.set_access(
            session, actor=ADMIN, project_name=world.project, subject=viewer.subject, role="viewer"
        )
    with pytest.raises(PermissionDenied) as err:
        await dry_run(world, "1.1", actor=viewer)
    assert "needs the developer role" in str(err.value)
