"""The `shipit` CLI against the real service over HTTP.

CliRunner calls are synchronous and the server runs on this event loop, so every call goes through
asyncio.to_thread.  Each test reads what a person would see: stdout, stderr and the exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

import pytest
from click.testing import Result
from typer.testing import CliRunner

from shipit import cli
from tests.conftest import LiveServer, World, database_bytes, free_port
from tests.helpers import eventually
from tests.shipit.conftest import make_token, table_rows


class Run(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, token: str | None = None, url: str | None = None
    ) -> Awaitable[Result]: ...


@pytest.fixture
def shipit(live_server: LiveServer, admin_token: str) -> Run:
    runner = CliRunner()

    async def run(
        *args: str, input: str | None = None, token: str | None = None, url: str | None = None
    ) -> Result:
        env = {"SHIPIT_URL": url or live_server.url, "SHIPIT_TOKEN": admin_token if token is None else token}
        return await asyncio.to_thread(runner.invoke, cli.app, list(args), input=input, env=env)

    return run


async def cli_process(live_server: LiveServer, *args: str) -> asyncio.subprocess.Process:
    """A real `shipit` process (the CLI's entry point) against the live server, stdout and stderr piped:
    for what CliRunner cannot do, such as reading a command's output while it runs or sending it SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    env.update(SHIPIT_URL=live_server.url, SHIPIT_TOKEN=await make_token(live_server.rt))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from shipit.cli import main; main()", *args,
        cwd=Path(__file__).resolve().parents[2], env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    return proc


def ok(result: Result) -> str:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert result.stderr == "" or not result.stderr.startswith("error:"), result.stderr
    return result.stdout


def one_error_line(result: Result, *, code: int = 1) -> str:
    """A failure is exactly one `error: ...` line on stderr, and a non-zero exit."""
    assert result.exit_code == code, (
        f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return lines[0]


def table(stdout: str) -> list[list[str]]:
    """Split an aligned table on its header's column starts."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    header = lines[0]
    starts = [0] + [i for i in range(1, len(header)) if header[i] != " " and header[i - 2 : i] == "  "]
    bounds = [*starts[1:], None]
    return [[line[a:b].strip() for a, b in zip(starts, bounds, strict=True)] for line in lines]


# --------------------------------------------------------------------------- without a cluster


async def test_cli_tour_without_a_cluster(live_server: LiveServer, shipit: Run, offline: str) -> None:
    # `offline` made project acme and a cluster row; the CLI makes the rest.
    assert "user:admin (global admin)" in ok(await shipit("whoami"))
    assert "created project shop; you are its owner" in ok(
        await shipit("projects", "create", "shop", "--slack-channel", "#shop-deploys")
    )
    rows = table(ok(await shipit("projects", "list")))
    assert rows[0] == ["NAME", "SLACK CHANNEL", "WEBHOOK", "CREATED"]
    assert [r[:2] for r in rows[1:]] == [["acme", "-"], ["shop", "#shop-deploys"]]
    assert [p["name"] for p in json.loads(ok(await shipit("projects", "list", "--json")))] == ["acme", "shop"]
    assert "user:dev is developer in shop" in ok(
        await shipit("projects", "access", "shop", "user:dev", "developer")
    )
    members = table(ok(await shipit("projects", "members", "shop")))
    assert members[1:] == [["user:admin", "owner"], ["user:dev", "developer"]]
    ok(await shipit("projects", "access", "shop", "user:dev", "--remove"))
    assert "user:dev" not in ok(await shipit("projects", "members", "shop"))

    clusters = table(ok(await shipit("clusters", "list")))
    assert clusters[1][0] == "offline" and clusters[1][3] == "apps"

    # Namespace `apps` belongs to acme (the fixture's grant); shop gets its own.
    assert "project shop may use cluster offline and owns namespace shop there" in ok(
        await shipit("clusters", "grant", "offline", "shop", "--namespace", "shop")
    )
    out = ok(
        await shipit(
            "apps", "create", "web", "--project", "shop", "--cluster", "offline", "--namespace", "shop",
            "--image", "ghcr.io/acme/web:1.4", "--port", "8080", "--replicas", "2",
            "--env", "LOG_LEVEL=info", "--env", "GREETING=a=b",
            "--cpu-request", "200m", "--cpu-limit", "1",
            "--memory-request", "256Mi", "--memory-limit", "512Mi",
            "--health-path", "/healthz", "--health-port", "8081", "--health-initial-delay", "5",
            "--health-period", "15", "--domain", "web.example.com", "--protected", "--no-deploy",
        )
    )  # fmt: skip
    assert "created app web in project shop (cluster offline, namespace shop)" in out
    assert "not deployed yet" in out
    # Seed style: `apps create CLUSTER --name APP`, with autoscaling flags; the only-project default is not
    # used because there are two projects.
    out = ok(
        await shipit(
            "apps", "create", "offline", "--name", "api", "--project", "acme",
            "--image", "ghcr.io/acme/api:2",
            "--min-replicas", "2", "--max-replicas", "10", "--cpu-target", "70", "--no-deploy", "--json",
        )
    )  # fmt: skip
    created = json.loads(out)
    assert created["deployment"] is None
    assert created["app"]["autoscaling"] == {
        "min_replicas": 2,
        "max_replicas": 10,
        "cpu_target": 70,
        "scale_down_window": None,
    }

    rows = table(ok(await shipit("apps", "list")))
    assert rows[0] == ["NAME", "PROJECT", "ENV", "CLUSTER", "NAMESPACE", "IMAGE", "REPLICAS", "FLAGS"]
    assert rows[1:] == [
        ["api", "acme", "production", "offline", "apps", "ghcr.io/acme/api:2", "2-10 @70% cpu", "-"],
        ["web", "shop", "production", "offline", "shop", "ghcr.io/acme/web:1.4", "2", "protected"],
    ]
    listed = json.loads(ok(await shipit("apps", "list", "--project", "shop", "--json")))
    assert [a["name"] for a in listed] == ["web"]
    web = listed[0]
    assert web["env"] == {"LOG_LEVEL": "info", "GREETING": "a=b"}
    assert web["resources"] == {
        "cpu_request": "200m", "cpu_limit": "1", "memory_request": "256Mi", "memory_limit": "512Mi",
    }  # fmt: skip
    assert web["health"] == {"path": "/healthz", "port": 8081, "initial_delay": 5, "period": 15}
    assert web["domain"] == "web.example.com" and web["protected"] is True

    out = ok(
        await shipit(
            "apps", "update", "web", "--env", "LOG_LEVEL=debug", "--unset-env", "GREETING", "--unprotected"
        )
    )
    assert "updated app web: env, protected" in out and "shipit deploy web" in out
    shown = ok(await shipit("apps", "show", "web"))
    assert re.search(r"^env +LOG_LEVEL=debug$", shown, re.M) and "GREETING" not in shown
    assert re.search(r"^protected +no$", shown, re.M)

    # Secrets: KEY=VALUE, seed style --key/--value, and --value - from stdin.  Values are never printed.
    first, second, third = (f"v-{uuid.uuid4().hex}" for _ in range(3))
    results = [
        await shipit("secrets", "set", "web", f"DATABASE_URL={first}"),
        await shipit("secrets", "set", "web", "--key", "API_KEY", "--value", second),
        await shipit("secrets", "set", "web", "--key", "STRIPE_KEY", "--value", "-", input=third + "\n"),
    ]
    for result in results:
        assert "never shown" in ok(result)
    rows = table(ok(await shipit("secrets", "list", "web")))
    assert [r[0] for r in rows] == ["KEY", "API_KEY", "DATABASE_URL", "STRIPE_KEY"]
    keys_json = json.loads(ok(await shipit("secrets", "list", "web", "--json")))
    assert [set(k) for k in keys_json] == [{"key", "updated_at"}] * 3
    assert "deleted API_KEY from web" in ok(await shipit("secrets", "delete", "web", "--key", "API_KEY"))
    line = one_error_line(await shipit("secrets", "delete", "web", "STRIPE_KEY", "NOPE"))
    assert "NOPE" in line
    assert len(json.loads(ok(await shipit("secrets", "list", "web", "--json")))) == 2  # nothing deleted

    # Flags, history, audit.
    assert "locked web" in ok(await shipit("apps", "lock", "web", "--reason", "incident 42"))
    assert "locked" in table(ok(await shipit("apps", "list", "--project", "shop")))[1][-1]
    line = one_error_line(await shipit("deploy", "web", "1.5"))
    assert "locked" in line and "incident 42" in line
    ok(await shipit("apps", "unlock", "web"))
    ok(await shipit("apps", "pause", "web", "--reason", "freeze"))
    assert json.loads(ok(await shipit("apps", "show", "web", "--json")))["paused_reason"] == "freeze"
    ok(await shipit("apps", "resume", "web"))
    assert "no revisions yet" in ok(await shipit("revisions", "web"))
    assert "no revisions yet" in ok(await shipit("apps", "revisions", "web"))
    assert "not been deployed" in ok(await shipit("deploys", "web"))
    status = ok(await shipit("status", "web"))
    assert "nothing deployed yet" in status and "ghcr.io/acme/web:1.4" in status

    audit = table(ok(await shipit("audit", "--target", "app/web")))
    actions = [r[3] for r in audit[1:]]
    for action in ("app.create", "app.update", "secrets.set", "secrets.delete", "app.lock", "app.resume"):
        assert action in actions, actions
    assert {r[2] for r in audit[1:]} == {"cli"}  # the API knows the CLI by its User-Agent
    assert len(json.loads(ok(await shipit("audit", "--action", "secrets.set", "--json")))) == 3

    # No output of any of this, and no database byte, holds a secret value.
    everything = "".join(r.stdout + r.stderr for r in results)
    everything += ok(await shipit("audit", "--json", "--limit", "1000"))
    everything += ok(await shipit("apps", "show", "web", "--json"))
    everything += ok(await shipit("status", "web", "--json"))
    for value in (first, second, third):
        assert value not in everything
        assert value.encode() not in database_bytes(live_server.rt)

    # Its cluster cannot be reached: the app is deleted all the same, with a warning about what stays.
    result = await shipit("apps", "delete", "api", "--yes")
    assert "deleted app api" in ok(result)
    assert result.stderr.startswith("warning: api is deleted, but its objects in namespace apps")
    line = one_error_line(await shipit("apps", "delete", "web", input="n\n"))
    assert "not deleted" in line
    assert [a["name"] for a in json.loads(ok(await shipit("apps", "list", "--json")))] == ["web"]


async def test_cli_tokens_create_list_revoke(live_server: LiveServer, shipit: Run) -> None:
    result = await shipit("tokens", "create", "ci", "--subject", "user:ci")
    token = ok(result).strip()
    assert token.startswith("shp_") and "\n" not in token  # stdout is the token alone: TOKEN=$(shipit ...)
    assert "shown ONCE" in result.stderr
    assert "user:ci at" in ok(await shipit("whoami", token=token))

    rows = table(ok(await shipit("tokens", "list")))
    assert rows[0] == ["ID", "NAME", "PREFIX", "SUBJECT", "ADMIN", "CREATED", "LAST USED", "REVOKED"]
    ci = next(r for r in rows if r[1] == "ci")
    assert ci[3] == "user:ci" and ci[4] == "no" and ci[7] == "-"
    assert token not in ok(await shipit("tokens", "list", "--json"))
    assert f"revoked token {ci[0]}" in ok(await shipit("tokens", "revoke", ci[0]))
    line = one_error_line(await shipit("whoami", token=token))
    assert "revoked" in line and "SHIPIT_TOKEN" in line

    # A non-admin cannot mint admin tokens.
    line = one_error_line(await shipit("tokens", "create", "root", "--admin", token=await make_token(
        live_server.rt, subject="user:eve", admin=False)))  # fmt: skip
    assert "admin" in line


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--image", "ghcr.io/acme/web:1.0 latest"], ["image", "not a valid image reference"]),
        (["--min-replicas", "5", "--max-replicas", "2"], ["min_replicas", "greater than max_replicas"]),
        (
            ["--min-replicas", "1", "--max-replicas", "2", "--cpu-target", "0"],
            ["cpu_target", "between 1 and 100"],
        ),
        (
            ["--min-replicas", "1", "--max-replicas", "2", "--cpu-target", "101"],
            ["cpu_target", "between 1 and 100"],
        ),
        (["--memory-limit", "lots"], ["memory_limit"]),
        (["--env", "NOEQUALS"], ["--env", "KEY=VALUE"]),
        (["--project", "nope"], ["project", "nope"]),
        (["--previews-from-forks", "sometimes"], ["previews_from_forks"]),
    ],
)
async def test_cli_bad_input_is_one_line_naming_the_field_and_writes_nothing(
    live_server: LiveServer, shipit: Run, offline: str, args: list[str], words: list[str]
) -> None:
    line = one_error_line(await shipit("apps", "create", "web", "--cluster", "offline", *args))
    for word in words:
        assert word in line, line
    assert await table_rows(live_server.rt, "apps") == []
    assert "no apps yet" in ok(await shipit("apps", "list"))


async def test_cli_unknown_app_and_bad_name(shipit: Run, offline: str) -> None:
    ok(await shipit("apps", "create", "web", "--no-deploy"))  # the only project and the only cluster
    for args in (["apps", "show", "wbe"], ["deploy", "wbe"], ["status", "wbe"], ["secrets", "list", "wbe"]):
        line = one_error_line(await shipit(*args))
        assert "no app named 'wbe'; your apps: web" in line, line
    line = one_error_line(await shipit("apps", "create", "Web_App", "--no-deploy"))
    assert "name must be a DNS-1123 label" in line
    line = one_error_line(await shipit("scale", "web", "--replicas", "2", "--auto-off"))
    assert "--replicas" in line and "--auto-off" in line


async def test_cli_scale_down_window_sets_shows_resets_and_refuses(shipit: Run, offline: str) -> None:
    ok(
        await shipit(
            "apps",
            "create",
            "web",
            "--no-deploy",
            "--image",
            "ghcr.io/acme/web:1.0",
            "--min-replicas",
            "1",
            "--max-replicas",
            "3",
        )
    )

    async def window() -> Any:
        return json.loads(ok(await shipit("apps", "show", "web", "--json")))["autoscaling"][
            "scale_down_window"
        ]

    ok(await shipit("scale", "web", "--min", "1", "--max", "4", "--cpu", "50", "--scale-down-window", "30"))
    assert await window() == 30
    assert "1-4 @50% cpu, down after 30s" in ok(await shipit("apps", "list"))
    ok(await shipit("apps", "update", "web", "--scale-down-window", "0"))
    assert await window() == 0
    ok(await shipit("scale", "web", "--scale-down-window", "default"))
    assert await window() is None
    # The API's bounds, named as the API names them; a word that is not seconds, by the CLI.
    for bad in ("-1", "3601"):
        line = one_error_line(await shipit("scale", "web", "--scale-down-window", bad))
        assert "scale_down_window must be between 0 and 3600" in line, line
    line = one_error_line(await shipit("scale", "web", "--scale-down-window", "soon"))
    assert "--scale-down-window takes seconds" in line, line
    line = one_error_line(await shipit("scale", "web", "--replicas", "2", "--scale-down-window", "30"))
    assert "not several" in line, line
    assert await window() is None


async def test_cli_previews_from_forks_and_previews_approve(shipit: Run, offline: str) -> None:
    ok(
        await shipit(
            "apps", "create", "web", "--no-deploy", "--git-repo", "acme/web",
            "--image-template", "ghcr.io/acme/web:{sha}", "--previews", "--preview-domain", "preview.acme.dev",
            "--previews-from-forks", "approved",
        )
    )  # fmt: skip
    shown = json.loads(ok(await shipit("apps", "show", "web", "--json")))
    assert shown["previews"]["from_forks"] == "approved"
    assert "previews_from_forks" in ok(
        await shipit("apps", "update", "web", "--previews-from-forks", "always")
    )
    assert json.loads(ok(await shipit("apps", "show", "web", "--json")))["previews"]["from_forks"] == "always"
    assert "web has no open previews" in ok(await shipit("previews", "list", "web"))
    line = one_error_line(await shipit("previews", "approve", "web", "42"))
    assert "web has no open preview for pull request #42" in line
    assert "--previews-from-" in ok(await shipit("apps", "update", "--help"))  # the column is narrow


async def test_cli_refuses_a_blank_image_before_calling_the_api(
    live_server: LiveServer, shipit: Run, offline: str
) -> None:
    ok(await shipit("apps", "create", "web", "--image", "ghcr.io/acme/web:1.0", "--no-deploy"))
    nowhere = f"http://127.0.0.1:{free_port()}"
    for blank in ("", "   "):
        # Pointed at nothing: had it called the API, it would blame SHIPIT_URL.
        line = one_error_line(await shipit("deploy", "web", blank, url=nowhere))
        assert line.startswith("error: image must not be empty"), line
        line = one_error_line(await shipit("deploy", "web", blank))
        assert "image" in line, line
    assert await table_rows(live_server.rt, "deployments") == []
    assert "not been deployed" in ok(await shipit("deploys", "web"))


async def test_cli_unreadable_kubeconfig_names_the_flag(shipit: Run, tmp_path: Path) -> None:
    line = one_error_line(
        await shipit("clusters", "add", "prod", "--kubeconfig", str(tmp_path / "missing.yaml"))
    )
    assert line.startswith("error: --kubeconfig: cannot read") and "missing.yaml" in line
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    line = one_error_line(await shipit("clusters", "add", "prod", "--kubeconfig", str(binary)))
    assert "--kubeconfig" in line
    # Readable but not a kubeconfig: the API refuses it, naming the field.
    junk = tmp_path / "junk.yaml"
    junk.write_text("clusters: []\n")
    line = one_error_line(await shipit("clusters", "add", "prod", "--kubeconfig", str(junk)))
    assert "kubeconfig" in line
    assert "no clusters yet" in ok(await shipit("clusters", "list"))


async def test_cli_secret_values_are_not_echoed_even_when_malformed(shipit: Run, offline: str) -> None:
    ok(await shipit("apps", "create", "web", "--no-deploy"))
    value = f"v-{uuid.uuid4().hex}"
    result = await shipit("secrets", "set", "web", f"GOOD={value}", value)  # a value without KEY=
    line = one_error_line(result)
    assert value not in result.stdout + result.stderr and "item 2" in line
    result = await shipit("secrets", "set", "web", f"1BAD={value}")
    line = one_error_line(result)
    # Nor a refused name: that is most often a value given without its name.
    assert value not in result.stdout + result.stderr and "secret's key" in line and "1BAD" not in line
    assert "no secrets" in ok(await shipit("secrets", "list", "web"))


async def test_cli_viewer_cannot_deploy_and_is_told_the_role(
    live_server: LiveServer, shipit: Run, offline: str
) -> None:
    ok(await shipit("apps", "create", "web", "--image", "ghcr.io/acme/web:1.0", "--no-deploy"))
    ok(await shipit("projects", "access", "acme", "user:vera", "viewer"))
    vera = await make_token(live_server.rt, subject="user:vera", admin=False)
    assert "web" in ok(await shipit("apps", "list", token=vera))
    line = one_error_line(await shipit("deploy", "web", "2.0", token=vera))
    assert "deploying in project acme needs the developer role; you have viewer" in line
    line = one_error_line(await shipit("secrets", "set", "web", "K=v", token=vera))
    assert "needs the admin role" in line
    assert "not been deployed" in ok(await shipit("deploys", "web"))


async def test_cli_without_a_token_says_to_set_SHIPIT_TOKEN(shipit: Run) -> None:
    line = one_error_line(await shipit("apps", "list", token=""), code=2)
    assert "set SHIPIT_TOKEN" in line


async def test_cli_with_nothing_listening_names_SHIPIT_URL(shipit: Run) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(await shipit("apps", "list", url=url), code=2)
    assert url in line and "connection refused" in line and "SHIPIT_URL" in line
    line = one_error_line(await shipit("apps", "list", url="127.0.0.1:8000"), code=2)
    assert "SHIPIT_URL" in line


async def test_cli_help_lists_every_command(shipit: Run) -> None:
    out = ok(await shipit("--help"))
    for command in (
        "projects", "clusters", "apps", "deploy", "rollback", "revisions", "status", "scale", "approve",
        "cancel", "deploys", "secrets", "logs", "audit", "tokens", "serve", "db", "keys",
    ):  # fmt: skip
        assert command in out, command
    apps_help = ok(await shipit("apps", "create", "--help"))
    for flag in (
        "--image", "--replicas", "--port", "--env", "--cpu-request", "--cpu-limit", "--memory-request",
        "--memory-limit", "--health-path", "--health-port", "--health-initial", "--health-period",
        "--min-replicas", "--max-replicas", "--cpu-target", "--domain", "--protected", "--no-deploy",
    ):  # fmt: skip
        assert flag in apps_help, flag


# --------------------------------------------------------------------------- on a real cluster


async def test_cli_rollback_in_one_of_several_environments_says_how_to_resume_it(
    world: World, shipit: Run
) -> None:
    """The README tour's rollback, once web also runs in staging: the `apps resume` it advises must work."""
    ok(
        await shipit(
            "apps", "create", "web", "--project", world.project, "--cluster", world.cluster,
            "--image", "ghcr.io/acme/web:1.0", "--wait",
        )
    )  # fmt: skip
    ok(await shipit("deploy", "web", "1.1", "--wait"))
    ok(await shipit("envs", "create", "acme", "staging", "--namespace", "acme-stg", "--before", "production"))
    ok(await shipit("apps", "create", "web", "--project", "acme", "--env", "staging", "--no-deploy"))

    out = ok(await shipit("rollback", "web", "--env", "production", "--wait"))
    hint = re.search(r"paused until `shipit (.*)`", out)
    assert hint is not None and hint.group(1) == "apps resume web --env production", out
    assert out.splitlines()[-1].endswith("succeeded: web ghcr.io/acme/web:1.0 (revision 3)")
    ok(await shipit(*hint.group(1).split()))
    shown = json.loads(ok(await shipit("apps", "show", "web", "--env", "production", "--json")))
    assert shown["auto_deploy_paused"] is False


async def test_cli_deploy_rollback_scale_and_logs_on_a_cluster(world: World, shipit: Run) -> None:
    out = ok(
        await shipit(
            "apps", "create", "web", "--project", world.project, "--cluster", world.cluster,
            "--image", "ghcr.io/acme/web:1.0", "--wait",
        )
    )  # fmt: skip
    assert "created app web" in out
    assert out.splitlines()[-1].startswith("deploy #") and "succeeded" in out.splitlines()[-1]

    out = ok(await shipit("deploy", "web", "1.1", "--wait"))
    assert "queued" in out and "ghcr.io/acme/web:1.1 (revision 2)" in out
    assert out.splitlines()[-1].endswith("succeeded: web ghcr.io/acme/web:1.1 (revision 2)")
    status = ok(await shipit("status", "web"))
    assert "revision 2, ghcr.io/acme/web:1.1" in status
    assert "image ghcr.io/acme/web:1.1" in status and "ready" in status

    revisions = table(ok(await shipit("revisions", "web")))
    assert [r[:2] for r in revisions[1:]] == [["2", "ghcr.io/acme/web:1.1"], ["1", "ghcr.io/acme/web:1.0"]]

    out = ok(await shipit("apps", "rollback", "web", "--wait"))
    assert "paused" in out and out.splitlines()[-1].startswith("deploy #")
    assert json.loads(ok(await shipit("apps", "show", "web", "--json")))["auto_deploy_paused"] is True
    assert "rollback" in ok(await shipit("revisions", "web")).splitlines()[1]
    assert json.loads(ok(await shipit("status", "web", "--json")))["live"]["image"] == "ghcr.io/acme/web:1.0"

    final = json.loads(
        ok(await shipit("scale", "web", "--min", "2", "--max", "4", "--cpu", "60", "--wait", "--json"))
    )
    assert final["status"] == "succeeded" and final["trigger"] == "scale"
    assert "2-4 @60% cpu" in ok(await shipit("apps", "list"))
    ok(await shipit("scale", "web", "--auto-off", "--wait"))

    # A secret change rolls the pods; --wait follows that deploy too.
    value = f"v-{uuid.uuid4().hex}"
    out = ok(await shipit("secrets", "set", "web", "--key", "TOKEN", "--value", "-", "--wait", input=value))
    assert "set TOKEN on web" in out and out.splitlines()[-1].endswith(
        "succeeded: web ghcr.io/acme/web:1.0 (revision 6)"
    )
    assert value not in out
    out = ok(await shipit("apps", "update", "web", "--env", "MODE=blue", "--wait", "--json"))
    updated = json.loads(out)
    assert updated["app"]["env"] == {"MODE": "blue"} and updated["deployment"]["status"] == "succeeded"

    logs = ok(await shipit("logs", "web", "--tail", "5"))
    # No file kwok serves as these pods' logs (tests/shipit/test_pod_logs.py writes some): each pod
    # answers with one line saying why it has none, and a followed stream ends with them.
    assert logs.strip() and all("(no logs: " in line for line in logs.splitlines()), logs
    followed = ok(await shipit("logs", "web", "--follow", "--json"))
    rows = [json.loads(line)["line"] for line in followed.splitlines()]
    assert rows and all("(no logs: " in line for line in rows), followed
    history = json.loads(ok(await shipit("deploys", "web", "--json")))
    assert [d["status"] for d in history] == ["succeeded"] * 7
    assert [d["trigger"] for d in history[:3]] == ["cli", "config", "scale"]

    assert "deleted app web" in ok(await shipit("apps", "delete", "web", "--yes"))


async def test_cli_failed_deploy_exits_1_with_the_reason(world: World, shipit: Run) -> None:
    ok(await shipit("apps", "create", "web", "--image", "ghcr.io/acme/web:1.0", "--replicas", "1", "--wait"))
    result = await shipit("deploy", "web", "ghcr.io/acme/web:fail-1", "--wait")
    line = one_error_line(result)
    assert "failed" in line and "CrashLoopBackOff" in line, line
    # Every status change is printed as it is seen, the failure with the pod's last log lines.
    assert result.stdout.startswith("deploy #2 queued"), result.stdout
    assert "deploy #2 failed" in result.stdout and "last log lines:" in result.stdout


async def test_cli_a_failed_deploy_is_rolled_back_and_shows_apart_from_what_runs(
    world: World, shipit: Run
) -> None:
    ok(await shipit("apps", "create", "web", "--image", "ghcr.io/acme/web:1.0", "--wait"))
    one_error_line(await shipit("deploy", "web", "ghcr.io/acme/web:fail-1", "--wait"))

    async def rolled_back() -> dict[str, Any] | None:
        shown: dict[str, Any] = json.loads(ok(await shipit("apps", "show", "web", "--json")))
        attempt = shown.get("last_attempt") or {}
        return shown if attempt.get("outcome") == "failed, rolled back to revision 1" else None

    shown = await eventually(rolled_back, what="the automatic rollback", timeout=120)
    # The failed image never became the app's: what runs and the last attempt are kept apart.
    assert shown["image"] == "ghcr.io/acme/web:1.0" and shown["current_revision"] == 1
    assert shown["last_attempt"]["image"] == "ghcr.io/acme/web:fail-1"
    assert shown["last_attempt"]["status"] == "failed" and shown["auto_rollback"] is True
    text = ok(await shipit("apps", "show", "web"))
    assert "image" in text and "ghcr.io/acme/web:1.0" in text
    assert "failed, rolled back to revision 1" in text
    status = ok(await shipit("status", "web"))
    assert "last attempt" in status and "fail-1" in status and "failed, rolled back to revision 1" in status
    assert "revision 1, ghcr.io/acme/web:1.0" in status
    history = json.loads(ok(await shipit("deploys", "web", "--json")))
    assert [d["trigger"] for d in history][:2] == ["auto-rollback", "cli"]
    assert history[1]["rolled_back_by"] == history[0]["id"]

    # shipit's own settings (no deploy writes them to the cluster) are not sent to a deploy.
    out = ok(await shipit("apps", "update", "web", "--auto-rollback", "off", "--unprotected"))
    assert "nothing changes on the cluster" in out and "shipit deploy" not in out
    assert json.loads(ok(await shipit("apps", "show", "web", "--json")))["auto_rollback"] is False
    assert "on or off" in one_error_line(await shipit("apps", "update", "web", "--auto-rollback", "maybe"))


async def test_cli_protected_app_waits_for_a_second_person(
    world: World, live_server: LiveServer, shipit: Run
) -> None:
    ok(await shipit("apps", "create", "web", "--image", "ghcr.io/acme/web:1.0", "--protected"))
    queued = json.loads(ok(await shipit("deploys", "web", "--json")))[0]
    assert queued["status"] == "awaiting_approval"
    line = one_error_line(await shipit("logs", "web"))
    assert "web has no pods" in line
    line = one_error_line(await shipit("approve", str(queued["id"])))
    assert "nobody approves their own deploy" in line
    ok(await shipit("projects", "access", world.project, "user:rita", "developer"))
    rita = await make_token(live_server.rt, subject="user:rita", admin=False)
    assert "queued" in ok(await shipit("approve", str(queued["id"]), token=rita))
    later = json.loads(ok(await shipit("deploy", "web", "1.1", "--json")))
    assert later["status"] == "awaiting_approval"
    assert "cancelled" in ok(await shipit("cancel", str(later["id"])))
    # A rejection says who in its line, and in the JSON beside approved_by.
    refused = json.loads(ok(await shipit("deploy", "web", "1.2", "--json")))
    assert f"deploy #{refused['id']} cancelled" in ok(await shipit("reject", str(refused["id"]), token=rita))
    shown = json.loads(ok(await shipit("deploys", "web", "--json")))[0]
    assert (shown["id"], shown["error"], shown["rejected_by"]) == (
        refused["id"],
        "rejected by rita",
        "user:rita",
    )


async def test_cli_clusters_add_with_a_real_kubeconfig(shipit: Run, kube_env: Any) -> None:
    out = ok(
        await shipit(
            "clusters", "add", "local", "--kubeconfig", str(kube_env.kubeconfig_path), "--namespace", "apps"
        )
    )
    assert f"added cluster local: {kube_env.server}" in out and "default namespace apps" in out
    assert [c["name"] for c in json.loads(ok(await shipit("clusters", "list", "--json")))] == ["local"]
