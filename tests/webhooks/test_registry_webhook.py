"""POST /registry/webhook and GitHub package events: shapes, token auth, dedupe (no cluster needed).

Docker Hub's and GitHub's payloads are parsed from real examples (GitHub's from octokit/webhooks, in
tests/fixtures/github; Docker Hub's as its documentation shows it).  The deploys themselves, against
a real registry sending its own notifications, are in tests/core/test_registry_deploys.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core import image_policies
from shipit.settings import Settings
from storage import models
from tests.conftest import ADMIN
from tests.webhooks.conftest import Hook, load, make_app, offline_cluster
from webhooks import registry

TOKEN = "registry-notify-" + "7" * 24
DIGEST = "sha256:" + "ab" * 32

# Docker Hub's webhook, as docs.docker.com/docker-hub/repos/manage/webhooks shows it.
DOCKER_HUB = {
    "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
    "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest"},
    "repository": {
        "comment_count": 0,
        "date_created": 1417494799,
        "description": "",
        "dockerfile": "FROM busybox\n",
        "is_official": False,
        "is_private": True,
        "is_trusted": True,
        "name": "testhook",
        "namespace": "svendowideit",
        "owner": "svendowideit",
        "repo_name": "svendowideit/testhook",
        "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
        "star_count": 0,
        "status": "Active",
    },
}


def envelope(
    *, host: str, path: str, tag: str | None, digest: str = DIGEST, event_id: str = "ev-1"
) -> dict[str, Any]:
    """An envelope as distribution documents it (docs/notifications.md), one manifest push."""
    target: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "size": 528,
        "digest": digest,
        "length": 528,
        "repository": path,
        "url": f"http://{host}/v2/{path}/manifests/{digest}",
    }
    if tag:
        target["tag"] = tag
    return {
        "events": [
            {
                "id": event_id,
                "timestamp": "2026-12-03T15:00:00Z",
                "action": "push",
                "target": target,
                "request": {
                    "id": "r1",
                    "addr": "127.0.0.1:5555",
                    "host": host,
                    "method": "PUT",
                    "useragent": "x",
                },
                "actor": {},
                "source": {"addr": "registry:5000", "instanceID": "i"},
            },
            {  # a layer upload in the same envelope: not an image
                "id": f"{event_id}-blob",
                "action": "push",
                "target": {"mediaType": "application/octet-stream", "digest": DIGEST, "repository": path},
                "request": {"host": host},
            },
        ]
    }


def test_distribution_envelope_is_read() -> None:
    [pushed] = registry.parse_distribution(envelope(host="registry.local:5000", path="acme/web", tag="1.5.0"))
    assert pushed.repository == "registry.local:5000/acme/web"
    assert (pushed.tag, pushed.digest) == ("1.5.0", DIGEST)
    # Pushed by digest only: its tag's own event is the one that counts.
    assert registry.parse_distribution(envelope(host="registry.local:5000", path="acme/web", tag=None)) == []


def test_docker_hub_webhook_is_read() -> None:
    [pushed] = registry.parse_docker_hub(DOCKER_HUB, body=json.dumps(DOCKER_HUB).encode())
    assert pushed.repository == "docker.io/svendowideit/testhook"
    assert (pushed.tag, pushed.digest) == ("latest", None)


@pytest.mark.parametrize(("event", "key"), [("registry_package", "registry_package"), ("package", "package")])
def test_github_package_events_are_read_from_real_examples(event: str, key: str) -> None:
    pushed = registry.parse_github_package(load(f"{event}__published"), key=key)
    assert pushed is not None
    assert pushed.repository == "ghcr.io/codertocat/hello-world"
    # The example has an empty tag name and a truncated container digest; its version is a real digest.
    assert pushed.tag is None
    assert pushed.digest == "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498"


def test_github_npm_package_is_not_an_image() -> None:
    payload = load("registry_package__published")
    payload["registry_package"]["ecosystem"] = "npm"
    payload["registry_package"]["package_version"]["package_url"] = "npm.pkg.github.com/@codertocat/x"
    assert registry.parse_github_package(payload, key="registry_package") is None


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"registry_webhook_token": SecretStr(TOKEN)})


async def _policy(hook: Hook, image: str, **kwargs: Any) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, image=image, git_repo=None, git_branch=None, image_template=None)
    async with hook.rt.sessionmaker.begin() as session:
        await image_policies.set_policy(session, actor=ADMIN, app_name="web", **kwargs)


async def test_unauthenticated_notifications_get_401_without_detail(hook: Hook) -> None:
    url = f"{hook.url}/registry/webhook"
    body = envelope(host="r.local", path="acme/web", tag="1.0.0")
    for headers, params in (
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({}, {"token": "wrong"}),
        ({"Authorization": f"Basic {TOKEN}"}, {}),
    ):
        r = await hook.client.post(url, json=body, headers=headers, params=params)
        assert r.status_code == 401, r.text
        assert r.json() == {"error": {"type": "Unauthenticated", "message": "unauthenticated"}}
    async with hook.rt.sessionmaker() as session:
        assert list(await session.scalars(select(models.WebhookDelivery))) == []


async def test_docker_hub_by_query_token_queues_a_digest_lookup(hook: Hook) -> None:
    await _policy(hook, "svendowideit/testhook:0.9", kind="glob", pattern="*")
    r = await hook.client.post(f"{hook.url}/registry/webhook", params={"token": TOKEN}, json=DOCKER_HUB)
    assert r.status_code == 202, r.text
    [result] = r.json()["events"]
    assert result["result"] == "accepted"
    assert result["decisions"][0]["action"] == "wait"
    async with hook.rt.sessionmaker() as session:
        [job] = list(
            await session.scalars(select(models.Job).where(models.Job.kind == image_policies.TAG_JOB))
        )
    assert job.payload["tag"] == "latest"
    again = await hook.client.post(f"{hook.url}/registry/webhook", params={"token": TOKEN}, json=DOCKER_HUB)
    assert again.json()["events"][0]["result"] == "duplicate"


async def test_malformed_and_unknown_bodies_are_400(hook: Hook) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{hook.url}/registry/webhook"
    assert (await hook.client.post(url, content=b"{", headers=auth)).status_code == 400
    assert (await hook.client.post(url, json=[1], headers=auth)).status_code == 400
    assert (await hook.client.post(url, json={"hello": 1}, headers=auth)).status_code == 400


async def test_github_registry_package_without_tag_makes_the_policy_check_its_tags(hook: Hook) -> None:
    await _policy(hook, "ghcr.io/codertocat/hello-world:1.0.0", kind="semver", pattern="^1")
    r = await hook.post("registry_package", load("registry_package__published"))
    assert r.status_code == 202, r.text
    assert r.json()["decisions"][0]["action"] == "wait"
    async with hook.rt.sessionmaker() as session:
        [policy] = list(await session.scalars(select(models.ImagePolicy)))
    assert policy.next_poll_at is not None  # due now, though the policy does not poll by itself


async def test_github_package_for_no_policy_is_accepted_and_does_nothing(hook: Hook) -> None:
    r = await hook.post("package", load("package__published"))
    assert r.status_code == 202, r.text
    assert "no image policy follows ghcr.io/codertocat/hello-world" in r.json()["message"]


def test_the_query_token_never_reaches_the_access_log() -> None:
    import logging

    from shipit import logs

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/registry/webhook?token={TOKEN}", "1.1", 202), None,
    )  # fmt: skip
    assert logs.redact_query_tokens(record)
    assert TOKEN not in record.getMessage() and "token=REDACTED" in record.getMessage()
