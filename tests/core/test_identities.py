"""One person, several identities (core.identities) on SQLite and PostgreSQL: roles follow the person,
codes prove a second identity once, and nobody takes someone else's."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from sqlalchemy import event, select, update

from core import identities, identity, projects
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identity import Actor, Role
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN

pytestmark = pytest.mark.both_databases

SLACK = Actor(subject="slack:U0ALICE01", channel="slack", display="alice")
OCTO = Actor(subject="github:octo", channel="github", display="octo")
MALLORY = Actor(subject="slack:U0MALLORY", channel="slack", display="mallory")


async def _project(rt: Runtime, *, members: dict[str, str]) -> int:
    async with rt.sessionmaker.begin() as session:
        p = await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        for subject, role in members.items():
            await projects.set_access(session, actor=ADMIN, project_name="acme", subject=subject, role=role)
        return p.id


async def _role(rt: Runtime, actor: Actor, project_id: int) -> Role | None:
    async with rt.sessionmaker() as session:
        return await identity.role_of(session, actor=actor, project_id=project_id)


async def _code(rt: Runtime, actor: Actor, subject: str) -> str:
    async with rt.sessionmaker.begin() as session:
        return await identities.start_link(session, actor=actor, subject=subject)


async def _redeem(rt: Runtime, subject: str, code: str) -> models.Person:
    async with rt.sessionmaker.begin() as session:
        return await identities.redeem_link_code(session, subject=subject, code=code)


async def test_a_role_granted_to_slack_holds_for_github_once_linked(rt: Runtime) -> None:
    pid = await _project(rt, members={SLACK.subject: "developer", "user:octo@acme.io": "admin"})
    assert await _role(rt, OCTO, pid) is None
    async with rt.sessionmaker() as session:
        assert await identity.visible_project_ids(session, actor=OCTO) == set()
    async with rt.sessionmaker.begin() as session:
        await identities.link(session, actor=ADMIN, subjects=[SLACK.subject, "github:Octo"])
    assert await _role(rt, OCTO, pid) == Role.DEVELOPER
    async with rt.sessionmaker() as session:
        assert await identity.visible_project_ids(session, actor=OCTO) == {pid}
        assert [p.name for p in await projects.list_visible(session, actor=OCTO)] == ["acme"]
    # A third identity joins the same person; the person's highest role counts, whichever subject holds it.
    async with rt.sessionmaker.begin() as session:
        await identities.link(session, actor=ADMIN, subjects=["github:octo", "user:octo@acme.io"])
    assert await _role(rt, SLACK, pid) == Role.ADMIN
    # Unlinked, github:octo holds nothing again; Member rows stay per subject.
    async with rt.sessionmaker.begin() as session:
        await identities.unlink(session, actor=ADMIN, subject="github:octo")
    assert await _role(rt, OCTO, pid) is None
    assert await _role(rt, SLACK, pid) == Role.ADMIN


async def test_role_of_is_one_statement(rt: Runtime) -> None:
    pid = await _project(rt, members={SLACK.subject: "viewer"})
    async with rt.sessionmaker.begin() as session:
        await identities.link(session, actor=ADMIN, subjects=[SLACK.subject, OCTO.subject])
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
    try:
        async with rt.sessionmaker() as session:
            await session.execute(select(1))
            seen.clear()
            assert await identity.role_of(session, actor=OCTO, project_id=pid) == Role.VIEWER
            # The read cache's stamp, then the one statement over members, identities and persons.
            assert len(seen) == 2 and "FROM meta" in seen[0], seen
            seen.clear()
            # The same transaction answers the projects the person sees from what it read.
            assert await identity.visible_project_ids(session, actor=OCTO) == {pid}
            assert seen == []
        async with rt.sessionmaker() as session:
            await session.execute(select(1))
            seen.clear()
            # A later transaction: the stamp alone, while nothing changed.
            assert await identity.role_of(session, actor=OCTO, project_id=pid) == Role.VIEWER
            assert len(seen) == 1 and "FROM meta" in seen[0], seen
    finally:
        event.remove(rt.engine.sync_engine, "before_cursor_execute", count)


async def test_link_creates_merges_and_never_steals(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        alice = await identities.link(session, actor=ADMIN, subjects=[SLACK.subject, "github:alice"])
        bob = await identities.link(session, actor=ADMIN, subjects=["slack:U0BOB0001", "github:bob"])
    assert alice.id != bob.id
    async with rt.sessionmaker.begin() as session:
        # A subject nobody holds joins the person of the ones that have one.
        merged = await identities.link(session, actor=ADMIN, subjects=["user:alice@acme.io", "github:alice"])
        assert merged.id == alice.id
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(Conflict) as taken:
            await identities.link(session, actor=ADMIN, subjects=[SLACK.subject, "github:bob"])
    assert "github:bob" in str(taken.value) and "another person" in str(taken.value)
    async with rt.sessionmaker() as session:
        assert await identities.subjects_of(session, subject="github:bob") == [
            "github:bob",
            "slack:U0BOB0001",
        ]
        assert await identities.subjects_of(session, subject="github:alice") == [
            "github:alice", SLACK.subject, "user:alice@acme.io",
        ]  # fmt: skip
        mine = await identities.list_identities(session, actor=SLACK)
        assert {r.subject for r in mine} == {"github:alice", SLACK.subject, "user:alice@acme.io"}
        with pytest.raises(PermissionDenied):
            await identities.list_identities(session, actor=SLACK, subject="github:bob")
        assert len(await identities.list_identities(session, actor=ADMIN)) == 5


async def test_only_admins_link_and_unlink(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(PermissionDenied):
            await identities.link(session, actor=MALLORY, subjects=[MALLORY.subject, "github:octo"])
        with pytest.raises(InvalidInput) as bad:
            await identities.link(session, actor=ADMIN, subjects=["github:octo"])
        assert bad.value.field == "subjects"
    async with rt.sessionmaker.begin() as session:
        await identities.link(session, actor=ADMIN, subjects=[SLACK.subject, OCTO.subject])
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(PermissionDenied):
            await identities.unlink(session, actor=SLACK, subject=OCTO.subject)
        with pytest.raises(NotFound):
            await identities.unlink(session, actor=ADMIN, subject="github:nobody")
    async with rt.sessionmaker() as session:
        assert await identities.subjects_of(session, subject=SLACK.subject) == ["github:octo", SLACK.subject]


async def test_a_code_links_once_for_exactly_its_subject(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pid = await _project(rt, members={SLACK.subject: "developer"})
    code = await _code(rt, SLACK, "github:Octo")
    # Wrong subject, unknown code, garbage: one message, and nothing is linked or used.
    for subject, attempt in (
        ("github:mallory", code),
        ("github:octo", "AAAA-BBBB-CCCC"),
        ("github:octo", "x"),
    ):
        with pytest.raises(InvalidInput) as refused:
            await _redeem(rt, subject, attempt)
        assert str(refused.value) == identities.BAD_CODE and refused.value.field == "code"
    assert await _role(rt, OCTO, pid) is None

    person = await _redeem(rt, "github:octo", code.lower().replace("-", " "))  # retyped loosely
    assert await _role(rt, OCTO, pid) == Role.DEVELOPER
    async with rt.sessionmaker() as session:
        rows = await identities.list_identities(session, actor=OCTO)
        assert {(r.subject, r.person_id, r.verified_by) for r in rows} == {
            (SLACK.subject, person.id, "code"), ("github:octo", person.id, "code"),
        }  # fmt: skip
    with pytest.raises(InvalidInput) as reused:
        await _redeem(rt, "github:octo", code)
    assert str(reused.value) == identities.BAD_CODE

    # Expired: the same answer.
    late = await _code(rt, MALLORY, "github:mallory")
    async with rt.sessionmaker.begin() as session:
        await session.execute(
            update(models.IdentityLinkCode)
            .where(models.IdentityLinkCode.subject == "github:mallory")
            .values(expires_at=models.utcnow() - dt.timedelta(seconds=1))
        )
    with pytest.raises(InvalidInput) as expired:
        await _redeem(rt, "github:mallory", late)
    assert str(expired.value) == identities.BAD_CODE

    # Only hashes are stored; neither audit details nor logs hold a code.
    async with rt.sessionmaker() as session:
        stored = list(await session.scalars(select(models.IdentityLinkCode)))
        audit = list(await session.scalars(select(models.AuditEvent)))
    assert len(stored) == 2 and all(len(r.code_hash) == 64 for r in stored)
    assert {a.action for a in audit} >= {"identity.code", "identity.link"}
    for c in (code, late):
        bare = c.replace("-", "")
        for a in audit:
            assert bare not in json.dumps(a.details) and c not in json.dumps(a.details)
        for record in caplog.records:
            assert bare not in record.getMessage() and c not in record.getMessage()


async def test_a_code_cannot_take_a_subject_from_another_person(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        await identities.link(session, actor=ADMIN, subjects=["slack:U0BOB0001", "github:bob"])
        await identities.link(session, actor=ADMIN, subjects=[MALLORY.subject, "github:mallory"])
    # Mallory asks for github:bob; even Bob redeeming it by mistake cannot move his login over.
    code = await _code(rt, MALLORY, "github:bob")
    with pytest.raises(Conflict):
        await _redeem(rt, "github:bob", code)
    async with rt.sessionmaker() as session:
        assert await identities.subjects_of(session, subject="github:bob") == [
            "github:bob",
            "slack:U0BOB0001",
        ]
        assert await identities.subjects_of(session, subject=MALLORY.subject) == [
            "github:mallory",
            MALLORY.subject,
        ]
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(Conflict):  # already yours
            await identities.start_link(session, actor=Actor(subject="slack:U0BOB0001", channel="slack"),
                                        subject="github:bob")  # fmt: skip


async def test_the_same_person_does_not_approve_from_another_account(rt: Runtime) -> None:
    """Requested in Slack, approved from GitHub by the same human: refused once both are linked."""
    from core import apps, clusters, deploys
    from tests.shipit.conftest import offline_kubeconfig

    await _project(rt, members={SLACK.subject: "developer", OCTO.subject: "developer"})
    async with rt.sessionmaker.begin() as session:
        await clusters.add(
            session, ctx=rt.core, actor=ADMIN, name="offline", kubeconfig_text=offline_kubeconfig(),
            default_namespace="apps", version="v0.0.0-offline",
        )  # fmt: skip
        await clusters.grant(session, actor=ADMIN, cluster="offline", project="acme", namespace="apps")
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="offline", name="web", namespace="apps",
            changes=apps.AppChanges(image="ghcr.io/acme/web:1.0", protected=True),
        )  # fmt: skip
        await identities.link(session, actor=ADMIN, subjects=[SLACK.subject, OCTO.subject])
    async with rt.sessionmaker.begin() as session:
        result = await deploys.request(
            session, ctx=rt.core, actor=SLACK, app_name="web", image="ghcr.io/acme/web:1.1", trigger="slack"
        )
        deployment_id = result.deployment.id
    async with rt.sessionmaker.begin() as session:
        with pytest.raises(PermissionDenied) as refused:
            await deploys.approve(session, ctx=rt.core, actor=OCTO, deployment_id=deployment_id)
    assert "nobody approves their own deploy" in str(refused.value)
    async with rt.sessionmaker() as session:
        d = await session.get(models.Deployment, deployment_id)
        assert d is not None and d.status == deploys.AWAITING_APPROVAL
