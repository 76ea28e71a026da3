"""The master key: a wrong key fails at start, rotation re-encrypts everything."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core import apps, keys, projects, registries, secrets
from core.identity import SYSTEM
from core.notices import delivery
from core.notices import targets as notice_targets
from shipit import runtime
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import Cipher, MasterKeyError, generate_key
from tests.conftest import ADMIN

pytestmark = pytest.mark.both_databases


async def _app_with_secret(rt: Runtime) -> None:
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme", webhook_secret="hook-secret")
        session.add(
            models.Cluster(
                name="c", kubeconfig_enc=rt.core.cipher.encrypt(b"kubeconfig", purpose="kubeconfig")
            )
        )
        await session.flush()
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="c",
            name="web",
            namespace="web",
            changes=apps.AppChanges(),
        )
        await secrets.set_values(
            session, ctx=rt.core, actor=ADMIN, app_name="web", values={"TOKEN": "s3cr3t-v4lue"}
        )


async def test_wrong_master_key_fails_loudly_at_start(rt: Runtime, settings: Settings) -> None:
    await _app_with_secret(rt)
    other = settings.model_copy(update={"master_key": SecretStr(generate_key())})
    with pytest.raises(MasterKeyError, match="wrong master key"):
        await runtime.build(other)


async def test_rotate_re_encrypts_secrets_kubeconfigs_and_webhook_secrets(
    rt: Runtime, settings: Settings
) -> None:
    await _app_with_secret(rt)
    new_key = generate_key()
    new = Cipher(key=new_key)
    async with rt.sessionmaker() as session:
        before_checksum = await secrets.checksum(session, app_id=1)
    async with rt.sessionmaker.begin() as session:
        await registries.add(
            session, ctx=rt.core, actor=SYSTEM, host="ghcr.io", username="bot", password="registry-pw"
        )
        # A notification target's signing secret (core/notices/targets.py) is rotated too.
        await notice_targets.add(
            session, ctx=rt.core, actor=ADMIN, project="acme", kind="webhook",
            address="https://hooks.example/x", secret="target-secret",
        )  # fmt: skip
    async with rt.sessionmaker.begin() as session:
        counts = await keys.rotate(session, old=rt.core.cipher, new=new)
    assert counts == {
        "secrets": 1, "secret_versions": 1, "clusters": 1, "projects": 1, "registries": 1,
        "notification_targets": 1,
    }  # fmt: skip
    async with rt.sessionmaker() as session:
        target = (await session.scalars(select(models.NotificationTarget))).one()
        assert target.secret_enc is not None
        assert new.decrypt_text(target.secret_enc, purpose=delivery.PURPOSE) == "target-secret"
    async with rt.sessionmaker() as session:
        registry = (await session.scalars(select(models.Registry))).one()
        purpose = registries.rotation_purpose(registry)
        assert new.decrypt(registry.password_enc, purpose=purpose) == b"registry-pw"
    async with rt.sessionmaker() as session:
        secret = (await session.scalars(select(models.Secret))).one()
        assert new.decrypt(secret.value_enc, purpose=secrets.PURPOSE) == b"s3cr3t-v4lue"
        with pytest.raises(MasterKeyError):
            rt.core.cipher.decrypt(secret.value_enc, purpose=secrets.PURPOSE)
        cluster = (await session.scalars(select(models.Cluster))).one()
        assert new.decrypt(cluster.kubeconfig_enc, purpose="kubeconfig") == b"kubeconfig"
        assert await secrets.checksum(session, app_id=1) != before_checksum
    # The service now starts with the new key and refuses the old one.
    restarted = await runtime.build(settings.model_copy(update={"master_key": SecretStr(new_key)}))
    await runtime.stop(restarted)
    with pytest.raises(MasterKeyError):
        await runtime.build(settings)


async def test_rotate_with_the_wrong_old_key_changes_nothing(rt: Runtime) -> None:
    await _app_with_secret(rt)
    with pytest.raises(MasterKeyError):
        async with rt.sessionmaker.begin() as session:
            await keys.rotate(session, old=Cipher(key=generate_key()), new=Cipher(key=generate_key()))
    async with rt.sessionmaker() as session:
        secret = (await session.scalars(select(models.Secret))).one()
        assert rt.core.cipher.decrypt(secret.value_enc, purpose=secrets.PURPOSE) == b"s3cr3t-v4lue"
