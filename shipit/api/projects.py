"""/api/v1/projects: projects and who may do what in them (core.projects)."""

from __future__ import annotations

from core import projects
from shipit import schemas
from shipit.api import reads
from shipit.api.base import ActorDep, RtDep, new_router, tx

router = new_router()


@router.get("/projects")
async def list_projects(rt: RtDep, actor: ActorDep) -> list[schemas.ProjectOut]:
    async with tx(rt) as session:
        return await reads.projects_out(session, await projects.list_visible(session, actor=actor))


@router.post("/projects", status_code=201)
async def create_project(body: schemas.ProjectIn, rt: RtDep, actor: ActorDep) -> schemas.ProjectOut:
    async with tx(rt) as session:
        p = await projects.create(
            session,
            ctx=rt.core,
            actor=actor,
            name=body.name,
            slack_channel=body.slack_channel,
            webhook_url=body.webhook_url,
            webhook_secret=body.webhook_secret,
        )
        (out,) = await reads.projects_out(session, [p])
        return out


@router.patch("/projects/{name}")
async def update_project(
    name: schemas.NamePath, body: schemas.ProjectPatch, rt: RtDep, actor: ActorDep
) -> schemas.ProjectOut:
    async with tx(rt) as session:
        p = await projects.update(
            session,
            ctx=rt.core,
            actor=actor,
            name=name,
            slack_channel=body.slack_channel,
            webhook_url=body.webhook_url,
            webhook_secret=body.webhook_secret,
        )
        (out,) = await reads.projects_out(session, [p])
        return out


@router.delete("/projects/{name}", status_code=204)
async def delete_project(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> None:
    async with tx(rt) as session:
        await projects.delete(session, actor=actor, name=name)


@router.get("/projects/{name}/grants")
async def list_project_grants(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> list[schemas.GrantOut]:
    async with tx(rt) as session:
        rows = await projects.grants(session, actor=actor, project_name=name)
        return [schemas.GrantOut.of(g) for g in rows]


@router.get("/projects/{name}/members")
async def list_members(name: schemas.NamePath, rt: RtDep, actor: ActorDep) -> list[schemas.MemberOut]:
    async with tx(rt) as session:
        rows = await projects.members(session, actor=actor, project_name=name)
        return [schemas.MemberOut(subject=m.subject, role=m.role) for m in rows]


@router.put("/projects/{name}/members/{subject}")
async def set_member(
    name: schemas.NamePath, subject: schemas.SubjectPath, body: schemas.MemberIn, rt: RtDep, actor: ActorDep
) -> schemas.MemberOut:
    async with tx(rt) as session:
        m = await projects.set_access(
            session, actor=actor, project_name=name, subject=subject, role=body.role
        )
        assert m is not None
        return schemas.MemberOut(subject=m.subject, role=m.role)


@router.delete("/projects/{name}/members/{subject}", status_code=204)
async def remove_member(
    name: schemas.NamePath, subject: schemas.SubjectPath, rt: RtDep, actor: ActorDep
) -> None:
    async with tx(rt) as session:
        await projects.set_access(session, actor=actor, project_name=name, subject=subject, role=None)
