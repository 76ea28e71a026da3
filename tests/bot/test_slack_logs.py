"""`/shipit logs APP N` over the Slack HTTP harness against the real control plane: the answer after the
ack shows the lines the pods' containers wrote (kwok serves them from files, see the `pod_logs` fixture)."""

from __future__ import annotations

import re
from typing import Any

from core import deploys
from tests.bot.conftest import CAROL, SlackSender, add_app, deployments
from tests.conftest import ADMIN, World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually
from tests.testenv.plugin import PodLogs

ROLLOUT = 120.0


async def _answer(fake_slack: FakeSlack, needle: str) -> dict[str, Any] | None:
    return next((r for r in fake_slack.responses() if needle in r.get("text", "")), None)


async def test_slack_logs_shows_the_last_lines_of_every_pod(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, pod_logs: PodLogs
) -> None:
    rt = kube_world.rt
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0", replicas=2)
    async with rt.sessionmaker.begin() as session:
        first = await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")

    async def done() -> bool:
        return any(d.id == first.deployment.id and d.status == "succeeded" for d in await deployments(rt))

    await eventually(done, timeout=ROLLOUT, what="the deploy")
    a, b = await pod_logs.pods(namespace=kube_world.namespace, app="web")
    await pod_logs.write(
        namespace=kube_world.namespace, pod=a, container="web", lines=[f"a{i}" for i in range(30)]
    )
    await pod_logs.write(
        namespace=kube_world.namespace, pod=b, container="web", lines=[f"b{i}" for i in range(30)]
    )

    # A viewer may ask; the lines come after the ack.
    reply = await slack.command("logs web 20", user=CAROL)
    assert "Fetching the last 20 log lines of *web*" in reply["text"], reply
    answer = await eventually(lambda: _answer(fake_slack, "log lines of *web*"), what="the log lines")
    assert answer["replace_original"] is True and answer["response_type"] == "ephemeral"
    body = re.search(r"```(.*)```", answer["text"], re.S)
    assert body is not None, answer
    # 20 lines of the app: both pods' last ten, each pod's in the order written.
    assert answer["text"].startswith("Last 20 log lines of *web*:"), answer["text"]
    assert body.group(1).splitlines() == [f"{a}: a{i}" for i in range(20, 30)] + [
        f"{b}: b{i}" for i in range(20, 30)
    ]

    # Not a multiple of the pods: the first pod listed gets the extra line, still 5 in all.
    await slack.command("logs web 5", user=CAROL)
    answer = await eventually(lambda: _answer(fake_slack, "Last 5 log lines of *web*"), what="5 lines")
    body = re.search(r"```(.*)```", answer["text"], re.S)
    assert body is not None, answer
    assert body.group(1).splitlines() == [f"{a}: a27", f"{a}: a28", f"{a}: a29", f"{b}: b28", f"{b}: b29"]
