"""Who is asking, and what they may do.

Permission is checked here, in core, so every channel (Slack, GitHub, API, CLI)
obeys the same rules.  Roles are per project: viewer < developer < admin < owner.

A project you hold no role in does not exist for you: `require` answers exactly
as a missing project would (NotFound), and only someone with *some* role learns
which role an action needs (PermissionDenied).  Services call it before they
look anything else up, so no cached or deduplicated answer leaks past it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import readcache
from core.errors import InvalidInput, NotFound, PermissionDenied, UserError
from storage import models


class Role(enum.IntEnum):
    VIEWER = 1
    DEVELOPER = 2
    ADMIN = 3
    OWNER = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, *, field: str = "role") -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise InvalidInput(f"{field} must be one of {names}, got {text!r}", field=field) from None


@dataclass(frozen=True, kw_only=True)
class Actor:
    """A caller.  `subject` is what roles bind to: user:alice, slack:U123, github:octocat, system."""

    subject: str
    channel: str  # api, cli, slack, github, system
    display: str = ""
    is_admin: bool = False  # global admin: the bootstrap token, `shipit` run on the server
    # The read cache's version stamp, read with the token check, for the request's transaction.
    pin: readcache.Pin | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.display or self.subject


SYSTEM = Actor(subject="system", channel="system", display="shipit", is_admin=True)


def person_subjects(subject: str) -> ColumnElement[bool]:
    """Member.subject is one of `subject`'s person's subjects (or `subject` itself, linked or not).

    Roles attach to the person: a role granted to slack:U1 holds for github:octo once both are one
    person (core.identities).  A condition, not a query, so each caller stays one statement.
    """
    mine = select(models.Identity.person_id).where(models.Identity.subject == subject).scalar_subquery()
    linked = select(models.Identity.subject).where(models.Identity.person_id == mine)
    return or_(models.Member.subject == subject, models.Member.subject.in_(linked))


async def _roles(session: AsyncSession, *, actor: Actor) -> dict[int, Role]:
    """Project id -> the person's highest role over all of their subjects (one statement, or none
    while the read cache's stamp is unchanged)."""

    async def load() -> tuple[tuple[int, str], ...]:
        rows = await session.execute(
            select(models.Member.project_id, models.Member.role).where(person_subjects(actor.subject))
        )
        return tuple((int(p), str(r)) for p, r in rows)

    pairs = await readcache.value(session, ("roles", actor.subject), load, pin=actor.pin)
    roles: dict[int, Role] = {}
    for project_id, role in pairs:
        have = Role[role.upper()]
        if project_id not in roles or roles[project_id] < have:
            roles[project_id] = have
    return roles


async def role_of(session: AsyncSession, *, actor: Actor, project_id: int) -> Role | None:
    if actor.is_admin:
        return Role.OWNER
    return (await _roles(session, actor=actor)).get(project_id)


def project_not_found(name: str) -> NotFound:
    """The one answer for a project that is missing or that the caller holds no role in."""
    return NotFound(f"no project named {name!r}")


async def require(
    session: AsyncSession,
    *,
    actor: Actor,
    project: models.Project,
    role: Role,
    action: str,
    missing: UserError | None = None,
) -> Role:
    """The caller's role in `project`, at least `role`.

    No role at all raises `missing` (default: the missing-project NotFound), so outsiders cannot tell a
    project they are not in from one that does not exist; too low a role raises PermissionDenied naming it.
    """
    have = await role_of(session, actor=actor, project_id=project.id)
    if have is None:
        raise missing if missing is not None else project_not_found(project.name)
    if have < role:
        raise PermissionDenied(
            f"{action} in project {project.name} needs the {role.label} role; you have {have.label}"
        )
    return have


def require_admin(actor: Actor, *, action: str) -> None:
    if not actor.is_admin:
        raise PermissionDenied(f"{action} needs a global admin token")


async def visible_project_ids(session: AsyncSession, *, actor: Actor) -> set[int] | None:
    """The projects the actor can read; None means all of them."""
    if actor.is_admin:
        return None
    return set(await _roles(session, actor=actor))
