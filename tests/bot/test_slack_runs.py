"""`/shipit runs APP`: the newest one-off runs, read only, over the Slack HTTP harness against the real
control plane (kwok ends a run's pod Succeeded): the role check and the history before the ack, the
cluster's Jobs after it; developers only, like `GET /api/v1/apps/{name}/runs`."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bot import commands, views
from core import runs
from tests.bot.conftest import (
    ALICE,
    CAROL,
    MALLORY,
    SlackSender,
    actor,
    deployed_web,
    response_with,
    web_on_a_closed_port,
)
from tests.conftest import World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually

ROLLOUT = 120.0
RUN_ENDS = 120.0
EVIL = "<script>*bold*<!channel>"
EVIL_SHOWN = "&lt;script&gt;*bold*&lt;!channel&gt;"


async def _follow_ups(fake: FakeSlack) -> list[str]:
    return [r["text"] for r in fake.responses() if r.get("replace_original")]


async def _answer(fake_slack: FakeSlack, needle: str) -> dict[str, Any] | None:
    return response_with(fake_slack, needle)


def test_runs_parses_and_is_in_help() -> None:
    assert commands.parse("runs WEB") == commands.Runs(app="web")
    assert commands.parse("runs web env=Staging") == commands.Runs(app="web", env="staging")
    assert commands.parse("runs web --env staging") == commands.Runs(app="web", env="staging")
    with pytest.raises(commands.UsageError, match="`runs` needs an app name"):
        commands.parse("runs")
    with pytest.raises(commands.UsageError, match="does not take `cancel`"):
        commands.parse("runs web cancel")
    assert "/shipit runs <app> [env=<env>]` — the app's newest 10 one-off runs" in commands.help_text()


@pytest.mark.both_databases
async def test_slack_runs_lists_a_finished_run_to_developers_escaped(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack
) -> None:
    rt = kube_world.rt
    await deployed_web(kube_world, timeout=ROLLOUT)

    # None yet: the answer after the ack says how to start one.
    reply = await slack.command("runs web", user=ALICE)
    assert "Reading the one-off runs of *web*" in reply["text"], reply
    empty = await eventually(lambda: _answer(fake_slack, "No one-off runs"), what="the empty answer")
    assert empty["text"] == "No one-off runs for web yet. Start one with `shipit run web -- COMMAND`."
    assert empty["replace_original"] is True and empty["response_type"] == "ephemeral"

    # Started through core, as the API and the CLI start one; its argument is never kept nor shown.
    started = await runs.start(
        ctx=rt.core, actor=actor(ALICE), app_name="web", command=[EVIL, "--token=s3cr3t"]
    )
    line = (
        f"• `{started.name}` *succeeded* (exit 0): `{EVIL_SHOWN}` and 1 argument, by <@{ALICE.id}>, started "
    )

    async def listed() -> dict[str, Any] | None:
        found = response_with(fake_slack, line)
        if found is None:
            await slack.command("runs web", user=ALICE)
        return found

    answer = await eventually(listed, timeout=RUN_ENDS, interval=2.0, what="the run's end in the list")
    text = answer["text"]
    assert text.startswith("*One-off runs of web* (newest first):\n"), text
    assert ", took " in text.split(line)[1].splitlines()[0], text
    assert "<script" not in text and "<!channel>" not in text and "s3cr3t" not in text

    # A viewer gets what viewers get from any developer-only command.
    refused = await slack.command("runs web", user=CAROL)
    deploy = await slack.command("deploy web 1.1", user=CAROL)
    assert "needs the developer role; you have viewer" in refused["text"], refused
    assert refused["text"] == deploy["text"].replace("deploying", "reading one-off runs"), (refused, deploy)
    assert started.name not in refused["text"]

    # Someone with no role in the project is told what a missing app gets.
    hidden = await slack.command("runs web", user=MALLORY)
    missing = await slack.command("runs nop", user=MALLORY)
    usage = await slack.command("usage web", user=MALLORY)
    assert hidden["text"] == missing["text"].replace("nop", "web") == usage["text"], (hidden, missing)


def test_what_a_run_says_is_escaped() -> None:
    """A program, a run name and an actor are others' text: escaped, so nothing pings or links."""
    run = runs.RunView(name=EVIL, app="web", namespace="apps", revision=1, image=EVIL, program=EVIL,
                       state="failed", reason=EVIL, exit_code=2, actor=f"user:{EVIL}", args=0,
                       started_at="2026-01-01T10:00:00+00:00", finished_at="2026-01-01T12:05:00+00:00")  # fmt: skip
    text = views.run_list(EVIL, [run], env="staging").text
    assert "<" not in text and text.count(EVIL_SHOWN) == 5, text
    assert (
        f"• `{EVIL_SHOWN}` *failed* (exit 2): `{EVIL_SHOWN}` and 0 arguments, by {EVIL_SHOWN}, "
        "started 2026-01-01 10:00 UTC, took 2h 05m"
    ) in text
    assert "--env staging" in text
    # Still running: no exit code and no duration yet.
    running = views.run_list("web", [runs.RunView(name="web-run-a", app="web", namespace="apps", revision=1,
                                                  image="i", program="rake", state="running",
                                                  started_at="2026-01-01T10:00:00+00:00")]).text  # fmt: skip
    assert "• `web-run-a` *running*: `rake`, by someone, started 2026-01-01 10:00 UTC\n" in running


async def test_a_cluster_not_reached_is_the_error_reply_of_other_cluster_reads(
    slack: SlackSender, offline: World, fake_slack: FakeSlack
) -> None:
    await web_on_a_closed_port(offline.rt)
    said: list[str] = []
    for text in ("runs web", "usage web"):
        reply = await slack.command(text, user=ALICE)
        assert ":warning:" not in reply["text"], reply  # the role check passed; the cluster comes after
        found = await eventually(
            lambda: _follow_ups(fake_slack), lambda f: len(f) == len(said) + 1, what=f"{text}'s follow-up"
        )
        said.append(found[-1])
    # What was asked differs (Jobs, pod metrics); what went wrong and how it is said do not.
    shape = re.compile(r"^:warning: .+ in apps: (cluster unreachable: .+) \(reference [0-9a-f]+\)$")
    matched = [shape.match(text) for text in said]
    assert matched[0] and matched[1], said
    assert matched[0].group(1) == matched[1].group(1), said
