"""Private registries against a real registry (Debian's docker-registry) and the real control plane.

Tags are resolved to digests with the OCI distribution API (anonymous, htpasswd Basic auth, token
auth), pinned digests are what the cluster gets, and the pull secret is accepted by the real API
server.  kwok does not pull images, so "the kubelet can pull with it" cannot be checked here beyond the
API server accepting the Secret and the pod spec referencing it.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from core import apps, audit, autoscaling, deploys, events, projects, registries, status
from core.errors import InvalidInput, NotFound, PermissionDenied
from core.identity import Actor
from core.kube.client import Kube
from core.worker import run_until_idle
from shipit.api import reads
from shipit.runtime import Runtime
from storage import models
from tests import helpers
from tests.conftest import ADMIN, World, database_bytes, serving
from tests.core.test_deploys import _kube
from tests.testenv.registry import Registry, push_image, start_registry, token_service

ALICE = Actor(subject="user:alice", channel="api")


def _allow_http(rt: Runtime, *hosts: str) -> None:
    """Pin digests (off in the test settings), reaching these test registries over plain HTTP."""
    rt.core.config.registry_pin_digests = True
    rt.core.config.registry_insecure_hosts = tuple(hosts)


def _closed_port() -> int:
    return helpers.refused_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


# ---------------------------------------------------------------------------- resolving, no cluster


async def test_resolves_a_tag_anonymously(rt: Runtime, registry: Registry) -> None:
    digest = push_image(registry, name="acme/web", tag="1.0", marker="a")
    _allow_http(rt, registry.host)
    pinned = await registries.resolve(ctx=rt.core, image=f"{registry.host}/acme/web:1.0", credentials=None)
    assert pinned.digest == digest
    assert pinned.image == f"{registry.host}/acme/web@{digest}"
    assert pinned.note is None

    missing = await registries.resolve(ctx=rt.core, image=f"{registry.host}/acme/web:2.0", credentials=None)
    assert missing.digest is None and missing.image == f"{registry.host}/acme/web:2.0"
    assert missing.note == f"{registry.host} has no tag 2.0 in acme/web"

    # Already pinned: nothing to ask.
    given = f"{registry.host}/acme/web@{digest}"
    assert (await registries.resolve(ctx=rt.core, image=given, credentials=None)).image == given


async def test_resolves_with_htpasswd_basic_auth(rt: Runtime, private_registry: Registry) -> None:
    digest = push_image(private_registry, name="acme/api", tag="v1", marker="basic")
    _allow_http(rt, private_registry.host)
    image = f"{private_registry.host}/acme/api:v1"
    password = private_registry.users["deployer"]
    good = registries.Credentials(host=private_registry.host, username="deployer", password=password)
    bad = registries.Credentials(host=private_registry.host, username="deployer", password="wrong")

    assert (await registries.resolve(ctx=rt.core, image=image, credentials=good)).digest == digest
    anonymous = await registries.resolve(ctx=rt.core, image=image, credentials=None)
    assert anonymous.digest is None
    assert (
        anonymous.note == f"{private_registry.host} needs credentials: add them with `shipit registries add`"
    )
    refused = await registries.resolve(ctx=rt.core, image=image, credentials=bad)
    assert refused.digest is None and "refused the stored credentials" in (refused.note or "")
    assert "wrong" not in (refused.note or "") and password not in repr(good)


async def test_resolves_with_token_auth(rt: Runtime, tmp_path: Path) -> None:
    users = {"robot": "t0ken-pass"}
    # The realm's port is only known once serving; the service is built for a placeholder, then fixed.
    service = token_service(realm="http://placeholder/token", users=users)
    async with serving(service.app()) as token_url:  # type: ignore[arg-type]
        service.auth = type(service.auth)(
            realm=f"{token_url}/token",
            service=service.auth.service,
            issuer=service.auth.issuer,
            cert_pem=service.auth.cert_pem,
        )
        with start_registry(tmp_path / "token-registry", token=service.auth) as reg:
            reg.push_auth = "Bearer " + service.mint(
                subject="robot", repository="acme/worker", actions=["pull", "push"]
            )
            digest = push_image(reg, name="acme/worker", tag="stable", marker="token")
            _allow_http(rt, reg.host)
            image = f"{reg.host}/acme/worker:stable"
            creds = registries.Credentials(host=reg.host, username="robot", password="t0ken-pass")

            pinned = await registries.resolve(ctx=rt.core, image=image, credentials=creds)
            assert pinned.digest == digest
            # The challenge's realm, service and scope were followed, with Basic credentials.
            asked = service.requests[-1]
            assert asked == {
                "scope": "repository:acme/worker:pull",
                "service": "shipit-test-registry",
                "authorization": "Basic ",
            }
            anonymous = await registries.resolve(ctx=rt.core, image=image, credentials=None)
            assert anonymous.digest is None
            assert "refused anonymous access" in (anonymous.note or "")


async def test_unreachable_or_silent_registry_answers_with_a_reason(rt: Runtime, silent_port: int) -> None:
    port = _closed_port()
    _allow_http(rt, f"127.0.0.1:{port}", f"127.0.0.1:{silent_port}")
    down = await registries.resolve(ctx=rt.core, image=f"127.0.0.1:{port}/acme/web:1.0", credentials=None)
    assert down.digest is None and down.image == f"127.0.0.1:{port}/acme/web:1.0"
    assert down.note == f"127.0.0.1:{port} unreachable: ConnectError"

    rt.core.config.registry_timeout_seconds = 0.5
    silent = await registries.resolve(
        ctx=rt.core, image=f"127.0.0.1:{silent_port}/acme/web:1.0", credentials=None
    )
    assert silent.digest is None
    assert silent.note == f"127.0.0.1:{silent_port} did not answer within 0.5s"


# ---------------------------------------------------------------------------- credentials


def test_hosts_normalise_like_image_names() -> None:
    assert registries.normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert registries.normalize_host("registry-1.docker.io") == "docker.io"
    assert registries.normalize_host("GHCR.io") == "ghcr.io"
    assert registries.normalize_host("localhost:5000") == "localhost:5000"
    for bad in ("", "myregistry", "ghcr.io:port", "exa mple.com"):
        with pytest.raises(InvalidInput) as caught:
            registries.normalize_host(bad)
        assert caught.value.field == "host"


async def _member(rt: Runtime, *, subject: str, role: str, project: str = "acme") -> None:
    async with rt.sessionmaker.begin() as session:
        if await session.scalar(select(models.Project.id).where(models.Project.name == project)) is None:
            await projects.create(session, ctx=rt.core, actor=ADMIN, name=project)
        await projects.set_access(session, actor=ADMIN, project_name=project, subject=subject, role=role)


@pytest.mark.both_databases
async def test_role_rules_and_the_password_stays_encrypted(rt: Runtime) -> None:
    await _member(rt, subject="user:alice", role="admin")
    await _member(rt, subject="user:dev", role="developer")
    await _member(rt, subject="user:other", role="owner", project="other")
    dev = Actor(subject="user:dev", channel="api")
    outsider = Actor(subject="user:other", channel="api")
    password = "sup3r-s3cret-registry-pw"

    async with rt.sessionmaker.begin() as session:
        row, created = await registries.add(
            session, ctx=rt.core, actor=ALICE, host="GHCR.io", username="acme-bot", password=password,
            project="acme",
        )  # fmt: skip
        assert created and row.host == "ghcr.io"
    async with rt.sessionmaker.begin() as session:
        _, created = await registries.add(
            session, ctx=rt.core, actor=ALICE, host="ghcr.io", username="acme-bot2", password=password + "2",
            project="acme",
        )  # fmt: skip
        assert not created  # replaced
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(PermissionDenied, match="needs the admin role; you have developer"):
            await registries.add(
                session, ctx=rt.core, actor=dev, host="ghcr.io", username="x", password="y", project="acme"
            )
    async with rt.sessionmaker.begin() as session:
        # A project you hold no role in answers like a missing one.
        with pytest.raises(NotFound, match="no project named 'acme'"):
            await registries.add(
                session, ctx=rt.core, actor=outsider, host="ghcr.io", username="x", password="y",
                project="acme",
            )  # fmt: skip
        with pytest.raises(NotFound, match="no project named 'acme'"):
            await registries.list_visible(session, actor=outsider, project="acme")
        with pytest.raises(PermissionDenied, match="global admin"):
            await registries.add(
                session, ctx=rt.core, actor=ALICE, host="docker.io", username="x", password="y"
            )
    async with rt.sessionmaker.begin() as session:
        await registries.add(
            session, ctx=rt.core, actor=ADMIN, host="docker.io", username="hub-bot", password="hub-pw"
        )

    async with rt.sessionmaker() as session:
        alice_sees = await registries.list_visible(session, actor=ALICE)
        assert [(r.host, r.project, r.username) for r in alice_sees] == [("ghcr.io", "acme", "acme-bot2")]
        assert await registries.list_visible(session, actor=outsider) == []
        admin_sees = await registries.list_visible(session, actor=ADMIN)
        assert {(r.host, r.project) for r in admin_sees} == {("ghcr.io", "acme"), ("docker.io", None)}
        assert password not in repr(admin_sees)
        project_id = await session.scalar(select(models.Project.id).where(models.Project.name == "acme"))
        assert project_id is not None
        # The project's own first, then the global ones.
        own = await registries.credentials_for(session, ctx=rt.core, project_id=project_id, host="ghcr.io")
        assert own is not None and own.password == password + "2"
        hub = await registries.credentials_for(session, ctx=rt.core, project_id=project_id, host="docker.io")
        assert hub is not None and hub.username == "hub-bot"
        assert (
            await registries.credentials_for(session, ctx=rt.core, project_id=project_id, host="quay.io")
            is None
        )
        rows = await audit.query(session, project_ids=None, target="registry/")
        assert {r.action for r in rows} == {"registry.add", "registry.update"}
        assert password not in json.dumps([r.details for r in rows])
        # Encrypted and bound to its row: copied to another row it does not decrypt.
        stored = (
            await session.scalars(select(models.Registry).where(models.Registry.project_id == project_id))
        ).one()
        assert password.encode() not in stored.password_enc
    if rt.engine.url.get_backend_name() == "sqlite":
        assert password.encode() not in database_bytes(rt)

    async with rt.sessionmaker.begin() as session:
        with pytest.raises(NotFound, match=r"no credentials for registry quay\.io in project acme"):
            await registries.remove(session, actor=ALICE, host="quay.io", project="acme")
        assert await registries.remove(session, actor=ALICE, host="ghcr.io", project="acme") == "ghcr.io"
    async with rt.sessionmaker() as session:
        assert await registries.list_visible(session, actor=ALICE) == []


# ---------------------------------------------------------------------------- deploying, real cluster


async def _deployment_image(kube: Kube, namespace: str) -> tuple[str, list[dict[str, str]] | None]:
    obj = await kube.get(kind="Deployment", name="web", namespace=namespace)
    assert obj is not None
    pod = obj["spec"]["template"]["spec"]
    return pod["containers"][0]["image"], pod.get("imagePullSecrets")


async def _create(w: World, image: str) -> None:
    async with w.rt.sessionmaker.begin() as session:
        await apps.create(
            session,
            actor=ADMIN,
            project=w.project,
            cluster=w.cluster,
            name="web",
            changes=apps.AppChanges(image=image, progress_deadline_seconds=20),
        )


async def _run(w: World, **kwargs: object) -> models.Deployment:
    async with w.rt.sessionmaker.begin() as session:
        if "revision" in kwargs:
            result = await deploys.rollback(
                session, ctx=w.rt.core, actor=ADMIN, app_name="web", revision=int(str(kwargs["revision"]))
            )
        else:
            result = await deploys.request(
                session,
                ctx=w.rt.core,
                actor=ADMIN,
                app_name="web",
                trigger="api",
                **kwargs,  # type: ignore[arg-type]
            )
    await run_until_idle(w.rt.core, handlers=w.rt.handlers(), within=120)
    async with w.rt.sessionmaker() as session:
        d = await session.get(models.Deployment, result.deployment.id)
        assert d is not None
        return d


async def _view(rt: Runtime, d: models.Deployment) -> events.DeploymentView:
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        return await events.deployment_view(session, deployment=row)


async def test_moved_tag_pins_the_new_digest_and_a_rollback_applies_the_old_one(
    world: World, registry: Registry
) -> None:
    _allow_http(world.rt, registry.host)
    old = push_image(registry, name="acme/web", tag="latest", marker="one")
    await _create(world, f"{registry.host}/acme/web:latest")
    first = await _run(world)
    assert first.status == deploys.SUCCEEDED, first.error
    kube = await _kube(world)
    assert await _deployment_image(kube, world.namespace) == (f"{registry.host}/acme/web@{old}", None)
    assert (await _view(world.rt, first)).digest == old

    new = push_image(registry, name="acme/web", tag="latest", marker="two")  # the tag moves
    assert new != old
    second = await _run(world)  # the same tag again
    assert second.status == deploys.SUCCEEDED, second.error
    assert (await _deployment_image(kube, world.namespace))[0] == f"{registry.host}/acme/web@{new}"

    back = await _run(world, revision=first.revision_number)
    assert back.status == deploys.SUCCEEDED, back.error
    # The tag still points at `new`: the rollback runs the identical old image anyway.
    assert (await _deployment_image(kube, world.namespace))[0] == f"{registry.host}/acme/web@{old}"
    view = await _view(world.rt, back)
    assert view.digest == old and view.digest_note is None


async def test_scale_and_secret_redeploys_keep_the_running_digest_after_the_tag_moved(
    world: World, registry: Registry
) -> None:
    _allow_http(world.rt, registry.host)
    old = push_image(registry, name="acme/web", tag="latest", marker="one")
    await _create(world, f"{registry.host}/acme/web:latest")
    first = await _run(world)
    assert first.status == deploys.SUCCEEDED, first.error
    kube = await _kube(world)
    pinned_old = f"{registry.host}/acme/web@{old}"
    assert (await _deployment_image(kube, world.namespace))[0] == pinned_old

    new = push_image(registry, name="acme/web", tag="latest", marker="two")  # the tag moves
    assert new != old
    # A scale changes the replica count, not the image: the pods keep pulling what runs now.
    async with world.rt.sessionmaker.begin() as session:
        scaled = await autoscaling.scale(session, ctx=world.rt.core, actor=ADMIN, app_name="web", replicas=2)
    await run_until_idle(world.rt.core, handlers=world.rt.handlers(), within=120)
    obj = await kube.get(kind="Deployment", name="web", namespace=world.namespace)
    assert obj is not None and obj["spec"]["replicas"] == 2
    assert (await _deployment_image(kube, world.namespace))[0] == pinned_old
    assert (await _view(world.rt, scaled.deployment)).digest == old

    # So does a secret change's redeploy (trigger config).
    async with world.rt.sessionmaker.begin() as session:
        change = await deploys.set_secrets(
            session, ctx=world.rt.core, actor=ADMIN, app_name="web", values={"TOKEN": "s3cret"}
        )
    assert change.redeploy is not None
    await run_until_idle(world.rt.core, handlers=world.rt.handlers(), within=120)
    async with world.rt.sessionmaker() as session:
        rolled = await session.get(models.Deployment, change.redeploy.deployment.id)
        assert rolled is not None and rolled.status == deploys.SUCCEEDED, rolled.error if rolled else None
    assert (await _deployment_image(kube, world.namespace))[0] == pinned_old

    # Deploying the tag again is asking for what it points at now.
    again = await _run(world)
    assert again.status == deploys.SUCCEEDED, again.error
    assert (await _deployment_image(kube, world.namespace))[0] == f"{registry.host}/acme/web@{new}"


async def test_pull_secret_from_the_projects_credentials_and_gone_when_they_are(
    world: World, private_registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _allow_http(world.rt, private_registry.host)
    password = private_registry.users["deployer"]
    digest = push_image(private_registry, name="acme/web", tag="1.0", marker="private")
    async with world.rt.sessionmaker.begin() as session:
        await registries.add(
            session, ctx=world.rt.core, actor=ADMIN, host=private_registry.host, username="deployer",
            password=password, project=world.project,
        )  # fmt: skip
    await _create(world, f"{private_registry.host}/acme/web:1.0")
    d = await _run(world)
    assert d.status == deploys.SUCCEEDED, d.error

    kube = await _kube(world)
    image, pull_secrets = await _deployment_image(kube, world.namespace)
    assert image == f"{private_registry.host}/acme/web@{digest}"  # resolved with Basic auth
    assert pull_secrets == [{"name": "web-registry"}]
    secret = await kube.get(kind="Secret", name="web-registry", namespace=world.namespace)
    assert secret is not None
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "shipit"
    assert secret["metadata"]["labels"]["shipit.dev/project"] == world.project
    assert secret["metadata"]["labels"]["shipit.dev/app"] == "web"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    entry = config["auths"][private_registry.host]
    assert entry["username"] == "deployer" and entry["password"] == password
    assert base64.b64decode(entry["auth"]).decode() == f"deployer:{password}"
    assert password not in caplog.text

    async with world.rt.sessionmaker.begin() as session:
        await registries.remove(session, actor=ADMIN, host=private_registry.host, project=world.project)
    # Pinned already: the redeploy does not need the registry, and drops the pull secret.
    d2 = await _run(world, image=f"{private_registry.host}/acme/web@{digest}")
    assert d2.status == deploys.SUCCEEDED, d2.error
    assert await _deployment_image(kube, world.namespace) == (
        f"{private_registry.host}/acme/web@{digest}",
        None,
    )
    assert await kube.get(kind="Secret", name="web-registry", namespace=world.namespace) is None

    # Removing the app's workload takes its pull secret too.
    async with world.rt.sessionmaker.begin() as session:
        await registries.add(
            session,
            ctx=world.rt.core,
            actor=ADMIN,
            host=private_registry.host,
            username="deployer",
            password=password,
        )  # fmt: skip  (global credentials this time)
    assert (await _run(world)).status == deploys.SUCCEEDED
    assert await kube.get(kind="Secret", name="web-registry", namespace=world.namespace) is not None
    async with world.rt.sessionmaker() as session:
        target = await status.target(session, ctx=world.rt.core, actor=ADMIN, app_name="web")
    assert await status.remove_workload(ctx=world.rt.core, target=target) == []
    assert await kube.get(kind="Secret", name="web-registry", namespace=world.namespace) is None


async def test_unreachable_registry_deploys_by_tag_and_says_so(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    host = f"127.0.0.1:{_closed_port()}"
    _allow_http(world.rt, host)
    await _create(world, f"{host}/acme/web:1.0")
    d = await _run(world)
    assert d.status == deploys.SUCCEEDED, d.error
    assert (await _deployment_image(await _kube(world), world.namespace))[0] == f"{host}/acme/web:1.0"
    view = await _view(world.rt, d)
    assert view.digest is None
    assert view.digest_note == f"deployed by tag {host}/acme/web:1.0: {host} unreachable: ConnectError"
    # What `shipit deploys --json` shows.
    async with world.rt.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        out = await reads.deployment_out(session, row)
    assert (out.digest, out.digest_note) == (None, view.digest_note)
    assert f"deploy {d.id} app=web namespace={world.namespace}: deployed by tag" in caplog.text
