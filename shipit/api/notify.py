"""REST API for notification targets: /api/v1/projects/{project}/notify (list, add, remove, test).

Thin: each route parses, calls core.notices.targets, renders.  Secrets are write-only (the answer
says `secret: set`), and Teams/Discord URLs are shown only up to their host.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from core import validation as v
from core.notices import registry
from core.notices import targets as notice_targets
from shipit import schemas
from shipit.api.base import ActorDep, RtDep, new_router, tx
from storage import models

router = new_router()

TARGET_SECRET_MAX = schemas.WEBHOOK_SECRET_MAX
# The kinds come from core/notices/registry.py: a new kind needs no change here.
KIND_PATTERN = "^(" + "|".join(registry.KINDS) + ")$"


class TargetIn(schemas.Strict):
    kind: str = Field(max_length=16, pattern=KIND_PATTERN)
    address: str = Field(default="", max_length=v.limit(models.NotificationTarget, "address"), pattern=v.LINE)
    environment: schemas.DnsLabel | None = None  # None: every environment
    events: str = Field(
        default="*", min_length=1, max_length=v.limit(models.NotificationTarget, "events"), pattern=v.LINE
    )
    secret: str | None = Field(default=None, min_length=1, max_length=TARGET_SECRET_MAX, repr=False)
    format: Literal["", "cloudevents"] = ""


class TargetOut(BaseModel):
    """Never the secret: `secret` says whether one is set."""

    id: int
    kind: str
    address: str
    environment: str | None
    events: str
    format: str
    secret: Literal["set", "none"]
    created_by: str
    failing: bool
    failures: int
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_error: str | None

    @classmethod
    def of(cls, t: notice_targets.Listed) -> TargetOut:
        return cls(
            id=t.id,
            kind=t.kind,
            address=t.address,
            environment=t.environment,
            events=t.events,
            format=t.format,
            secret="set" if t.secret else "none",
            created_by=t.created_by,
            failing=t.failing,
            failures=t.failures,
            last_success_at=t.last_success_at,
            last_failure_at=t.last_failure_at,
            last_error=t.last_error,
        )


class TestOut(BaseModel):
    ok: bool
    message: str
    target: TargetOut


TargetIdPath = schemas.IdPath
ProjectPath = schemas.NamePath


@router.get("/projects/{project}/notify")
async def list_targets(project: ProjectPath, rt: RtDep, actor: ActorDep) -> list[TargetOut]:
    async with tx(rt) as session:
        return [TargetOut.of(t) for t in await notice_targets.list_for(session, actor=actor, project=project)]


@router.post("/projects/{project}/notify", status_code=201)
async def add_target(project: ProjectPath, body: TargetIn, rt: RtDep, actor: ActorDep) -> TargetOut:
    async with tx(rt) as session:
        row = await notice_targets.add(
            session,
            ctx=rt.core,
            actor=actor,
            project=project,
            kind=body.kind,
            address=body.address,
            environment=body.environment,
            events=body.events,
            secret=body.secret,
            format=body.format,
        )
        return TargetOut.of(notice_targets.listed(row))


@router.delete("/projects/{project}/notify/{target_id}", status_code=204)
async def remove_target(project: ProjectPath, target_id: TargetIdPath, rt: RtDep, actor: ActorDep) -> None:
    async with tx(rt) as session:
        await notice_targets.remove(session, actor=actor, project=project, target_id=target_id)


@router.post("/projects/{project}/notify/{target_id}/test")
async def test_target(project: ProjectPath, target_id: TargetIdPath, rt: RtDep, actor: ActorDep) -> TestOut:
    tested = await notice_targets.test(ctx=rt.core, actor=actor, project=project, target_id=target_id)
    return TestOut(ok=tested.ok, message=tested.message, target=TargetOut.of(tested.target))
