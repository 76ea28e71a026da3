"""Environments and promotion from the API and the CLI, over real HTTP (no cluster needed: the
cluster row is offline, so deploys are only queued; the real rollout is tests/core/test_promotion.py)."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
from sqlalchemy import select, update

from core import apps
from storage import models
from tests.conftest import LiveServer
from tests.shipit.test_cli import Run, cli_process, ok, one_error_line, table
from tests.shipit.test_cli import shipit as shipit  # the fixture

pytestmark = pytest.mark.both_databases


APP = {"project": "acme", "cluster": "offline", "image": "ghcr.io/acme/web:1.0", "deploy": False}


async def test_api_environments_rows_and_promotion(
    api: httpx.AsyncClient, live_server: LiveServer, offline: str
) -> None:
    r = await api.post(
        "/api/v1/apps",
        json={
            **APP, "name": "web", "replicas": 3, "github_environment": "production",
            "domain": "web.acme.dev", "protected": True,
        },
    )  # fmt: skip
    assert r.status_code == 201 and r.json()["app"]["environment"] == "production", r.text
    r = await api.post(
        "/api/v1/projects/acme/environments",
        json={"name": "staging", "namespace": "acme-stg", "before": "production"},
    )
    assert r.status_code == 201, r.text
    r = await api.get("/api/v1/projects/acme/environments")
    assert [(e["name"], e["namespace"], e["apps"]) for e in r.json()] == [
        ("staging", "acme-stg", []),
        ("production", None, ["web"]),
    ]
    # The staging row copies the definition (image) and takes its own overrides and namespace.
    r = await api.post(
        "/api/v1/apps",
        json={"name": "web", "project": "acme", "environment": "staging", "replicas": 1, "deploy": False},
    )
    assert r.status_code == 201, r.text
    staging = r.json()["app"]
    assert (staging["environment"], staging["namespace"], staging["image"], staging["replicas"]) == (
        "staging", "acme-stg", "ghcr.io/acme/web:1.0", 1,
    )  # fmt: skip
    # Not its domain (two Ingresses would claim web.acme.dev) nor its protection (the environment's).
    assert (staging["domain"], staging["protected"]) == (None, False)
    production = (await api.get("/api/v1/apps/web", params={"env": "production"})).json()
    assert (production["domain"], production["protected"]) == ("web.acme.dev", True)
    # Not its GitHub environment: the staging row reports to GitHub's "staging", never "production".
    assert await _github_environments(live_server, "web") == {
        "production": "production",
        "staging": "staging",
    }

    r = await api.get("/api/v1/apps/web")
    assert r.status_code == 422 and r.json()["error"]["field"] == "env", r.text
    # Worded for the API (a query parameter), with the names a client can offer.
    error = r.json()["error"]
    assert error["type"] == "SeveralEnvironments" and set(error["environments"]) == {"production", "staging"}
    assert error["message"].endswith(
        f"say which, with the env query parameter (?env={error['environments'][0]})"
    )
    assert "--env" not in error["message"]
    r = await api.get("/api/v1/apps/web", params={"env": "production"})
    assert r.status_code == 200 and r.json()["replicas"] == 3
    r = await api.get("/api/v1/apps/web", params={"env": "Bad_Env"})
    assert r.status_code == 422, r.text
    r = await api.put(
        "/api/v1/apps/web/secrets", params={"env": "staging", "deploy": "false"}, json={"values": {"K": "v"}}
    )
    assert r.status_code == 200, r.text
    assert (await api.get("/api/v1/apps/web/secrets", params={"env": "production"})).json() == []

    # Nothing ran in staging yet: nothing to promote.
    r = await api.post("/api/v1/apps/web/promote", json={"from": "staging", "to": "production"})
    assert r.status_code == 409 and "nothing to promote" in r.json()["error"]["message"], r.text
    digest = "sha256:" + "cd" * 32
    await _pretend_staging_ran(live_server, image=f"ghcr.io/acme/web@{digest}")
    r = await api.post("/api/v1/apps/web/promote", json={"from": "staging", "to": "production"})
    assert r.status_code == 202, r.text
    d = r.json()
    assert (d["trigger"], d["image"], d["namespace"]) == ("promote", f"ghcr.io/acme/web@{digest}", "apps")

    r = await api.delete("/api/v1/projects/acme/environments/staging")
    assert r.status_code == 409 and "still has apps" in r.json()["error"]["message"]


async def _pretend_staging_ran(live_server: LiveServer, *, image: str) -> None:
    """The staging row's current revision, as a succeeded rollout leaves it (no cluster here)."""
    rt = live_server.rt
    async with rt.sessionmaker.begin() as session:
        from core.identity import SYSTEM

        row = await apps.get(session, actor=SYSTEM, name="web", env="staging")
        revision = models.Revision(
            app_id=row.id, number=99, image=image, snapshot={"image": image, "release_command": "echo hi"},
            secret_checksum="", created_by="test",
        )  # fmt: skip
        session.add(revision)
        await session.flush()
        await session.execute(
            update(models.App).where(models.App.id == row.id).values(current_revision_id=revision.id)
        )


async def test_cli_envs_env_flag_and_promote(shipit: Run, live_server: LiveServer, offline: str) -> None:
    ok(
        await shipit(
            "apps",
            "create",
            "web",
            "--project",
            "acme",
            "--cluster",
            "offline",
            "--image",
            "ghcr.io/acme/web:1.0",
            "--no-deploy",
        )
    )
    out = ok(
        await shipit("envs", "create", "acme", "staging", "--namespace", "acme-stg", "--before", "production")
    )
    assert "created environment acme staging (position 0" in out
    # --env without "=" names the environment; with "=" it still sets a variable.
    out = ok(
        await shipit(
            "apps",
            "create",
            "web",
            "--project",
            "acme",
            "--env",
            "staging",
            "--env",
            "MODE=stg",
            "--no-deploy",
        )
    )
    assert "environment staging" in out and "namespace acme-stg" in out
    rows = table(ok(await shipit("envs", "list", "acme")))
    assert rows == [
        ["ENV", "CLUSTER", "NAMESPACE", "APPS"],
        ["staging", "-", "acme-stg", "web"],
        ["production", "-", "-", "web"],
    ]
    rows = table(ok(await shipit("apps", "list")))
    assert [(r[0], r[2], r[4]) for r in rows[1:]] == [
        ("web", "production", "apps"),
        ("web", "staging", "acme-stg"),
    ]

    error = one_error_line(await shipit("status", "web"))
    assert "several environments" in error and "production" in error
    # Worded for the CLI: its flag, not the API's query parameter.
    assert error.endswith("say which, with --env (e.g. --env staging)"), error
    assert "query parameter" not in error
    shown = json.loads(ok(await shipit("apps", "show", "web", "--env", "staging", "--json")))
    assert shown["env"] == {"MODE": "stg"} and shown["environment"] == "staging"
    d = json.loads(ok(await shipit("deploy", "web", "1.1", "--env", "staging", "--json")))
    assert (d["namespace"], d["image"]) == ("acme-stg", "ghcr.io/acme/web:1.1")
    error = one_error_line(await shipit("promote", "web", "staging", "production"))
    assert "nothing to promote" in error
    await _pretend_staging_ran(live_server, image="ghcr.io/acme/web@sha256:" + "ef" * 32)
    out = ok(await shipit("promote", "web", "staging", "production"))
    assert "promoting web from staging to production: ghcr.io/acme/web@sha256:" in out


async def _github_environments(live_server: LiveServer, name: str) -> dict[str, str | None]:
    """Each row's GitHub environment (not in the API's app answer), by shipit environment."""
    async with live_server.rt.sessionmaker() as session:
        rows = await session.execute(
            select(models.Environment.name, models.App.github_environment)
            .join(models.App, models.App.environment_id == models.Environment.id)
            .where(models.App.name == name)
        )
        return {env: gh for env, gh in rows}


async def test_api_new_environment_row_with_replicas_drops_the_copied_autoscaling(
    api: httpx.AsyncClient, offline: str
) -> None:
    """The README's tour: production autoscales 2-10, then `apps create web --env staging --replicas 1`
    must run one pod in staging, not the copied HPA's two (as `scale --replicas N` removes an HPA)."""
    r = await api.post(
        "/api/v1/apps", json={**APP, "name": "web", "min_replicas": 2, "max_replicas": 10, "cpu_target": 70}
    )
    assert r.status_code == 201, r.text
    for name, namespace in (("staging", "acme-stg"), ("qa", "acme-qa"), ("perf", "acme-perf")):
        r = await api.post(
            "/api/v1/projects/acme/environments",
            json={"name": name, "namespace": namespace, "before": "production"},
        )
        assert r.status_code == 201, r.text

    new_row = {"name": "web", "project": "acme", "deploy": False}
    r = await api.post("/api/v1/apps", json={**new_row, "environment": "staging", "replicas": 1})
    assert r.status_code == 201, r.text
    assert (r.json()["app"]["replicas"], r.json()["app"]["autoscaling"]) == (1, None)
    # Without a replica count the row copies production's autoscaling, as the rest of its definition.
    r = await api.post("/api/v1/apps", json={**new_row, "environment": "qa"})
    assert r.status_code == 201, r.text
    assert r.json()["app"]["autoscaling"] == {
        "min_replicas": 2,
        "max_replicas": 10,
        "cpu_target": 70,
        "scale_down_window": None,
    }
    # Both given: the row's own autoscaling, with its own fallback count.
    r = await api.post(
        "/api/v1/apps",
        json={**new_row, "environment": "perf", "replicas": 1, "min_replicas": 3, "max_replicas": 4},
    )
    assert r.status_code == 201, r.text
    assert r.json()["app"]["autoscaling"] == {
        "min_replicas": 3,
        "max_replicas": 4,
        "cpu_target": 70,
        "scale_down_window": None,
    }
    # Production keeps its own.
    production = (await api.get("/api/v1/apps/web", params={"env": "production"})).json()
    assert production["autoscaling"] == {
        "min_replicas": 2,
        "max_replicas": 10,
        "cpu_target": 70,
        "scale_down_window": None,
    }


async def _web_in_staging_and_production(shipit: Run) -> None:
    """Through the CLI: app `web` on the offline cluster in production, then in a new staging before it."""
    ok(
        await shipit(
            "apps", "create", "web", "--project", "acme", "--cluster", "offline",
            "--image", "ghcr.io/acme/web:1.0", "--no-deploy",
        )
    )  # fmt: skip
    ok(await shipit("envs", "create", "acme", "staging", "--namespace", "acme-stg", "--before", "production"))
    ok(await shipit("apps", "create", "web", "--project", "acme", "--env", "staging", "--no-deploy"))


async def test_cli_app_flags_take_env(shipit: Run, offline: str) -> None:
    """After the README's environments section `web` runs in two environments, so `apps resume web`
    (and lock, unlock, pause) must take --env like every other command about the app."""
    await _web_in_staging_and_production(shipit)

    error = one_error_line(await shipit("apps", "pause", "web"))
    assert "several environments (staging, production)" in error
    # What each answer says to run next names the environment too, or it would be refused the same way.
    out = ok(await shipit("apps", "pause", "web", "--env", "staging", "--reason", "soak"))
    assert "`shipit apps resume web --env staging`" in out
    out = ok(await shipit("apps", "lock", "web", "--env", "staging", "--reason", "db migration"))
    assert "`shipit apps unlock web --env staging`" in out

    async def flags(env: str) -> tuple[bool, str | None]:
        shown = json.loads(ok(await shipit("apps", "show", "web", "--env", env, "--json")))
        return shown["auto_deploy_paused"], shown["locked"]

    assert await flags("staging") == (True, "db migration")
    assert await flags("production") == (False, None)
    ok(await shipit("apps", "resume", "web", "--env", "staging"))
    ok(await shipit("apps", "unlock", "web", "--env", "staging"))
    assert await flags("staging") == (False, None)


async def test_cli_hints_and_previews_take_env(shipit: Run, offline: str) -> None:
    """Once web runs in two environments, a command the CLI suggests next must name the environment (or
    it is refused), and `previews list/approve`, which the refusal tells to take --env, must take it."""
    await _web_in_staging_and_production(shipit)

    def hint(out: str, *, after: str) -> list[str]:
        line = next(line for line in out.splitlines() if after in line)
        command = line.split(after, 1)[1].removesuffix(", then push").strip()
        assert command.startswith("shipit "), line
        return command.split()[1:]

    out = ok(await shipit("revisions", "web", "--env", "staging"))
    assert hint(out, after="no revisions yet:") == ["deploy", "web", "--env", "staging"]
    out = ok(await shipit("builds", "list", "web", "--env", "staging"))
    suggested = hint(out, after="no builds yet:")
    assert suggested[:4] == ["apps", "update", "web", "--env"] and suggested[4] == "staging", out
    out = ok(await shipit("apps", "update", "web", "--env", "staging", "--replicas", "2"))
    suggested = hint(out, after="next deploy:")
    assert suggested == ["deploy", "web", "--env", "staging"], out
    assert "deploy #" in ok(await shipit(*suggested))  # the hint, run as printed, is accepted

    assert "several environments" in one_error_line(await shipit("previews", "list", "web"))
    assert "no open previews" in ok(await shipit("previews", "list", "web", "--env", "staging"))
    error = one_error_line(await shipit("previews", "approve", "web", "42", "--env", "staging"))
    assert "several environments" not in error and "42" in error, error


async def test_ctrl_c_while_waiting_names_the_status_command_with_its_env(
    live_server: LiveServer, shipit: Run, offline: str
) -> None:
    """`deploy ... --wait` stopped with Ctrl-C says how to follow the deploy: `shipit status web` alone
    would be refused for an app in two environments.  A real `shipit` process and a real SIGINT; the
    offline cluster keeps the deploy from finishing."""
    await _web_in_staging_and_production(shipit)

    proc = await cli_process(live_server, "deploy", "web", "1.1", "--env", "staging", "--wait")
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert b"deploy #" in first, first  # it is waiting now
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    assert "(`shipit status web --env staging`)" in stderr.decode(), stderr
