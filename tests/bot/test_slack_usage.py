"""`/shipit usage APP`: parsed, listed in help, answered at once, then followed by what the app's pods use
as the real control plane's Metrics API measured it (metrics-server scraping kwok's simulated usage)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from sqlalchemy import select

from bot import commands
from shipit.settings import Settings
from storage import models
from tests.bot.conftest import CAROL, MALLORY, SlackSender, deployed_web, response_with
from tests.conftest import World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually

ROLLOUT = 120.0
METRICS = 90.0  # a new pod has metrics after metrics-server's second scrape of it (10 s apart)
MI = 2**20


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No sampling pass of the runtime's own: the history shown is the samples this test writes.
    return settings.model_copy(update={"usage_sample_seconds": 0})


def test_usage_parses_and_is_in_help() -> None:
    assert commands.parse("usage web") == commands.Usage(app="web")
    assert commands.parse("usage WEB --env staging") == commands.Usage(app="web", env="staging")
    assert commands.parse("usage web in staging") == commands.Usage(app="web", env="staging")
    with pytest.raises(commands.UsageError) as err:
        commands.parse("usage")
    assert "`usage` needs an app name" in str(err.value)
    with pytest.raises(commands.UsageError):
        commands.parse("usage web now")
    assert "usage <app>" in commands.help_text()
    assert "usage web --env staging" in commands.help_text("usage")


async def test_slack_usage_answers_with_what_the_pods_use(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack
) -> None:
    rt = kube_world.rt
    # The default requests and limits (100m/500m, 128Mi/256Mi) against 20m and 32Mi used per pod.
    await deployed_web(kube_world, timeout=ROLLOUT)
    # Two stored samples in the last hour (core.usage_history's rows, as its pass writes them).
    now = models.utcnow()
    async with rt.sessionmaker.begin() as session:
        web = await session.scalar(select(models.App.id).where(models.App.name == "web"))
        assert web is not None
        session.add_all(
            models.UsageSample(app_id=web, sampled_at=now - dt.timedelta(minutes=m), pods=1,
                               cpu_millicores=cpu, memory_bytes=memory)
            for m, cpu, memory in ((5, 20.0, 32 * MI), (6, 30.0, 40 * MI))
        )  # fmt: skip
        # An hour rolled up 20 days ago (its samples pruned since): the 30d window, after the others.
        session.add(models.UsageHourly(
            app_id=web, hour=now - dt.timedelta(days=20), samples=60, cpu_sum_millicores=60 * 30.0,
            cpu_peak_millicores=45.5, memory_sum_bytes=60 * 40.0 * MI, memory_peak_bytes=48 * MI, max_pods=3,
            cpu_peak_per_pod=15.2, memory_peak_per_pod=16.0 * MI,
        ))  # fmt: skip

    # A viewer may read it; the answer comes after the ack, when the Metrics API has measured the pod.
    # CPU is a rate over two scrapes, off by their latency: 20m, give or take a tenth on a loaded machine.
    figures = re.compile(
        r"CPU (19\.9|20|20\.1)m \((19\.9|20|20\.1)% of request, (4|4\.1|3\.9)% of limit\) · "
        r"memory 32\.0Mi \(25% of request, 12\.5% of limit\)"
    )

    async def measured() -> dict[str, Any] | None:
        found = response_with(fake_slack, "• `web-")
        if found is None:
            reply = await slack.command("usage web", user=CAROL)
            assert "Reading what *web*'s pods use" in reply["text"], reply
        return found

    answer = await eventually(measured, timeout=METRICS, interval=3.0, what="the pod's usage")
    assert answer["replace_original"] is True
    assert "per pod CPU 100m/500m, memory 128Mi/256Mi (request/limit)" in answer["text"]
    assert re.search(r"\*Total\* \(1 pod\): " + figures.pattern, answer["text"]), answer["text"]
    # Under it, the history and the right-sizing hints (30m of 100m and 40Mi of 128Mi at the peak).
    assert (
        "*Last 1h* (2 samples): CPU avg 25.0m, peak 30.0m; memory avg 36.0Mi, peak 40.0Mi\n"
        "*Last 24h* (2 samples): CPU avg 25.0m, peak 30.0m; memory avg 36.0Mi, peak 40.0Mi\n"
        "*Last 7d* (2 samples): CPU avg 25.0m, peak 30.0m; memory avg 36.0Mi, peak 40.0Mi\n"
        "*Last 30d* (60 samples): CPU avg 30.0m, peak 45.5m; memory avg 40.0Mi, peak 48.0Mi\n"
        in answer["text"]
    )
    assert (
        "_Hint_: CPU: requests 100m per pod, 24h peak 30m per pod (30m at most in total): " in answer["text"]
    )
    assert "_Hint_: Memory: requests 128Mi per pod, 24h peak 40.0Mi per pod" in answer["text"]

    # Someone with no role in the project is told what a missing app gets.
    reply = await slack.command("usage web", user=MALLORY)
    missing = await slack.command("usage nop", user=MALLORY)
    assert reply["text"] == missing["text"].replace("nop", "web"), (reply, missing)


def test_the_autoscaling_line_says_the_scale_down_window_when_set() -> None:
    from bot.views import replies
    from core import usage, usage_history

    per_pod = usage.Allocation(cpu_request="100m", cpu_limit="500m", memory_request="128Mi",
                               memory_limit="256Mi", cpu_request_millicores=100.0, cpu_limit_millicores=500.0,
                               memory_request_bytes=128 * MI, memory_limit_bytes=256 * MI)  # fmt: skip
    figures = usage.figures(cpu_millicores=40.0, memory_bytes=32 * MI, allocation=per_pod)
    for window, tail in ((45, "now 40%; scales down after 45s"), (None, "now 40%")):
        scaling = usage.Autoscaling(min_replicas=1, max_replicas=3, cpu_target_percent=50,
                                    scale_down_window_seconds=window)  # fmt: skip
        u = usage.AppUsage(app="web", project="acme", environment="production", namespace="apps", revision=1,
                           per_pod=per_pod, autoscaling=scaling, total=figures,
                           history=usage_history.History(windows=[], hints=[]),
                           pods=[usage.PodUsage(pod="web-1", usage=figures, window="10s", timestamp="")])  # fmt: skip
        lines = replies.app_usage(u).text.splitlines()
        assert f"Autoscaling 1 to 3 pods at 50% of the CPU request; {tail}" in lines, lines
