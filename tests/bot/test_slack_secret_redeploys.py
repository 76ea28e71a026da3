"""A secret change redeploys a running app, the same from Slack as from the API (core decides, not a channel).

Before the first deploy nothing is redeployed (the first deploy takes the values) and both channels
say so; once the app runs, `secrets set` / `secrets unset` from Slack and PUT / DELETE on the API each
queue one `config` deploy, which rolls the Secret in the real cluster.  The Roll back button and
`/shipit rollback` pick their revision through the same core rule as the API.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
from kubernetes_asyncio import client as k8s

from bot import views
from storage import models
from tests.bot.conftest import ALICE, BOB, DAVE, SlackSender, add_app, card_of, card_text, deployments
from tests.conftest import World
from tests.fakes.slack_api import FakeSlack
from tests.helpers import eventually
from tests.shipit.conftest import make_token

ROLLOUT = 120.0


async def _live(rt: Any, fake: FakeSlack, deployment_id: int) -> None:
    channel, ts = await eventually(lambda: card_of(rt, fake, deployment_id), what="card", timeout=ROLLOUT)

    async def says_live() -> bool:
        text = card_text(fake.message(channel, ts))
        return "is live on" in text or "is rolled back to" in text

    await eventually(says_live, what=f"deploy #{deployment_id} live", timeout=ROLLOUT)


async def _secret_keys(kube_api: Any, namespace: str) -> set[str]:
    secret = await k8s.CoreV1Api(kube_api).read_namespaced_secret("web-secrets", namespace)
    return set(secret.data or {})


async def _config_deploys(rt: Any) -> list[models.Deployment]:
    return [d for d in await deployments(rt) if d.trigger == "config"]


async def test_a_secret_change_redeploys_from_slack_as_from_the_api(
    slack: SlackSender, kube_world: World, fake_slack: FakeSlack, kube_api: Any
) -> None:
    rt = kube_world.rt
    await add_app(rt, name="web", cluster=kube_world.cluster, image="ghcr.io/acme/web:1.0")
    token = await make_token(rt)
    async with httpx.AsyncClient(
        base_url=slack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as api:
        # Nothing runs yet: neither channel deploys, both say the first deploy takes the values.
        reply = await slack.command("secrets set web EARLY=1", user=DAVE)
        assert "Set `EARLY` on *web*" in reply["text"] and "the first deploy takes them" in reply["text"]
        r = await api.put("/api/v1/apps/web/secrets", json={"values": {"EARLY2": "2"}})
        assert r.status_code == 200, r.text
        assert r.json() == {"keys": ["EARLY2"], "deployment": None}
        assert await deployments(rt) == []

        await slack.command("deploy web 1.0", user=ALICE)
        [first] = await deployments(rt)
        await _live(rt, fake_slack, first.id)
        assert await _secret_keys(kube_api, kube_world.namespace) == {"EARLY", "EARLY2"}

        # From Slack: the reply names the redeploy it queued, and the pods get the value.
        reply = await slack.command("secrets set web FROM_SLACK=s3cr3t-slack", user=DAVE)
        [from_slack] = await _config_deploys(rt)
        assert "Set `FROM_SLACK` on *web*" in reply["text"]
        assert "The pods get them with a redeploy" in reply["text"]
        assert f"Deploy #{from_slack.id} of *web*" in reply["text"] and "is queued" in reply["text"]
        assert "s3cr3t-slack" not in reply["text"]
        assert from_slack.actor == DAVE.subject and from_slack.image == "ghcr.io/acme/web:1.0"
        await _live(rt, fake_slack, from_slack.id)
        secret = await k8s.CoreV1Api(kube_api).read_namespaced_secret("web-secrets", kube_world.namespace)
        assert base64.b64decode(secret.data["FROM_SLACK"]) == b"s3cr3t-slack"

        # From the API: the same rule, one config deploy in the answer.
        r = await api.put("/api/v1/apps/web/secrets", json={"values": {"FROM_API": "s3cr3t-api"}})
        assert r.status_code == 200, r.text
        from_api = r.json()["deployment"]
        assert from_api is not None and from_api["trigger"] == "config"
        assert [d.id for d in await _config_deploys(rt)] == [from_slack.id, from_api["id"]]
        await _live(rt, fake_slack, from_api["id"])

        # Unset from Slack redeploys too, and the key leaves the cluster's Secret.
        reply = await slack.command("secrets unset web FROM_API", user=DAVE)
        assert "Removed `FROM_API` from *web*" in reply["text"]
        assert "The pods lose them with a redeploy" in reply["text"]
        unset = (await _config_deploys(rt))[-1]
        assert unset.id not in (from_slack.id, from_api["id"])
        await _live(rt, fake_slack, unset.id)
        assert await _secret_keys(kube_api, kube_world.namespace) == {"EARLY", "EARLY2", "FROM_SLACK"}

        # The card's Roll back picks its revision by the core rule every channel uses: the last good
        # deploy before this one with another revision (here the API's), secrets version included.
        channel, ts = await eventually(lambda: card_of(rt, fake_slack, unset.id), what="card")
        assert (
            await slack.click(views.ACTION_ROLLBACK, user=BOB, channel=channel, message_ts=ts)
        ).status_code == 200

        async def rolled_back() -> list[models.Deployment]:
            return [d for d in await deployments(rt) if d.trigger == "rollback"]

        [by_button] = await eventually(rolled_back, what="rollback from the card")
        before_unset = next(d for d in await deployments(rt) if d.id == from_api["id"])
        assert by_button.image == "ghcr.io/acme/web:1.0"
        async with rt.sessionmaker() as session:
            revision = await session.get(models.Revision, by_button.revision_id)
            assert revision is not None and revision.rollback_of == before_unset.revision_number
        await _live(rt, fake_slack, by_button.id)
        assert await _secret_keys(kube_api, kube_world.namespace) == {
            "EARLY",
            "EARLY2",
            "FROM_SLACK",
            "FROM_API",
        }
