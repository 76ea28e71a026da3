"""`logs` on real container logs: kwok serves each pod's log from a file the test writes (the
`pod_logs` fixture), through the API server's pods/log, to the app over HTTP and the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, World
from tests.helpers import eventually
from tests.shipit.cluster_apps import deployed_app
from tests.shipit.conftest import make_token
from tests.shipit.test_api import error_of
from tests.shipit.test_cli import Run, cli_process, ok
from tests.shipit.test_cli import shipit as shipit  # the fixture
from tests.testenv.plugin import PodLogs


async def deployed_web(api: httpx.AsyncClient, world: World, *, replicas: int) -> None:
    await deployed_app(api, world, replicas=replicas)


async def read_logs(api: httpx.AsyncClient, **params: Any) -> list[str]:
    async with api.stream("GET", "/api/v1/apps/web/logs", params=params) as r:
        assert r.status_code == 200, await r.aread()
        return [line async for line in r.aiter_lines()]


async def test_tail_gives_the_last_lines_of_each_pod_prefixed_with_it(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs
) -> None:
    await deployed_web(api, world, replicas=2)
    a, b = await pod_logs.pods(namespace=world.namespace, app="web")
    await pod_logs.write(
        namespace=world.namespace, pod=a, container="web", lines=[f"a{i}" for i in range(10)]
    )
    await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=[f"b{i}" for i in range(4)])

    # Per pod, not in total: three of each, in the order written, each pod's lines together.
    assert await read_logs(api, tail=3) == [
        f"{a}: a7",
        f"{a}: a8",
        f"{a}: a9",
        f"{b}: b1",
        f"{b}: b2",
        f"{b}: b3",
    ]
    everything = [f"{a}: a{i}" for i in range(10)] + [f"{b}: b{i}" for i in range(4)]
    assert await read_logs(api, tail=100) == everything
    # The text is the app's own, byte for byte: spaces, tabs, a JSON log line, non-ASCII.
    odd = ["  indented\tand tabbed  ", '{"level":"error","msg":"boom"}', "héllo ✓"]
    await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=odd)
    assert (await read_logs(api, tail=3))[3:] == [f"{b}: {line}" for line in odd]


async def test_one_pod_is_not_prefixed_and_a_last_line_without_end_of_line_is_kept(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs
) -> None:
    await deployed_web(api, world, replicas=1)
    [pod] = await pod_logs.pods(namespace=world.namespace, app="web")
    await pod_logs.write(namespace=world.namespace, pod=pod, container="web", lines=["one", "two"])
    assert await read_logs(api, tail=5) == ["one", "two"]
    # A line still being printed (no end of line yet) is shown too, not dropped.
    await pod_logs.write(
        namespace=world.namespace, pod=pod, container="web", lines=["three", "half a li"], partial_last=True
    )
    assert await read_logs(api, tail=2) == ["three", "half a li"]


async def test_follow_delivers_lines_written_after_it_started_and_stops_with_the_client(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs
) -> None:
    await deployed_web(api, world, replicas=2)
    a, b = await pod_logs.pods(namespace=world.namespace, app="web")
    await pod_logs.write(namespace=world.namespace, pod=a, container="web", lines=["a-old"])
    await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=["b-old"])

    def pumps() -> list[asyncio.Task[Any]]:
        # The server runs on this loop: its per-pod stream readers are tasks here.
        return [
            t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("pod_logs.<locals>.pump")
        ]  # type: ignore[union-attr]

    async with api.stream("GET", "/api/v1/apps/web/logs", params={"tail": 1, "follow": "true"}) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        assert sorted([await anext(lines), await anext(lines)]) == [f"{a}: a-old", f"{b}: b-old"]
        assert len(pumps()) == 2
        await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=["b-new"])
        assert await asyncio.wait_for(anext(lines), 30) == f"{b}: b-new"
        await pod_logs.write(namespace=world.namespace, pod=a, container="web", lines=["a-new", "a-newer"])
        assert [await asyncio.wait_for(anext(lines), 30) for _ in range(2)] == [
            f"{a}: a-new",
            f"{a}: a-newer",
        ]
        await lines.aclose()
    # The client went away: shipit stops reading both pods' streams, and serves the next request.
    await eventually(lambda: _async(not pumps()), what="the log streams closed")
    assert await read_logs(api, tail=1) == [f"{a}: a-newer", f"{b}: b-new"]


async def _async(value: Any) -> Any:
    return value


@pytest.mark.both_databases
async def test_a_viewer_reads_the_logs_and_an_outsider_is_told_there_is_no_such_app(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs
) -> None:
    await deployed_web(api, world, replicas=1)
    [pod] = await pod_logs.pods(namespace=world.namespace, app="web")
    await pod_logs.write(namespace=world.namespace, pod=pod, container="web", lines=["line-for-vic"])
    r = await api.put(f"/api/v1/projects/{world.project}/members/user:vic", json={"role": "viewer"})
    assert r.status_code == 200, r.text
    assert (await api.post("/api/v1/projects", json={"name": "rival"})).status_code == 201
    r = await api.put("/api/v1/projects/rival/members/user:rita", json={"role": "owner"})
    assert r.status_code == 200, r.text

    async def as_(subject: str) -> httpx.AsyncClient:
        token = await make_token(live_server.rt, subject=subject, admin=False)
        return httpx.AsyncClient(base_url=live_server.url, headers={"Authorization": f"Bearer {token}"})

    async with await as_("user:vic") as vic, await as_("user:rita") as rita:
        assert await read_logs(vic, tail=5) == ["line-for-vic"]
        seen, missing = await rita.get("/api/v1/apps/web/logs"), await rita.get("/api/v1/apps/nop/logs")
        assert seen.status_code == missing.status_code == 404
        assert seen.content == missing.content.replace(b"nop", b"web")
        assert "line-for-vic" not in seen.text and error_of(seen)["message"].startswith("no app named 'web'")


async def test_cli_logs_tail_and_json(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs, shipit: Run
) -> None:
    await deployed_web(api, world, replicas=2)
    a, b = await pod_logs.pods(namespace=world.namespace, app="web")
    await pod_logs.write(namespace=world.namespace, pod=a, container="web", lines=["a1", "a2", "a3"])
    await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=["b1", "b2", "b3"])

    out = ok(await shipit("logs", "web", "--tail", "2"))
    assert out.splitlines() == [f"{a}: a2", f"{a}: a3", f"{b}: b2", f"{b}: b3"]
    # --json: each line names its pod (and container) in fields of its own; the text has no prefix.
    rows = [
        json.loads(line) for line in ok(await shipit("logs", "web", "--tail", "2", "--json")).splitlines()
    ]
    assert rows == [
        {"pod": a, "container": "web", "line": "a2"},
        {"pod": a, "container": "web", "line": "a3"},
        {"pod": b, "container": "web", "line": "b2"},
        {"pod": b, "container": "web", "line": "b3"},
    ]


async def test_json_lines_carry_the_pod_even_when_the_text_would_not(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs
) -> None:
    await deployed_web(api, world, replicas=1)
    [pod] = await pod_logs.pods(namespace=world.namespace, app="web")
    odd = ["web-abc: not a prefix", '{"msg":"json"}']
    await pod_logs.write(namespace=world.namespace, pod=pod, container="web", lines=odd)
    async with api.stream("GET", "/api/v1/apps/web/logs", params={"tail": 5, "format": "json"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        rows = [json.loads(line) async for line in r.aiter_lines()]
    assert rows == [{"pod": pod, "container": "web", "line": line} for line in odd]
    assert await read_logs(api, tail=5) == odd  # the text form of one pod: no prefix, as before
    bad = await api.get("/api/v1/apps/web/logs", params={"format": "yaml"})
    assert bad.status_code == 422, bad.text


async def test_cli_follow_prints_a_line_written_after_it_started_and_ends_on_ctrl_c(
    world: World, live_server: LiveServer, api: httpx.AsyncClient, pod_logs: PodLogs
) -> None:
    """`shipit logs web --follow --json` as a person runs it: a real `shipit` process (the CLI's own
    entry point) against the live server over HTTP, stopped with a real SIGINT.  CliRunner cannot
    show what a followed stream printed before it ends, nor stop it."""
    await deployed_web(api, world, replicas=2)
    a, b = await pod_logs.pods(namespace=world.namespace, app="web")
    await pod_logs.write(namespace=world.namespace, pod=a, container="web", lines=["a-old"])
    await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=["b-old"])
    proc = await cli_process(live_server, "logs", "web", "--follow", "--tail", "1", "--json")
    out = proc.stdout
    assert out is not None

    async def row() -> dict[str, Any]:
        line = await asyncio.wait_for(out.readline(), timeout=60)
        assert line, "the CLI ended before printing the line"
        return dict(json.loads(line))

    try:
        first = [await row(), await row()]
        assert sorted((r["pod"], r["line"]) for r in first) == [(a, "a-old"), (b, "b-old")]
        # Written after it started: the followed stream carries it, with its pod.
        await pod_logs.write(namespace=world.namespace, pod=b, container="web", lines=["b-new"])
        assert await row() == {"pod": b, "container": "web", "line": "b-new"}
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the way a person ends --follow
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, (proc.returncode, stdout, stderr)
        assert b"Traceback" not in stderr, stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
