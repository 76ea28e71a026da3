"""The release phase against the real control plane: the app's release command runs as a Job with the
new image before the Deployment changes, and a failing one fails the deploy with nothing else changed.

kwok runs no commands: a Job pod of an image tagged `fail-…` fails with exit code 1
(tests/testenv/stages/pod-job-failed.yaml), any other completes; `slow-…` takes 8 s.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from core import apps, deploys, previews, secrets
from core.errors import InvalidInput
from core.kube.client import Kube
from core.worker import run_until_idle
from tests.conftest import ADMIN, World
from tests.core.test_deploys import _create, _deploy, _kube
from tests.core.test_previews import SHA, _open, _preview
from tests.helpers import eventually

MIGRATE = "./manage.py migrate --noinput"


async def _objects(kube: Kube, namespace: str) -> dict[str, dict[str, Any] | None]:
    return {
        kind: await kube.get(kind=kind, name=name, namespace=namespace)
        for kind, name in (("Deployment", "web"), ("Service", "web"), ("Secret", "web-secrets"))
    }


def _shipit_apply_time(obj: dict[str, Any]) -> str:
    return max(
        m["time"]
        for m in obj["metadata"]["managedFields"]
        if m["manager"] == "shipit" and m["operation"] == "Apply" and not m.get("subresource")
    )


async def _set_secret(w: World, value: str) -> None:
    async with w.rt.sessionmaker.begin() as session:
        await secrets.set_values(session, ctx=w.rt.core, actor=ADMIN, app_name="web", values={"DB": value})


async def test_the_release_job_runs_with_the_new_image_before_the_deployment_changes(world: World) -> None:
    await _create(world, env={"MODE": "prod"}, release_command=MIGRATE)
    await _set_secret(world, "postgres://one")
    first = await _deploy(world)
    assert first.status == deploys.SUCCEEDED, first.error
    second = await _deploy(world, "1.1")
    assert second.status == deploys.SUCCEEDED, second.error

    kube = await _kube(world)
    job = await kube.get(kind="Job", name="web-release-2", namespace=world.namespace)
    assert job is not None
    assert job["status"].get("succeeded") == 1
    assert {c["type"] for c in job["status"]["conditions"] if c["status"] == "True"} >= {"Complete"}
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 20
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "shipit" and labels["shipit.dev/app"] == "web"
    assert labels["shipit.dev/revision"] == "2"
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never"
    container = pod_spec["containers"][0]
    assert container["image"] == "ghcr.io/acme/web:1.1"
    assert container["command"] == ["/bin/sh", "-c", MIGRATE]
    assert {"name": "MODE", "value": "prod"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "web-release-2"}}]
    # The Job's own Secret holds this revision's secrets and goes with the Job.
    own = await kube.get(kind="Secret", name="web-release-2", namespace=world.namespace)
    assert own is not None and base64.b64decode(own["data"]["DB"]) == b"postgres://one"
    owners = own["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("Job", "web-release-2", job["metadata"]["uid"])
    ]

    # The Deployment got the new image only after the release completed.
    dep = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.1"
    assert job["status"]["completionTime"] <= _shipit_apply_time(dep)
    # Release pods are not the app's pods: the Service does not select them.
    assert "app.kubernetes.io/name" not in job["spec"]["template"]["metadata"]["labels"]


async def test_a_failing_release_fails_the_deploy_and_changes_nothing_else(world: World) -> None:
    await _create(world, release_command=MIGRATE)
    await _set_secret(world, "postgres://one")
    good = await _deploy(world)
    assert good.status == deploys.SUCCEEDED, good.error
    kube = await _kube(world)
    before = await _objects(kube, world.namespace)

    # A new secret value and an image whose release command exits 1.
    await _set_secret(world, "postgres://two")
    bad = await _deploy(world, "fail-2")
    assert bad.status == deploys.FAILED
    assert bad.error is not None and bad.error.startswith("Error: release command failed")
    assert "exit code 1" in bad.error and "web-release-2" in bad.error
    assert bad.applied_at is None

    after = await _objects(kube, world.namespace)
    for kind, obj in after.items():
        old = before[kind]
        assert obj is not None and old is not None
        assert obj["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"], kind
    dep = after["Deployment"]
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.0"
    secret = after["Secret"]
    assert secret is not None and base64.b64decode(secret["data"]["DB"]) == b"postgres://one"
    # The deploy was decided by the failed pod; the Job controller counts it a moment later.
    job = await eventually(
        lambda: kube.get(kind="Job", name="web-release-2", namespace=world.namespace),
        lambda j: j is not None and j["status"].get("failed") == 1,
        what="the release Job to fail",
        timeout=60,
    )
    assert not job["status"].get("succeeded")
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"].get("conditions", []))


async def test_a_release_that_does_not_finish_ends_at_its_deadline(world: World) -> None:
    world.rt.core.config.release_deadline_seconds = 2  # a slow- pod takes 8 s
    await _create(world, release_command=MIGRATE)
    d = await _deploy(world, "slow-1")
    assert d.status == deploys.FAILED
    assert d.error is not None and "DeadlineExceeded" in d.error, d.error
    kube = await _kube(world)
    assert await kube.get(kind="Deployment", name="web", namespace=world.namespace) is None
    assert await kube.get(kind="Service", name="web", namespace=world.namespace) is None


async def test_no_release_command_runs_no_job(world: World) -> None:
    await _create(world)
    d = await _deploy(world)
    assert d.status == deploys.SUCCEEDED, d.error
    kube = await _kube(world)
    assert await kube.get(kind="Job", name="web-release-1", namespace=world.namespace) is None


async def test_the_release_command_is_validated_and_carried_by_the_revision(world: World) -> None:
    await _create(world, release_command="  rake db:migrate  ")
    async with world.rt.sessionmaker.begin() as session:
        app = await apps.get(session, actor=ADMIN, name="web")
        assert app.release_command == "rake db:migrate"
        for bad in ("   ", "x" * 1001):
            with pytest.raises(InvalidInput) as err:
                await apps.update(
                    session, ctx=world.rt.core, actor=ADMIN, name="web",
                    changes=apps.AppChanges(release_command=bad),
                )  # fmt: skip
            assert err.value.field == "release_command"
        requested = await deploys.request(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", trigger="api"
        )
        revision = await session.get(deploys.models.Revision, requested.deployment.revision_id)
        assert revision is not None and revision.snapshot["release_command"] == "rake db:migrate"
        await apps.update(
            session, ctx=world.rt.core, actor=ADMIN, name="web", changes=apps.AppChanges(release_command="")
        )
        assert app.release_command is None


async def test_a_preview_runs_the_release_command_in_its_own_namespace(world: World) -> None:
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=world.project,
            cluster=world.cluster,
            name="web",
            namespace=world.namespace,
            changes=apps.AppChanges(
                image="ghcr.io/acme/web:0.1",
                git_repo="acme/web",
                image_template="ghcr.io/acme/web:{sha}",
                previews_enabled=True,
                preview_domain="preview.acme.dev",
                release_command=MIGRATE,
            ),
        )
    await _open(rt, 905)
    await run_until_idle(rt.core, handlers={**rt.handlers(), **previews.HANDLERS}, within=240)
    assert (await _preview(rt, 905)).status == "ready"
    kube = await _kube(world)
    job = await kube.get(kind="Job", name="web-release-1", namespace="web-pr-905")
    assert job is not None and job["status"].get("succeeded") == 1
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/acme/web:{SHA}"
    assert job["metadata"]["labels"]["shipit.dev/preview"] == "905"
    await kube.delete_namespace(name="web-pr-905", project=world.project)
