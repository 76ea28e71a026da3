"""The master key: checked at start (a wrong key fails loudly) and rotated by re-encrypting everything."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import clusters, projects, registries, secrets
from core.notices import delivery
from storage import models
from storage.crypto import Cipher, MasterKeyError

_CHECK = "master_key_check"
_CHECK_PURPOSE = "key-check"
_CHECK_VALUE = b"shipit master key check"


async def verify(session: AsyncSession, *, cipher: Cipher) -> None:
    """Raise MasterKeyError if the database was written under another key; remember the key if new."""
    row = await session.get(models.Meta, _CHECK)
    if row is None:
        session.add(models.Meta(key=_CHECK, value=cipher.encrypt(_CHECK_VALUE, purpose=_CHECK_PURPOSE)))
        return
    if cipher.decrypt(row.value, purpose=_CHECK_PURPOSE) != _CHECK_VALUE:
        raise MasterKeyError("master key check value does not match")


async def rotate(session: AsyncSession, *, old: Cipher, new: Cipher) -> dict[str, int]:
    """Re-encrypt every secret, kubeconfig, webhook secret and registry password under `new`, in one transaction."""
    await verify(session, cipher=old)
    counts = {"secrets": 0, "secret_versions": 0, "clusters": 0, "projects": 0, "registries": 0}
    for s in await session.scalars(select(models.Secret)):
        plain = old.decrypt(s.value_enc, purpose=secrets.PURPOSE)
        s.value_enc = new.encrypt(plain, purpose=secrets.PURPOSE)
        s.digest = new.digest(s.key.encode() + b"\0" + plain)
        counts["secrets"] += 1
    # Each secrets version holds the whole map as one blob; its checksum stays (values did not change).
    for v in await session.scalars(select(models.SecretVersion)):
        plain = old.decrypt(v.data_enc, purpose=secrets.VERSION_PURPOSE)
        v.data_enc = new.encrypt(plain, purpose=secrets.VERSION_PURPOSE)
        counts["secret_versions"] += 1
    for c in await session.scalars(select(models.Cluster)):
        c.kubeconfig_enc = new.encrypt(
            old.decrypt(c.kubeconfig_enc, purpose=clusters.PURPOSE), purpose=clusters.PURPOSE
        )
        counts["clusters"] += 1
    for p in await session.scalars(
        select(models.Project).where(models.Project.webhook_secret_enc.is_not(None))
    ):
        assert p.webhook_secret_enc is not None
        purpose = projects._PURPOSE_WEBHOOK
        p.webhook_secret_enc = new.encrypt(
            old.decrypt(p.webhook_secret_enc, purpose=purpose), purpose=purpose
        )
        counts["projects"] += 1
    # Notification targets' secrets (signing keys of webhooks), under the same purpose as the column.
    counts["notification_targets"] = 0
    for t in await session.scalars(
        select(models.NotificationTarget).where(models.NotificationTarget.secret_enc.is_not(None))
    ):
        assert t.secret_enc is not None
        purpose = delivery.PURPOSE
        t.secret_enc = new.encrypt(old.decrypt(t.secret_enc, purpose=purpose), purpose=purpose)
        counts["notification_targets"] += 1
    for r in await session.scalars(select(models.Registry)):
        purpose = registries.rotation_purpose(r)
        r.password_enc = new.encrypt(old.decrypt(r.password_enc, purpose=purpose), purpose=purpose)
        counts["registries"] += 1
    row = await session.get(models.Meta, _CHECK)
    assert row is not None
    row.value = new.encrypt(_CHECK_VALUE, purpose=_CHECK_PURPOSE)
    return counts
