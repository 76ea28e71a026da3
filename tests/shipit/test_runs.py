"""One-off runs (`shipit run`) on the test control plane: a Job from the app's current revision, over the
real API and the CLI.  kwok ends any Job pod Succeeded, and one whose image tag starts with `fail-` Failed
with exit code 1 (README "Simulated failures")."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s

from storage import models
from tests.conftest import LiveServer, World
from tests.helpers import eventually
from tests.shipit.cluster_apps import deployed_app, wait_deploy
from tests.shipit.conftest import make_token, table_rows
from tests.shipit.test_api import error_of
from tests.shipit.test_cli import Run, ok
from tests.shipit.test_cli import shipit as shipit  # the fixture
from tests.testenv.plugin import PodLogs

IMAGE = "ghcr.io/acme/web:1.0"
SECRET_ARG = "--token=Sup3rSecretArg-7f3a"


async def finished(api: httpx.AsyncClient, app: str, run: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        r = await api.get(f"/api/v1/apps/{app}/runs/{run}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    return dict(await eventually(probe, lambda r: r["state"] != "running", timeout=120, what=f"run {run}"))


async def as_(live_server: LiveServer, subject: str) -> httpx.AsyncClient:
    token = await make_token(live_server.rt, subject=subject, admin=False)
    return httpx.AsyncClient(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.mark.both_databases
async def test_a_run_uses_the_current_revisions_image_env_and_secrets_and_succeeds(
    world: World,
    live_server: LiveServer,
    api: httpx.AsyncClient,
    kube_api: k8s.ApiClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # shipit's own lines (a client library's DEBUG dumps response bodies)
    body = {"name": "web", "project": world.project, "cluster": world.cluster, "image": IMAGE}
    r = await api.post("/api/v1/apps", json={**body, "deploy": False, "env": {"GREETING": "hi"}})
    assert r.status_code == 201, r.text
    assert (await api.put("/api/v1/apps/web/secrets", json={"values": {"API_KEY": "k1"}})).status_code < 300
    d = await api.post("/api/v1/apps/web/deploys", json={"image": IMAGE})
    assert d.status_code == 202, d.text
    assert (await wait_deploy(api, d.json()["id"]))["status"] == "succeeded"
    deployment = await k8s.AppsV1Api(kube_api).read_namespaced_deployment("web", world.namespace)
    image = deployment.spec.template.spec.containers[0].image

    argv = ["rake", "db:seed", SECRET_ARG]
    r = await api.post("/api/v1/apps/web/runs", json={"command": argv, "timeout_seconds": 120})
    assert r.status_code == 201, r.text
    run = r.json()
    name = run["name"]
    assert name.startswith("web-run-") and run["program"] == "rake" and SECRET_ARG not in r.text

    # The Job as the real API server has it.
    job = await k8s.BatchV1Api(kube_api).read_namespaced_job(name, world.namespace)
    labels = job.metadata.labels
    assert labels["app.kubernetes.io/managed-by"] == "shipit"
    assert labels["shipit.dev/project"] == world.project and labels["shipit.dev/app"] == "web"
    assert labels["shipit.dev/run"] == name and labels["app.kubernetes.io/component"] == "run"
    assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds == 120
    assert job.spec.ttl_seconds_after_finished == live_server.rt.core.config.release_ttl_seconds
    pod_spec = job.spec.template.spec
    assert pod_spec.restart_policy == "Never"
    # The pods carry no app selector labels: a run's pod never receives the app's traffic.
    assert "app.kubernetes.io/name" not in job.spec.template.metadata.labels
    [container] = pod_spec.containers
    assert container.image == image and run["image"] == image
    assert container.command == argv and container.args is None  # as given, no shell
    assert {e.name: e.value for e in container.env} == {"GREETING": "hi"}
    assert [e.secret_ref.name for e in container.env_from] == [name]
    secret = await k8s.CoreV1Api(kube_api).read_namespaced_secret(name, world.namespace)
    assert set(secret.data) == {"API_KEY"}
    assert [o.uid for o in secret.metadata.owner_references] == [job.metadata.uid]

    done = await finished(api, "web", name)
    assert done["state"] == "succeeded" and done["exit_code"] == 0 and done["pod"], done
    listed = (await api.get("/api/v1/apps/web/runs")).json()
    assert [x["name"] for x in listed] == [name] and listed[0]["state"] == "succeeded"

    # The audit row names the program and how many arguments, never the arguments.
    rows = [a for a in await table_rows(live_server.rt, "audit_events") if a["action"] == "app.run"]
    assert len(rows) == 1
    assert rows[0]["actor"] == "user:admin" and rows[0]["target"] == "web"
    details = rows[0]["details"]
    details = json.loads(details) if isinstance(details, str) else details
    assert {k: details[k] for k in ("job", "program", "args")} == {
        "job": name,
        "program": "rake",
        "args": 2,
    }
    everything = str(await table_rows(live_server.rt, "audit_events"))
    assert "Sup3rSecretArg" not in everything and "db:seed" not in everything
    assert "Sup3rSecretArg" not in caplog.text and f"one-off run {name}" in caplog.text


async def test_a_run_whose_image_fails_ends_failed_and_the_cli_exits_1(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient, shipit: Run
) -> None:
    # No replicas, so the rollout of a fail- image succeeds and it becomes the current revision.
    await deployed_app(api, world, image="ghcr.io/acme/web:fail-1", replicas=0)
    result = await shipit("run", "web", "--", "sh", "-c", "exit 1")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "failed (Error, exit code 1)" in result.stderr, result.stderr
    [run] = (await api.get("/api/v1/apps/web/runs")).json()
    assert run["state"] == "failed" and run["reason"] == "Error" and run["exit_code"] == 1
    # The history keeps how it ended after its Job is gone (the TTL would delete it).
    await job_deleted(kube_api, world, run["name"])
    kept = await api.get(f"/api/v1/apps/web/runs/{run['name']}")
    assert kept.status_code == 200, kept.text
    got = kept.json()
    assert (got["state"], got["exit_code"], got["reason"], got["pod"]) == ("failed", 1, "Error", None)
    assert got["program"] == "sh" and got["args"] == 2 and got["actor"] == "user:admin"


async def test_run_input_and_an_app_never_deployed(world: World, api: httpx.AsyncClient) -> None:
    body = {"name": "web", "project": world.project, "cluster": world.cluster, "image": IMAGE}
    assert (await api.post("/api/v1/apps", json={**body, "deploy": False})).status_code == 201
    for timeout in (0, 86401):
        r = await api.post("/api/v1/apps/web/runs", json={"command": ["true"], "timeout_seconds": timeout})
        assert r.status_code == 422 and error_of(r)["field"] == "timeout_seconds", r.text
    for command in ([], ["x"] * 65, ["x" * 9000, "y" * 9000], [""]):
        r = await api.post("/api/v1/apps/web/runs", json={"command": command})
        assert r.status_code == 422 and error_of(r)["field"] == "command", (len(command), r.text)
    r = await api.post("/api/v1/apps/web/runs", json={"command": ["true"]})
    assert r.status_code == 422 and "never been deployed" in error_of(r)["message"], r.text


async def test_roles_outsiders_and_protected_environments(
    world: World, live_server: LiveServer, api: httpx.AsyncClient
) -> None:
    await deployed_app(api, world)
    for subject, role in (("user:vic", "viewer"), ("user:dev", "developer"), ("user:pat", "admin")):
        r = await api.put(f"/api/v1/projects/{world.project}/members/{subject}", json={"role": role})
        assert r.status_code == 200, r.text
    assert (await api.post("/api/v1/projects", json={"name": "rival"})).status_code == 201
    r = await api.put("/api/v1/projects/rival/members/user:rita", json={"role": "owner"})
    assert r.status_code == 200, r.text
    vic, dev = await as_(live_server, "user:vic"), await as_(live_server, "user:dev")
    pat, rita = await as_(live_server, "user:pat"), await as_(live_server, "user:rita")
    try:
        run = {"command": ["true"]}
        r = await vic.post("/api/v1/apps/web/runs", json=run)
        assert r.status_code == 403 and "needs the developer role" in error_of(r)["message"], r.text
        assert (await vic.get("/api/v1/apps/web/runs")).status_code == 403
        seen, missing = (
            await rita.post("/api/v1/apps/web/runs", json=run),
            await rita.post("/api/v1/apps/nop/runs", json=run),
        )
        assert seen.status_code == missing.status_code == 404
        assert seen.content == missing.content.replace(b"nop", b"web")
        started = await dev.post("/api/v1/apps/web/runs", json=run)
        assert started.status_code == 201, started.text
        # The history is no way in: an outsider asking for a real run (or the list) hears "no such app".
        for path in (f"/runs/{started.json()['name']}", "/runs", "/runs?limit=1"):
            seen, missing = (
                await rita.get(f"/api/v1/apps/web{path}"),
                await rita.get(f"/api/v1/apps/nop{path}"),
            )
            assert seen.status_code == missing.status_code == 404, path
            assert seen.content == missing.content.replace(b"nop", b"web"), path

        # An environment protected with required approvals: a run would bypass the review.
        env = (await api.get("/api/v1/apps/web")).json()["environment"]
        protection = f"/api/v1/projects/{world.project}/environments/{env}/protection"
        assert (await api.put(protection, json={"approvals": 2})).status_code == 200
        r = await dev.post("/api/v1/apps/web/runs", json=run)
        assert r.status_code == 403 and error_of(r)["message"] == (
            f"environment {env} is protected (deploys need approval), and a one-off command bypasses "
            "that review: running one there needs the admin role"
        ), r.text
        assert (await pat.post("/api/v1/apps/web/runs", json=run)).status_code == 201
        # The app's own protection counts the same.
        assert (await api.delete(protection)).status_code == 200
        assert (await dev.post("/api/v1/apps/web/runs", json=run)).status_code == 201
        assert (await api.patch("/api/v1/apps/web", json={"protected": True})).status_code == 200
        r = await dev.post("/api/v1/apps/web/runs", json=run)
        assert r.status_code == 403 and "app web is protected" in error_of(r)["message"], r.text
        assert len((await pat.get("/api/v1/apps/web/runs")).json()) == 3
    finally:
        for c in (vic, dev, pat, rita):
            await c.aclose()


async def test_cancel_deletes_the_run_and_a_hand_made_job_is_never_touched(
    world: World, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    await deployed_app(api, world)
    batch = k8s.BatchV1Api(kube_api)
    hand_made = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "web-run-handmade", "labels": {"shipit.dev/run": "web-run-handmade"}},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "run", "image": IMAGE}]}}
        },
    }
    await batch.create_namespaced_job(world.namespace, hand_made)
    run = (await api.post("/api/v1/apps/web/runs", json={"command": ["sleep", "1"]})).json()

    assert [x["name"] for x in (await api.get("/api/v1/apps/web/runs")).json()] == [run["name"]]
    for r in (
        await api.get("/api/v1/apps/web/runs/web-run-handmade"),
        await api.delete("/api/v1/apps/web/runs/web-run-handmade"),
        await api.get("/api/v1/apps/web/runs/web-run-nothing"),
    ):
        assert r.status_code == 404 and "has no run named" in error_of(r)["message"], r.text
    assert (await batch.read_namespaced_job("web-run-handmade", world.namespace)).metadata.uid

    r = await api.delete(f"/api/v1/apps/web/runs/{run['name']}")
    assert r.status_code == 200 and r.json()["name"] == run["name"], r.text

    async def gone() -> bool:
        jobs = await batch.list_namespaced_job(world.namespace, label_selector="shipit.dev/app=web")
        return all(j.metadata.deletion_timestamp for j in jobs.items)

    await eventually(gone, what="the run's Job deleted")
    cancels = [a for a in await table_rows(world.rt, "audit_events") if a["action"] == "app.run.cancel"]
    assert len(cancels) == 1  # the refused ones changed nothing and are not recorded
    r = await api.get(f"/api/v1/apps/web/runs/{run['name']}")
    assert r.status_code == 200 and r.json()["state"] in ("cancelled", "succeeded"), r.text
    assert (await batch.read_namespaced_job("web-run-handmade", world.namespace)).metadata.uid


async def job_deleted(kube_api: k8s.ApiClient, world: World, name: str) -> None:
    """Delete a run's Job as its TTL would, and wait until the API server no longer has it."""
    await k8s.BatchV1Api(kube_api).delete_namespaced_job(
        name, world.namespace, propagation_policy="Background"
    )
    await job_gone(kube_api, world, name)


async def job_gone(kube_api: k8s.ApiClient, world: World, name: str) -> None:
    batch = k8s.BatchV1Api(kube_api)

    async def gone() -> bool:
        jobs = await batch.list_namespaced_job(world.namespace, field_selector=f"metadata.name={name}")
        return not jobs.items

    await eventually(gone, what=f"Job {name} gone")


async def everything_stored(live_server: LiveServer) -> str:
    """Every row of every table, as text."""
    return str([await table_rows(live_server.rt, t.name) for t in models.Base.metadata.sorted_tables])


@pytest.mark.both_databases
async def test_the_history_outlives_the_job_and_never_holds_the_arguments(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient, shipit: Run
) -> None:
    await deployed_app(api, world)
    argv = ["rake", "db:seed", SECRET_ARG]
    r = await api.post("/api/v1/apps/web/runs", json={"command": argv, "timeout_seconds": 120})
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    assert r.json()["actor"] == "user:admin" and r.json()["args"] == 2
    done = await finished(api, "web", name)  # shipit reads the finished Job: the row records its end
    assert done["state"] == "succeeded" and done["exit_code"] == 0, done
    await job_deleted(kube_api, world, name)

    kept = await api.get(f"/api/v1/apps/web/runs/{name}")
    assert kept.status_code == 200, kept.text
    got = kept.json()
    assert (got["state"], got["exit_code"], got["program"], got["args"]) == ("succeeded", 0, "rake", 2)
    assert got["actor"] == "user:admin" and got["timeout_seconds"] == 120 and got["revision"] == 1
    assert got["started_at"] and got["finished_at"] and got["pod"] is None
    [row] = await table_rows(live_server.rt, "runs")
    assert (row["name"], row["status"], row["exit_code"], row["program"], row["arg_count"]) == (
        name, "succeeded", 0, "rake", 2,
    )  # fmt: skip
    stored = await everything_stored(live_server)
    assert "Sup3rSecretArg" not in stored and "db:seed" not in stored

    # A run whose Job is gone before shipit saw it end: unknown, never guessed.
    second = (await api.post("/api/v1/apps/web/runs", json={"command": ["true"]})).json()["name"]
    await job_deleted(kube_api, world, second)
    listed = (await api.get("/api/v1/apps/web/runs")).json()
    assert [(x["name"], x["state"]) for x in listed] == [(second, "unknown"), (name, "succeeded")]
    assert [x["name"] for x in (await api.get("/api/v1/apps/web/runs?limit=1")).json()] == [second]
    for limit in ("0", "201", "x"):
        r = await api.get(f"/api/v1/apps/web/runs?limit={limit}")
        assert r.status_code == 422 and error_of(r)["field"] == "limit", r.text
    assert (await api.get(f"/api/v1/apps/web/runs/{name}x")).status_code == 404
    # Its log went with the Job: said as such, not as a run that never was.
    gone = await api.get(f"/api/v1/apps/web/runs/{name}/logs")
    assert gone.status_code == 404 and "is gone with its Job" in error_of(gone)["message"], gone.text
    never = await api.get(f"/api/v1/apps/web/runs/{name}x/logs")
    assert never.status_code == 404 and "has no run named" in error_of(never)["message"], never.text
    r = await api.delete(f"/api/v1/apps/web/runs/{name}")
    assert r.status_code == 409 and "has ended (succeeded)" in error_of(r)["message"], r.text

    out = ok(await shipit("runs", "list", "web"))
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["RUN", "STATUS", "EXIT"] and "ACTOR" in header and "PROGRAM" in header
    assert lines[0].split()[:2] == [second, "unknown"]
    assert (
        lines[1].split()[:3] == [name, "succeeded", "0"] and "user:admin" in lines[1] and "rake" in lines[1]
    )
    assert json.loads(ok(await shipit("runs", "list", "web", "--json", "--limit", "1")))[0]["name"] == second

    # Deleted with its app.
    assert (await api.delete("/api/v1/apps/web")).status_code < 300
    assert await table_rows(live_server.rt, "runs") == []


async def test_cancelling_a_running_run_leaves_it_cancelled(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    # A CPU request no node has: the run's pod is never scheduled, so the run is running until cancelled.
    await deployed_app(api, world, replicas=0, cpu_request="4000", cpu_limit="4000")
    name = (await api.post("/api/v1/apps/web/runs", json={"command": ["true"]})).json()["name"]
    assert (await api.get(f"/api/v1/apps/web/runs/{name}")).json()["state"] == "running"
    r = await api.delete(f"/api/v1/apps/web/runs/{name}")
    assert r.status_code == 200, r.text
    await job_gone(kube_api, world, name)
    got = (await api.get(f"/api/v1/apps/web/runs/{name}")).json()
    assert (got["state"], got["exit_code"], got["reason"]) == ("cancelled", None, None), got
    assert got["finished_at"]
    [row] = await table_rows(live_server.rt, "runs")
    assert row["status"] == "cancelled" and row["finished_at"] is not None


async def test_a_job_the_cluster_refuses_leaves_its_run_failed_not_created(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, kube_api: k8s.ApiClient
) -> None:
    await deployed_app(api, world)
    # A quota of no Jobs: the API server's admission refuses the run's Job.
    quota = {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}}
    await k8s.CoreV1Api(kube_api).create_namespaced_resource_quota(world.namespace, quota)
    r = await api.post("/api/v1/apps/web/runs", json={"command": ["true"]})
    assert r.status_code >= 400, r.text
    [row] = await table_rows(live_server.rt, "runs")
    assert (row["status"], row["reason"], row["exit_code"]) == ("failed", "not created", None)
    assert row["finished_at"] is not None
    [listed] = (await api.get("/api/v1/apps/web/runs")).json()
    assert (listed["name"], listed["state"], listed["reason"]) == (row["name"], "failed", "not created")


async def test_cli_run_detached_then_its_log_and_a_followed_run(
    world: World,
    live_server: LiveServer,
    api: httpx.AsyncClient,
    kube_api: k8s.ApiClient,
    pod_logs: PodLogs,
    shipit: Run,
) -> None:
    await deployed_app(api, world)
    out = ok(await shipit("run", "web", "--detach", "--timeout", "300", "--", "echo", "hello"))
    name = out.split()[1]
    assert out.startswith(f"run {name} started") and f"shipit runs logs web {name}" in out

    async def pod() -> str | None:
        pods = await k8s.CoreV1Api(kube_api).list_namespaced_pod(
            world.namespace, label_selector=f"shipit.dev/run={name}"
        )
        return pods.items[0].metadata.name if pods.items else None

    pod_name = await eventually(pod, what="the run's pod")
    await pod_logs.write(
        namespace=world.namespace, pod=pod_name, container="run", lines=["hello from the run"]
    )
    logs = await shipit("runs", "logs", "web", name)
    assert ok(logs).splitlines() == ["hello from the run"]
    assert name in ok(await shipit("runs", "list", "web"))

    followed = await shipit("run", "web", "--", "true")
    assert followed.exit_code == 0, (followed.stdout, followed.stderr)
    assert "started (revision 1" in followed.stderr
