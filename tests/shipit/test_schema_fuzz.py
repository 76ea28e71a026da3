"""Schemathesis against the real app: no 5xx, and every answer is what /openapi.json says it is.

The app runs over uvicorn on a loopback port in a thread of its own (Hypothesis tests are synchronous,
so the server cannot share the test's event loop), on SQLite and on PostgreSQL, seeded with a project,
an app, a queued deploy, a spare token and a developer.  It runs with a global admin token (on both
databases) and with the developer's token (on SQLite).  Two passes, both with a fixed seed:

- Schemathesis's coverage phase, through its engine as its CLI runs it: every bound at and past its
  edge, wrong types, missing auth, and the methods a path does not serve (405 and its Allow header).
- Hypothesis fuzzing of every operation (APIOperation.as_strategy), positive and negative data,
  MAX_EXAMPLES each, half of them with path parameters naming what exists so they get past the 404.

(schemathesis.pytest.from_fixture would be the usual way in, but it sets Node._nodeid, which pytest 9
no longer has.)  Left out: the streaming logs endpoint (it needs pods to stream from) and adding a
cluster (it dials whatever server a generated kubeconfig names).  The app's cluster is a row pointing
at a closed local port, so the live status and app deletion get "cluster unreachable" at once.
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
from schemathesis import APIOperation, GenerationMode, engine
from schemathesis.checks import not_a_server_error
from schemathesis.engine import Status, events
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
from tests.conftest import ADMIN, _backends, serving
from tests.shipit.conftest import offline_kubeconfig

COVERAGE_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
]


def no_undocumented_server_error(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """not_a_server_error, except a 502 where the operation documents one: a dry run or a live status
    asks the app's cluster, which here is a closed port, and "the cluster is unreachable" is its answer."""
    if response.status_code == 502 and "502" in case.operation.definition.raw.get("responses", {}):
        return None
    return not_a_server_error(ctx, response, case)


# "METHOD /path" of the operations that document a 502 (they ask the app's cluster).
CLUSTER_OPERATIONS: set[str] = set()

CHECKS = [
    no_undocumented_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
log = logging.getLogger(__name__)  # see each case: pytest -o log_cli=true --log-cli-level=DEBUG
# Per operation, token and mode (positive, negative), on top of the coverage phase, which walks every
# bound and wrong type by itself.  It was 10 until the three runs took 8 of CI's 70 minutes (session 22).
MAX_EXAMPLES = 6
SEED = 20261203
# Per request.  The contract is what is checked, not speed: Schemathesis's default (10 s) is overrun on a
# loaded 2-core machine, and a timed-out request that then passes on Hypothesis's replay was reported
# as "unreliable results" (FlakyFailure) instead of anything about the API.
REQUEST_TIMEOUT = 300


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
    # The fuzz is about the API's contract; the throttles (tested in test_hardening) would turn its
    # deliberate bad-token cases into 429s for every request after them.
    thread = _Server(
        settings.model_copy(update={"api_auth_failures_per_minute": 0, "api_requests_per_minute": 0})
    )
    thread.start()
    thread.ready.wait(timeout=120)
    if thread.error is not None:
        raise thread.error
    yield thread
    thread.stop()
    if thread.error is not None:
        raise thread.error


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


# Deleting the seeded app or a token in use would leave every later request a 404 or a 401: last.
DESTRUCTIVE = {("DELETE", "/api/v1/apps/{name}"), ("DELETE", "/api/v1/tokens/{token_id}")}


def _coverage_failures(url: str, auth: dict[str, str]) -> list[str]:
    """Schemathesis's coverage phase: each bound at and past its edge, wrong types, missing auth, and
    the methods a path does not serve (405 with the right Allow).  Run by its engine, as the CLI does."""
    checks: dict[str, Any] = {"enabled": False}
    checks.update({name: {"enabled": True} for name in COVERAGE_CHECKS})
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": auth,
            "request-timeout": REQUEST_TIMEOUT,
            "checks": checks,
            "phases": {name: {"enabled": name == "coverage"} for name in ("examples", "fuzzing", "stateful")},
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    CLUSTER_OPERATIONS.update(
        f"{method.upper()} {path}"
        for path, operations in schema.raw_schema["paths"].items()
        for method, operation in operations.items()
        if "502" in operation.get("responses", {})
    )
    schema = schema.exclude(path_regex="/logs$").exclude(path="/api/v1/clusters", method="POST")
    for method, path in DESTRUCTIVE:
        schema = schema.exclude(path=path, method=method)
    failures, cases = [], 0
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for check in (c for checks in event.recorder.checks.values() for c in checks):
                if check.status == Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    if getattr(failure, "status_code", None) == 502 and event.label in CLUSTER_OPERATIONS:
                        continue  # the documented "cluster unreachable" (see no_undocumented_server_error)
                    failures.append(f"{event.label} (coverage, {check.name}): {failure}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"schemathesis: {event}")
    log.info("coverage phase: %d cases", cases)
    assert cases > 500, cases  # it did run
    return failures


def _explained(e: BaseException) -> str:
    """The failure with what it groups: a FlakyFailure's own text names no request, its parts do."""
    if isinstance(e, BaseExceptionGroup):
        return "\n".join([str(e), *(f"  - {type(sub).__name__}: {_explained(sub)}" for sub in e.exceptions)])
    return str(e)


# The admin's token reaches every operation's own SQL: on both databases.  The developer's adds the
# answers of the role checks, whose SQL the admin's runs also meet on PostgreSQL (and test_tenancy checks
# on both): SQLite only, which saves a two-minute run.
@pytest.mark.parametrize(
    ("who", "db_backend"),
    [*(("admin", backend) for backend in _backends()), ("member", "sqlite")],
    indirect=["db_backend"],
)
@pytest.mark.timeout(1800)  # pytest's 300 s is a hang guard; four fuzz runs on a loaded machine take longer
def test_the_api_keeps_its_contract(server: _Server, who: str) -> None:
    seeded = server.seeded
    assert seeded is not None
    auth = {"Authorization": f"Bearer {seeded.admin_token if who == 'admin' else seeded.member_token}"}
    config = schemathesis.Config.from_dict(
        {"seed": SEED, "headers": auth, "request-timeout": REQUEST_TIMEOUT}
    )
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    failures = _coverage_failures(server.url, auth)
    tested = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: (op.method.upper(), op.path) in DESTRUCTIVE)
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
                failures.append(f"{operation.label} ({mode.value}): {_explained(e)}")
            log.info("%s %s: %.1fs", operation.label, mode.value, time.perf_counter() - started)
    assert tested >= 20, tested
    assert not failures, "\n\n".join(failures)
