"""Slack installations (one per workspace, from the OAuth install flow) on shipit's own database.

slack_sdk's AsyncSQLAlchemyInstallationStore keeps tokens in plain text; shipit
keeps every credential encrypted at rest (DESIGN.md section 7), so this subclass
encrypts the token columns with the master key on save and decrypts on read.
Token columns are widened to TEXT because ciphertext is longer than the token.
The tables are slack_sdk's own (slack_installations, slack_bots), created at
start if missing: they belong to the library's schema, not to our migrations.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import (
    AsyncSQLAlchemyInstallationStore,
    SQLAlchemyInstallationStore,
)
from sqlalchemy import MetaData, Table, Text, desc
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.crypto import Cipher

PURPOSE = "slack-token"
_PREFIX = "enc1:"
_TOKEN_COLUMNS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token")


def _widen(table: Table) -> Table:
    for name in _TOKEN_COLUMNS:
        if name in table.c:
            table.c[name].type = Text()
    return table


class EncryptedInstallationStore(AsyncSQLAlchemyInstallationStore):
    def __init__(self, *, client_id: str, engine: AsyncEngine, cipher: Cipher) -> None:
        super().__init__(client_id=client_id, engine=engine)
        self._cipher = cipher

    def __repr__(self) -> str:
        return f"EncryptedInstallationStore(client_id={self.client_id!r})"

    @classmethod
    def build_installations_table(cls, metadata: MetaData, table_name: str) -> Table:
        return _widen(SQLAlchemyInstallationStore.build_installations_table(metadata, table_name))

    @classmethod
    def build_bots_table(cls, metadata: MetaData, table_name: str) -> Table:
        return _widen(SQLAlchemyInstallationStore.build_bots_table(metadata, table_name))

    def _seal(self, value: str | None) -> str | None:
        # Idempotent: the parent's async_save calls our async_save_bot with the already sealed bot.
        if not value or value.startswith(_PREFIX):
            return value
        return _PREFIX + base64.urlsafe_b64encode(self._cipher.encrypt_text(value, purpose=PURPOSE)).decode()

    def _open(self, value: str | None) -> str | None:
        if not value or not value.startswith(_PREFIX):
            return value
        return self._cipher.decrypt_text(base64.urlsafe_b64decode(value[len(_PREFIX) :]), purpose=PURPOSE)

    def _sealed(self, obj: Any) -> Any:
        out = copy.copy(obj)
        for name in _TOKEN_COLUMNS:
            if hasattr(out, name):
                setattr(out, name, self._seal(getattr(out, name)))
        return out

    def _opened(self, obj: Any) -> Any:
        if obj is None:
            return None
        for name in _TOKEN_COLUMNS:
            if hasattr(obj, name):
                setattr(obj, name, self._open(getattr(obj, name)))
        return obj

    async def async_save(self, installation: Installation) -> None:
        await super().async_save(self._sealed(installation))

    async def async_save_bot(self, bot: Bot) -> None:
        await super().async_save_bot(self._sealed(bot))

    async def async_find_bot(
        self, *, enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None = False
    ) -> Bot | None:
        found = await super().async_find_bot(
            enterprise_id=enterprise_id, team_id=team_id, is_enterprise_install=is_enterprise_install
        )
        return self._opened(found)  # type: ignore[no-any-return]

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        # The parent may mix in the latest bot via async_find_bot (already opened); opening is idempotent.
        found = await super().async_find_installation(
            enterprise_id=enterprise_id,
            team_id=team_id,
            user_id=user_id,
            is_enterprise_install=is_enterprise_install,
        )
        return self._opened(found)  # type: ignore[no-any-return]

    async def org_wide_bot(self) -> Bot | None:
        """The bot of an org-wide (Enterprise Grid) install, which serves every workspace of its
        organisation: found under no team id.  None when no such install exists, or when installs of
        several organisations exist, since a team id alone cannot tell which of them holds it."""
        c = self.bots.c
        query = (
            self.bots.select()
            .where(c.client_id == self.client_id, c.bot_token.is_not(None), c.is_enterprise_install.is_(True))
            .order_by(desc(c.installed_at))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        if not rows or len({row["enterprise_id"] for row in rows}) > 1:
            return None
        return self._opened(SQLAlchemyInstallationStore.build_bot_entity(rows[0]))  # type: ignore[no-any-return]

    async def latest_bot(self) -> Bot | None:
        """The most recently installed bot, for projects whose channel names no workspace."""
        c = self.bots.c
        query = (
            self.bots.select()
            .where(c.client_id == self.client_id, c.bot_token.is_not(None))
            .order_by(desc(c.installed_at))
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return self._opened(SQLAlchemyInstallationStore.build_bot_entity(row))  # type: ignore[no-any-return]


__all__ = ["EncryptedInstallationStore"]
