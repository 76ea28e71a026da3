"""A card posted by one replica is known to every replica: recorded in the database as soon as it is posted."""

from __future__ import annotations

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot import notifier as notifier_mod
from core import environments, events
from core.notices import target_view
from core.notices import targets as notice_targets
from shipit.runtime import Runtime
from storage import db, models
from tests.fakes.slack_api import FakeSlack

pytestmark = pytest.mark.both_databases

CHANNEL = "C0CARDS01"


async def _notice(rt: Runtime, deployment_id: int, kind: str) -> events.Notice:
    async with rt.sessionmaker.begin() as session:
        event = models.Event(kind=kind, dedupe_key=f"{kind}:{deployment_id}", deployment_id=deployment_id,
                             project_id=1, app_id=1)  # fmt: skip
        session.add(event)
        await session.flush()
        # The project's channel is a notification target (core/notices), as projects.create makes it.
        [row] = await notice_targets.of_project(session, project_id=1)
        return await events.build_notice(session, event=event, target=target_view(row))


async def test_a_retry_on_another_replica_updates_the_card_instead_of_posting_another(
    rt: Runtime, fake_slack: FakeSlack
) -> None:
    async with rt.sessionmaker.begin() as session:
        project = models.Project(id=1, name="acme", slack_channel=CHANNEL)
        cluster = models.Cluster(id=1, name="c", kubeconfig_enc=b"x")
        session.add_all([project, cluster])
        await session.flush()
        env = await environments.add(session, project_id=1, name=environments.DEFAULT)
        session.add(
            models.App(id=1, name="web", project_id=1, environment_id=env.id, cluster_id=1, namespace="n")
        )
        session.add(models.NotificationTarget(project_id=1, kind="slack", address=CHANNEL, created_by="test"))
        await session.flush()
        d = models.Deployment(app_id=1, revision_number=1, image="ghcr.io/acme/web:1", namespace="n",
                              trigger="api", actor="user:a", status="queued")  # fmt: skip
        session.add(d)
    client = AsyncWebClient(base_url=fake_slack.url, token=fake_slack.bot_token)

    def replica() -> notifier_mod.SlackNotifier:
        # Each replica has its own sessionmaker and nothing in memory about the other's posts.
        return notifier_mod.SlackNotifier(
            client=client,
            sessionmaker=db.create_sessionmaker(rt.engine),
            pacer=notifier_mod.Pacer(rate=1000.0, burst=100),
        )

    # Replica A posts the card, then dies before its notify job records what deliver returned.
    delivered = await replica().deliver(await _notice(rt, d.id, "deploy.queued"))
    # The card is on the deploy already, recorded when posted: deliver leaves nothing for the job to write.
    assert delivered is None
    async with rt.sessionmaker() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        [refs] = (row.notify_refs or {}).values()
    ts = refs["ts"]
    assert [m["ts"] for m in fake_slack.messages(CHANNEL, include_replies=False)] == [ts]

    # Replica B takes the next event for the deploy: it finds the card and updates it.
    async with rt.sessionmaker.begin() as session:
        row = await session.get(models.Deployment, d.id)
        assert row is not None
        row.status = "running"
    await replica().deliver(await _notice(rt, d.id, "deploy.started"))
    cards = [m for m in fake_slack.messages(CHANNEL, include_replies=False)]
    assert len(cards) == 1 and cards[0]["ts"] == ts
    assert len(fake_slack.message_versions(CHANNEL, ts)) >= 2  # updated in place
