"""REST routes for protecting environments: approvals, deploy windows, freezes, locks (core.protection).

A router of its own (shipit.api.base.new_router): the same bearer scheme, error bodies and bounds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Literal, ParamSpec

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from core import protection
from core import validation as v
from shipit import schemas
from shipit.api import base as api
from shipit.runtime import Runtime
from storage import models

router = api.new_router()
P = ParamSpec("P")

ENV = "/projects/{name}/environments/{env}"
HHMM = r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$"
TZ = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$"


class ProtectIn(schemas.Strict):
    approvals: int = Field(1, ge=1, le=protection.MAX_APPROVALS)
    approver_role: Literal["deployer", "developer", "admin", "owner"] = "deployer"
    # How long a deploy waits for its approvals; None: the server's SHIPIT_APPROVAL_TTL_SECONDS.
    approval_ttl_seconds: int | None = Field(None, ge=60, le=30 * 86400)


class WindowIn(schemas.Strict):
    days: str = Field(max_length=64, pattern=r"^[A-Za-z, \-*]+$", examples=["mon-fri"])
    start: str = Field(max_length=5, pattern=HHMM, examples=["09:00"])
    end: str = Field(max_length=5, pattern=HHMM, examples=["17:00"])
    timezone: str | None = Field(None, max_length=64, pattern=TZ, examples=["Europe/Berlin"])
    add: bool = False  # add to the environment's windows instead of replacing them


class FreezeIn(schemas.Strict):
    until: dt.datetime  # without an offset: in the environment's time zone
    start: dt.datetime | None = None  # default: now
    reason: str | None = Field(None, max_length=500, pattern=v.LINE)


class LockIn(schemas.Strict):
    reason: str | None = Field(None, max_length=500, pattern=v.LINE)
    seconds: int | None = Field(None, ge=60, le=366 * 86400)  # None: until unlocked


class WindowOut(BaseModel):
    days: list[str]
    start: str
    end: str


class FreezeOut(BaseModel):
    start: str | None
    end: str
    reason: str


class LockOut(BaseModel):
    reason: str
    by: str
    at: dt.datetime | None
    until: dt.datetime | None

    @classmethod
    def of(cls, row: models.Environment | models.Project) -> LockOut | None:
        lock = protection.lock_of(row)  # an expired lock reads as none
        return cls(reason=lock.reason, by=lock.by, at=lock.at, until=lock.until) if lock else None


class EnvironmentProtectionOut(BaseModel):
    project: str
    environment: str
    protected: bool
    required_approvals: int
    approver_role: str
    approval_ttl_seconds: int | None
    timezone: str
    windows: list[WindowOut]
    freezes: list[FreezeOut]
    lock: LockOut | None
    # The project's own lock holds every environment too: "what holds now" shows it here as well.
    project_lock: LockOut | None

    @classmethod
    def of(
        cls, env: models.Environment, *, project: str, project_row: models.Project | None
    ) -> EnvironmentProtectionOut:
        return cls(
            project=project,
            environment=env.name,
            protected=env.protected,
            required_approvals=env.required_approvals,
            approver_role=env.approver_role,
            approval_ttl_seconds=env.approval_ttl_seconds,
            timezone=env.timezone,
            windows=[WindowOut(**_window(w)) for w in env.windows or []],
            freezes=[
                FreezeOut(start=f.get("start"), end=str(f.get("end")), reason=str(f.get("reason") or ""))
                for f in env.freezes or []
            ],
            lock=LockOut.of(env),
            project_lock=LockOut.of(project_row) if project_row is not None else None,
        )


async def _out(session: AsyncSession, env: models.Environment, *, project: str) -> EnvironmentProtectionOut:
    # The project row was loaded by the role check in this session: taken from its identity map.
    return EnvironmentProtectionOut.of(
        env, project=project, project_row=await session.get(models.Project, env.project_id)
    )


async def _run(
    rt: Runtime,
    project: str,
    call: Callable[Concatenate[AsyncSession, P], Awaitable[models.Environment]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> EnvironmentProtectionOut:
    """The environment as `call` (a core.protection function: the caller's role checked first) reads or
    leaves it, in one transaction.  Positional: the keywords are `call`'s own, checked by mypy."""
    async with api.tx(rt) as session:
        return await _out(session, await call(session, *args, **kwargs), project=project)


def _window(w: dict[str, Any]) -> dict[str, Any]:
    return {
        "days": list(w.get("days") or protection.DAYS),
        "start": w.get("start", "00:00"),
        "end": w.get("end", "24:00"),
    }


class ProjectLockOut(BaseModel):
    project: str
    lock: LockOut | None


Env = schemas.NamePath


@router.get(ENV + "/protection")
async def get_protection(
    name: schemas.NamePath, env: Env, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(rt, name, protection.get_environment, actor=actor, project=name, env=env)


@router.put(ENV + "/protection")
async def protect(
    name: schemas.NamePath, env: Env, body: ProtectIn, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(
        rt, name, protection.protect, actor=actor, project=name, env=env,
        approvals=body.approvals, approver_role=body.approver_role,
        approval_ttl_seconds=body.approval_ttl_seconds,
    )  # fmt: skip


@router.delete(ENV + "/protection")
async def unprotect(
    name: schemas.NamePath, env: Env, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(rt, name, protection.unprotect, actor=actor, project=name, env=env)


@router.put(ENV + "/windows")
async def set_window(
    name: schemas.NamePath, env: Env, body: WindowIn, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(
        rt, name, protection.set_window, actor=actor, project=name, env=env,
        days=body.days, start=body.start, end=body.end, tz=body.timezone, add=body.add,
    )  # fmt: skip


@router.delete(ENV + "/windows")
async def clear_windows(
    name: schemas.NamePath, env: Env, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(rt, name, protection.set_window, actor=actor, project=name, env=env, clear=True)


@router.post(ENV + "/freezes")
async def freeze(
    name: schemas.NamePath, env: Env, body: FreezeIn, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(
        rt, name, protection.freeze, actor=actor, project=name, env=env,
        until=body.until.isoformat(), start=body.start.isoformat() if body.start else None,
        reason=body.reason,
    )  # fmt: skip


@router.delete(ENV + "/freezes")
async def clear_freezes(
    name: schemas.NamePath, env: Env, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(rt, name, protection.freeze, actor=actor, project=name, env=env, clear=True)


@router.post(ENV + "/lock")
async def lock_env(
    name: schemas.NamePath, env: Env, body: LockIn, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(
        rt, name, protection.lock_env, actor=actor, project=name, env=env,
        reason=body.reason, seconds=body.seconds,
    )  # fmt: skip


@router.post(ENV + "/unlock")
async def unlock_env(
    name: schemas.NamePath, env: Env, rt: api.RtDep, actor: api.ActorDep
) -> EnvironmentProtectionOut:
    return await _run(rt, name, protection.unlock_env, actor=actor, project=name, env=env)


@router.post("/projects/{name}/lock")
async def lock_project(
    name: schemas.NamePath, body: LockIn, rt: api.RtDep, actor: api.ActorDep
) -> ProjectLockOut:
    async with api.tx(rt) as session:
        p = await protection.lock_project(
            session, actor=actor, project=name, reason=body.reason, seconds=body.seconds
        )
        return ProjectLockOut(project=p.name, lock=LockOut.of(p))


@router.post("/projects/{name}/unlock")
async def unlock_project(name: schemas.NamePath, rt: api.RtDep, actor: api.ActorDep) -> ProjectLockOut:
    async with api.tx(rt) as session:
        p = await protection.unlock_project(session, actor=actor, project=name)
        return ProjectLockOut(project=p.name, lock=LockOut.of(p))
