"""The revision snapshot (no cluster): every stored format loads, defaults live in one place, and
secrets versions are written, pinned by revisions and pruned."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select

from core import deploys, revisions, secrets
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN

# A row as `deploys.snapshot_of()` wrote it before snapshots had a schema version.
OLD_ROW = {
    "image": "ghcr.io/acme/web:1.4",
    "replicas": 3,
    "port": 9000,
    "env": {"MODE": "prod"},
    "resources": {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "256Mi", "memory_limit": "1Gi"},
    "health": {"path": "/healthz", "port": None, "initial_delay_seconds": 5, "period_seconds": 15},
    "autoscaling": {"min_replicas": 2, "max_replicas": 6, "cpu_target_percent": 75},
    "domain": "web.example.com",
    "ingress_class": None,
    "tls_issuer": None,
    "progress_deadline_seconds": 300,
}


def test_an_old_format_row_still_loads() -> None:
    snap = revisions.load(OLD_ROW)
    assert snap.image == "ghcr.io/acme/web:1.4" and snap.digest is None
    assert snap.replicas == 3 and snap.port == 9000 and snap.env == {"MODE": "prod"}
    assert snap.resources.cpu_limit == "1" and snap.resources.memory_limit == "1Gi"
    assert snap.health is not None and snap.health.path == "/healthz" and snap.health.period_seconds == 15
    assert snap.autoscaling is not None and snap.autoscaling.cpu_target_percent == 75
    assert snap.domain == "web.example.com" and snap.progress_deadline_seconds == 300
    assert snap.release_command is None
    # It predates secrets versions: it renders whatever the app's secrets are (as it always did).
    assert snap.secrets_version is None
    # Written back, it is the current format and reads the same.
    again = revisions.load(snap.to_json())
    assert again == snap and snap.to_json()["schema_version"] == revisions.SCHEMA_VERSION
    # Every field, nested ones as plain dicts, and nothing shared with the snapshot.
    written = snap.to_json()
    assert written == {**dataclasses.asdict(snap), "schema_version": revisions.SCHEMA_VERSION}
    assert written["env"] is not snap.env and written["health"]["path"] == "/healthz"


def test_a_minimal_old_row_takes_the_defaults() -> None:
    snap = revisions.load({"image": "nginx:1.27", "health": None, "autoscaling": None})
    assert snap.replicas == revisions.DEFAULT_REPLICAS and snap.port == revisions.DEFAULT_PORT
    assert snap.resources == revisions.Resources()
    assert snap.health is None and snap.autoscaling is None


def test_a_snapshot_is_immutable_and_pins_its_digest() -> None:
    snap = revisions.load(OLD_ROW).replace(digest="sha256:" + "a" * 64, secrets_version=4)
    with pytest.raises(AttributeError):
        snap.image = "other"  # type: ignore[misc]
    assert snap.image_ref == "ghcr.io/acme/web@sha256:" + "a" * 64  # the digest decides; the tag is dropped
    assert revisions.load(snap.to_json()).secrets_version == 4


def test_a_failed_change_is_reverted_on_the_app_but_later_edits_stay() -> None:
    app = models.App(name="web", env={"MODE": "bad"}, replicas=5, image="ghcr.io/acme/web:1.0")
    good = revisions.load({**OLD_ROW, "env": {"MODE": "good"}, "replicas": 3})
    bad = good.replace(env={"MODE": "bad"}, replicas=4)
    reverted = revisions.revert_on_app(failed=bad, current=good, app=app)
    assert app.env == {"MODE": "good"} and "env" in reverted
    assert app.replicas == 5, "an edit made after the failed deploy was requested is kept"


async def test_secrets_are_versioned_and_a_revision_renders_its_own_version(paper: Runtime) -> None:
    rt = paper
    async with rt.sessionmaker.begin() as session:
        await secrets.set_values(session, ctx=rt.core, actor=ADMIN, app_name="web", values={"A": "1"})
        first = (
            await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
        ).deployment
        await secrets.set_values(
            session, ctx=rt.core, actor=ADMIN, app_name="web", values={"A": "2", "B": "b"}
        )
        await secrets.unset(session, ctx=rt.core, actor=ADMIN, app_name="web", keys=["B"])
    async with rt.sessionmaker() as session:
        app = await session.scalar(select(models.App))
        assert app is not None and app.secrets_version == 3
        rev = await session.get(models.Revision, first.revision_id)
        assert rev is not None and rev.secrets_version == 1
        values, _ = await secrets.for_deploy(session, ctx=rt.core, app_id=app.id, version=1)
        assert values == {"A": "1"}
        values, _ = await secrets.for_deploy(session, ctx=rt.core, app_id=app.id, version=3)
        assert values == {"A": "2"}
        row = await session.scalar(select(models.SecretVersion).where(models.SecretVersion.version == 3))
        assert row is not None and row.keys == ["A"]


async def test_secret_versions_are_pruned_but_never_one_a_kept_revision_runs(paper: Runtime) -> None:
    rt = paper
    async with rt.sessionmaker.begin() as session:
        await secrets.set_values(session, ctx=rt.core, actor=ADMIN, app_name="web", values={"A": "0"})
        await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
        for i in range(1, 15):
            await secrets.set_values(session, ctx=rt.core, actor=ADMIN, app_name="web", values={"A": str(i)})
    async with rt.sessionmaker() as session:
        versions = sorted(await session.scalars(select(models.SecretVersion.version)))
    assert 1 in versions, "revision 1 runs with secrets version 1"
    assert versions[-10:] == list(range(6, 16)) and len(versions) == 11


async def test_a_secret_version_goes_with_the_last_pruned_revision_that_ran_it(paper: Runtime) -> None:
    rt = paper
    async with rt.sessionmaker.begin() as session:
        await secrets.set_values(session, ctx=rt.core, actor=ADMIN, app_name="web", values={"A": "0"})
        await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
        for i in range(1, 15):
            await secrets.set_values(session, ctx=rt.core, actor=ADMIN, app_name="web", values={"A": str(i)})
    for i in range(rt.core.config.revisions_kept):  # revision 1 is pruned by the last of these
        async with rt.sessionmaker.begin() as session:
            await deploys.request(
                session, ctx=rt.core, actor=ADMIN, app_name="web", image=f"1.{i}", trigger="api"
            )
    async with rt.sessionmaker() as session:
        numbers = sorted(await session.scalars(select(models.Revision.number)))
        versions = sorted(await session.scalars(select(models.SecretVersion.version)))
    assert numbers[0] == 2
    assert versions == list(range(6, 16)), "version 1 went with revision 1, the last to run it"


async def test_existing_secrets_become_version_one_when_a_version_is_first_needed(paper: Runtime) -> None:
    rt = paper
    async with rt.sessionmaker.begin() as session:
        # Secrets as stored before versions existed: rows, and secrets_version 0.
        app = await session.scalar(select(models.App))
        assert app is not None
        raw = b"legacy"
        session.add(
            models.Secret(
                app_id=app.id,
                key="OLD",
                value_enc=rt.core.cipher.encrypt(raw, purpose=secrets.PURPOSE),
                digest=rt.core.cipher.digest(b"OLD\0" + raw),
            )
        )
        await session.flush()
        d = (
            await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
        ).deployment
    async with rt.sessionmaker() as session:
        rev = await session.get(models.Revision, d.revision_id)
        assert rev is not None and rev.secrets_version == 1
        assert await session.scalar(select(func.count()).select_from(models.SecretVersion)) == 1
        values, _ = await secrets.for_deploy(session, ctx=rt.core, app_id=rev.app_id, version=1)
        assert values == {"OLD": "legacy"}


async def test_a_change_while_a_deploy_is_on_its_way_keeps_that_deploys_image(paper: Runtime) -> None:
    rt = paper
    async with rt.sessionmaker.begin() as session:
        await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", image="1.1", trigger="api")
        scale = (
            await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="scale")
        ).deployment
        app = await session.scalar(select(models.App))
        assert app is not None
        # The app's image moves only on success; the scale carries the deploy it supersedes.
        assert app.image == "ghcr.io/acme/web:1.0" and scale.image == "ghcr.io/acme/web:1.1"
