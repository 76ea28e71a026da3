"""App secrets: write-only, encrypted at rest, injected as one Kubernetes Secret per app.

No function here returns a value to a caller outside core; `values_for_deploy`
is used only to render the Secret the worker applies.  Audit rows and errors
carry keys, never values.

Secrets are versioned: every set/unset writes a new `secret_versions` row holding the whole map
(encrypted as one blob) and moves `apps.secrets_version` to it.  A revision names the version it
runs with, so a rollback restores the secret values too.  The `secrets` table stays the "latest"
view (one row per key) that `secrets list` reads and the next version starts from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, readcache, validation
from core.context import Core
from core.errors import InvalidInput, PermanentError
from core.identity import SYSTEM, Actor, Role
from storage import models

PURPOSE = "app-secret"
VERSION_PURPOSE = "app-secret-version"
VERSIONS_KEPT = 10
MAX_VALUE_BYTES = 64 * 1024
EMPTY_CHECKSUM = hashlib.sha256().hexdigest()  # what `checksum` says for no secrets


async def set_values(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    values: dict[str, str],
    env: str | None = None,
) -> models.App:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="setting secrets")
    if not values:
        raise InvalidInput("give at least one KEY=VALUE", field="values")
    await ensure_version(session, ctx=ctx, app=app)
    existing = {
        s.key: s for s in await session.scalars(select(models.Secret).where(models.Secret.app_id == app.id))
    }
    changed: list[str] = []
    for key, value in values.items():
        validation.secret_key(key, field="values")
        raw = value.encode()
        if len(raw) > MAX_VALUE_BYTES:
            raise InvalidInput(f"secret {key} is larger than {MAX_VALUE_BYTES} bytes", field=key)
        if _put(session, ctx=ctx, app=app, row=existing.get(key), key=key, raw=raw):
            changed.append(key)
    await _versioned(
        session, ctx=ctx, app=app, actor=actor, action="secrets.set", changed=bool(changed),
        details={"keys": sorted(values), "changed": sorted(changed)},
    )  # fmt: skip
    return app


async def unset(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, keys: list[str], env: str | None = None
) -> list[str]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.ADMIN, action="deleting secrets")
    if not keys:
        raise InvalidInput("give at least one KEY", field="keys")
    for key in keys:
        validation.secret_key(key, field="keys")
    rows = list(
        await session.scalars(
            select(models.Secret).where(models.Secret.app_id == app.id, models.Secret.key.in_(keys))
        )
    )
    missing = sorted(set(keys) - {r.key for r in rows})
    if missing:
        raise InvalidInput(f"{app.name} has no secret {', '.join(missing)}", field="keys")
    await ensure_version(session, ctx=ctx, app=app)
    for row in rows:
        await session.delete(row)
    await _versioned(
        session, ctx=ctx, app=app, actor=actor, action="secrets.delete", details={"keys": sorted(keys)}
    )
    return sorted(keys)


def digest_of(ctx: Core, *, key: str, value: str) -> str:
    """The keyed digest a secret row holds for this value: compares values without decrypting."""
    return _digest(ctx, key=key, raw=value.encode())


def _digest(ctx: Core, *, key: str, raw: bytes) -> str:
    return ctx.cipher.digest(key.encode() + b"\0" + raw)


def _put(
    session: AsyncSession, *, ctx: Core, app: models.App, row: models.Secret | None, key: str, raw: bytes
) -> bool:
    """Store `raw` as the app's `key` (`row`: its row now, if any); False when it holds this value already."""
    digest = _digest(ctx, key=key, raw=raw)
    if row is not None and row.digest == digest:
        return False
    enc = ctx.cipher.encrypt(raw, purpose=PURPOSE)
    if row is None:
        session.add(models.Secret(app_id=app.id, key=key, value_enc=enc, digest=digest))
    else:
        row.value_enc, row.digest = enc, digest
    return True


async def _versioned(
    session: AsyncSession,
    *,
    ctx: Core,
    app: models.App,
    actor: Actor,
    action: str,
    details: dict[str, Any],
    changed: bool = True,
) -> None:
    """A change's end: flushed, a new secrets version when anything changed, and its audit row."""
    await session.flush()
    if changed:
        await _write_version(session, ctx=ctx, app=app, actor=actor)
    await audit.record(
        session,
        actor=actor,
        action=action,
        target=f"app/{app.name}",
        project_id=app.project_id,
        details=details,
    )


async def value_digest(session: AsyncSession, *, app_id: int, key: str) -> str | None:
    """The digest of an app's secret `key`, None when it has none."""
    return await session.scalar(
        select(models.Secret.digest).where(models.Secret.app_id == app_id, models.Secret.key == key)
    )


async def put_managed(
    session: AsyncSession, *, ctx: Core, actor: Actor, app: models.App, key: str, value: str, via: str
) -> bool:
    """Set one secret shipit generated itself (an add-on's connection string); the caller has checked
    permission for what it does.  False (nothing written) when the key already holds this value."""
    await ensure_version(session, ctx=ctx, app=app)
    row = await session.scalar(
        select(models.Secret).where(models.Secret.app_id == app.id, models.Secret.key == key)
    )
    if not _put(session, ctx=ctx, app=app, row=row, key=key, raw=value.encode()):
        return False
    await _versioned(
        session, ctx=ctx, app=app, actor=actor, action="secrets.set",
        details={"keys": [key], "changed": [key], "by": via},
    )  # fmt: skip
    return True


async def remove_managed(
    session: AsyncSession, *, ctx: Core, actor: Actor, app: models.App, key: str, digest: str, via: str
) -> bool:
    """Remove one secret shipit generated, only while it still holds what shipit put there (`digest`):
    a value someone set since is theirs and stays.  False when nothing was removed."""
    row = await session.scalar(
        select(models.Secret).where(models.Secret.app_id == app.id, models.Secret.key == key)
    )
    if row is None or row.digest != digest:
        return False
    await ensure_version(session, ctx=ctx, app=app)
    await session.delete(row)
    await _versioned(
        session, ctx=ctx, app=app, actor=actor, action="secrets.delete", details={"keys": [key], "by": via}
    )
    return True


async def list_keys(
    session: AsyncSession, *, actor: Actor, app_name: str, env: str | None = None
) -> list[models.Secret]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
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


async def _latest_values(session: AsyncSession, *, ctx: Core, app_id: int) -> dict[str, str]:
    rows = await session.scalars(select(models.Secret).where(models.Secret.app_id == app_id))
    return {r.key: ctx.cipher.decrypt(r.value_enc, purpose=PURPOSE).decode() for r in rows}


def _encrypt_map(ctx: Core, values: dict[str, str]) -> bytes:
    return ctx.cipher.encrypt(json.dumps(values, sort_keys=True).encode(), purpose=VERSION_PURPOSE)


def _decrypt_map(ctx: Core, blob: bytes) -> dict[str, str]:
    data = json.loads(ctx.cipher.decrypt(blob, purpose=VERSION_PURPOSE))
    return {str(k): str(v) for k, v in data.items()}


async def _write_version(session: AsyncSession, *, ctx: Core, app: models.App, actor: Actor) -> int:
    """A new version holding the latest view's whole map; the app's new revisions take it."""
    values = await _latest_values(session, ctx=ctx, app_id=app.id)
    top = await session.scalar(
        select(func.max(models.SecretVersion.version)).where(models.SecretVersion.app_id == app.id)
    )
    number = int(top or 0) + 1
    session.add(
        models.SecretVersion(
            app_id=app.id,
            version=number,
            data_enc=_encrypt_map(ctx, values),
            checksum=await checksum(session, app_id=app.id),
            keys=sorted(values),
            created_by=actor.subject,
        )
    )
    app.secrets_version = number
    await session.flush()
    await prune_versions(session, app=app, keep=VERSIONS_KEPT)
    return number


async def ensure_version(session: AsyncSession, *, ctx: Core, app: models.App) -> int:
    """The app's secrets version; an app whose secrets predate versions gets version 1 from its rows."""
    if app.secrets_version:
        return app.secrets_version

    async def probe() -> bool:
        q = select(models.Secret.id).where(models.Secret.app_id == app.id).limit(1)
        return (await session.scalar(q)) is not None

    if not await readcache.value(session, ("app.has_secrets", app.id), probe):
        return 0
    return await _write_version(session, ctx=ctx, app=app, actor=SYSTEM)


async def _version(session: AsyncSession, *, app_id: int, version: int) -> models.SecretVersion | None:
    return await session.scalar(
        select(models.SecretVersion).where(
            models.SecretVersion.app_id == app_id, models.SecretVersion.version == version
        )
    )


async def for_deploy(
    session: AsyncSession, *, ctx: Core, app_id: int, version: int | None
) -> tuple[dict[str, str], str]:
    """The values and checksum a revision renders: its own version's (None: a revision from before versions)."""
    if version is None:
        return await _latest_values(session, ctx=ctx, app_id=app_id), await checksum(session, app_id=app_id)
    if version == 0:
        return {}, EMPTY_CHECKSUM
    row = await _version(session, app_id=app_id, version=version)
    if row is None:
        raise PermanentError(f"secrets version {version} of this app no longer exists")
    return _decrypt_map(ctx, row.data_enc), row.checksum


async def checksum_for_deploy(session: AsyncSession, *, app_id: int, version: int | None) -> str:
    """The checksum `for_deploy` gives, for a revision's record: nothing decrypted, and a version's
    checksum read once per process and cache stamp (issue 13: a deploy request of an app with
    secrets read and decrypted its whole version).  Safe to keep: a version row never changes, and
    the versions a request can ask for (the app's own, or a kept revision's) are never pruned."""
    if version is None:  # a revision from before versions: the latest values'
        return await checksum(session, app_id=app_id)
    if version == 0:
        return EMPTY_CHECKSUM

    async def load() -> str | None:
        return await session.scalar(
            select(models.SecretVersion.checksum).where(
                models.SecretVersion.app_id == app_id, models.SecretVersion.version == version
            )
        )

    found = await readcache.value(session, ("secrets.version_checksum", app_id, version), load)
    if found is None:
        raise PermanentError(f"secrets version {version} of this app no longer exists")
    return found


async def values_for_deploy(session: AsyncSession, *, ctx: Core, app_id: int) -> dict[str, str]:
    return await _latest_values(session, ctx=ctx, app_id=app_id)


async def restore(session: AsyncSession, *, ctx: Core, app: models.App, version: int | None) -> None:
    """Make `version` the latest view again (after a rollback or a failed change): rows and pointer."""
    if version is None or version == app.secrets_version:
        return
    values: dict[str, str] = {}
    if version:
        row = await _version(session, app_id=app.id, version=version)
        if row is None:
            return  # pruned: keep what the latest view says
        values = _decrypt_map(ctx, row.data_enc)
    for old in await session.scalars(select(models.Secret).where(models.Secret.app_id == app.id)):
        await session.delete(old)
    await session.flush()
    for key, value in values.items():
        raw = value.encode()
        session.add(
            models.Secret(
                app_id=app.id,
                key=key,
                value_enc=ctx.cipher.encrypt(raw, purpose=PURPOSE),
                digest=ctx.cipher.digest(key.encode() + b"\0" + raw),
            )
        )
    app.secrets_version = version
    await session.flush()


async def prune_versions_of(session: AsyncSession, *, apps: list[models.App], keep: int) -> None:
    """`prune_versions` for several apps: which of them hold more than `keep` versions, in one
    SELECT (issue 13: a batch prunes the revisions of many apps at once; most hold few versions)."""
    if len(apps) == 1:
        await prune_versions(session, app=apps[0], keep=keep)
        return
    v = models.SecretVersion
    ranked = (
        select(v.app_id, func.row_number().over(partition_by=v.app_id, order_by=v.version.desc()).label("n"))
        .where(v.app_id.in_([a.id for a in apps]))
        .subquery()
    )
    crowded = set(await session.scalars(select(ranked.c.app_id).where(ranked.c.n > keep).distinct()))
    for app in apps:
        if app.id in crowded:
            await prune_versions(session, app=app, keep=keep)


async def prune_versions(session: AsyncSession, *, app: models.App, keep: int) -> None:
    """Keep the newest `keep` versions, the app's own, and every one a kept revision runs with."""
    old = list(
        await session.scalars(
            select(models.SecretVersion.version)
            .where(models.SecretVersion.app_id == app.id)
            .order_by(models.SecretVersion.version.desc())
            .offset(keep)
        )
    )
    if not old:
        return
    referenced = set(
        await session.scalars(
            select(models.Revision.secrets_version).where(
                models.Revision.app_id == app.id, models.Revision.secrets_version.is_not(None)
            )
        )
    )
    doomed = [v for v in old if v not in referenced and v != app.secrets_version]
    for row in await session.scalars(
        select(models.SecretVersion).where(
            models.SecretVersion.app_id == app.id, models.SecretVersion.version.in_(doomed)
        )
    ):
        await session.delete(row)
