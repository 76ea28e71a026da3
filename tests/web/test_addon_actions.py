"""Creating and destroying add-ons from the app page, over HTTP: core decides who may, the CSRF token is
checked first, and a refusal leaves nothing behind."""

from __future__ import annotations

import re

from markupsafe import escape
from sqlalchemy import func, select

from core import addons, projects
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN
from tests.web.conftest import Dashboard, csrf_of, offline_app

MEMBERS = {
    "user:dev@example.com": "developer",
    "user:alice@example.com": "admin",
    "user:vera@example.com": "viewer",
}


async def _listed(rt: Runtime) -> dict[str, str]:
    """Core's list of web's add-ons, read as an admin: kind -> recorded state."""
    async with rt.sessionmaker() as session:
        _, rows = await addons.rows_for(session, ctx=rt.core, actor=ADMIN, app_name="web")
        return {a.kind: a.state for a in rows}


async def _count(rt: Runtime, model: type[models.Base], *where: object) -> int:
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _main(page: str) -> str:
    found = re.search(r"<main.*?</main>", page, re.S)
    assert found
    return found.group(0)


async def test_a_developer_creates_an_addon_from_the_form_and_a_second_of_a_kind_is_a_conflict(
    dashboard: Dashboard,
) -> None:
    await offline_app(dashboard.rt, members=MEMBERS)
    async with dashboard.client() as dev:
        page = await dashboard.sign_in(dev, "dev@example.com", next="/apps/web")
        assert 'action="/apps/web/addons"' in page.text
        assert "/addons/" not in page.text  # no Destroy for a developer
        done = await dev.post(
            "/apps/web/addons", data={"kind": "postgres", "plan": "medium", "csrf": csrf_of(page.text)}
        )
        assert done.status_code == 200 and done.url.path == "/apps/web"
        row = re.search(r'<tr data-addon="postgres">.*?</tr>', done.text, re.S)
        assert row and "medium" in row.group(0) and "provisioning" in row.group(0)
        assert await _listed(dashboard.rt) == {"postgres": "provisioning"}
        assert await _count(dashboard.rt, models.Job, models.Job.kind == addons.PROVISION_JOB) == 1
        async with dashboard.rt.sessionmaker() as session:
            audit = (
                await session.scalars(
                    select(models.AuditEvent).where(models.AuditEvent.action == "addon.create")
                )
            ).one()
        assert audit.channel == "web" and audit.target == "app/web"
        assert audit.details["kind"] == "postgres" and audit.details["plan"] == "medium"

        again = await dev.post("/apps/web/addons", data={"kind": "postgres", "csrf": csrf_of(page.text)})
        assert again.status_code == 409
        message = "kind: web already has a postgres add-on (provisioning); destroy it first"
        assert str(escape(message)) in again.text
        assert await _count(dashboard.rt, models.Addon) == 1
        assert await _count(dashboard.rt, models.Job, models.Job.kind == addons.PROVISION_JOB) == 1


async def test_forged_or_missing_csrf_and_a_viewer_create_nothing(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members=MEMBERS)
    async with dashboard.client() as dev:
        await dashboard.sign_in(dev, "dev@example.com", next="/apps/web")
        missing = await dev.post("/apps/web/addons", data={"kind": "postgres"})
        assert missing.status_code == 403 and "security token" in missing.text
        forged = await dev.post("/apps/web/addons", data={"kind": "postgres", "csrf": "x" * 43})
        assert forged.status_code == 403 and "security token" in forged.text
    async with dashboard.client() as viewer:
        page = await dashboard.sign_in(viewer, "vera@example.com", next="/apps/web")
        assert 'action="/apps/web/addons"' not in page.text
        refused = await viewer.post("/apps/web/addons", data={"kind": "redis", "csrf": csrf_of(page.text)})
        assert (
            refused.status_code == 403
            and "creating add-ons in project acme needs the developer role" in refused.text
        )
    assert await _count(dashboard.rt, models.Addon) == 0
    assert await _count(dashboard.rt, models.Job, models.Job.kind == addons.PROVISION_JOB) == 0
    assert await _count(dashboard.rt, models.AuditEvent, models.AuditEvent.action == "addon.create") == 0


async def test_no_role_in_the_project_gets_what_a_missing_app_gets(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members=MEMBERS)
    async with dashboard.rt.sessionmaker.begin() as session:
        await addons.create(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web", kind="redis")
        await projects.create(session, ctx=dashboard.rt.core, actor=ADMIN, name="beta")
        await projects.set_access(
            session, actor=ADMIN, project_name="beta", subject="user:eve@example.com", role="owner"
        )
    async with dashboard.client() as eve:
        page = await dashboard.sign_in(eve, "eve@example.com")
        token = csrf_of(page.text)
        for path, data in (
            ("/apps/{}/addons", {"kind": "postgres"}),
            ("/apps/{}/addons/redis/destroy", {"delete_data": "on"}),
        ):
            hidden = await eve.post(path.format("web"), data={**data, "csrf": token})
            absent = await eve.post(path.format("nosuch"), data={**data, "csrf": token})
            assert hidden.status_code == absent.status_code == 404
            assert _main(hidden.text).replace("web", "APP") == _main(absent.text).replace("nosuch", "APP")
    assert await _listed(dashboard.rt) == {"redis": "provisioning"}
    assert await _count(dashboard.rt, models.AuditEvent, models.AuditEvent.action.like("addon.%")) == 1


async def test_an_admin_destroys_and_a_developer_may_not(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members=MEMBERS)
    async with dashboard.rt.sessionmaker.begin() as session:
        await addons.create(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web", kind="postgres")
    async with dashboard.client() as dev:
        page = await dashboard.sign_in(dev, "dev@example.com", next="/apps/web")
        refused = await dev.post("/apps/web/addons/postgres/destroy", data={"csrf": csrf_of(page.text)})
        assert (
            refused.status_code == 403
            and "destroying add-ons in project acme needs the admin role" in refused.text
        )
    assert await _listed(dashboard.rt) == {"postgres": "provisioning"}
    assert await _count(dashboard.rt, models.Job, models.Job.kind == addons.DESTROY_JOB) == 0

    async with dashboard.client() as alice:
        page = await dashboard.sign_in(alice, "alice@example.com", next="/apps/web")
        form = re.search(r'<form[^>]*action="/apps/web/addons/postgres/destroy".*?</form>', page.text, re.S)
        assert form is not None
        checkbox = re.search(r'<input type="checkbox"[^>]*name="delete_data"[^>]*>', form.group(0))
        assert checkbox is not None and "checked" not in checkbox.group(0)  # the data is kept unless asked
        # A browser leaves an unticked checkbox out of the form: the data is kept.
        done = await alice.post("/apps/web/addons/postgres/destroy", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 200 and done.url.path == "/apps/web"
    assert await _listed(dashboard.rt) == {"postgres": "deleting"}
    assert await _count(dashboard.rt, models.Job, models.Job.kind == addons.DESTROY_JOB) == 1
    async with dashboard.rt.sessionmaker() as session:
        audit = (
            await session.scalars(
                select(models.AuditEvent).where(models.AuditEvent.action == "addon.destroy")
            )
        ).one()
        addon = (await session.scalars(select(models.Addon))).one()
    assert audit.channel == "web" and audit.details["delete_data"] is False and addon.delete_data is False


async def test_delete_data_ticked_is_passed_to_core(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members=MEMBERS)
    async with dashboard.rt.sessionmaker.begin() as session:
        await addons.create(session, ctx=dashboard.rt.core, actor=ADMIN, app_name="web", kind="redis")
    async with dashboard.client() as alice:
        page = await dashboard.sign_in(alice, "alice@example.com", next="/apps/web")
        done = await alice.post(
            "/apps/web/addons/redis/destroy", data={"delete_data": "on", "csrf": csrf_of(page.text)}
        )
        assert done.status_code == 200
    async with dashboard.rt.sessionmaker() as session:
        addon = (await session.scalars(select(models.Addon))).one()
    assert addon.state == "deleting" and addon.delete_data is True
