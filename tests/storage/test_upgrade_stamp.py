"""A migration that changed anything changes the read cache's stamp (replicas of the previous version,
still running during a rolling upgrade, must not answer from copies of rows it moved); a start with
nothing to migrate leaves it alone."""

from __future__ import annotations

from pathlib import Path

from core import readcache
from shipit.runtime import upgrade_database
from storage import db, migrate


async def test_an_upgrade_that_migrated_changes_the_stamp_and_one_that_did_not_keeps_it(
    tmp_path: Path,
) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'shipit.db'}")
    try:
        await migrate.upgrade(engine, revision="0011")
        # A replica of the previous version reads (and would copy rows under) this stamp.
        await readcache.bump(engine)
        seen_by_old_replica = await readcache.read_version_outside(engine)
        assert seen_by_old_replica

        head = await upgrade_database(engine)
        assert head is not None and head != "0011" and head == await migrate.current(engine)
        after_migrating = await readcache.read_version_outside(engine)
        assert after_migrating != seen_by_old_replica

        assert await upgrade_database(engine) == head  # the next replica: nothing to do
        assert await readcache.read_version_outside(engine) == after_migrating
    finally:
        await engine.dispose()
