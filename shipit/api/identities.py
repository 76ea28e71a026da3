"""/api/v1/identities: which subjects are one person (a thin channel over core.identities)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, Field

from core import identities
from core import validation as v
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx
from storage import models

router = new_router()

Subject = Annotated[str, Field(max_length=v.limit(models.Identity, "subject"), pattern=v.SUBJECT)]
SubjectQuery = Annotated[str | None, Query(max_length=v.limit(models.Identity, "subject"), pattern=v.SUBJECT)]


class LinkIn(schemas.Strict):
    subjects: list[Subject] = Field(
        min_length=2, max_length=identities.MAX_SUBJECTS, examples=[["slack:U123", "github:octocat"]]
    )


class IdentityOut(BaseModel):
    person: int
    subject: str
    verified_by: str
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, row: models.Identity) -> IdentityOut:
        return cls(
            person=row.person_id,
            subject=row.subject,
            verified_by=row.verified_by,
            created_by=row.created_by,
            created_at=row.created_at,
        )


@router.get("/identities")
async def list_identities(rt: RtDep, actor: ActorDep, subject: SubjectQuery = None) -> list[IdentityOut]:
    """Your person's identities (an admin: anyone's, or every link without `subject`)."""
    async with tx(rt) as session:
        rows = await identities.list_identities(session, actor=actor, subject=subject)
        return [IdentityOut.of(r) for r in rows]


@router.post("/identities")
async def link_identities(body: LinkIn, rt: RtDep, actor: ActorDep) -> list[IdentityOut]:
    """Global admins: these subjects are one person (its roles are the union of theirs)."""
    async with tx(rt) as session:
        person = await identities.link(session, actor=actor, subjects=body.subjects)
        rows = await identities.list_identities(session, actor=actor, subject=body.subjects[0])
        return [IdentityOut.of(r) for r in rows if r.person_id == person.id]


@router.delete("/identities/{subject}")
async def unlink_identity(subject: schemas.SubjectPath, rt: RtDep, actor: ActorDep) -> IdentityOut:
    """Global admins: take a subject off its person."""
    async with tx(rt) as session:
        return IdentityOut.of(await identities.unlink(session, actor=actor, subject=subject))
