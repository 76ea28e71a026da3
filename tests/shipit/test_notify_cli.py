"""`shipit notify add|list|test|remove` against the live server, with a real SMTP server and real
Teams/Discord/webhook endpoints on loopback ports: each kind is tested, and a failure is shown."""

from __future__ import annotations

import json

from sqlalchemy import select

from shipit.runtime import Runtime
from storage import models
from tests.conftest import LiveServer, free_port
from tests.notices_helpers import receiver, smtp_server
from tests.shipit.test_cli import Run, ok, one_error_line
from tests.shipit.test_cli import shipit as shipit  # the fixture

SECRET = "cli-s3cret-key"


def _mail_on(rt: Runtime, port: int) -> None:
    from core.notices import mail

    rt.core.notifiers["email"] = mail.EmailNotifier(
        ctx=rt.core, smtp=mail.Smtp.parse(f"smtp://127.0.0.1:{port}", sender="shipit@acme.io")
    )


async def test_notify_add_list_test_and_remove_every_kind(live_server: LiveServer, shipit: Run) -> None:
    ok(await shipit("projects", "create", "acme"))
    with smtp_server() as (sink, port):
        _mail_on(live_server.rt, port)
        async with receiver() as hooks:
            added = {}
            for flags in (
                ("--email", "ops@acme.io", "--events", "failed,rolled_back", "--env", "production"),
                ("--teams", f"{hooks.url}/teams/secret-path"),
                ("--discord", f"{hooks.url}/discord/secret-path"),
                ("--webhook", f"{hooks.url}/ce", "--format", "cloudevents", "--secret", SECRET),
                ("--github",),
            ):
                t = json.loads(ok(await shipit("notify", "add", "acme", *flags, "--json")))
                added[t["kind"]] = t
            assert added["webhook"]["secret"] == "set" and SECRET not in json.dumps(added)
            assert added["teams"]["address"] == "http://127.0.0.1:" + hooks.url.rsplit(":", 1)[1] + "/…"
            assert added["email"]["environment"] == "production"

            for kind in ("email", "teams", "discord", "webhook", "github"):
                out = ok(await shipit("notify", "test", "acme", str(added[kind]["id"])))
                assert f"target #{added[kind]['id']}" in out and ": ok: " in out, out
            [m] = sink.to("ops@acme.io")
            assert m.message["Subject"] == "[shipit] shipit: test notice for acme"
            assert (
                len(hooks.accepted("teams"))
                == len(hooks.accepted("discord"))
                == len(hooks.accepted("ce"))
                == 1
            )
            assert json.loads(hooks.accepted("ce")[0].body)["type"] == "dev.shipit.notify.test"

            listing = ok(await shipit("notify", "list", "acme"))
            assert "secret-path" not in listing and SECRET not in listing
            assert listing.count(" ok ") >= 4, listing

    # A dead target: the test says why, exit 1; the list shows the failure; a working test resets it.
    dead = json.loads(
        ok(await shipit("notify", "add", "acme", "--webhook", f"http://127.0.0.1:{free_port()}/x", "--json"))
    )
    result = await shipit("notify", "test", "acme", str(dead["id"]))
    assert result.exit_code == 1 and f"webhook target #{dead['id']}: ConnectError" in result.stdout, (
        result.stdout
    )
    rows = json.loads(ok(await shipit("notify", "list", "acme", "--json")))
    [row] = [r for r in rows if r["id"] == dead["id"]]
    assert row["failures"] == 1 and row["last_error"] == f"webhook target #{dead['id']}: ConnectError"
    assert row["last_failure_at"] and row["secret"] == "none"

    ok(await shipit("notify", "remove", "acme", str(dead["id"])))
    assert dead["id"] not in [
        r["id"] for r in json.loads(ok(await shipit("notify", "list", "acme", "--json")))
    ]
    assert "no notification target #" in one_error_line(
        await shipit("notify", "test", "acme", str(dead["id"]))
    )
    # Only one way to say where: two kinds at once is refused before any call.
    assert "exactly one" in one_error_line(
        await shipit("notify", "add", "acme", "--email", "a@b.io", "--teams", "http://x")
    )


async def test_projects_slack_channel_and_webhook_url_become_targets(
    live_server: LiveServer, shipit: Run
) -> None:
    ok(
        await shipit(
            "projects",
            "create",
            "acme",
            "--slack-channel",
            "C0DEPLOYS",
            "--webhook-url",
            "https://h.example/x",
        )
    )
    rows = json.loads(ok(await shipit("notify", "list", "acme", "--json")))
    assert [(r["kind"], r["address"], r["environment"]) for r in rows] == [
        ("slack", "C0DEPLOYS", None),
        ("webhook", "https://h.example/x", None),
    ]
    ok(await shipit("projects", "update", "acme", "--slack-channel", "C0OTHER01", "--webhook-url", ""))
    rows = json.loads(ok(await shipit("notify", "list", "acme", "--json")))
    assert [(r["kind"], r["address"]) for r in rows] == [("slack", "C0OTHER01")]
    async with live_server.rt.sessionmaker() as session:
        assert await session.get(models.NotificationTarget, rows[0]["id"]) is not None


async def test_projects_list_shows_the_targets_not_the_old_columns(
    live_server: LiveServer, shipit: Run
) -> None:
    """`notify remove` and `notify add` show in `projects list` at once: the targets are the truth."""

    async def project() -> dict[str, object]:
        [p] = json.loads(ok(await shipit("projects", "list", "--json")))
        return {k: p[k] for k in ("slack_channel", "webhook_url", "webhook_signed")}

    ok(await shipit("projects", "create", "acme", "--slack-channel", "C0DEPLOYS"))
    assert await project() == {"slack_channel": "C0DEPLOYS", "webhook_url": None, "webhook_signed": False}
    [slack] = json.loads(ok(await shipit("notify", "list", "acme", "--json")))
    ok(await shipit("notify", "remove", "acme", str(slack["id"])))
    assert await project() == {"slack_channel": None, "webhook_url": None, "webhook_signed": False}

    ok(await shipit("notify", "add", "acme", "--slack-channel", "C0LATER01"))
    ok(await shipit("notify", "add", "acme", "--slack-channel", "C0SECOND1"))
    ok(await shipit("notify", "add", "acme", "--webhook", "https://h.example/in", "--secret", SECRET))
    # The first of each kind, as the cards and webhooks are sent.
    assert await project() == {
        "slack_channel": "C0LATER01",
        "webhook_url": "https://h.example/in",
        "webhook_signed": True,
    }
    async with live_server.rt.sessionmaker() as session:
        row = await session.scalar(select(models.Project).where(models.Project.name == "acme"))
        assert row is not None and row.slack_channel == "C0DEPLOYS"  # the old column still says otherwise
