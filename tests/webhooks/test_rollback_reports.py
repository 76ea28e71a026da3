"""A failed deploy that shipit rolled back reads the same on GitHub and in the outgoing webhook."""

from __future__ import annotations

import datetime as dt

from core import events
from core.notices import webhook
from webhooks import notifier


def _view(**kw: object) -> events.DeploymentView:
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    fields: dict[str, object] = {
        "id": 7,
        "status": "failed",
        "trigger": "api",
        "actor": "user:alice",
        "image": "ghcr.io/acme/web:fail-1",
        "revision": 4,
        "namespace": "web",
        "error": "CrashLoopBackOff: back-off restarting",
        "logs": [],
        "ready": 0,
        "desired": 1,
        "queue_position": None,
        "approved_by": None,
        "git_sha": None,
        "git_ref": None,
        "created_at": now,
        "started_at": now,
        "finished_at": now,
    }
    fields.update(kw)
    return events.DeploymentView(**fields)  # type: ignore[arg-type]


def _notice(d: events.DeploymentView) -> events.Notice:
    return events.Notice(
        event_id=1,
        kind=events.DEPLOY_FAILED,
        created_at=d.created_at,
        payload={},
        project=None,
        app=None,
        deployment=d,
        preview=None,
    )


def test_the_github_status_says_failed_and_rolled_back() -> None:
    done = _view(rolled_back_by=8, rolled_back_to=3, rollback_status="succeeded")
    assert notifier.describe(done).startswith("failed, rolled back to revision 3: CrashLoopBackOff")
    going = _view(rolled_back_by=8, rolled_back_to=3, rollback_status="running")
    assert notifier.describe(going).startswith("failed, rolling back to revision 3")
    plain = _view()
    assert notifier.describe(plain).startswith("failed: CrashLoopBackOff")


def test_the_outgoing_webhook_carries_the_outcome_and_the_rollback() -> None:
    body = webhook.payload(_notice(_view(rolled_back_by=8, rolled_back_to=3, rollback_status="succeeded")))
    deployment = body["deployment"]
    assert deployment["outcome"] == "failed, rolled back to revision 3"
    assert deployment["rolled_back_by"] == 8 and deployment["rolled_back_to"] == 3
    assert webhook.payload(_notice(_view()))["deployment"]["rolled_back_by"] is None
