"""The dashboard in a real browser, on the real control plane.

Headless Chromium signs in through the fake OpenID provider, opens an app, deploys a tag and watches
the rollout reach `succeeded` without reloading (Server-Sent Events through the browser's own
EventSource), rolls back, then a second person approves a protected deploy that its requester could
not approve.  Screenshots are kept under the test's tmp dir; with SHIPIT_UPDATE_SCREENSHOTS=1 one copy
replaces docs/dashboard-app.png for the README (without it a test run leaves the tree as it was).

Selenium is synchronous and the app serves from this test's event loop, so the browser is driven from
a thread (`asyncio.to_thread`) and the thread asks the loop for database work.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from core import apps, deploys, projects
from core.apps import AppChanges
from storage import models
from tests.conftest import ADMIN, World
from tests.web.conftest import Dashboard

T = TypeVar("T")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-app.png"
ROLLOUT_SECONDS = 120


async def _setup(w: World) -> None:
    async with w.rt.sessionmaker.begin() as session:
        for who in ("alice", "bob"):
            await projects.set_access(session, actor=ADMIN, project_name=w.project,
                                      subject=f"user:{who}@example.com", role="developer")  # fmt: skip
        await apps.create(
            session, actor=ADMIN, project=w.project, cluster=w.cluster, name="web",
            changes=AppChanges(image="ghcr.io/acme/web:1.0", progress_deadline_seconds=60,
                               env={"GREETING": "<script>alert(1)</script>"}),
        )  # fmt: skip
        await deploys.request(session, ctx=w.rt.core, actor=ADMIN, app_name="web", trigger="api")


async def _deployments(w: World) -> list[models.Deployment]:
    async with w.rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Deployment).order_by(models.Deployment.id)))


async def _wait_all_done(w: World) -> None:
    for _ in range(ROLLOUT_SECONDS * 5):
        if all(d.status in deploys.TERMINAL for d in await _deployments(w)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"deploys still running: {[(d.id, d.status) for d in await _deployments(w)]}")


async def _protect(w: World) -> None:
    async with w.rt.sessionmaker.begin() as session:
        await apps.update(session, ctx=w.rt.core, actor=ADMIN, name="web", changes=AppChanges(protected=True))


async def test_deploy_watch_roll_back_and_approve_in_a_browser(
    world: World, dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    await _setup(world)
    await _wait_all_done(world)
    loop = asyncio.get_running_loop()
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def on_loop(coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=ROLLOUT_SECONDS + 30)  # type: ignore[arg-type]

    def wait(cond: Callable[[Any], Any], timeout: float = ROLLOUT_SECONDS) -> Any:
        def look(b: Any) -> Any:
            try:
                return cond(b)
            except WebDriverException as e:
                # chromedriver's own form of a stale element: a live update replaced the node
                # while it was being found. Anything else still fails the test.
                if "does not belong to the document" in str(e.msg):
                    return False
                raise

        # A form post navigates: an element read mid-navigation is stale, so look again.
        return WebDriverWait(
            browser, timeout, poll_frequency=0.2,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(look)  # fmt: skip

    def summary(field: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, f'[data-field="summary-{field}"]').text)

    def sign_in(email: str) -> None:
        dashboard.oidc.sign_in_as(email)
        browser.get(f"{dashboard.url}/apps/web")
        assert "/signin" in browser.current_url
        browser.find_element(By.LINK_TEXT, "Sign in with Single sign-on").click()
        wait(lambda b: b.current_url.endswith("/apps/web"))
        assert email in browser.find_element(By.CSS_SELECTOR, ".who").get_attribute("title")

    def mark_page() -> None:
        # Survives only as long as this document: a reload or navigation would drop it.
        browser.execute_script("window.__shipitNoReload = 'still-here';")
        wait(lambda b: b.find_element(By.ID, "rollout").get_attribute("data-live") == "on", 30)

    def same_page() -> bool:
        return browser.execute_script("return window.__shipitNoReload") == "still-here"

    def scenario() -> None:
        sign_in("alice@example.com")
        # Escaped: the env value shows as text and ran nothing.
        assert "<script>alert(1)</script>" in browser.find_element(By.TAG_NAME, "main").text
        assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
        assert summary("status") == "succeeded"
        # The Usage section arrives after the page, from its own fragment, as inert nodes.
        wait(lambda b: b.find_element(By.ID, "usage").get_attribute("data-loaded") == "yes", 30)
        assert "Per pod: CPU 100m request" in browser.find_element(By.ID, "usage-body").text
        # So does the Runs section (a developer's), by the same script.
        wait(lambda b: b.find_element(By.ID, "runs").get_attribute("data-loaded") == "yes", 30)
        assert "No one-off runs yet." in browser.find_element(By.ID, "runs-body").text
        assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
        browser.save_screenshot(str(shots / "1-app.png"))

        # Deploy a tag: the form posts (one navigation), then the rollout is watched live.
        browser.find_element(By.ID, "image").send_keys("1.1")
        browser.find_element(By.CSS_SELECTOR, 'form[action="/apps/web/deploy"] button').click()
        wait(lambda b: "ghcr.io/acme/web:1.1" in b.find_element(By.ID, "rollout").text, 30)
        first_id = summary("id")
        mark_page()
        seen: set[str] = set()

        def reached_success(b: Any) -> bool:
            seen.add(summary("status"))
            return summary("id") == first_id and summary("status") == "succeeded"

        wait(reached_success)
        assert same_page(), "the page reloaded; the rollout should arrive over SSE"
        assert summary("ready") == "1 of 1 ready"
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-deploy="{first_id[1:]}"]')
        assert "succeeded" in row.text
        browser.save_screenshot(str(shots / "2-deployed.png"))

        # Roll back to revision 1 from the revisions table (as served now that 1.1 runs).
        browser.get(f"{dashboard.url}/apps/web")
        browser.find_element(By.XPATH, "//button[normalize-space()='Roll back to 1']").click()
        wait(lambda b: summary("id") != first_id, 30)
        rollback_id = summary("id")
        mark_page()
        wait(lambda b: summary("id") == rollback_id and summary("status") == "succeeded")
        assert same_page()
        assert (
            browser.find_element(By.CSS_SELECTOR, '[data-field="summary-image"]').text
            == "ghcr.io/acme/web:1.0"
        )
        browser.save_screenshot(str(shots / "3-rolled-back.png"))

        # A protected app: Alice asks, and sees no Approve button on her own deploy.
        on_loop(_protect(world))
        browser.get(f"{dashboard.url}/apps/web")
        browser.find_element(By.ID, "image").send_keys("1.2")
        browser.find_element(By.CSS_SELECTOR, 'form[action="/apps/web/deploy"] button').click()
        wait(lambda b: summary("status") == "awaiting approval", 30)
        waiting_id = summary("id")[1:]
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-deploy="{waiting_id}"]')
        assert "waiting for someone else to approve" in row.text
        assert not row.find_elements(By.XPATH, ".//button[normalize-space()='Approve']")
        browser.save_screenshot(str(shots / "4-awaiting-approval.png"))

        # Alice signs out; Bob signs in, approves, and watches it roll out.
        browser.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
        wait(lambda b: "/signin" in b.current_url, 30)
        sign_in("bob@example.com")
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-deploy="{waiting_id}"]')
        row.find_element(By.XPATH, ".//button[normalize-space()='Approve']").click()
        wait(lambda b: summary("status") in ("queued", "running", "succeeded"), 30)
        mark_page()
        wait(lambda b: summary("id") == f"#{waiting_id}" and summary("status") == "succeeded")
        assert same_page()
        assert (
            browser.find_element(By.CSS_SELECTOR, '[data-field="app-image"]').text == "ghcr.io/acme/web:1.2"
        )
        browser.save_screenshot(str(shots / "5-approved-live.png"))
        browser.refresh()  # the revisions table as served now, for the README's picture
        browser.save_screenshot(str(shots / "6-app.png"))

        # The logs page: the pods' last lines, served as text.
        browser.find_element(By.LINK_TEXT, "Logs").click()
        wait(lambda b: b.current_url.endswith("/apps/web/logs"), 30)
        assert browser.find_element(By.ID, "logs").text.strip(), "no log lines shown"
        wait(lambda b: b.find_element(By.ID, "follow-state").text != "connecting", 30)
        browser.save_screenshot(str(shots / "6-logs.png"))

        # On a phone: nothing wider than the screen (wide tables scroll inside their own box).
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        for page in ("/apps/web", "/projects/acme", "/audit", "/tokens"):
            browser.get(dashboard.url + page)
            browser.save_screenshot(str(shots / f"7-phone{page.replace('/', '-')}.png"))
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            widest = browser.execute_script(
                "const w = document.documentElement.clientWidth;"
                "return [...document.querySelectorAll('body *')]"
                ".filter(e => !e.parentElement.closest('.scroll') && e.getBoundingClientRect().right > w + 1)"
                ".map(e => e.tagName + '.' + e.className + ':' + Math.round(e.getBoundingClientRect().width))"
                ".slice(0, 5).join(', ');"
            )
            assert overflow <= 0, f"{page} is {overflow}px wider than a phone screen: {widest}"

    await asyncio.to_thread(scenario)

    final = await _deployments(world)
    assert [(d.image, d.status, d.trigger) for d in final[1:]] == [
        ("ghcr.io/acme/web:1.1", "succeeded", "web"),
        ("ghcr.io/acme/web:1.0", "succeeded", "rollback"),
        ("ghcr.io/acme/web:1.2", "succeeded", "web"),
    ]
    assert final[-1].actor == "user:alice@example.com" and final[-1].approved_by == "user:bob@example.com"
    async with world.rt.sessionmaker() as session:
        approvals = list(
            await session.scalars(
                select(models.AuditEvent).where(models.AuditEvent.action == "deploy.approve")
            )
        )
    assert [(a.actor, a.channel) for a in approvals] == [("user:bob@example.com", "web")]
    if os.environ.get("SHIPIT_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shots / "6-app.png", DOCS_SCREENSHOT)
