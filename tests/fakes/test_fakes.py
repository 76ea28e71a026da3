"""The fakes answer the real clients (slack_sdk, PyGithub) the way Slack and GitHub do.

If these pass, a test elsewhere that points shipit's real clients at a fake exercises the same wire
protocol, response shapes and failures the real services produce.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import github
import jwt
import pytest
from github import Auth
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.fakes import FakeGitHub, FakeSlack, generate_private_key_pem

SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*web* queued"}}
DONE = {"type": "section", "text": {"type": "mrkdwn", "text": "*web* succeeded"}}


def slack_client(
    slack: FakeSlack, *, token: str | None = None, retry_handlers: list[Any] | None = None
) -> AsyncWebClient:
    client = AsyncWebClient(base_url=slack.url, token=token or slack.bot_token)
    if retry_handlers is not None:
        client.retry_handlers = retry_handlers
    return client


# ---- Slack ---------------------------------------------------------------------------------------


async def test_post_then_update_is_reflected_in_the_message_store(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    posted = await client.chat_postMessage(channel="C0DEPLOYS", text="web queued", blocks=[SECTION])
    assert posted["ok"] is True
    assert posted["channel"] == "C0DEPLOYS"
    assert posted["message"]["bot_id"] == fake_slack.bot_id
    ts = posted["ts"]

    updated = await client.chat_update(channel="C0DEPLOYS", ts=ts, text="web succeeded", blocks=[DONE])
    assert updated["ts"] == ts
    assert updated["text"] == "web succeeded"

    message = fake_slack.message("C0DEPLOYS", ts)
    assert message["text"] == "web succeeded"
    assert message["blocks"] == [DONE]
    assert [v["text"] for v in fake_slack.message_versions("C0DEPLOYS", ts)] == [
        "web queued",
        "web succeeded",
    ]
    call = fake_slack.last_call("chat.update")
    assert call.arg("blocks") == [DONE]
    assert call.header("authorization") == f"Bearer {fake_slack.bot_token}"
    assert (call.header("content-type") or "").startswith("application/json")


async def test_timestamps_are_unique_and_increasing(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    stamps = [(await client.chat_postMessage(channel="C1", text=str(i)))["ts"] for i in range(5)]
    assert stamps == sorted(stamps, key=float)
    assert len(set(stamps)) == 5
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)


async def test_update_of_unknown_message_is_message_not_found(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C1", ts="1700000000.999999", text="x")
    assert caught.value.response["error"] == "message_not_found"


async def test_update_keeps_blocks_it_was_not_given(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    ts = (await client.chat_postMessage(channel="C1", text="a", blocks=[SECTION]))["ts"]
    await client.chat_update(channel="C1", ts=ts, text="b")
    assert fake_slack.message("C1", ts)["blocks"] == [SECTION]


async def test_thread_replies_and_ephemeral_messages(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    parent = (await client.chat_postMessage(channel="C1", text="card"))["ts"]
    reply = await client.chat_postMessage(channel="C1", thread_ts=parent, text="last log lines")
    assert reply["message"]["thread_ts"] == parent
    assert [m["text"] for m in fake_slack.thread("C1", parent)] == ["last log lines"]
    assert fake_slack.message("C1", parent)["reply_count"] == 1
    assert [m["ts"] for m in fake_slack.messages("C1", include_replies=False)] == [parent]

    eph = await client.chat_postEphemeral(channel="C1", user="U0ALICE", text="only you")
    assert eph["message_ts"]
    assert [e["text"] for e in fake_slack.ephemerals("C1", user="U0ALICE")] == ["only you"]
    assert fake_slack.ephemerals(user="U0BOB") == []


async def test_rate_limit_without_retry_handler_raises_429_with_retry_after(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack, retry_handlers=[])
    ts = (await client.chat_postMessage(channel="C1", text="v1"))["ts"]
    fake_slack.rate_limit("chat.update", retry_after=7)

    with pytest.raises(SlackApiError) as caught:
        await client.chat_update(channel="C1", ts=ts, text="v2")
    response = caught.value.response
    assert response.status_code == 429
    assert response["error"] == "ratelimited"
    retry_after = {k.lower(): v for k, v in response.headers.items()}["retry-after"]
    assert retry_after in ("7", ["7"])
    assert fake_slack.message("C1", ts)["text"] == "v1"

    await client.chat_update(channel="C1", ts=ts, text="v2")  # the failure was for one call only
    assert fake_slack.message("C1", ts)["text"] == "v2"
    assert [(c.status, c.injected) for c in fake_slack.calls("chat.update")] == [(429, True), (200, False)]


async def test_rate_limit_with_retry_handler_is_retried_after_retry_after(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)])
    fake_slack.rate_limit("chat.postMessage", times=1, retry_after=0)

    posted = await client.chat_postMessage(channel="C1", text="after a 429")

    assert fake_slack.message("C1", posted["ts"])["text"] == "after a 429"
    assert [c.status for c in fake_slack.calls("chat.postMessage")] == [429, 200]
    assert fake_slack.pending_failures() == 0


async def test_invalid_auth_for_a_wrong_token_and_when_injected(fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as caught:
        await slack_client(fake_slack, token="xoxb-not-the-right-one").auth_test()
    assert caught.value.response["error"] == "invalid_auth"

    with pytest.raises(SlackApiError) as caught:
        await AsyncWebClient(base_url=fake_slack.url).auth_test()
    assert caught.value.response["error"] == "not_authed"

    client = slack_client(fake_slack)
    fake_slack.api_error("chat.postMessage", "invalid_auth")
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C1", text="x")
    assert caught.value.response["error"] == "invalid_auth"
    assert fake_slack.messages() == []

    fake_slack.revoke_token(fake_slack.bot_token)
    with pytest.raises(SlackApiError) as caught:
        await client.auth_test()
    assert caught.value.response["error"] == "token_revoked"


async def test_server_error(fake_slack: FakeSlack) -> None:
    fake_slack.server_error("chat.postMessage")
    with pytest.raises(SlackApiError) as caught:
        await slack_client(fake_slack, retry_handlers=[]).chat_postMessage(channel="C1", text="x")
    assert caught.value.response.status_code == 500


async def test_auth_test_identifies_the_bot(fake_slack: FakeSlack) -> None:
    found = await slack_client(fake_slack).auth_test()
    assert found["team_id"] == fake_slack.team_id
    assert found["user_id"] == fake_slack.bot_user_id
    assert found["bot_id"] == fake_slack.bot_id


async def test_each_bot_token_is_its_own_bot(fake_slack: FakeSlack) -> None:
    """A second app's bot in the same workspace: auth.test names its own bot, and its messages carry it."""
    other = fake_slack.add_bot(user_id="U0OTHER01")
    found = await slack_client(fake_slack, token=other).auth_test()
    assert (found["user_id"], found["bot_id"]) == ("U0OTHER01", fake_slack.bot_id_of(other))
    assert found["bot_id"] != fake_slack.bot_id and found["team_id"] == fake_slack.team_id
    posted = await slack_client(fake_slack, token=other).chat_postMessage(channel="C1", text="x")
    assert posted["message"]["bot_id"] == found["bot_id"] and posted["message"]["user"] == "U0OTHER01"
    assert posted["message"]["app_id"] != fake_slack.app_id


async def test_form_encoded_arguments_and_users_info(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    posted = await client.api_call(
        "chat.postMessage", data={"channel": "C1", "text": "form", "blocks": json.dumps([SECTION])}
    )
    assert fake_slack.message("C1", posted["ts"])["blocks"] == [SECTION]
    call = fake_slack.last_call("chat.postMessage")
    assert (call.header("content-type") or "").startswith("application/x-www-form-urlencoded")

    fake_slack.add_user("U0ALICE", name="alice", real_name="Alice Liddell", email="alice@example.com")
    user = (await client.users_info(user="U0ALICE"))["user"]
    assert (user["id"], user["name"], user["real_name"]) == ("U0ALICE", "alice", "Alice Liddell")
    assert user["profile"]["email"] == "alice@example.com"
    assert fake_slack.last_call("users.info").http_method == "GET"

    channel = (await client.conversations_info(channel="C1"))["channel"]
    assert channel["id"] == "C1"

    fake_slack.strict = True
    with pytest.raises(SlackApiError) as caught:
        await client.users_info(user="U0NOBODY")
    assert caught.value.response["error"] == "user_not_found"


async def test_oauth_v2_access_installs_a_workspace(fake_slack: FakeSlack) -> None:
    fake_slack.add_oauth_code(
        "code-1", team_id="T0SECOND", team_name="Second Team", installer_user_id="U0OWNER"
    )
    anonymous = AsyncWebClient(base_url=fake_slack.url)

    with pytest.raises(SlackApiError) as caught:
        await anonymous.oauth_v2_access(client_id=fake_slack.client_id, client_secret="nope", code="code-1")
    assert caught.value.response["error"] == "bad_client_secret"

    granted = await anonymous.oauth_v2_access(
        client_id=fake_slack.client_id, client_secret=fake_slack.client_secret, code="code-1"
    )
    assert granted["access_token"].startswith("xoxb-")
    assert granted["token_type"] == "bot"
    assert granted["team"] == {"id": "T0SECOND", "name": "Second Team"}
    assert granted["authed_user"]["id"] == "U0OWNER"
    assert granted["bot_user_id"] == fake_slack.workspace("T0SECOND").bot_user_id

    identity = await AsyncWebClient(base_url=fake_slack.url, token=granted["access_token"]).auth_test()
    assert identity["team_id"] == "T0SECOND"
    assert identity["bot_id"] == fake_slack.workspace("T0SECOND").bot_id

    with pytest.raises(SlackApiError) as caught:
        await anonymous.oauth_v2_access(
            client_id=fake_slack.client_id, client_secret=fake_slack.client_secret, code="code-1"
        )
    assert caught.value.response["error"] == "invalid_code"


async def test_response_url_posts_are_recorded_and_replace_the_original(fake_slack: FakeSlack) -> None:
    ts = (await slack_client(fake_slack).chat_postMessage(channel="C1", text="Approve?"))["ts"]
    url = fake_slack.response_url(channel="C1", user="U0ALICE", message_ts=ts)

    replaced = await AsyncWebhookClient(url).send(text="Approved by alice", replace_original=True)
    assert replaced.status_code == 200
    assert replaced.body == "ok"
    assert fake_slack.message("C1", ts)["text"] == "Approved by alice"

    await AsyncWebhookClient(url).send(text="just for you", response_type="ephemeral")
    assert [p["text"] for p in fake_slack.responses(url)] == ["Approved by alice", "just for you"]
    assert [e["text"] for e in fake_slack.ephemerals("C1", user="U0ALICE")] == ["just for you"]

    await AsyncWebhookClient(url).send_dict({"delete_original": True})
    assert fake_slack.find_message("C1", ts) is None


async def test_wait_for_call_sees_a_call_made_later(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)

    async def later() -> None:
        await asyncio.sleep(0.05)
        await client.chat_postMessage(channel="C1", text="eventually")

    task = asyncio.create_task(later())
    call = await fake_slack.wait_for_call("chat.postMessage", where=lambda c: c.arg("text") == "eventually")
    await task
    assert call.ok
    with pytest.raises(AssertionError):
        await fake_slack.wait_for_call("chat.update", timeout=0.1)


def test_sync_start_and_stop_over_real_tcp() -> None:
    with FakeSlack(bot_token="xoxb-sync") as slack:
        request = urllib.request.Request(
            slack.url + "auth.test", data=b"", headers={"Authorization": "Bearer xoxb-sync"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["ok"] is True
        assert slack.wait_for_call_sync("auth.test").ok
        url = slack.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "auth.test", data=b"", timeout=5)


# ---- GitHub --------------------------------------------------------------------------------------


_DEFAULT_RETRY: Any = object()


def gh_client(
    gh: FakeGitHub,
    *,
    auth: Auth.Auth | None = None,
    base_url: str | None = None,
    retry: Any = _DEFAULT_RETRY,
    per_page: int = 30,
) -> github.Github:
    # PyGithub paces itself (0.25 s between requests, 1 s between writes) unless told not to.
    return github.Github(
        base_url=base_url or gh.url,
        auth=auth or Auth.Token(gh.token),
        retry=github.Github.default_retry if retry is _DEFAULT_RETRY else retry,
        per_page=per_page,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


def integration(
    gh: FakeGitHub, *, private_key: str | None = None, app_id: int | None = None
) -> github.GithubIntegration:
    auth = Auth.AppAuth(app_id or gh.app_id, private_key or gh.app_private_key)
    return github.GithubIntegration(
        base_url=gh.url, auth=auth, retry=None, seconds_between_requests=None, seconds_between_writes=None
    )


def test_app_installation_token_flow_with_verified_jwt(fake_github: FakeGitHub) -> None:
    gi = integration(fake_github)
    assert gi.get_app().slug == fake_github.app_slug
    installation = gi.get_repo_installation("acme", "web")
    assert installation.id == fake_github.installation_id("acme")

    token = gi.get_access_token(installation.id)
    assert token.token.startswith("ghs_")
    assert token.expires_at.timestamp() > fake_github.last_call("create_installation_token").at + 3000

    # The JWT the App sent is an RS256 token for this app, checked with the App's public key.
    bearer = fake_github.last_call("create_installation_token").header("authorization") or ""
    claims = jwt.decode(bearer.removeprefix("Bearer "), fake_github.app_public_key, algorithms=["RS256"])
    assert str(claims["iss"]) == str(fake_github.app_id)

    repo = gi.get_github_for_installation(installation.id).get_repo("acme/web")
    assert repo.full_name == "acme/web"
    assert (fake_github.last_call("get_repo").header("authorization") or "").startswith("token ghs_")


def test_jwt_signed_with_another_key_is_refused(fake_github: FakeGitHub) -> None:
    with pytest.raises(github.GithubException) as caught:
        integration(fake_github, private_key=generate_private_key_pem()).get_access_token(
            fake_github.installation_id("acme")
        )
    assert caught.value.status == 401
    assert caught.value.data["message"] == "A JSON web token could not be decoded"
    assert fake_github.installation_tokens() == []


def test_jwt_for_another_app_is_refused(fake_github: FakeGitHub) -> None:
    with pytest.raises(github.GithubException) as caught:
        integration(fake_github, app_id=fake_github.app_id + 1).get_app()
    assert caught.value.status == 401


def test_expired_installation_token_is_bad_credentials(fake_github: FakeGitHub) -> None:
    gi = integration(fake_github)
    g = gi.get_github_for_installation(fake_github.installation_id("acme"))
    assert g.get_repo("acme/web").id
    fake_github.expire_installation_tokens()
    with pytest.raises(github.BadCredentialsException):
        g.get_repo("acme/web")


def test_installation_token_does_not_reach_other_accounts(fake_github: FakeGitHub) -> None:
    fake_github.add_repo("elsewhere/tool", installed=False)
    g = integration(fake_github).get_github_for_installation(fake_github.installation_id("acme"))
    with pytest.raises(github.UnknownObjectException):
        g.get_repo("elsewhere/tool")
    assert gh_client(fake_github).get_repo("elsewhere/tool").full_name == "elsewhere/tool"


async def test_deployment_with_statuses_through_to_thread(fake_github: FakeGitHub) -> None:
    fake_github.set_branch("acme/web", "feature", "a" * 40)

    def run() -> int:
        repo = gh_client(fake_github).get_repo("acme/web")
        deployment = repo.create_deployment(
            ref="feature",
            environment="preview/web-pr-7",
            transient_environment=True,
            production_environment=False,
            required_contexts=[],
            auto_merge=False,
            payload={"app": "web", "pr": 7},
            description="preview of #7",
        )
        assert deployment.sha == "a" * 40
        assert deployment.environment == "preview/web-pr-7"
        assert deployment.transient_environment is True
        assert deployment.payload == {"app": "web", "pr": 7}
        deployment.create_status("in_progress", description="rolling out")
        done = deployment.create_status(
            "success", environment_url="https://web-pr-7.preview.example.com", description="ready"
        )
        assert done.environment_url == "https://web-pr-7.preview.example.com"
        listed = list(repo.get_deployments(environment="preview/web-pr-7"))
        assert [d.id for d in listed] == [deployment.id]
        assert [s.state for s in deployment.get_statuses()] == ["success", "in_progress"]
        deployment.create_status("inactive")
        return int(deployment.id)

    deployment_id = await asyncio.to_thread(run)
    assert fake_github.deployment_states("acme/web", deployment_id) == ["in_progress", "success", "inactive"]
    sent = fake_github.last_call("create_deployment").body
    assert sent["required_contexts"] == []
    assert sent["auto_merge"] is False
    statuses = fake_github.deployment_statuses("acme/web", deployment_id)
    assert statuses[1]["environment_url"] == "https://web-pr-7.preview.example.com"


def test_invalid_deployment_state_is_422(fake_github: FakeGitHub) -> None:
    repo = gh_client(fake_github, retry=None).get_repo("acme/web")
    deployment = repo.create_deployment(ref="main", required_contexts=[])
    with pytest.raises(github.GithubException) as caught:
        deployment.create_status("finished")
    assert caught.value.status == 422
    assert caught.value.data["errors"][0]["field"] == "state"
    assert fake_github.deployment_states("acme/web", deployment.id) == []


def test_success_marks_earlier_deployments_of_the_environment_inactive(fake_github: FakeGitHub) -> None:
    repo = gh_client(fake_github).get_repo("acme/web")
    first = repo.create_deployment(ref="main", environment="staging", required_contexts=[])
    first.create_status("success")
    second = repo.create_deployment(ref="main", environment="staging", required_contexts=[])
    second.create_status("success")
    assert fake_github.deployment_states("acme/web", first.id) == ["success", "inactive"]
    assert fake_github.deployment_states("acme/web", second.id) == ["success"]


def test_commit_status(fake_github: FakeGitHub) -> None:
    sha = "b" * 40
    repo = gh_client(fake_github, retry=None).get_repo("acme/web")
    status = repo.get_commit(sha).create_status(
        "pending",
        target_url="https://shipit.example.com/deploys/1",
        description="deploying",
        context="shipit",
    )
    assert (status.state, status.context) == ("pending", "shipit")
    repo.get_commit(sha).create_status("success", context="shipit")
    assert [s["state"] for s in fake_github.commit_statuses("acme/web", sha)] == ["pending", "success"]
    assert repo.get_commit(sha).get_combined_status().state == "success"
    with pytest.raises(github.GithubException) as caught:
        repo.get_commit(sha).create_status("done")
    assert caught.value.status == 422


def test_issue_comment_created_then_edited(fake_github: FakeGitHub) -> None:
    fake_github.add_pull("acme/web", 7, head_ref="feature", head_sha="c" * 40)
    repo = gh_client(fake_github).get_repo("acme/web")
    pull = repo.get_pull(7)
    assert (pull.head.ref, pull.head.sha, pull.base.ref) == ("feature", "c" * 40, "main")

    comment = pull.create_issue_comment("Preview: deploying")
    comment.edit("Preview: https://web-pr-7.preview.example.com")

    assert [c["body"] for c in fake_github.comments("acme/web", 7)] == [
        "Preview: https://web-pr-7.preview.example.com"
    ]
    assert [c.body for c in repo.get_issue(7).get_comments()] == [
        "Preview: https://web-pr-7.preview.example.com"
    ]
    assert fake_github.last_call("edit_issue_comment").path == f"/repos/acme/web/issues/comments/{comment.id}"

    with pytest.raises(github.UnknownObjectException):
        repo.get_pull(8)


def test_reactions_on_a_comment_someone_made(fake_github: FakeGitHub) -> None:
    fake_github.add_pull("acme/web", 7, head_ref="feature")
    made = fake_github.add_comment("acme/web", 7, ".deploy", user="alice")
    assert made["user"]["login"] == "alice" and made["reactions"]["total_count"] == 0
    comment = gh_client(fake_github).get_repo("acme/web").get_issue(7).get_comment(made["id"])
    assert comment.create_reaction("eyes").content == "eyes"
    assert fake_github.last_call("create_comment_reaction").status == 201
    comment.create_reaction("eyes")  # GitHub answers 200 with the reaction already there
    assert fake_github.last_call("create_comment_reaction").status == 200
    comment.create_reaction("rocket")
    assert fake_github.reactions("acme/web", made["id"]) == ["eyes", "rocket"]
    assert fake_github.comment("acme/web", made["id"])["reactions"]["rocket"] == 1
    with pytest.raises(github.GithubException) as caught:
        comment.create_reaction("party")
    assert caught.value.status == 422 and caught.value.data["errors"][0]["field"] == "content"
    lazy = github.Github(base_url=fake_github.url, auth=Auth.Token(fake_github.token), lazy=True)
    gone = lazy.get_repo("acme/web").get_issue(7).get_comment(999)  # lazy: no request until the POST
    with pytest.raises(github.UnknownObjectException):
        gone.create_reaction("eyes")
    assert fake_github.last_call().api == "create_comment_reaction"


def test_collaborator_permission_has_the_real_shape(fake_github: FakeGitHub) -> None:
    repo = gh_client(fake_github).get_repo("acme/web")
    fake_github.set_role("acme/web", "alice", "maintain")
    fake_github.set_role("acme/web", "rita", "triage")
    fake_github.add_user("stranger")
    assert repo.get_collaborator_permission("alice") == "write"  # maintain reads as write
    body = fake_github.last_call("get_collaborator_permission").response
    assert (body["permission"], body["role_name"], body["user"]["login"]) == ("write", "maintain", "alice")
    assert body["user"]["permissions"]["push"] is True
    assert repo.get_collaborator_permission("rita") == "read"
    assert repo.get_collaborator_permission("stranger") == "none"  # acme/web is private
    assert repo.get_collaborator_permission("acme") == "admin"  # the owner
    with pytest.raises(github.UnknownObjectException):
        repo.get_collaborator_permission("no-such-user")


def test_bad_token_raises_bad_credentials(fake_github: FakeGitHub) -> None:
    with pytest.raises(github.BadCredentialsException):
        gh_client(fake_github, auth=Auth.Token("ghp_wrong")).get_repo("acme/web")

    repo = gh_client(fake_github).get_repo("acme/web")
    fake_github.bad_credentials("create_deployment")
    with pytest.raises(github.BadCredentialsException):
        repo.create_deployment(ref="main")
    assert fake_github.deployments("acme/web") == []


def test_rate_limits(fake_github: FakeGitHub) -> None:
    repo = gh_client(fake_github, retry=None).get_repo("acme/web")
    fake_github.rate_limit("create_deployment")
    with pytest.raises(github.RateLimitExceededException) as caught:
        repo.create_deployment(ref="main")
    headers = {k.lower(): v for k, v in (caught.value.headers or {}).items()}
    assert headers["x-ratelimit-remaining"] == "0"
    assert int(headers["x-ratelimit-reset"]) > 0

    # A secondary limit with Retry-After is waited out and retried by PyGithub's default retry.
    retrying = gh_client(fake_github).get_repo("acme/web")
    fake_github.rate_limit("create_deployment", secondary=True, retry_after=0)
    retrying.create_deployment(ref="main", required_contexts=[])
    assert [c.status for c in fake_github.calls("create_deployment")] == [403, 403, 201]


def test_injected_validation_failure_and_server_error(fake_github: FakeGitHub) -> None:
    repo = gh_client(fake_github, retry=None).get_repo("acme/web")
    fake_github.validation_failed(
        "create_issue_comment", errors=[{"resource": "IssueComment", "code": "custom", "message": "too long"}]
    )
    fake_github.add_issue("acme/web", 3)
    with pytest.raises(github.GithubException) as caught:
        repo.get_issue(3).create_comment("hi")
    assert caught.value.status == 422
    fake_github.server_error("get_issue")
    with pytest.raises(github.GithubException) as caught:
        repo.get_issue(3)
    assert caught.value.status == 500
    assert fake_github.comments("acme/web", 3) == []


def test_enterprise_prefix_and_pagination(fake_github: FakeGitHub) -> None:
    g = gh_client(fake_github, base_url=fake_github.enterprise_url, per_page=2)
    repo = g.get_repo("acme/web")
    assert repo.url.startswith(fake_github.enterprise_url)
    made = [
        repo.create_deployment(ref="main", environment="staging", required_contexts=[]).id for _ in range(3)
    ]

    assert [d.id for d in repo.get_deployments()] == list(reversed(made))
    listing = fake_github.calls("list_deployments")
    assert len(listing) == 2
    assert all(c.path == "/repos/acme/web/deployments" for c in listing)


def test_pull_request_registered_from_a_webhook_payload(fake_github: FakeGitHub) -> None:
    payload = {
        "action": "opened",
        "number": 12,
        "pull_request": {
            "number": 12,
            "state": "open",
            "title": "Add a button",
            "user": {"login": "alice"},
            "head": {"ref": "button", "sha": "d" * 40, "repo": {"full_name": "acme/api"}},
            "base": {"ref": "main", "sha": "e" * 40, "repo": {"full_name": "acme/api"}},
        },
        "repository": {"full_name": "acme/api", "default_branch": "main"},
    }
    fake_github.add_pull_from_event(payload)
    pull = gh_client(fake_github).get_repo("acme/api").get_pull(12)
    assert (pull.title, pull.user.login, pull.head.sha) == ("Add a button", "alice", "d" * 40)
    pull.create_issue_comment("Preview: queued")
    assert [c["body"] for c in fake_github.comments("acme/api", 12)] == ["Preview: queued"]


async def test_slack_posting_to_a_user_id_goes_to_a_dm(fake_slack: FakeSlack) -> None:
    posted = await slack_client(fake_slack).chat_postMessage(channel="U0ALICE", text="psst")
    assert posted["channel"].startswith("D")
    assert fake_slack.message(posted["channel"], posted["ts"])["text"] == "psst"
