"""`shipit builder`: the process that runs build jobs (core.builds), apart from the server.

Builds run buildah, which needs privileges the shipit pod is not given (its restricted Pod Security
profile: no root, no added capabilities, a read-only root filesystem).  So the server's worker never
registers the `build` handler (shipit.runtime.job_handlers) and a build job waits in the shared queue
until a builder claims it: this worker's only handler.  It reaches the database and the master key
like the server (registry credentials are decrypted to push) and GitHub with shipit's credentials
(to fetch the commit's tarball); it serves no HTTP and never calls a Kubernetes API.  On Kubernetes
it runs from manifests/builder, in a namespace of its own (what buildah needs is said there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from core import buildpacks, builds, pr_commands
from core.worker import Worker
from shipit import runtime
from shipit.settings import Settings
from webhooks.client import Credentials, GitHubClient

log = logging.getLogger("shipit.builder")


def builder_of(settings: Settings, *, fetcher: builds.SourceFetcher) -> builds.Builder:
    return builds.Builder(
        fetcher=fetcher,
        bases={
            buildpacks.PYTHON: settings.build_python_image,
            buildpacks.NODE: settings.build_node_image,
            buildpacks.GO: settings.build_go_image,
            buildpacks.STATIC: settings.build_static_image,
        },
        buildah=settings.buildah,
        root=settings.build_root,
        runroot=settings.build_runroot,
        isolation=settings.build_isolation,
        workdir=settings.build_dir,
        timeout_seconds=settings.build_timeout_seconds,
        max_source_bytes=settings.build_max_source_bytes,
        cache_repo=settings.build_cache_repo or None,
        # The previews and the `.deploy to ENV` comments waiting for the commit deploy (or fail) with it.
        done=pr_commands.after_build,
    )


def github_of(settings: Settings) -> GitHubClient:
    def secret(value: object) -> str | None:
        return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]

    credentials = Credentials(
        api_url=settings.github_api_url,
        token=secret(settings.github_token),
        app_id=settings.github_app_id,
        private_key=secret(settings.github_private_key),
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    if credentials.mode is None:
        raise SystemExit(
            "shipit builder fetches sources from GitHub: set SHIPIT_GITHUB_TOKEN, or "
            "SHIPIT_GITHUB_APP_ID and SHIPIT_GITHUB_PRIVATE_KEY"
        )
    return GitHubClient(credentials=credentials)


def worker(rt: runtime.Runtime, *, builder: builds.Builder) -> Worker:
    """A worker that claims build jobs only."""
    return Worker(ctx=rt.core, handlers={builds.BUILD_JOB: builds.handler(builder)})


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run build jobs until SIGTERM / SIGINT (or until `stop` is set, when given)."""
    github = github_of(settings)
    rt = await runtime.build(settings)
    w = worker(rt, builder=builder_of(settings, fetcher=github))
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
    w.start()
    log.info("builder: claiming build jobs (buildah %s, owner %s)", settings.buildah, w.owner)
    try:
        await stop.wait()
    finally:
        await w.stop()
        await github.close()
        await runtime.stop(rt)
