"""Schemathesis against the real app: no 5xx, and every answer is what /openapi.json says it is.

The app runs over uvicorn on a loopback port in a thread of its own (Hypothesis tests are synchronous,
so the server cannot share the test's event loop), on SQLite and on PostgreSQL, seeded with a project,
an app, a queued deploy, a spare token and a member.  Every operation is fuzzed twice: with a global
admin token and with the token of a project developer.  Schemathesis runs its examples, coverage
(boundary values, wrong types, methods the path does not serve) and fuzzing phases, with a fixed seed
and a bounded number of examples so the whole run stays short.

Left out: the streaming logs endpoint (it needs pods to stream from), and adding a cluster (it dials
whatever server a generated kubeconfig names).  The app's cluster is a row pointing at a closed local
port, so the live status and app deletion get their "cluster unreachable" answers at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core import apps, clusters, deploys, projects, tokens
from core.apps import AppChanges
from core.identity import SYSTEM
from shipit import runtime
from shipit.main import create_app
from shipit.settings import Settings
from tests.conftest import ADMIN, serving
from tests.shipit.conftest import offline_kubeconfig

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
log = logging.getLogger(__name__)  # see each case: pytest -o log_cli=true --log-cli-level=DEBUG
MAX_EXAMPLES = 10
SEED = 20261203


@dataclass
class Seeded:
    admin_token: str
    member_token: str
    spare_token_id: int
    deployment_id: int


async def _seed(rt: runtime.Runtime) -> Seeded:
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        await clusters.add(
            session,
            ctx=rt.core,
            actor=ADMIN,
            name="offline",
            kubeconfig_text=offline_kubeconfig(),
            default_namespace="apps",
            version="v0.0.0-offline",
        )
        await apps.create(
            session,
            actor=ADMIN,
            project="acme",
            cluster="offline",
            name="web",
            changes=AppChanges(image="ghcr.io/acme/web:1.0"),
        )
        await projects.set_access(
            session, actor=ADMIN, project_name="acme", subject="user:dev", role="developer"
        )
        queued = await deploys.request(session, ctx=rt.core, actor=ADMIN, app_name="web", trigger="api")
        spare, _ = await tokens.create(session, actor=SYSTEM, name="spare", subject="user:spare")
        _, admin = await tokens.create(
            session, actor=SYSTEM, name="admin", subject="user:admin", is_admin=True
        )
        _, member = await tokens.create(session, actor=SYSTEM, name="dev", subject="user:dev")
        return Seeded(
            admin_token=admin,
            member_token=member,
            spare_token_id=spare.id,
            deployment_id=queued.deployment.id,
        )


class _Server(threading.Thread):
    """The app with its own runtime and event loop; no worker, so nothing leaves for a cluster."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.ready = threading.Event()
        self.url = ""
        self.seeded: Seeded | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # handed to the test thread
            self.error = e
        finally:
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        rt = await runtime.build(self.settings)
        try:
            self.seeded = await _seed(rt)
            async with serving(create_app(rt=rt)) as url:
                self.url = url
                self.ready.set()
                await self._done.wait()
        finally:
            await runtime.stop(rt)

    def stop(self) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self.join(timeout=60)


@pytest.fixture
def server(settings: Settings) -> Iterator[_Server]:
    thread = _Server(settings)
    thread.start()
    thread.ready.wait(timeout=120)
    if thread.error is not None:
        raise thread.error
    yield thread
    thread.stop()
    if thread.error is not None:
        raise thread.error


@pytest.fixture(params=["admin", "member"])
def who(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _known(operation: APIOperation, seeded: Seeded) -> dict[str, Any]:
    """Path parameters naming what exists, so generated requests also get past the 404."""
    path = operation.path
    names = {"name": "acme" if path.startswith("/api/v1/projects/") else "web"}
    ids = {"deployment_id": seeded.deployment_id, "token_id": seeded.spare_token_id}
    return {p.name: {**names, **ids}[p.name] for p in operation.path_parameters if p.name in {**names, **ids}}


def _excluded(operation: APIOperation) -> bool:
    return operation.path.endswith("/logs") or (operation.path, operation.method.upper()) == (
        "/api/v1/clusters",
        "POST",
    )


@pytest.mark.both_databases
def test_the_api_keeps_its_contract(server: _Server, who: str) -> None:
    seeded = server.seeded
    assert seeded is not None
    auth = {"Authorization": f"Bearer {seeded.admin_token if who == 'admin' else seeded.member_token}"}
    config = schemathesis.Config.from_dict({"seed": SEED, "headers": auth})
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    failures: list[str] = []
    tested = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deleting the seeded app goes last: every operation after it would only meet 404s.
    operations.sort(key=lambda op: (op.method.upper(), op.path) == ("DELETE", "/api/v1/apps/{name}"))
    for operation in operations:
        if _excluded(operation):
            continue
        tested += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(mode)
            known = _known(operation, seeded)
            if known:
                strategy = strategy | operation.as_strategy(mode, path_parameters=known)

            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                r = case.call_and_validate(checks=CHECKS, headers=auth)
                log.debug("%s %s %.100r -> %s", case.method, case.formatted_path, case.body, r.status_code)

            started = time.perf_counter()
            try:
                run()
            except Unsatisfiable:
                pass  # nothing to negate: an operation with neither parameters nor body
            except Exception as e:  # every operation is tried; all failures are reported together
                failures.append(f"{operation.label} ({mode.value}): {e}")
            log.info("%s %s: %.1fs", operation.label, mode.value, time.perf_counter() - started)
    assert tested >= 20, tested
    assert not failures, "\n\n".join(failures)
