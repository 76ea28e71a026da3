"""`/shipit diff`: parsed, answered at once, and followed by the difference the real control plane gave."""

from __future__ import annotations

from typing import Any

import pytest

from bot import commands
from tests.bot.conftest import ALICE, CAROL, SlackSender, deployed_web, deployments, response_with
from tests.conftest import World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually

ROLLOUT = 120.0


def test_diff_parses() -> None:
    assert commands.parse("diff web 1.6") == commands.Diff(app="web", image="1.6")
    assert commands.parse("diff WEB ghcr.io/acme/web:2") == commands.Diff(
        app="web", image="ghcr.io/acme/web:2"
    )
    assert commands.parse("diff web") == commands.Diff(app="web", image=None)
    with pytest.raises(commands.UsageError) as err:
        commands.parse("diff")
    assert "`diff` needs an app name" in str(err.value) and "/shipit diff <app>" in str(err.value)
    with pytest.raises(commands.UsageError):
        commands.parse("diff web 1.6 now")
    assert "diff <app> [image|tag]" in commands.help_text()


async def test_slack_diff_answers_with_the_difference_and_changes_nothing(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack
) -> None:
    rt = kube_world.rt
    first = await deployed_web(kube_world, timeout=ROLLOUT)

    reply = await slack.command("diff web 1.6", user=ALICE)
    assert "Comparing *web* `ghcr.io/acme/web:1.6` with the cluster (dry run)" in reply["text"], reply
    needle = (
        "Deployment/web spec.template.spec.containers[0].image: ghcr.io/acme/web:1.0 → ghcr.io/acme/web:1.6"
    )

    async def difference() -> dict[str, Any] | None:
        return response_with(fake_slack, needle)

    answer = await eventually(difference, timeout=ROLLOUT, what="the difference")
    assert answer["replace_original"] is True
    assert "Nothing was changed" in answer["text"]
    assert [d.id for d in await deployments(rt)] == [first]

    # A viewer may not deploy, so may not ask what a deploy would do either.
    reply = await slack.command("diff web 1.6", user=CAROL)
    assert "deploying in project acme needs the developer role; you have viewer" in reply["text"]
