"""One person, several identities: slack:U1, github:octocat and user:alice@acme.io may be one human.

Roles stay on subjects (a Member row names one subject), but core.identity reads the roles of every
subject of the caller's person, so a role granted to slack:U1 holds for github:octocat once both are
linked, and "someone else approves" means another *person*.

Linking gives each identity the roles of the others, so both sides must be proven: a global admin
vouches for them (`link`), or a person proves the second one with a one-time code (`start_link` from
where they are signed in, `redeem_link_code` where the other identity is: a PR comment, the dashboard's
GitHub sign-in).  Codes are random, live 15 minutes, are used once, are bound to the one subject they
were issued for, and only their SHA-256 is stored; they never reach a log line or the audit log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets as pysecrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, identity, validation
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identity import Actor
from storage import models

CODE_TTL = dt.timedelta(minutes=15)
# Crockford's base32 without look-alikes: 12 characters are 60 bits, typed as XXXX-XXXX-XXXX.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_CHARS = 12
# One message for an unknown, expired, used or misdirected code: a wrong guess learns nothing.
BAD_CODE = "this link code is not valid: it may be mistyped, used, expired, or meant for another account"
MAX_SUBJECTS = 20


def normalize(subject: str, *, field: str = "subject") -> str:
    """A valid subject; GitHub logins are case-insensitive, so github: subjects are lower-cased."""
    subject = validation.subject(subject.strip(), field=field)
    kind, _, name = subject.partition(":")
    # Checked again: lower-casing can lengthen a string ("İ" becomes two characters).
    return validation.subject(f"{kind}:{name.lower()}", field=field) if kind == "github" else subject


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _canonical_code(code: str) -> str:
    # People retype codes: case, dashes and spaces do not matter.
    return "".join(c for c in code.upper() if c not in "- \t")


async def subjects_of(session: AsyncSession, *, subject: str) -> list[str]:
    """Every subject of `subject`'s person (just [subject] when it has none), in one statement."""
    mine = select(models.Identity.person_id).where(models.Identity.subject == subject).scalar_subquery()
    rows = await session.scalars(select(models.Identity.subject).where(models.Identity.person_id == mine))
    found = sorted(set(rows) | {subject})
    return found


async def person_key(session: AsyncSession, *, subject: str) -> str:
    """ "person:<id>" when an identity links the subject to a person, else the subject itself."""
    person_id = await session.scalar(
        select(models.Identity.person_id).where(models.Identity.subject == subject)
    )
    return f"person:{person_id}" if person_id is not None else subject


async def person_of(session: AsyncSession, *, subject: str) -> models.Person | None:
    return await session.scalar(
        select(models.Person)
        .join(models.Identity, models.Identity.person_id == models.Person.id)
        .where(models.Identity.subject == subject)
    )


async def _identities(session: AsyncSession, *, person_id: int) -> list[models.Identity]:
    return list(
        await session.scalars(
            select(models.Identity)
            .where(models.Identity.person_id == person_id)
            .order_by(models.Identity.subject)
        )
    )


async def _link(
    session: AsyncSession, *, by: Actor, subjects: Sequence[str], verified_by: str
) -> models.Person:
    """Put `subjects` on one person; everything is checked before anything is written."""
    wanted = list(dict.fromkeys(subjects))
    rows = list(await session.scalars(select(models.Identity).where(models.Identity.subject.in_(wanted))))
    held = {r.subject: r for r in rows}
    person_ids = list(dict.fromkeys(held[s].person_id for s in wanted if s in held))
    if person_ids:
        target_id = person_ids[0]
        taken = [s for s in wanted if s in held and held[s].person_id != target_id]
        if taken:
            raise Conflict(
                f"{', '.join(taken)} already belongs to another person; a global admin must "
                "`shipit identities unlink` it first"
            )
        person = await session.get(models.Person, target_id)
        assert person is not None
    else:
        person = models.Person(name=wanted[0][:200])
        session.add(person)
        await session.flush()
    added = [s for s in wanted if s not in held]
    for s in added:
        session.add(
            models.Identity(person_id=person.id, subject=s, verified_by=verified_by, created_by=by.subject)
        )
    await session.flush()
    await audit.record(
        session,
        actor=by,
        action="identity.link",
        target=f"person/{person.id}",
        details={"subjects": wanted, "added": added, "verified_by": verified_by},
    )
    return person


def _subjects(subjects: Sequence[str]) -> list[str]:
    if len(subjects) < 2:
        raise InvalidInput(
            "link needs at least two subjects, like slack:U123 github:octocat", field="subjects"
        )
    if len(subjects) > MAX_SUBJECTS:
        raise InvalidInput(f"link at most {MAX_SUBJECTS} subjects at once", field="subjects")
    return [normalize(s, field="subjects") for s in subjects]


async def link(session: AsyncSession, *, actor: Actor, subjects: Sequence[str]) -> models.Person:
    """A global admin vouches that `subjects` are one person (people prove their own with a code)."""
    wanted = _subjects(subjects)
    identity.require_admin(actor, action="linking identities")
    return await _link(session, by=actor, subjects=wanted, verified_by="admin")


async def unlink(session: AsyncSession, *, actor: Actor, subject: str) -> models.Identity:
    """Take a subject off its person.  Admins only: someone who could split themselves in two could
    request a deploy as one half and approve it as the other."""
    subject = normalize(subject)
    identity.require_admin(actor, action="unlinking identities")
    row = await session.scalar(select(models.Identity).where(models.Identity.subject == subject))
    if row is None:
        raise NotFound(f"{subject} is not linked to anyone")
    person_id = row.person_id
    await session.delete(row)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="identity.unlink",
        target=f"person/{person_id}",
        details={"subject": subject},
    )
    return row


async def list_identities(
    session: AsyncSession, *, actor: Actor, subject: str | None = None
) -> list[models.Identity]:
    """The identities of `subject`'s person (default: the caller's); admins may ask about anyone,
    and with no subject see every link there is."""
    if subject is not None:
        subject = normalize(subject)
    if not actor.is_admin:
        if subject is not None and subject not in await subjects_of(session, subject=actor.subject):
            raise PermissionDenied("only a global admin can see another person's identities")
        subject = actor.subject
    if subject is None:
        return list(
            await session.scalars(
                select(models.Identity).order_by(models.Identity.person_id, models.Identity.subject)
            )
        )
    mine = select(models.Identity.person_id).where(models.Identity.subject == subject).scalar_subquery()
    return list(
        await session.scalars(
            select(models.Identity).where(models.Identity.person_id == mine).order_by(models.Identity.subject)
        )
    )


async def start_link(session: AsyncSession, *, actor: Actor, subject: str) -> str:
    """A one-time code that proves, once redeemed as `subject`, that the actor also controls it."""
    subject = normalize(subject)
    if actor.subject == "system" or ":" not in actor.subject:
        raise PermissionDenied("only a person can link identities")
    if subject in await subjects_of(session, subject=actor.subject):
        raise Conflict(f"{subject} is already one of your identities")
    code = "".join(pysecrets.choice(_ALPHABET) for _ in range(_CODE_CHARS))
    session.add(
        models.IdentityLinkCode(
            code_hash=_hash(code),
            requested_by=actor.subject,
            subject=subject,
            expires_at=models.utcnow() + CODE_TTL,
        )
    )
    await session.flush()
    await audit.record(
        session, actor=actor, action="identity.code", target=subject, details={"expires_in_minutes": 15}
    )
    return "-".join(code[i : i + 4] for i in range(0, _CODE_CHARS, 4))


async def _valid_code(session: AsyncSession, *, subject: str, code: str) -> models.IdentityLinkCode:
    canonical = _canonical_code(code or "")
    row = None
    if len(canonical) == _CODE_CHARS:
        row = await session.scalar(
            select(models.IdentityLinkCode).where(models.IdentityLinkCode.code_hash == _hash(canonical))
        )
    if row is None or row.used_at is not None or row.expires_at <= models.utcnow() or row.subject != subject:
        raise InvalidInput(BAD_CODE, field="code")
    return row


async def pending_link(session: AsyncSession, *, subject: str, code: str) -> str:
    """Who asked for this code (shown before the person confirms), if it is valid for `subject`."""
    row = await _valid_code(session, subject=normalize(subject), code=code)
    return row.requested_by


async def redeem_link_code(
    session: AsyncSession, *, subject: str, code: str, channel: str = "github", verified_by: str = "code"
) -> models.Person:
    """`subject` (signed in, or the author of a PR comment) presents the code: link it to whoever
    asked for it.  Refused with one message for any bad code; a used code never works again."""
    subject = normalize(subject)
    row = await _valid_code(session, subject=subject, code=code)
    by = Actor(subject=subject, channel=channel, display=subject)
    person = await _link(session, by=by, subjects=[row.requested_by, subject], verified_by=verified_by)
    row.used_at = models.utcnow()
    await session.flush()
    return person
