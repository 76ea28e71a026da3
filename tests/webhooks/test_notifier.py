"""The GitHub notifier against the fake GitHub REST API over HTTP: Deployments, statuses, PR comments,
retries, token and GitHub App auth.  (Rollout outcomes against a real cluster are in test_e2e.py.)"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import select

from core import events
from core.errors import PermanentError, TransientError
from storage import models
from tests.fakes.github_api import FakeGitHub
from tests.webhooks.conftest import (
    SHA_A,
    SHA_B,
    Hook,
    deliver_notifications,
    deployments,
    make_app,
    offline_cluster,
    pr_payload,
    push_payload,
)
from webhooks.client import Credentials, GitHubClient, translate
from webhooks.notifier import GitHubNotifier, comment_marker


async def _notice(hook: Hook, *, kind: str = events.DEPLOY_QUEUED) -> events.Notice:
    async with hook.rt.sessionmaker() as session:
        event = await session.scalar(
            select(models.Event).where(models.Event.kind == kind).order_by(models.Event.id.desc()).limit(1)
        )
        assert event is not None
        return await events.build_notice(session, event=event)


async def test_a_push_deploy_creates_a_github_deployment_with_a_queued_status(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    await deliver_notifications(hook.rt)

    [gh] = fake_github.deployments("acme/web")
    assert (gh["sha"], gh["environment"], gh["transient_environment"]) == (SHA_A, "staging", False)
    assert gh["production_environment"] is False
    [deployment] = await deployments(hook.rt)
    assert gh["payload"]["shipit_deployment"] == deployment.id
    sent = fake_github.last_call("create_deployment").body
    assert (sent["required_contexts"], sent["auto_merge"], sent["ref"]) == ([], False, SHA_A)
    assert fake_github.deployment_states("acme/web", gh["id"]) == ["queued"]
    assert deployment.notify_refs["github"] == {
        "deployment_id": gh["id"],
        "repo": "acme/web",
        "environment": "staging",
        "state": "queued",
    }


async def test_tags_report_to_production_unless_the_app_names_its_environment(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, name="web-prod", git_ref_type="tag", git_branch="v*")
    await make_app(
        hook.rt,
        name="web-eu",
        namespace="eu",
        git_ref_type="tag",
        git_branch="v*",
        github_environment="prod-eu",
    )
    await hook.post("push", push_payload(ref="refs/tags/v2.0.0", sha=SHA_B))
    await deliver_notifications(hook.rt)
    environments = sorted(d["environment"] for d in fake_github.deployments("acme/web"))
    assert environments == ["prod-eu", "production"]
    production = fake_github.deployments("acme/web", environment="production")[0]
    assert production["production_environment"] is True


async def test_a_replayed_notification_posts_nothing_new(hook: Hook, fake_github: FakeGitHub) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    await deliver_notifications(hook.rt)
    before = len(fake_github.calls())
    notifier = hook.rt.core.notifiers["github"]
    assert await notifier.deliver(await _notice(hook)) is None
    assert len(fake_github.calls()) == before


async def test_rate_limit_is_a_transient_error_with_githubs_wait(hook: Hook, fake_github: FakeGitHub) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    fake_github.rate_limit("list_deployments", secondary=True, retry_after=7)
    notifier = hook.rt.core.notifiers["github"]
    with pytest.raises(TransientError) as caught:
        await notifier.deliver(await _notice(hook))
    assert caught.value.retry_after == 7
    assert fake_github.deployments("acme/web") == []


async def test_a_status_that_failed_after_the_deployment_was_created_does_not_duplicate_it(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    fake_github.server_error("create_deployment_status", status=502)
    notifier = hook.rt.core.notifiers["github"]
    with pytest.raises(TransientError):
        await notifier.deliver(await _notice(hook))
    assert len(fake_github.deployments("acme/web")) == 1
    delivered = await notifier.deliver(await _notice(hook))
    [gh] = fake_github.deployments("acme/web")
    assert fake_github.deployment_states("acme/web", gh["id"]) == ["queued"]
    assert delivered is not None and delivered.deployment_refs == {
        "deployment_id": gh["id"],
        "repo": "acme/web",
        "environment": "staging",
        "state": "queued",
    }


async def test_bad_credentials_are_a_permanent_error(hook: Hook, fake_github: FakeGitHub) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    fake_github.bad_credentials()
    with pytest.raises(PermanentError, match="rejected shipit's credentials"):
        await hook.rt.core.notifiers["github"].deliver(await _notice(hook))


async def test_a_preview_is_a_transient_environment_with_one_comment_updated_in_place(
    hook: Hook, fake_github: FakeGitHub
) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, previews_enabled=True, preview_domain="preview.acme.dev")
    opened = pr_payload("opened", number=7, sha=SHA_A)
    fake_github.add_pull_from_event(opened)
    await hook.post("pull_request", opened)
    await deliver_notifications(hook.rt)

    [gh] = fake_github.deployments("acme/web")
    assert (gh["environment"], gh["transient_environment"], gh["sha"]) == ("preview/web-pr-7", True, SHA_A)
    [comment] = fake_github.comments("acme/web", 7)
    assert comment["body"].startswith(comment_marker("web"))
    assert "deploying `6dcb09b`" in comment["body"]
    assert "http://web-pr-7.preview.acme.dev" in comment["body"]
    async with hook.rt.sessionmaker() as session:
        preview = await session.scalar(select(models.Preview))
    assert preview is not None and preview.comment_id == comment["id"]

    await hook.post("pull_request", pr_payload("synchronize", number=7, sha=SHA_B))
    await deliver_notifications(hook.rt)
    [updated] = fake_github.comments("acme/web", 7)
    assert updated["id"] == comment["id"]
    assert f"deploying `{SHA_B[:7]}`" in updated["body"]
    assert len(fake_github.calls("create_issue_comment")) == 1
    first, second = fake_github.deployments("acme/web")
    # The first preview deploy was superseded before it started: GitHub shows it inactive.
    assert fake_github.deployment_states("acme/web", first["id"]) == ["queued", "inactive"]
    assert fake_github.deployment_states("acme/web", second["id"]) == ["queued"]


async def test_a_deleted_preview_comment_is_written_again(hook: Hook, fake_github: FakeGitHub) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, previews_enabled=True, preview_domain="preview.acme.dev")
    opened = pr_payload("opened", number=7, sha=SHA_A)
    fake_github.add_pull_from_event(opened)
    await hook.post("pull_request", opened)
    await deliver_notifications(hook.rt)
    [comment] = fake_github.comments("acme/web", 7)
    client = GitHubClient(credentials=Credentials(api_url=fake_github.url, token=fake_github.token))
    await client.call(
        repo="acme/web", what="delete", fn=lambda r: r.get_issue(7).get_comment(comment["id"]).delete()
    )
    await client.close()
    await hook.post("pull_request", pr_payload("synchronize", number=7, sha=SHA_B))
    await deliver_notifications(hook.rt)
    [again] = fake_github.comments("acme/web", 7)
    assert again["id"] != comment["id"]


@pytest.mark.parametrize("enterprise", [False, True])
async def test_as_a_github_app_with_installation_tokens(
    hook: Hook, fake_github: FakeGitHub, enterprise: bool
) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt)
    await hook.post("push", push_payload(sha=SHA_A))
    client = GitHubClient(
        credentials=Credentials(
            api_url=fake_github.enterprise_url if enterprise else fake_github.url,
            app_id=str(fake_github.app_id),
            private_key=fake_github.app_private_key,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
    )
    notifier = GitHubNotifier(client=client)
    try:
        delivered = await notifier.deliver(await _notice(hook))
        assert delivered is not None
        [gh] = fake_github.deployments("acme/web")
        assert gh["creator"]["login"] == fake_github.bot_login
        assert len(fake_github.calls("create_installation_token", ok=True)) == 1

        # A token that stops working before its announced expiry is replaced, and the call goes through.
        fake_github.expire_installation_tokens()
        await client.call(
            repo="acme/web",
            what="status",
            fn=lambda r: r.get_deployment(gh["id"]).create_status("in_progress"),
        )
        assert len(fake_github.calls("create_installation_token", ok=True)) == 2
        assert fake_github.deployment_states("acme/web", gh["id"]) == ["queued", "in_progress"]
    finally:
        await notifier.close()


def test_translate_maps_githubs_failures() -> None:
    from github import GithubException

    assert isinstance(translate(GithubException(500, {"message": "x"}, {}), what="w"), TransientError)
    limited = translate(
        GithubException(403, {"message": "API rate limit exceeded"}, {"retry-after": "30"}), what="w"
    )
    assert isinstance(limited, TransientError) and limited.retry_after == 30
    assert isinstance(translate(GithubException(422, {"message": "bad"}, {}), what="w"), PermanentError)
    assert isinstance(translate(GithubException(404, {"message": "Not Found"}, {}), what="w"), PermanentError)


async def test_installation_tokens_are_renewed_before_they_expire() -> None:
    # Tokens live 21 s here; PyGithub renews them once less than 20 s are left, so from about 1 s
    # on every call would be made with a fresh token, before the old one could be refused.
    async with FakeGitHub(token_ttl=21) as fake:
        client = GitHubClient(
            credentials=Credentials(
                api_url=fake.url,
                app_id=str(fake.app_id),
                private_key=fake.app_private_key,
                seconds_between_requests=None,
                seconds_between_writes=None,
            )
        )
        # There is no issue 1 in the fake (404): the token is still minted and used.
        with contextlib.suppress(PermanentError):
            await client.call(repo="acme/web", what="read", fn=lambda r: r.get_issue(1).create_comment("a"))
        await asyncio.sleep(1.5)
        with contextlib.suppress(PermanentError):
            await client.call(repo="acme/web", what="read", fn=lambda r: r.get_issue(1).create_comment("b"))
        assert len(fake.calls("create_installation_token", ok=True)) == 2
        assert [c.status for c in fake.calls("create_issue_comment")] == [404, 404]  # never 401
        await client.close()


async def test_an_app_installed_again_is_found_under_its_new_installation() -> None:
    """installation.deleted then installation.created (the real bodies are ignored: nothing to do):
    the repository's cached installation is gone, and with tokens renewed on every call (TTL 21 s)
    the next call mints one for the old id and gets 404.  The client looks the installation up
    again, finds the new one and the call goes through; a plain 404 stays a 404."""
    async with FakeGitHub(token_ttl=21) as fake:
        client = GitHubClient(
            credentials=Credentials(
                api_url=fake.url,
                app_id=str(fake.app_id),
                private_key=fake.app_private_key,
                seconds_between_requests=None,
                seconds_between_writes=None,
            )
        )
        try:
            assert await client.call(repo="acme/web", what="read", fn=lambda r: r.default_branch) == "main"
            old = fake.installation_id("acme")
            fake.remove_installation("acme")
            new = fake.add_installation("acme")
            assert new != old
            await asyncio.sleep(1.5)  # the cached token is now renewed before use: minted for `old`
            assert await client.call(repo="acme/web", what="read", fn=lambda r: r.default_branch) == "main"
            minted = [c for c in fake.calls("create_installation_token") if c.status == 404]
            assert minted, "no token was asked for the old installation: the 404 path did not run"
            assert fake.installation_tokens()[-1]["installation_id"] == new
            with pytest.raises(PermanentError):
                await client.call(
                    repo="acme/web", what="read", fn=lambda r: r.get_issue(1).create_comment("a")
                )
        finally:
            await client.close()
        assert not fake.errors
