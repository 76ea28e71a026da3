"""The app page's Runs section: served as its own fragment (the page never waits on the cluster), from
the run history in the real database merged with the real control plane's Jobs; the same role check as
`GET /api/v1/apps/{name}/runs` (developers); a cluster that cannot be reached says so in one line."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest
from sqlalchemy import select

from core import apps, deploys, projects, runs
from core.apps import AppChanges
from storage import models
from tests.conftest import ADMIN, World
from tests.helpers import eventually
from tests.web.conftest import Dashboard, offline_app
from tests.web.test_usage import _cells, first_deploy_ends

RUN_ENDS = 120.0
EVIL = "<script>alert(1)</script>"


@pytest.mark.both_databases
async def test_the_runs_section_shows_a_finished_run_to_developers_only_escaped(
    world: World, dashboard: Dashboard
) -> None:
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
        for subject, role in (("user:vera@example.com", "viewer"), ("user:dan@example.com", "developer")):
            await projects.set_access(
                session, actor=ADMIN, project_name=world.project, subject=subject, role=role
            )
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="rival")
        await projects.set_access(session, actor=ADMIN, project_name="rival",
                                  subject="user:rita@example.com", role="owner")  # fmt: skip
        await apps.create(session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web",
                          changes=AppChanges(image="ghcr.io/acme/web:1.0"))  # fmt: skip
        await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")

    assert await first_deploy_ends(rt) == "succeeded"

    async with dashboard.client() as dan:
        page = await dashboard.sign_in(dan, "dan@example.com", next="/apps/web")
        # The page holds only the place the section goes; the runs come with the fragment.
        assert page.url.path == "/apps/web" and 'data-runs="/apps/web/runs"' in page.text
        assert 'src="/static/fragments.js"' in page.text and "runs-list" not in page.text
        empty = await dan.get("/apps/web/runs")
        assert empty.status_code == 200, empty.text
        for header in ("content-security-policy", "cache-control", "x-content-type-options"):
            assert empty.headers.get_list(header) == page.headers.get_list(header), header
        assert "<html" not in empty.text and 'data-state="now"' in empty.text
        assert re.sub(r"<[^>]+>", "", re.findall(r'data-field="runs-empty">(.*?)</p>', empty.text)[0]) == (
            "No one-off runs yet. shipit run web -- COMMAND"
        )

        # Started through core, as the API and the CLI start one; its argument is never kept.
        started = await runs.start(ctx=rt.core, actor=ADMIN, app_name="web", command=[EVIL, "--token=s3cr3t"])

        async def fragment() -> httpx.Response:
            r = await dan.get("/apps/web/runs")
            assert r.status_code == 200, r.text
            return r

        r = await eventually(fragment, lambda r: "badge ok" in r.text, timeout=RUN_ENDS, what="the run's end")
        html = r.text
        name, state, exit_code, program, actor, began, ended, took = _cells(html, "data-run", started.name)
        assert (name, state, exit_code, actor) == (started.name, "succeeded", "0", "user:admin")
        assert program == "&lt;script&gt;alert(1)&lt;/script&gt; 1 argument"
        assert began.endswith("ago") and ended.endswith("ago") and took.endswith(" s")
        assert "<script" not in html and "s3cr3t" not in html and "runs-empty" not in html
        # The ending was recorded as the fragment read it, like `shipit runs list`.
        async with rt.sessionmaker() as session:
            row = await session.scalar(select(models.Run).where(models.Run.name == started.name))
        assert row is not None and (row.status, row.exit_code) == ("succeeded", 0)

    # A viewer may not list runs through the API: no section, and the fragment refuses as the API does.
    async with dashboard.client() as vera:
        page = await dashboard.sign_in(vera, "vera@example.com", next="/apps/web")
        assert page.status_code == 200 and 'id="runs"' not in page.text and 'id="usage"' in page.text
        refused = await vera.get("/apps/web/runs")
        assert refused.status_code == 403 and "needs the developer role" in refused.text
        assert started.name not in refused.text

    # Someone with no role in the project: the fragment answers as for an app that does not exist.
    async with dashboard.client() as rita:
        await dashboard.sign_in(rita, "rita@example.com")
        hidden = await rita.get("/apps/web/runs")
        missing = await rita.get("/apps/nop/runs")
        usage_hidden = await rita.get("/apps/web/usage")
    assert hidden.status_code == missing.status_code == 404
    assert "no app named &#39;web&#39;" in hidden.text
    assert hidden.text == missing.text.replace("nop", "web") == usage_hidden.text


async def test_an_unreachable_cluster_is_one_line_above_the_history_as_recorded(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:dan@example.com": "developer"})
    async with dashboard.rt.sessionmaker.begin() as session:
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        started = models.utcnow() - dt.timedelta(minutes=3)
        # What core.runs.start records (the offline cluster could never run one): one ended, one running.
        for name, status, exit_code, finished in (
            ("web-run-aaaaaaaa", "failed", 2, started + dt.timedelta(seconds=65)),
            ("web-run-bbbbbbbb", "running", None, None),
        ):
            session.add(models.Run(app_id=app.id, environment_id=app.environment_id, name=name,
                                   actor="user:dan@example.com", program="rake", arg_count=0, revision=1,
                                   image="ghcr.io/acme/web:1.0", timeout_seconds=600, status=status,
                                   exit_code=exit_code, created_at=started, finished_at=finished))  # fmt: skip
    async with dashboard.client() as dan:
        page = await dashboard.sign_in(dan, "dan@example.com", next="/apps/web")
        assert page.status_code == 200 and 'id="runs"' in page.text  # the page does not ask the cluster
        r = await dan.get("/apps/web/runs")
    assert r.status_code == 200 and r.headers.get_list("content-security-policy") == page.headers.get_list(
        "content-security-policy"
    )
    assert 'data-state="problem"' in r.text and r.text.count('role="alert"') == 1
    assert "As last recorded" in r.text and "runs-empty" not in r.text
    failed = _cells(r.text, "data-run", "web-run-aaaaaaaa")
    assert failed[1:5] == ["failed", "2", "rake no arguments", "user:dan@example.com"]
    assert failed[7] == "1 min 5 s"
    # Not "unknown": its Job may well still run; the history says running.
    running = _cells(r.text, "data-run", "web-run-bbbbbbbb")
    assert running[1:3] == ["running", "—"] and running[6:] == ["—", "—"]


def test_what_a_run_says_is_escaped() -> None:
    """A program, a reason, an actor and the cluster's message are others' text: the template escapes them."""
    from web import channel, pages

    run = runs.RunView(name=EVIL, app="web", namespace="apps", revision=1, image=EVIL, program=EVIL,
                       state="failed", reason=EVIL, exit_code=1, actor=EVIL, args=3,
                       started_at="2026-01-01T10:00:00+00:00", finished_at="2026-01-01T12:05:00+00:00")  # fmt: skip
    web = channel.Web(config=channel.Config(providers={}, public_url="http://x"), core_of=lambda _: None)  # type: ignore[arg-type,return-value]
    html = web.templates.get_template("runs.html").render(
        app_name=EVIL, env=EVIL, runs=pages.run_rows([run]), problem=EVIL
    )
    assert "<script" not in html and html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 6
    assert _cells(html, "data-run", "&lt;script&gt;alert(1)&lt;/script&gt;")[7] == "2 h 5 min"
    empty = web.templates.get_template("runs.html").render(app_name="web", env=EVIL, runs=[], problem=None)
    assert "<script" not in empty and "--env &lt;script&gt;" in empty
