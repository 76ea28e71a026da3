"""`shipit apps update --build ...`, `shipit builds list` and `shipit builds logs` against the real
service over HTTP (the build itself: tests/webhooks/test_builds.py)."""

from __future__ import annotations

import json

from sqlalchemy import select

from core import apps, builds, gitops
from shipit.runtime import Runtime
from storage import models
from tests.conftest import ADMIN, LiveServer
from tests.shipit.test_cli import Run, ok, one_error_line, shipit, table

__all__ = ["shipit"]  # the fixture, used by name

SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


async def _queue_build(rt: Runtime, *, log: str, sha: str = SHA, pr_number: int | None = None) -> int:
    """A push's build (or a pull request's), queued by core as the webhook queues it, with a log to show."""
    async with rt.sessionmaker.begin() as session:
        app = await apps.get(session, actor=ADMIN, name="web")
        queued = await builds.queue(
            session,
            ctx=rt.core,
            app=app,
            actor=gitops.github_actor("octocat"),
            sha=sha,
            ref="refs/heads/main",
            pr_number=pr_number,
        )
        queued.build.status, queued.build.error, queued.build.log = builds.FAILED, "buildah bud failed", log
        return queued.build.id


async def test_cli_turns_builds_on_and_reads_them(live_server: LiveServer, shipit: Run, offline: str) -> None:
    ok(
        await shipit(
            "apps", "create", "web", "--no-deploy", "--git-repo", "acme/web", "--image", "ghcr.io/acme/web:1",
            "--image-template", "ghcr.io/acme/web:{sha}",
        )
    )  # fmt: skip
    line = one_error_line(await shipit("apps", "update", "web", "--build"))
    assert "build_image" in line and "registry.acme.dev/acme/web" in line
    line = one_error_line(
        await shipit("apps", "update", "web", "--build", "--build-image", "r.acme.dev/web:1")
    )
    assert "without a tag" in line
    ok(
        await shipit(
            "apps", "update", "web", "--build", "--build-image", "registry.acme.dev/acme/web",
            "--build-context", "services/web",
        )
    )  # fmt: skip
    shown = json.loads(ok(await shipit("apps", "show", "web", "--json")))
    assert shown["git"]["build"] == {"context": "services/web", "image": "registry.acme.dev/acme/web"}
    async with live_server.rt.sessionmaker() as session:
        audit = await session.scalar(
            select(models.AuditEvent)
            .where(models.AuditEvent.action == "app.update")
            .order_by(models.AuditEvent.id.desc())
        )
    assert audit is not None and audit.details["build_enabled"] is True

    assert "web has no builds yet" in ok(await shipit("builds", "list", "web"))
    build_id = await _queue_build(
        live_server.rt, log="--> pack dockerfile\nCOPY failed: no such file missing.txt\n"
    )
    rows = table(ok(await shipit("builds", "list", "web")))
    assert rows[0][:4] == ["ID", "STATUS", "SHA", "PACK"]
    assert rows[1][:3] == [str(build_id), "failed", SHA[:7]]
    # A pull request's preview build names its pull request.
    pr_build = await _queue_build(live_server.rt, log="", sha="c0ffee" * 6 + "c0ff", pr_number=7)
    rows = table(ok(await shipit("builds", "list", "web")))
    assert rows[0][6] == "PR" and (rows[1][0], rows[1][6]) == (str(pr_build), "#7") and rows[2][6] == ""
    logs = ok(await shipit("builds", "logs", "web", str(build_id)))
    assert logs.splitlines() == [
        f"build #{build_id} of {SHA[:7]} (refs/heads/main): failed",
        "--> pack dockerfile",
        "COPY failed: no such file missing.txt",
        "error: buildah bud failed",
    ]
    assert "web has no build #999" in one_error_line(await shipit("builds", "logs", "web", "999"))
    ok(await shipit("apps", "update", "web", "--no-build"))
    assert json.loads(ok(await shipit("apps", "show", "web", "--json")))["git"]["build"] is None
