"""bench.replicas' end-of-run check: it must catch a lost, a doubled or an unanswered deployment.

On a real PostgreSQL database (the bench's own preparation: migrations, project, apps, token) with
deployments requested through core, as the replicas' requests make them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import replicas
from core import deploys
from core.identity import Actor
from shipit import runtime
from shipit.settings import Settings
from storage.crypto import generate_key
from tests.conftest import POSTGRES_URL

pytestmark = [
    pytest.mark.skipif(not POSTGRES_URL, reason="needs SHIPIT_TEST_POSTGRES_URL"),
    pytest.mark.parametrize("db_backend", ["postgres"], indirect=True),
]
CI = Actor(subject=replicas.SUBJECT, channel="api")


async def _requested(db_url: str, tmp_path: Path, *, per_app: int) -> list[int]:
    env = {
        "SHIPIT_DATABASE_URL": db_url,
        "SHIPIT_DATA_DIR": str(tmp_path / "var"),
        "SHIPIT_MASTER_KEY": generate_key(),
    }
    await replicas.prepare(env, apps_n=2)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        data_dir=tmp_path / "var",
        master_key=env["SHIPIT_MASTER_KEY"],  # type: ignore[arg-type]
        run_worker=False,
    )
    rt = await runtime.build(settings, migrate_db=False)
    rt.core.notifiers.clear()
    ids = []
    try:
        for n in range(per_app):
            for app in ("app-000", "app-001"):
                async with rt.sessionmaker.begin() as session:
                    result = await deploys.request(
                        session,
                        ctx=rt.core,
                        actor=CI,
                        app_name=app,
                        image=f"ghcr.io/acme/{app}:{n}",
                        trigger="api",
                    )
                ids.append(result.deployment.id)
    finally:
        await runtime.stop(rt)
    return ids


async def test_the_check_passes_when_every_answer_matches_a_stored_deployment(
    db_url: str, tmp_path: Path
) -> None:
    ids = await _requested(db_url, tmp_path, per_app=3)
    ok, summary = await replicas.check_database(db_url, ids)
    assert ok, summary
    assert "6 deployments stored = 6 answered over 2 apps" in summary


async def test_the_check_fails_on_a_lost_a_doubled_or_an_unanswered_deployment(
    db_url: str, tmp_path: Path
) -> None:
    ids = await _requested(db_url, tmp_path, per_app=2)
    unanswered, summary = await replicas.check_database(db_url, ids[:-1])
    assert not unanswered
    assert "1 unanswered" in summary
    lost, summary = await replicas.check_database(db_url, [*ids, max(ids) + 100])
    assert not lost
    assert "1 lost" in summary
    doubled, summary = await replicas.check_database(db_url, [*ids, ids[0]])
    assert not doubled
    assert "1 ids answered twice" in summary


async def test_the_check_fails_when_an_apps_newest_deployment_is_not_the_queued_one(
    db_url: str, tmp_path: Path
) -> None:
    import asyncpg

    ids = await _requested(db_url, tmp_path, per_app=2)
    conn = await asyncpg.connect(replicas._asyncpg_dsn(db_url))
    try:
        # Two queued deploys of one app: a supersede that did not happen.
        await conn.execute("UPDATE deployments SET status = 'queued' WHERE id = $1", min(ids))
    finally:
        await conn.close()
    ok, summary = await replicas.check_database(db_url, ids)
    assert not ok
    assert "1 apps not 'newest queued, rest superseded'" in summary
