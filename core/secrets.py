"""App secrets: write-only, encrypted at rest, injected as one Kubernetes Secret per app.

No function here returns a value to a caller outside core; `values_for_deploy`
is used only to render the Secret the worker applies.  Audit rows and errors
carry keys, never values.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, validation
from core.context import Core
from core.errors import InvalidInput
from core.identity import Actor, Role
from storage import models

PURPOSE = "app-secret"
MAX_VALUE_BYTES = 64 * 1024


async def set_values(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, values: dict[str, str]
) -> models.App:
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="setting secrets")
    if not values:
        raise InvalidInput("give at least one KEY=VALUE", field="values")
    existing = {
        s.key: s for s in await session.scalars(select(models.Secret).where(models.Secret.app_id == app.id))
    }
    changed: list[str] = []
    for key, value in values.items():
        validation.env_key(key, field="key")
        raw = value.encode()
        if len(raw) > MAX_VALUE_BYTES:
            raise InvalidInput(f"secret {key} is larger than {MAX_VALUE_BYTES} bytes", field=key)
        digest = ctx.cipher.digest(key.encode() + b"\0" + raw)
        row = existing.get(key)
        if row is not None and row.digest == digest:
            continue
        enc = ctx.cipher.encrypt(raw, purpose=PURPOSE)
        if row is None:
            session.add(models.Secret(app_id=app.id, key=key, value_enc=enc, digest=digest))
        else:
            row.value_enc, row.digest = enc, digest
        changed.append(key)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="secrets.set",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"keys": sorted(values), "changed": sorted(changed)},
    )
    return app


async def unset(session: AsyncSession, *, actor: Actor, app_name: str, keys: list[str]) -> list[str]:
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="deleting secrets")
    if not keys:
        raise InvalidInput("give at least one KEY", field="keys")
    rows = list(
        await session.scalars(
            select(models.Secret).where(models.Secret.app_id == app.id, models.Secret.key.in_(keys))
        )
    )
    missing = sorted(set(keys) - {r.key for r in rows})
    if missing:
        raise InvalidInput(f"{app.name} has no secret {', '.join(missing)}", field="keys")
    for row in rows:
        await session.delete(row)
    await session.flush()
    await audit.record(
        session,
        actor=actor,
        action="secrets.delete",
        target=f"app/{app.name}",
        project_id=app.project_id,
        details={"keys": sorted(keys)},
    )
    return sorted(keys)


async def list_keys(session: AsyncSession, *, actor: Actor, app_name: str) -> list[models.Secret]:
    app = await apps.get(session, actor=actor, name=app_name)
    await apps.authorize(session, actor=actor, app=app, role=Role.VIEWER, action="listing secrets")
    return list(
        await session.scalars(
            select(models.Secret).where(models.Secret.app_id == app.id).order_by(models.Secret.key)
        )
    )


async def checksum(session: AsyncSession, *, app_id: int) -> str:
    """Changes whenever any secret changes; computed from keyed digests, no decryption needed."""
    rows = await session.execute(
        select(models.Secret.key, models.Secret.digest)
        .where(models.Secret.app_id == app_id)
        .order_by(models.Secret.key)
    )
    h = hashlib.sha256()
    for key, digest in rows.all():
        h.update(f"{key}\0{digest}\n".encode())
    return h.hexdigest()


async def values_for_deploy(session: AsyncSession, *, ctx: Core, app_id: int) -> dict[str, str]:
    rows = await session.scalars(select(models.Secret).where(models.Secret.app_id == app_id))
    return {r.key: ctx.cipher.decrypt(r.value_enc, purpose=PURPOSE).decode() for r in rows}
