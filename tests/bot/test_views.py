"""Block Kit shapes of the deploy card and the replies: what each state shows and which buttons it has."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from bot import views
from core import events, status

T0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def deployment(**kw: Any) -> events.DeploymentView:
    base: dict[str, Any] = {
        "id": 12,
        "status": "queued",
        "trigger": "slack",
        "actor": "slack:U0ALICE",
        "image": "ghcr.io/acme/web:1.4",
        "revision": 4,
        "namespace": "web-prod",
        "error": None,
        "logs": [],
        "ready": 0,
        "desired": 0,
        "queue_position": 1,
        "approved_by": None,
        "git_sha": None,
        "git_ref": None,
        "created_at": T0,
        "started_at": None,
        "finished_at": None,
    }
    base.update(kw)
    return events.DeploymentView(**base)


def app_view(**kw: Any) -> events.AppView:
    base: dict[str, Any] = {
        "id": 1,
        "name": "web",
        "namespace": "web-prod",
        "cluster": "prod",
        "image": "ghcr.io/acme/web:1.4",
        "protected": False,
        "auto_deploy_paused": False,
        "paused_reason": None,
        "git_repo": None,
        "github_environment": None,
    }
    base.update(kw)
    return events.AppView(**base)


PROJECT = events.ProjectView(id=1, name="acme", slack_channel="C0DEPLOYS", webhook_url=None)


def render(d: events.DeploymentView, app: events.AppView | None = None) -> views.Message:
    return views.card(deployment=d, app=app or app_view(), project=PROJECT)


def all_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def buttons(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for block in blocks:
        if block["type"] == "actions":
            for element in block["elements"]:
                found[element["action_id"]] = element
    return found


def assert_valid_block_kit(message: views.Message) -> None:
    """The limits Slack rejects a message for (invalid_blocks)."""
    assert message.text
    assert 0 < len(message.blocks) <= 50
    for block in message.blocks:
        assert block["type"] in ("section", "actions", "context", "divider", "header")
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] in ("mrkdwn", "plain_text")
                assert 0 < len(block["text"]["text"]) <= 3000
            for f in block.get("fields", []):
                assert len(f["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        if block["type"] == "actions":
            ids = [e["action_id"] for e in block["elements"]]
            assert len(ids) == len(set(ids)) and len(ids) <= 25
            for e in block["elements"]:
                assert e["type"] == "button"
                assert len(e["value"]) <= 2000
                assert len(e["text"]["text"]) <= 75
                assert e.get("style") in (None, "primary", "danger")
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10


def test_queued_card_shows_position_and_a_cancel_button() -> None:
    msg = render(deployment(status="queued", queue_position=3))
    assert_valid_block_kit(msg)
    text = all_text(msg.blocks)
    assert "is queued" in text and "Position 3 in the queue" in text
    assert set(buttons(msg.blocks)) == {views.ACTION_CANCEL}
    assert views.parse_button_value(buttons(msg.blocks)[views.ACTION_CANCEL]["value"]) == (12, "web")
    assert "<@U0ALICE>" in text  # who asked
    assert "deploy #12" in text and "project acme" in text
    assert msg.text == "web ghcr.io/acme/web:1.4: queued (deploy #12)"


def test_next_in_line() -> None:
    assert "Next in line" in all_text(render(deployment(status="queued", queue_position=1)).blocks)


def test_awaiting_approval_has_approve_and_reject() -> None:
    msg = render(deployment(status="awaiting_approval", queue_position=None), app_view(protected=True))
    assert_valid_block_kit(msg)
    found = buttons(msg.blocks)
    assert set(found) == {views.ACTION_APPROVE, views.ACTION_REJECT}
    assert found[views.ACTION_APPROVE]["style"] == "primary"
    assert found[views.ACTION_REJECT]["style"] == "danger"
    assert "someone other than <@U0ALICE>" in all_text(msg.blocks)


def test_awaiting_more_approvals_names_who_approved_so_far() -> None:
    waiting = deployment(status="awaiting_approval", queue_position=None, approvals=0, approvals_needed=3)
    assert "0 of 3 approvals." in all_text(render(waiting, app_view(protected=True)).blocks)
    two = dataclasses.replace(waiting, approvals=2, approvers=("slack:U0BOB", "github:carol"))
    msg = render(two, app_view(protected=True))
    assert_valid_block_kit(msg)
    assert "2 of 3 approvals: <@U0BOB>, carol (GitHub)." in all_text(msg.blocks)
    assert set(buttons(msg.blocks)) == {views.ACTION_APPROVE, views.ACTION_REJECT}  # still waiting


def test_rolling_out_shows_ready_over_desired_and_no_buttons() -> None:
    msg = render(deployment(status="running", ready=1, desired=3, started_at=T0, queue_position=None))
    assert_valid_block_kit(msg)
    text = all_text(msg.blocks)
    assert "rolling out" in text and "1/3 pods ready" in text
    assert buttons(msg.blocks) == {}
    assert "rolling out (1/3 ready)" in msg.text


def test_succeeded_shows_duration_revision_who_and_roll_back() -> None:
    d = deployment(
        status="succeeded",
        ready=3,
        desired=3,
        started_at=T0,
        finished_at=T0 + dt.timedelta(seconds=95),
        approved_by="slack:U0BOB",
        queue_position=None,
    )
    msg = render(d)
    assert_valid_block_kit(msg)
    text = all_text(msg.blocks)
    assert "is live on" in text
    assert "Took 1m 35s" in text and "revision 4" in text and "by <@U0ALICE>" in text
    assert "approved by <@U0BOB>" in text
    rollback = buttons(msg.blocks)[views.ACTION_ROLLBACK]
    assert set(buttons(msg.blocks)) == {views.ACTION_ROLLBACK}
    assert rollback["confirm"]["confirm"]["text"] == "Roll back"


def test_failed_shows_the_reason_and_points_at_the_thread() -> None:
    d = deployment(
        status="failed",
        error="CrashLoopBackOff: back-off restarting failed container",
        logs=["boom"],
        queue_position=None,
    )
    msg = render(d)
    assert_valid_block_kit(msg)
    text = all_text(msg.blocks)
    assert "failed" in text and "CrashLoopBackOff: back-off restarting failed container" in text
    assert "last log lines are in the thread" in text
    assert set(buttons(msg.blocks)) == {views.ACTION_ROLLBACK}


@pytest.mark.parametrize("state", ["cancelled", "superseded"])
def test_ended_without_running_has_no_buttons(state: str) -> None:
    msg = render(deployment(status=state, error=f"{state} by someone", queue_position=None))
    assert_valid_block_kit(msg)
    assert buttons(msg.blocks) == {}
    assert f"{state} by someone" in all_text(msg.blocks)


def test_rollback_card_and_paused_auto_deploy() -> None:
    d = deployment(
        status="succeeded", trigger="rollback", started_at=T0, finished_at=T0, revision=7, queue_position=None
    )
    app = app_view(auto_deploy_paused=True, paused_reason="rolled back to revision 5 by alice")
    msg = render(d, app)
    text = all_text(msg.blocks)
    assert "rolled back to" in text
    assert "Auto-deploy is paused: rolled back to revision 5 by alice" in text
    assert "/shipit resume web" in text
    assert msg.text.endswith("rolled back (deploy #12)")


def test_people_supplied_text_is_escaped() -> None:
    d = deployment(status="failed", error="<!channel> & <@U999> look", queue_position=None)
    app = app_view(auto_deploy_paused=True, paused_reason="<!here> paused")
    text = all_text(render(d, app).blocks)
    assert "<!channel>" not in text and "<!here>" not in text and "<@U999>" not in text
    assert "&lt;!channel&gt; &amp; &lt;@U999&gt; look" in text


def test_failure_thread_keeps_the_last_lines_within_limits() -> None:
    logs = [f"line {i} " + "x" * 200 for i in range(100)]
    d = deployment(status="failed", error="CrashLoopBackOff: exit 1", logs=logs, queue_position=None)
    msg = views.failure_thread(deployment=d, app_name="web")
    assert_valid_block_kit(msg)
    text = all_text(msg.blocks)
    assert "line 99" in text  # the end of the log is what explains a crash
    assert "line 0 " not in text
    assert "CrashLoopBackOff: exit 1" in text


def test_failure_thread_without_logs() -> None:
    msg = views.failure_thread(deployment=deployment(status="failed", error="Timeout"), app_name="web")
    assert len(msg.blocks) == 1 and "Timeout" in msg.blocks[0]["text"]["text"]


def test_who_and_durations() -> None:
    assert views.who("slack:U1") == "<@U1>"
    assert views.who("github:octocat") == "octocat (GitHub)"
    assert views.who("user:alice") == "alice"
    assert views.who(None) == "someone"
    assert views.duration(5) == "5s"
    assert views.duration(125) == "2m 05s"
    assert views.duration(3 * 3600 + 60) == "3h 01m"


def test_channel_refs() -> None:
    assert views.channel_ref("C0DEPLOYS") == "<#C0DEPLOYS>"
    assert views.channel_ref("#deploys") == "#deploys"
    assert views.channel_ref("T0TEAM/C0DEPLOYS") == "<#C0DEPLOYS>"
    assert views.split_channel("T0TEAM/C0DEPLOYS") == ("T0TEAM", "C0DEPLOYS")
    assert views.split_channel("C0DEPLOYS") == (None, "C0DEPLOYS")


def test_long_help_is_split_into_sections_slack_accepts() -> None:
    msg = views.help_message("\n".join(f"line {i} <app> " + "y" * 100 for i in range(200)))
    assert "<app>" not in all_text(msg.blocks) and "&lt;app&gt;" in all_text(msg.blocks)
    assert_valid_block_kit(msg)
    assert len(msg.blocks) > 1


def test_button_values_round_trip_and_foreign_values_are_refused() -> None:
    value = views.button_value(deployment_id=42, app="api")
    assert views.parse_button_value(value) == (42, "api")
    with pytest.raises((ValueError, KeyError)):
        views.parse_button_value("not json")
    with pytest.raises((ValueError, KeyError)):
        views.parse_button_value('{"x": 1}')


def test_status_overview_says_how_many_more() -> None:
    msg = views.status_overview([], more=0)
    assert "no apps" in msg.text
    st = status.AppStatus(
        app="web", project="acme", cluster="prod", namespace="apps", image="ghcr.io/acme/web:1", locked="x (alice)",
        paused=None, current=None, active=[],
    )  # fmt: skip
    msg = views.status_overview([st], more=5)
    assert_valid_block_kit(msg)
    text = all_text(msg.blocks)
    assert "*web* (acme): not deployed, :lock: locked" in text
    assert "…and 5 more" in text and "&lt;app&gt;" in text


def _where(message: views.Message) -> str:
    [fields] = [b["fields"] for b in message.blocks if b["type"] == "section" and "fields" in b]
    [where] = [f["text"] for f in fields if f["text"].startswith("*Where*")]
    return str(where)


def test_where_names_the_environment_only_when_the_project_has_several() -> None:
    several = render(deployment(), app_view(environment="staging", environments=2))
    assert _where(several) == "*Where*\n*staging* · prod / `web-prod`"
    only = render(deployment(), app_view(environment="production", environments=1))
    assert _where(only) == "*Where*\nprod / `web-prod`"
    assert "production" not in all_text(only.blocks)


def test_app_list_shows_each_rows_environment() -> None:
    from storage import models

    def row(id: int, ns: str, **kw: Any) -> models.App:
        base: dict[str, Any] = {"protected": False, "locked_reason": None, "auto_deploy_paused": False}
        return models.App(id=id, name="web", image="ghcr.io/acme/web:1.4", namespace=ns, **{**base, **kw})

    rows = [row(1, "web-stg"), row(2, "web-prod", protected=True)]
    text = views.app_list(rows, environments={1: "staging", 2: "<production>"}).text
    assert "• *web* · staging `ghcr.io/acme/web:1.4` in `web-stg`" in text
    # An environment name is escaped like everything else shown.
    assert "• *web* · &lt;production&gt; `ghcr.io/acme/web:1.4` in `web-prod` (protected)" in text


def test_status_of_an_hpa_without_metrics_yet_does_not_say_it_wants_zero_pods() -> None:
    from core.kube import rules

    hpa = rules.autoscaler_of({
        "spec": {"minReplicas": 1, "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"averageUtilization": 50}}},
        ]},
        "status": {"currentReplicas": 1, "desiredReplicas": 0},  # the controller's syncs before metrics
    })  # fmt: skip
    live = rules.DeploymentStatus(
        image="ghcr.io/acme/web:1", revision="1", desired=1, ready=1, updated=1, available=1, generation=1,
        observed_generation=1, conditions=[], autoscaler=hpa,
    )  # fmt: skip
    st = status.AppStatus(
        app="web", project="acme", cluster="prod", namespace="apps", image="ghcr.io/acme/web:1", locked=None,
        paused=None, current=None, active=[], live=live,
    )  # fmt: skip
    text = views.app_status(st).text
    assert (
        "• autoscaler: 1 pods, no scaling decision yet (min 1, max 3); CPU not measured yet (target 50%)"
        in text
    )
    assert "wants 0" not in text
