"""Shared fixtures: a fresh database per test (SQLite; PostgreSQL too where asked), a core runtime, a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from aiohttp import web
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from core import clusters, projects
from core.identity import SYSTEM, Actor
from shipit import runtime
from shipit import serving as shipit_serving
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from storage.crypto import generate_key
from storage.db import create_engine

pytest_plugins = ["tests.testenv.plugin", "tests.testenv.registry", "tests.fakes.plugin"]

ADMIN = Actor(subject="user:admin", channel="api", display="admin", is_admin=True)
POSTGRES_URL = os.environ.get("SHIPIT_TEST_POSTGRES_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fresh_postgres(base_url: str, *, template: str | None = None) -> tuple[str, str]:
    """Create a throwaway database on the test server (empty, or a copy of `template`); returns (url, name)."""
    name = f"shipit_test_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(
            f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        )
    await admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False), name


async def _drop_postgres(base_url: str, name: str) -> None:
    admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.dispose()


def _backends() -> list[str]:
    return ["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"]


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests marked `both_databases` run on SQLite and, when SHIPIT_TEST_POSTGRES_URL is set, on PostgreSQL.
    if "db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("db_backend", _backends(), indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: run on SQLite and on PostgreSQL when configured")


# Migrating an empty database to head costs 0.3-0.6 s, and nearly every test builds a runtime on a new
# one.  So a test's database starts as a copy of one migrated once per session, by the same function
# runtime.build calls (which then finds it at head).  tests/storage/ tests the migrations themselves:
# its tests get empty databases.
_templates: dict[str, str] = {}  # backend -> the migrated SQLite file, or PostgreSQL database name
STORAGE_TESTS = Path(__file__).parent / "storage"


async def _migrated(url: str) -> None:
    engine = create_engine(url)
    try:
        await runtime.upgrade_database(engine)
    finally:
        await engine.dispose()


async def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "sqlite" not in _templates:
        path = tmp_path_factory.mktemp("template") / "shipit.db"
        await _migrated(f"sqlite+aiosqlite:///{path}")
        # The copy is the one file: no write-ahead log left beside it once its connections closed.
        assert not path.with_name(path.name + "-wal").exists(), "the template's WAL was not checkpointed"
        _templates["sqlite"] = str(path)
    return Path(_templates["sqlite"])


async def _postgres_template(base_url: str) -> str:
    if "postgres" not in _templates:
        url, name = await _fresh_postgres(base_url)
        await _migrated(url)  # its connections closed: CREATE DATABASE ... TEMPLATE needs none open
        _templates["postgres"] = name
    return _templates["postgres"]


def _copy_private(source: Path, target: Path) -> None:
    """Copy with mode 0600, as shipit creates its database (it warns about one others can read)."""
    with (
        source.open("rb") as src,
        os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if POSTGRES_URL and "postgres" in _templates:
        with contextlib.suppress(Exception):  # the test server is throwaway; never fail the run here
            asyncio.run(_drop_postgres(POSTGRES_URL, _templates.pop("postgres")))


@pytest.fixture
async def db_url(
    db_backend: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    empty = request.path.is_relative_to(STORAGE_TESTS)
    if db_backend == "postgres":
        assert POSTGRES_URL
        template = None if empty else await _postgres_template(POSTGRES_URL)
        url, name = await _fresh_postgres(POSTGRES_URL, template=template)
        yield url
        await _drop_postgres(POSTGRES_URL, name)
    else:
        path = tmp_path / "shipit.db"
        if not empty:
            _copy_private(await _sqlite_template(tmp_path_factory), path)
        yield f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        data_dir=tmp_path / "var",
        master_key=generate_key(),  # type: ignore[arg-type]
        job_lease_seconds=5,
        job_poll_seconds=0.1,
        approval_ttl_seconds=600,
        # No test reaches a real registry on the internet; tests/core/test_registries.py turns it on.
        registry_pin_digests=False,
    )


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    """A built runtime with no worker running: tests drain the queue themselves or start it."""
    the_rt = await runtime.build(settings)
    yield the_rt
    await runtime.stop(the_rt)


@dataclass
class World:
    """A project with a cluster, ready for apps."""

    rt: Runtime
    project: str
    cluster: str
    namespace: str


@pytest.fixture
async def world(rt: Runtime, kube_env: object, namespace: str) -> World:
    kubeconfig = kube_env.kubeconfig  # type: ignore[attr-defined]
    version = await clusters.check(ctx=rt.core, kubeconfig_text=kubeconfig, key="check")
    async with rt.sessionmaker.begin() as session:
        await projects.create(session, ctx=rt.core, actor=ADMIN, name="acme")
        await clusters.add(
            session,
            ctx=rt.core,
            actor=ADMIN,
            name="test",
            kubeconfig_text=kubeconfig,
            default_namespace=namespace,
            version=version,
        )
        # The project may use the cluster and owns the test's namespace there, as a global admin grants.
        await clusters.grant(session, actor=ADMIN, cluster="test", project="acme", namespace=namespace)
    return World(rt=rt, project="acme", cluster="test", namespace=namespace)


def as_served(app: FastAPI, *, port: int, settings: Settings | None = None) -> uvicorn.Server:
    """uvicorn with the options `shipit serve` uses (its protocol, timeouts and limits): a test's client
    meets the server's real keep-alive, not uvicorn's default (5 s, httpx's own idle expiry: a request
    sent as the server closes the connection is reset)."""
    options = shipit_serving.uvicorn_options(settings or Settings.model_construct())
    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", **options))


@contextlib.asynccontextmanager
async def serving(
    app: FastAPI, *, port: int | None = None, settings: Settings | None = None
) -> AsyncIterator[str]:
    """Serve an app instance over HTTP on a loopback port (a free one unless given); yields its base URL."""
    port = port or free_port()
    server = as_served(app, port=port, settings=settings)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serving_posts(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], *, paths: tuple[str, ...] = ("/hook",)
) -> AsyncIterator[str]:
    """A test's own HTTP endpoint (an outgoing webhook's receiver): `handle` answers POSTs to `paths`
    on a loopback port; yields the base URL."""
    app = web.Application()
    for path in paths:
        app.router.add_post(path, handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # a handler told to hang does not hold up the end
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def linked_person(rt: Runtime, name: str, *subjects: str) -> int:
    """One person behind several identities, as linking (`/shipit link`, `.link CODE`) would leave them."""
    async with rt.sessionmaker.begin() as session:
        person = models.Person(name=name)
        session.add(person)
        await session.flush()
        for subject in subjects:
            session.add(
                models.Identity(person_id=person.id, subject=subject, verified_by="admin", created_by="test")
            )
        return int(person.id)


def database_bytes(rt: Runtime) -> bytes:
    """Every byte of the SQLite database on disk, write-ahead log included."""
    path = Path(rt.engine.url.database or "")
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


@dataclass
class LiveServer:
    url: str
    rt: Runtime


@pytest.fixture
async def live_server(rt: Runtime) -> AsyncIterator[LiveServer]:
    """The real app over HTTP on a loopback port, in this process, with the worker running."""
    from shipit.main import create_app

    port = free_port()
    app = create_app(rt=rt)
    await runtime.start(rt)
    server = as_served(app, port=port, settings=rt.settings)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield LiveServer(url=f"http://127.0.0.1:{port}", rt=rt)
    server.should_exit = True
    await task


@pytest.fixture
def system_actor() -> Iterator[Actor]:
    yield SYSTEM


__all__ = ["ADMIN", "LiveServer", "World", "as_served", "database_bytes", "free_port", "models", "serving"]
