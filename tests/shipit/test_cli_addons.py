"""`shipit addons` against the live server, on the `offline` cluster row (no API server behind it):
the commands, their output and errors; nothing is provisioned, so list says it could not ask."""

from __future__ import annotations

from sqlalchemy import select

from storage import models
from tests.conftest import LiveServer
from tests.shipit.test_cli import Run, ok, one_error_line, table
from tests.shipit.test_cli import shipit as shipit  # the fixture


async def test_addons_commands(live_server: LiveServer, shipit: Run, offline: str) -> None:
    ok(await shipit("apps", "create", "web", "--project", "acme", "--cluster", "offline", "--no-deploy"))
    out = ok(await shipit("addons", "create", "web", "postgres", "--plan", "medium"))
    assert "postgres add-on of web (medium): provisioning" in out and "DATABASE_URL" in out
    error = one_error_line(await shipit("addons", "create", "web", "postgres"))
    assert "already has a postgres add-on" in error
    assert "plan" in one_error_line(await shipit("addons", "create", "web", "redis", "--plan", "huge"))

    rows = table(ok(await shipit("addons", "list", "web")))
    assert rows[0] == ["KIND", "PLAN", "STATE", "SECRET", "DETAIL"]
    assert rows[1][:4] == ["postgres", "medium", "provisioning", "DATABASE_URL"]
    assert rows[1][4].startswith("cluster not reached")  # said, not guessed

    # The app cannot be deleted from under its database.
    assert "destroy it first" in one_error_line(await shipit("apps", "delete", "web", "--yes"))

    assert "not destroyed" in one_error_line(await shipit("addons", "destroy", "web", "postgres"), code=1)
    out = ok(await shipit("addons", "destroy", "web", "postgres", "--delete-data", "--yes"))
    assert "postgres add-on of web (medium): deleting" in out
    async with live_server.rt.sessionmaker() as session:
        addon = await session.scalar(select(models.Addon))
        assert addon is not None and addon.delete_data and addon.state == "deleting"
        assert b"postgres" not in addon.password_enc  # stored encrypted
    assert "has no redis add-on" in one_error_line(await shipit("addons", "destroy", "web", "redis", "-y"))
