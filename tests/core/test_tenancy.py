"""Tenancy in core, without a cluster: grants and claims, hidden projects, role checks first, protection."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select

from core import apps, claims, clusters, deploys, events, identity, previews, projects
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.gitops import DEPLOY, SKIP, github_actor
from core.identity import Actor, Role
from core.notices import webhook
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN

pytestmark = pytest.mark.both_databases

PAT = Actor(subject="user:pat", channel="api", display="pat")  # admin in acme
OLIVE = Actor(subject="user:olive", channel="api", display="olive")  # owner in acme
DEV = Actor(subject="user:dev", channel="api", display="dev")  # developer in acme
RITA = Actor(subject="user:rita", channel="api", display="rita")  # admin in rival, nothing in acme
NOBODY = Actor(subject="user:nobody", channel="api", display="nobody")


async def _cluster(session: object, rt: Runtime, name: str, namespace: str = "apps") -> None:
    session.add(  # type: ignore[attr-defined]
        models.Cluster(
            name=name,
            kubeconfig_enc=rt.core.cipher.encrypt(b"{}", purpose="kubeconfig"),
            default_namespace=namespace,
        )
    )
    await session.flush()  # type: ignore[attr-defined]


@pytest.fixture
async def two(rt: Runtime) -> Runtime:
    """Projects acme and rival on cluster `paper` (rows only); acme owns `apps`, rival owns `team-b`.
    Cluster `spare` is granted to nobody."""
    async with rt.sessionmaker.begin() as session:
        for name in ("acme", "rival"):
            await projects.create(session, ctx=rt.core, actor=ADMIN, name=name)
        await _cluster(session, rt, "paper")
        await _cluster(session, rt, "spare")
        await clusters.grant(session, actor=ADMIN, cluster="paper", project="acme", namespace="apps")
        await clusters.grant(session, actor=ADMIN, cluster="paper", project="rival", namespace="team-b")
        for who, project, role in (
            (PAT, "acme", "admin"),
            (OLIVE, "acme", "owner"),
            (DEV, "acme", "developer"),
            (RITA, "rival", "admin"),
        ):
            await projects.set_access(
                session, actor=ADMIN, project_name=project, subject=who.subject, role=role
            )
        await apps.create(
            session,
            actor=PAT,
            project="acme",
            cluster="paper",
            name="web",
            namespace="apps",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0"),
        )
        await apps.create(
            session,
            actor=RITA,
            project="rival",
            cluster="paper",
            name="vault",
            namespace="team-b",
            changes=apps.AppChanges(image="ghcr.io/rival/vault:1.0"),
        )
    return rt


async def _claims(rt: Runtime) -> dict[tuple[str, str], tuple[str, str]]:
    """(cluster, namespace) -> (project, origin)."""
    async with rt.sessionmaker() as session:
        rows = await session.execute(
            select(
                models.Cluster.name,
                models.NamespaceClaim.namespace,
                models.Project.name,
                models.NamespaceClaim.origin,
            )
            .join(models.Cluster, models.Cluster.id == models.NamespaceClaim.cluster_id)
            .join(models.Project, models.Project.id == models.NamespaceClaim.project_id)
        )
        return {(c, ns): (p, o) for c, ns, p, o in rows.all()}


async def _create(rt: Runtime, actor: Actor, *, name: str, project: str = "acme", cluster: str = "paper",
                  namespace: str | None = None) -> models.App:  # fmt: skip
    async with rt.sessionmaker.begin() as session:
        return await apps.create(
            session, actor=actor, project=project, cluster=cluster, name=name, namespace=namespace,
            changes=apps.AppChanges(image="ghcr.io/acme/x:1"),
        )  # fmt: skip


async def test_require_hides_projects_you_are_not_in(two: Runtime) -> None:
    async with two.sessionmaker() as session:
        acme = await projects.get(session, name="acme")
        with pytest.raises(NotFound) as hidden:
            await identity.require(session, actor=RITA, project=acme, role=Role.VIEWER, action="looking")
        with pytest.raises(NotFound) as missing:
            await projects.get(session, name="nope")
        assert str(hidden.value) == "no project named 'acme'"
        assert str(missing.value) == "no project named 'nope'"
        with pytest.raises(
            PermissionDenied, match="managing access in project acme needs the owner role; you have admin"
        ):
            await identity.require(
                session, actor=PAT, project=acme, role=Role.OWNER, action="managing access"
            )
        assert (
            await identity.require(session, actor=OLIVE, project=acme, role=Role.OWNER, action="x")
            == Role.OWNER
        )


async def test_project_creation_is_a_global_permission(two: Runtime) -> None:
    with pytest.raises(PermissionDenied, match="creating a project needs a global admin"):
        async with two.sessionmaker.begin() as session:
            await projects.create(session, ctx=two.core, actor=NOBODY, name="mine")
    two.core.config.project_creators = "everyone"
    async with two.sessionmaker.begin() as session:
        await projects.create(session, ctx=two.core, actor=NOBODY, name="mine")
    async with two.sessionmaker() as session:
        assert [m.role for m in await projects.members(session, actor=NOBODY, project_name="mine")] == [
            "owner"
        ]
    # A taken name: only those who can see the project hear that it exists.
    with pytest.raises(Conflict) as hidden:
        async with two.sessionmaker.begin() as session:
            await projects.create(session, ctx=two.core, actor=NOBODY, name="acme")
    assert str(hidden.value) == "project name 'acme' is not available; choose another"
    with pytest.raises(Conflict, match="project 'acme' already exists"):
        async with two.sessionmaker.begin() as session:
            await projects.create(session, ctx=two.core, actor=PAT, name="acme")


async def test_apps_stay_in_their_own_namespaces_and_clusters(two: Runtime) -> None:
    with pytest.raises(Conflict) as taken:
        await _create(two, PAT, name="sneaky", namespace="team-b")
    assert str(taken.value) == "namespace team-b on cluster paper is not available to project acme"
    with pytest.raises(PermissionDenied) as ungranted:
        await _create(two, PAT, name="far", cluster="spare")
    assert str(ungranted.value) == (
        "project acme may not use cluster spare; a global admin can grant it with `shipit clusters grant spare acme`"
    )
    with pytest.raises(PermissionDenied) as ghost:
        await _create(two, PAT, name="far", cluster="ghost")
    assert str(ghost.value) == str(ungranted.value).replace("spare", "ghost")  # missing looks like ungranted
    # A developer may not create apps at all; an outsider hears the project does not exist (as missing).
    with pytest.raises(PermissionDenied, match="creating an app in project acme needs the admin role"):
        await _create(two, DEV, name="dev-app")
    with pytest.raises(InvalidInput) as outsider:
        await _create(two, RITA, name="r-app", project="acme")
    with pytest.raises(InvalidInput) as nope:
        await _create(two, RITA, name="r-app", project="nope")
    assert str(outsider.value) == "no project named 'acme'" and str(nope.value) == "no project named 'nope'"

    # A new namespace on a granted cluster: claimed as created by shipit.  An admin vouches for one.
    await _create(two, PAT, name="api", namespace="acme-api")
    await _create(two, ADMIN, name="batch", project="rival", cluster="spare", namespace="batch")
    assert await _claims(two) == {
        ("paper", "apps"): ("acme", "granted"),
        ("paper", "team-b"): ("rival", "granted"),
        ("paper", "acme-api"): ("acme", "created"),
        ("spare", "batch"): ("rival", "granted"),
    }
    async with two.sessionmaker() as session:
        assert [(g.cluster, g.project) for g in await claims.grants(session)] == [
            ("paper", "acme"), ("paper", "rival"), ("spare", "rival"),
        ]  # fmt: skip
        # The project's members see where they may deploy; outsiders get the missing-project answer.
        mine = await projects.grants(session, actor=DEV, project_name="acme")
        assert [(g.cluster, g.namespaces) for g in mine] == [
            ("paper", {"acme-api": "created", "apps": "granted"})
        ]
        with pytest.raises(NotFound, match="no project named 'acme'"):
            await projects.grants(session, actor=RITA, project_name="acme")


async def test_app_names_in_conflicts_reveal_nothing(two: Runtime) -> None:
    with pytest.raises(Conflict) as outsider:
        await _create(two, RITA, name="web", project="rival", namespace="team-b")
    assert str(outsider.value) == "app name 'web' is not available; choose another"
    with pytest.raises(Conflict) as insider:
        await _create(two, PAT, name="web", namespace="apps")
    assert str(insider.value) == "an app named 'web' already exists"


async def test_grant_and_revoke(two: Runtime) -> None:
    with pytest.raises(PermissionDenied, match="granting a cluster needs a global admin"):
        async with two.sessionmaker.begin() as session:
            await clusters.grant(session, actor=OLIVE, cluster="spare", project="acme")
    async with two.sessionmaker.begin() as session:
        g = await clusters.grant(session, actor=ADMIN, cluster="spare", project="acme")
    assert (g.cluster, g.project, g.namespaces) == ("spare", "acme", {})
    await _create(two, PAT, name="far", cluster="spare")  # the cluster's default namespace, created by shipit
    assert (await _claims(two))[("spare", "apps")] == ("acme", "created")
    # Vouching for a namespace another project holds is refused (admins may hear who holds it).
    with pytest.raises(Conflict, match="belongs to project acme"):
        async with two.sessionmaker.begin() as session:
            await clusters.grant(session, actor=ADMIN, cluster="spare", project="rival", namespace="apps")
    with pytest.raises(Conflict, match=r"still has apps on cluster spare \(far\)"):
        async with two.sessionmaker.begin() as session:
            await clusters.revoke(session, actor=ADMIN, cluster="spare", project="acme")
    with pytest.raises(Conflict, match="still used by far"):
        async with two.sessionmaker.begin() as session:
            await clusters.revoke(session, actor=ADMIN, cluster="spare", project="acme", namespace="apps")
    async with two.sessionmaker.begin() as session:
        await apps.delete(session, actor=PAT, name="far")
    async with two.sessionmaker.begin() as session:
        await clusters.revoke(session, actor=ADMIN, cluster="spare", project="acme")
    assert ("spare", "apps") not in await _claims(two)
    with pytest.raises(PermissionDenied, match="may not use cluster spare"):
        await _create(two, PAT, name="far", cluster="spare")
    async with two.sessionmaker() as session:
        audit = list(await session.scalars(select(models.AuditEvent.action).where(
            models.AuditEvent.action.in_(["cluster.grant", "cluster.revoke"])).order_by(models.AuditEvent.id)))  # fmt: skip
    assert audit[-2:] == ["cluster.grant", "cluster.revoke"]


async def test_cluster_list_shows_only_granted_clusters(two: Runtime) -> None:
    async with two.sessionmaker() as session:
        assert [c.name for c in await clusters.list_visible(session, actor=PAT)] == ["paper"]
        assert [c.name for c in await clusters.list_visible(session, actor=NOBODY)] == []
        assert [c.name for c in await clusters.list_visible(session, actor=ADMIN)] == ["paper", "spare"]


async def _deploy(rt: Runtime, actor: Actor, app: str, key: str | None = None) -> deploys.Requested:
    async with rt.sessionmaker.begin() as session:
        return await deploys.request(
            session, ctx=rt.core, actor=actor, app_name=app, trigger="api", dedupe_key=key
        )


async def test_the_dedupe_key_is_looked_up_only_after_the_role_check(two: Runtime) -> None:
    first = await _deploy(two, RITA, "vault", key="k-1")
    assert (
        first.created and (await _deploy(two, RITA, "vault", key="k-1")).deployment.id == first.deployment.id
    )
    async with two.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="rival", subject=RITA.subject, role=None)
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject=RITA.subject, role="developer"
        )
    # Out of rival now: the key answers exactly like an app that does not exist...
    with pytest.raises(NotFound) as hidden:
        await _deploy(two, RITA, "vault", key="k-1")
    with pytest.raises(NotFound) as missing:
        await _deploy(two, RITA, "nope", key="k-1")
    assert str(hidden.value) == str(missing.value).replace("nope", "vault")
    # ...and on an app she may deploy, it does not hand back rival's deploy.
    with pytest.raises(Conflict) as reused:
        await _deploy(two, RITA, "web", key="k-1")
    assert "vault" not in str(reused.value) and str(first.deployment.id) not in str(reused.value)


async def test_deploys_by_id_of_other_projects_are_missing(two: Runtime) -> None:
    d = (await _deploy(two, RITA, "vault")).deployment
    for call in (
        lambda s: deploys.get(s, actor=PAT, deployment_id=d.id),
        lambda s: deploys.cancel(s, ctx=two.core, actor=PAT, deployment_id=d.id),
        lambda s: deploys.approve(s, ctx=two.core, actor=PAT, deployment_id=d.id),
    ):
        with pytest.raises(NotFound, match=rf"^no deploy #{d.id}$"):
            async with two.sessionmaker.begin() as session:
                await call(session)


async def test_deploys_only_into_namespaces_the_project_owns(two: Runtime) -> None:
    # As after the migration, where two projects shared a namespace: the one not holding it may not deploy.
    async with two.sessionmaker.begin() as session:
        await session.execute(delete(models.NamespaceClaim).where(models.NamespaceClaim.namespace == "apps"))
        await clusters.grant(session, actor=ADMIN, cluster="paper", project="rival", namespace="apps")
    with pytest.raises(Conflict, match="namespace apps on cluster paper is not available to project acme"):
        await _deploy(two, DEV, "web")
    async with two.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(models.Deployment)) == 0


async def test_previews_claim_their_namespace(two: Runtime) -> None:
    async with two.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=two.core, actor=PAT, name="web",
            changes=apps.AppChanges(
                git_repo="acme/web", image_template="ghcr.io/acme/web:{sha}", previews_enabled=True,
                preview_domain="preview.acme.dev",
            ),
        )  # fmt: skip
        await clusters.grant(session, actor=ADMIN, cluster="paper", project="rival", namespace="web-pr-7")

    async def open_pr(number: int) -> previews.Decision:
        async with two.sessionmaker.begin() as session:
            app = await apps.get(session, actor=ADMIN, name="web")
            return await previews.open_or_update(
                session, ctx=two.core, app=app, actor=github_actor("octo"), repo="acme/web", number=number,
                head_sha="a" * 40, head_ref="feature",
            )  # fmt: skip

    refused = await open_pr(7)
    assert refused.action == SKIP
    assert "namespace web-pr-7 on cluster paper is not available to project acme" in refused.reason
    assert "rival" not in refused.reason
    opened = await open_pr(8)
    assert opened.action == DEPLOY
    claimed = await _claims(two)
    assert claimed[("paper", "web-pr-8")] == ("acme", "created")
    assert claimed[("paper", "web-pr-7")] == ("rival", "granted")
    async with two.sessionmaker() as session:
        namespaces = list(await session.scalars(select(models.Deployment.namespace)))
        failed = await session.scalar(select(models.Preview.status).where(models.Preview.pr_number == 7))
    assert namespaces == ["web-pr-8"] and failed == previews.FAILED


async def test_turning_protection_off_needs_an_owner_and_is_announced(two: Runtime) -> None:
    async with two.sessionmaker.begin() as session:
        await apps.update(
            session, ctx=two.core, actor=PAT, name="web", changes=apps.AppChanges(protected=True)
        )
    with pytest.raises(
        PermissionDenied, match="turning protection off in project acme needs the owner role; you have admin"
    ):
        async with two.sessionmaker.begin() as session:
            await apps.update(
                session, ctx=two.core, actor=PAT, name="web", changes=apps.AppChanges(protected=False)
            )
    async with two.sessionmaker.begin() as session:
        app = await apps.update(
            session, ctx=two.core, actor=OLIVE, name="web", changes=apps.AppChanges(protected=False)
        )
        assert app.protected is False
    async with two.sessionmaker() as session:
        kinds = list(await session.scalars(select(models.Event).where(models.Event.kind == events.APP_PROTECTION_CHANGED).order_by(models.Event.id)))  # fmt: skip
        audit = list(await session.scalars(select(models.AuditEvent).where(models.AuditEvent.action.in_(["app.protect", "app.unprotect"])).order_by(models.AuditEvent.id)))  # fmt: skip
        assert [(e.payload["protected"], e.payload["by"]) for e in kinds] == [
            (True, PAT.subject),
            (False, OLIVE.subject),
        ]
        assert [(a.action, a.actor) for a in audit] == [
            ("app.protect", PAT.subject),
            ("app.unprotect", OLIVE.subject),
        ]
        # The outgoing webhook renders it (delivery itself is tested over HTTP in tests/shipit).
        body = webhook.payload(await events.build_notice(session, event=kinds[-1]))
    assert body["event"] == "app.protection_changed" and body["app"] == "web" and body["project"] == "acme"
    assert body["details"]["protected"] is False and body["deployment"] is None
