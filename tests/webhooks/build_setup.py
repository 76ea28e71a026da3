"""What the build tests start from (test_builds, test_preview_builds, test_pr_command_builds,
test_build_notices): buildah's store and the settings building into it, a `shipit builder` worker, a
registry project acme pushes to, app `web` building acme/web in the test's namespace, and a build
waited for.  A test file uses the fixtures here (`store`, `settings`, `pushing`, `offline_previews`) by
importing them by name."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core import builds, registries
from core.apps import UNSET
from shipit import builder as builder_process
from shipit.runtime import Runtime
from shipit.settings import Settings
from storage import models
from tests import helpers
from tests.conftest import ADMIN, World
from tests.fakes.github_api import FakeGitHub
from tests.testenv import buildah
from tests.testenv.registry import Registry
from tests.webhooks.conftest import make_app, offline_cluster
from tests.webhooks.test_pr_commands import link
from webhooks.client import Credentials, GitHubClient

TIMEOUT = 180.0
eventually = functools.partial(helpers.eventually, timeout=TIMEOUT)

SITE = {
    "index.html": "<h1>built by shipit</h1>\n",
    "Procfile": "web: /bin/busybox httpd -f -p 8080 -h /usr/share/nginx/html\n",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[buildah.Store]:
    s = buildah.store(tmp_path)
    yield s
    s.remove()


@pytest.fixture
def settings(settings: Settings, store: buildah.Store, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "build_root": str(store.root),
            "build_runroot": str(store.runroot),
            "build_dir": str(tmp_path / "builds"),
            "build_timeout_seconds": 120.0,
        }
    )


@contextlib.asynccontextmanager
async def builder_worker(rt: Runtime, fake: FakeGitHub, settings: Settings) -> AsyncIterator[None]:
    """`shipit builder` in this process: its worker (build jobs only) with shipit's GitHub client."""
    github = GitHubClient(
        credentials=Credentials(
            api_url=fake.url, token=fake.token, seconds_between_requests=None, seconds_between_writes=None
        )
    )
    worker = builder_process.worker(rt, builder=builder_process.builder_of(settings, fetcher=github))
    worker.start()
    try:
        yield
    finally:
        await worker.stop()
        await github.close()


async def build_row(rt: Runtime, build_id: int) -> models.Build:
    async with rt.sessionmaker() as session:
        row = await session.get(models.Build, build_id)
    assert row is not None
    return row


async def wait_build(rt: Runtime, build_id: int) -> models.Build:
    async def done() -> bool:
        return (await build_row(rt, build_id)).status in (builds.SUCCEEDED, builds.FAILED)

    await eventually(done, what=f"build {build_id} to finish")
    return await build_row(rt, build_id)


async def run_build(rt: Runtime, build_id: int, *, fake: FakeGitHub, settings: Settings) -> models.Build:
    """Build `build_id` with a builder worker that runs until the build has ended."""
    async with builder_worker(rt, fake, settings):
        return await wait_build(rt, build_id)


async def count(rt: Runtime, model: Any, *where: Any) -> int:
    async with rt.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def all_builds(rt: Runtime) -> list[models.Build]:
    async with rt.sessionmaker() as session:
        return list(await session.scalars(select(models.Build).order_by(models.Build.id)))


async def buildable(
    rt: Runtime, *, registry: Registry, store: buildah.Store, settings: Settings
) -> tuple[str, Settings]:
    """The registry's credentials for project acme, and a busybox base for the static pack in it
    (the registry is plain HTTP): its host, and the settings building from that base."""
    buildah.require_buildah()
    host = registry.host
    user, password = next(iter(registry.users.items()))
    base = f"{host}/base/busybox:1"
    buildah.push_busybox_base(store, image=base, creds=f"{user}:{password}")
    rt.core.config.registry_insecure_hosts = (host,)
    async with rt.sessionmaker.begin() as session:
        await registries.add(
            session, ctx=rt.core, actor=ADMIN, host=host, username=user, password=password, project="acme"
        )
    return host, settings.model_copy(update={"build_static_image": base})


@dataclass(frozen=True, kw_only=True)
class Pushing:
    """Project acme pushes to `registry`, at `host`; `config` builds from its base."""

    registry: Registry
    host: str
    config: Settings

    @property
    def repo(self) -> str:
        """Where app `web` pushes its builds."""
        return f"{self.host}/acme/web"


@pytest.fixture
async def pushing(
    world: World, private_registry: Registry, store: buildah.Store, settings: Settings
) -> Pushing:
    """The world's project acme may push to the test's private registry (buildah needed, or skipped)."""
    host, config = await buildable(world.rt, registry=private_registry, store=store, settings=settings)
    return Pushing(registry=private_registry, host=host, config=config)


async def build_app(world: World, *, build_image: str, **changes: Any) -> models.App:
    """App `web` in the world's namespace, deploying acme/web's main branch built into `build_image`.
    Unlike a linked app's, its image template and health path are left unset unless given."""
    return await link(
        world,
        **{
            "image": f"{build_image}:0.1",
            "port": 8080,
            "image_template": UNSET,
            "health_path": UNSET,
            "build_enabled": True,
            "build_image": build_image,
            **changes,
        },
    )


def preview_changes(build_image: str, **more: Any) -> dict[str, Any]:
    """An app's fields that build it from source into `build_image` and preview its pull requests."""
    return {
        "image_template": None,
        "build_enabled": True,
        "build_image": build_image,
        "previews_enabled": True,
        "preview_domain": "preview.acme.dev",
        **more,
    }


async def offline_build_app(rt: Runtime, *, build_image: str, **more: Any) -> models.App:
    """App `web` of project acme, built from source into `build_image`, on a cluster never contacted."""
    await offline_cluster(rt)
    return await make_app(
        rt, **{"image_template": None, "build_enabled": True, "build_image": build_image, **more}
    )


@pytest.fixture
async def offline_previews(
    rt: Runtime, private_registry: Registry, store: buildah.Store, settings: Settings
) -> Pushing:
    """App `web` with previews on a cluster never contacted, building into the test registry."""
    await offline_cluster(rt)
    host, config = await buildable(rt, registry=private_registry, store=store, settings=settings)
    await make_app(rt, **preview_changes(f"{host}/acme/web"))
    return Pushing(registry=private_registry, host=host, config=config)


async def tagged_digest(registry: Registry, *, tag: str) -> str:
    """The digest the registry holds acme/web's `tag` at (an OCI or Docker manifest); it holds the tag."""
    async with httpx.AsyncClient() as http:
        head = await http.head(
            f"{registry.url}/v2/acme/web/manifests/{tag}",
            headers={
                **registry.headers(),
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json",
            },
        )
    assert head.status_code == 200, (tag, head.status_code)
    return str(head.headers["docker-content-digest"])
