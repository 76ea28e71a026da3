"""The app page's Usage section: served as its own fragment (the page never waits on the cluster's
Metrics API), from the real control plane's metrics-server and the stored samples in the real
database; a cluster without a Metrics API, or one that cannot be reached, says so in one line."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import select

from core import apps, deploys, projects, usage_history
from core.apps import AppChanges
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests.bot.test_statement_budget import counting
from tests.conftest import ADMIN, World, serving
from tests.fakes.oidc import FakeOidc
from tests.helpers import eventually
from tests.shipit.cluster_apps import add_cluster, bare_cluster
from tests.testenv import controlplane
from tests.web.conftest import Dashboard, offline_app

__all__ = ["bare_cluster"]  # the fixture, for pytest

ROLLOUT = 120.0
METRICS = 90.0  # a new pod has PodMetrics after metrics-server's second scrape of it
MI = 2**20


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No sampling pass of its own: the stored windows hold exactly the rows these tests write.
    return settings.model_copy(update={"usage_sample_seconds": 0})


def _cells(html: str, row_attr: str, value: str) -> list[str]:
    row = re.search(rf'<tr {row_attr}="{re.escape(value)}">(.*?)</tr>', html, re.S)
    assert row, f"no row {row_attr}={value} in {html}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]


async def first_deploy_ends(rt: Runtime) -> str:
    """How the only deploy ended, once it has (the app's pods on the real control plane)."""

    async def done() -> list[str]:
        async with rt.sessionmaker() as session:
            return list(await session.scalars(select(models.Deployment.status)))

    [ended] = await eventually(done, lambda s: s and s[0] in deploys.TERMINAL, timeout=ROLLOUT,
                               what="the deploy")  # fmt: skip
    return str(ended)


@pytest.mark.both_databases
async def test_the_usage_section_shows_the_pods_their_share_the_windows_and_a_hint(
    world: World, dashboard: Dashboard
) -> None:
    rt = world.rt
    async with rt.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name=world.project,
                                  subject="user:vera@example.com", role="viewer")  # fmt: skip
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="rival")
        await projects.set_access(session, actor=ADMIN, project_name="rival",
                                  subject="user:rita@example.com", role="owner")  # fmt: skip
        await apps.create(
            session, actor=ADMIN, project=world.project, cluster=world.cluster, name="web",
            changes=AppChanges(image="ghcr.io/acme/web:1.0", cpu_request="50m", cpu_limit="200m",
                               memory_request="64Mi", memory_limit="128Mi",
                               min_replicas=2, max_replicas=4, cpu_target=80),
        )  # fmt: skip
        await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
        app = await session.scalar(select(models.App).where(models.App.name == "web"))
        assert app is not None
        now = models.utcnow()
        # Totals over 2 pods.  The 24h peak per pod, 24.9m, is just under half the 50m request: the
        # CPU hint's edge.  Memory peaks at exactly half its request (32Mi): not under it, no hint.
        for ago, cpu, memory in (
            (dt.timedelta(minutes=5), 40.0, 64 * MI),
            (dt.timedelta(hours=3), 49.8, 60 * MI),
            (dt.timedelta(days=2), 20.0, 32 * MI),
        ):
            session.add(models.UsageSample(app_id=app.id, sampled_at=now - ago, pods=2,
                                           cpu_millicores=cpu, memory_bytes=memory))  # fmt: skip
        # An hour rolled up 20 days ago (its samples pruned since): the 30d window, after 7d.
        session.add(models.UsageHourly(
            app_id=app.id, hour=usage_history.slot_of(now - dt.timedelta(days=20), every=3600), samples=60,
            cpu_sum_millicores=60 * 30.0, cpu_peak_millicores=45.5, memory_sum_bytes=60 * 40.0 * MI,
            memory_peak_bytes=48 * MI, max_pods=3, cpu_peak_per_pod=15.2, memory_peak_per_pod=16.0 * MI,
        ))  # fmt: skip

    assert await first_deploy_ends(rt) == "succeeded"

    async with dashboard.client() as vera:
        page = await dashboard.sign_in(vera, "vera@example.com", next="/apps/web")
        # The page itself holds only the place the section goes; the figures come with the fragment.
        assert page.url.path == "/apps/web" and 'data-usage="/apps/web/usage"' in page.text
        assert 'src="/static/fragments.js"' in page.text and "usage-pods" not in page.text

        async def fragment() -> httpx.Response:
            r = await vera.get("/apps/web/usage")
            assert r.status_code == 200, r.text
            return r

        r = await eventually(fragment, lambda r: r.text.count("<tr data-pod=") == 2, timeout=METRICS,
                             what="metrics of both pods")  # fmt: skip
        html = r.text
        # The page's own security headers (CSP: no inline script, nothing from elsewhere, never framed).
        for header in ("content-security-policy", "cache-control", "x-content-type-options"):
            assert r.headers.get_list(header) == page.headers.get_list(header), header
        assert "<script" not in html and "<html" not in html
        assert "Per pod: CPU 50m request / 200m limit, memory 64Mi / 128Mi (revision 1)." in html
        pods = re.findall(r'<tr data-pod="([^"]+)">', html)
        for pod in pods:
            assert pod.startswith("web-")
            _, cpu, cpu_share, memory, memory_share = _cells(html, "data-pod", pod)
            # Memory is exact; CPU a rate over two scrapes (off by well under 1 %): 20m of 50m/200m.
            assert float(cpu.removesuffix("m")) == pytest.approx(20.0, rel=0.01)
            assert [float(x.strip().removesuffix("%")) for x in cpu_share.split("/")] == [
                pytest.approx(40.0, abs=0.5), pytest.approx(10.0, abs=0.2)]  # fmt: skip
            assert (memory, memory_share) == ("32.0Mi", "50% / 25%")
        total = re.sub(
            r"\s+", " ", re.sub(r"<[^>]+>", "", html.split('data-field="usage-total">')[1].split("</p>")[0])
        )
        assert total.startswith("2 pods · CPU ") and "memory 64.0Mi (50% of requests, 25% of limits)" in total
        assert "Autoscaling 2 to 4 pods at 80% of the CPU request; now 4" in html  # 40 % or so

        # The stored windows, shortest first, and the hint at its edge.
        assert _cells(html, "data-window", "1h") == ["1h", "1", "40m", "40m", "64.0Mi", "64.0Mi", "2"]
        assert _cells(html, "data-window", "24h") == ["24h", "2", "44.9m", "49.8m", "62.0Mi", "64.0Mi", "2"]
        assert _cells(html, "data-window", "7d") == ["7d", "3", "36.6m", "49.8m", "52.0Mi", "64.0Mi", "2"]
        assert _cells(html, "data-window", "30d") == ["30d", "60", "30m", "45.5m", "40.0Mi", "48.0Mi", "3"]
        assert re.findall(r'<tr data-window="([^"]+)">', html) == ["1h", "24h", "7d", "30d"]
        hints = re.findall(r'<li data-field="usage-hint">(.*?)</li>', html)
        assert hints == [
            "Hint: CPU: requests 50m per pod, 24h peak 25m per pod (50m at most in total): "
            "requests could be lowered"
        ]

        # Someone with no role in the project: the fragment answers as for an app that does not exist.
        async with dashboard.client() as rita:
            await dashboard.sign_in(rita, "rita@example.com")
            hidden = await rita.get("/apps/web/usage")
            missing = await rita.get("/apps/nop/usage")
        assert hidden.status_code == missing.status_code == 404
        assert "no app named &#39;web&#39;" in hidden.text
        assert hidden.text == missing.text.replace("nop", "web")


async def test_an_unreachable_cluster_is_a_note_not_an_error_page(dashboard: Dashboard) -> None:
    await offline_app(dashboard.rt, members={"user:alice@example.com": "viewer"})
    async with dashboard.client() as client:
        page = await dashboard.sign_in(client, "alice@example.com", next="/apps/web")
        assert page.status_code == 200 and 'id="usage"' in page.text  # the page does not ask the cluster
        r = await client.get("/apps/web/usage")
        assert r.status_code == 200 and r.headers.get_list(
            "content-security-policy"
        ) == page.headers.get_list("content-security-policy")
        assert 'data-state="problem"' in r.text and r.text.count('role="alert"') == 1
        assert "No stored samples yet." in r.text


# What the fragment costs on SQLite today (a regression guard, as tests/bot/test_statement_budget.py):
# the session, the read cache's stamp (app, role, project, environment), the cluster, the windows.
FRAGMENT_BUDGET = 4


async def test_the_fragment_stays_within_its_statement_budget(
    rt: Runtime, fake_oidc: FakeOidc, web_port: int
) -> None:
    from shipit.main import create_app

    await offline_app(rt, members={"user:alice@example.com": "viewer"})
    # No worker and no maintenance loop (runtime not started): only the request uses the database.
    async with serving(create_app(rt=rt), port=web_port) as url:
        dashboard = Dashboard(url=url, rt=rt, oidc=fake_oidc)
        async with dashboard.client() as client:
            await dashboard.sign_in(client, "alice@example.com")
            assert (await client.get("/apps/web/usage")).status_code == 200  # warm: the read cache filled
            with counting(rt) as statements:
                assert (await client.get("/apps/web/usage")).status_code == 200
    listed = "\n".join(f"  {i + 1:2}. {s}" for i, s in enumerate(statements))
    assert len(statements) <= FRAGMENT_BUDGET, (
        f"{len(statements)} statements (budget {FRAGMENT_BUDGET}):\n{listed}"
    )


async def test_a_cluster_without_a_metrics_api_is_one_plain_line(
    dashboard: Dashboard, bare_cluster: controlplane.ControlPlane
) -> None:
    rt = dashboard.rt
    await add_cluster(rt, bare_cluster, project="acme")
    async with rt.sessionmaker.begin() as session:
        await projects.set_access(session, actor=ADMIN, project_name="acme",
                                  subject="user:vera@example.com", role="viewer")  # fmt: skip
        await apps.create(session, actor=ADMIN, project="acme", cluster="bare", name="web",
                          changes=AppChanges(image="ghcr.io/acme/web:1.0"))  # fmt: skip
    async with dashboard.client() as vera:
        await dashboard.sign_in(vera, "vera@example.com")
        r = await vera.get("/apps/web/usage")
    assert r.status_code == 200, r.text
    notes = re.findall(r'<p class="muted" data-field="usage-note">(.*?)</p>', r.text)
    assert len(notes) == 1 and "this cluster has no Metrics API (metrics.k8s.io" in notes[0]
    assert 'role="alert"' not in r.text and "usage-pods" not in r.text


def test_what_the_cluster_says_is_escaped() -> None:
    """Pod names and the cluster's messages are the cluster's text: the template escapes them."""
    from core import usage, usage_history
    from web import channel

    evil = '<img src=x onerror="alert(1)">'
    per_pod = usage.Allocation(cpu_request="100m", cpu_limit="500m", memory_request="128Mi",
                               memory_limit="256Mi", cpu_request_millicores=100.0, cpu_limit_millicores=500.0,
                               memory_request_bytes=128 * MI, memory_limit_bytes=256 * MI)  # fmt: skip
    history = usage_history.History(windows=[], hints=[evil])
    plan = usage.Plan(app="web", project="acme", environment="production", namespace="apps", cluster_id=1,
                      kubeconfig="", revision=1, per_pod=per_pod, autoscaling=None, history=history)  # fmt: skip
    figures = usage.figures(cpu_millicores=20.0, memory_bytes=32 * MI, allocation=per_pod)
    now = usage.AppUsage(app="web", project="acme", environment="production", namespace="apps", revision=1,
                         per_pod=per_pod, autoscaling=None, total=figures, history=history,
                         pods=[usage.PodUsage(pod=evil, usage=figures, window="10s", timestamp="")])  # fmt: skip
    web = channel.Web(config=channel.Config(providers={}, public_url="http://x"), core_of=lambda _: None)  # type: ignore[arg-type,return-value]
    html = web.templates.get_template("usage.html").render(
        plan=plan, now=now, note=evil, problem=evil, max_pods=channel.USAGE_PODS_SHOWN
    )
    assert "<img" not in html and html.count("&lt;img src=x onerror=&#34;alert(1)&#34;&gt;") == 5

    # The autoscaling line says the scale-down window only when one is set (else Kubernetes' 300 s).
    for window, said in ((45, "Scales down after 45 s."), (None, None)):
        scaling = usage.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=50,
                                    scale_down_window_seconds=window)  # fmt: skip
        html = web.templates.get_template("usage.html").render(
            plan=plan, now=replace(now, autoscaling=scaling), note=None, problem=None, max_pods=1
        )
        line = re.search(r'<p data-field="usage-hpa">(.*?)</p>', html)
        assert line is not None and line.group(1).startswith(
            "Autoscaling 1 to 3 pods at 50% of the CPU request"
        )
        assert line.group(1).endswith(said) if said else "Scales down" not in line.group(1)
