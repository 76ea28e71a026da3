"""The `shipit` command: server-side commands (serve, db, keys) here, API commands in cli_client.

Every command group and command of the CLI is wired below, in the order `shipit --help` lists them.
The server commands import what they need (Settings, asyncio, the server) inside themselves: people
and scripts run the API commands dozens of times a day, and each run pays for every module imported
at the top (tests/shipit/test_cli_startup.py names the ones the client must not load).
"""

from __future__ import annotations

import sys

import typer

from shipit.cli_client import (
    addons,
    apps,
    audit,
    builds,
    clusters,
    deploys,
    envs,
    identities,
    notify,
    policies,
    previews,
    projects,
    protection,
    registries,
    runs,
    secrets,
    tokens,
)

app = typer.Typer(help="shipit: ship container images to your Kubernetes clusters.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
keys_app = typer.Typer(help="The master key.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

# API commands (shipit.cli_client): groups, then top-level commands.
app.add_typer(projects.projects_app, name="projects")
app.add_typer(clusters.clusters_app, name="clusters")
app.add_typer(apps.apps_app, name="apps")
app.add_typer(secrets.secrets_app, name="secrets")
app.add_typer(tokens.tokens_app, name="tokens")
app.add_typer(previews.previews_app, name="previews")
app.add_typer(registries.registries_app, name="registries")
app.add_typer(envs.envs_app, name="envs")
app.add_typer(identities.identities_app, name="identities")
app.add_typer(notify.notify_app, name="notify")
app.add_typer(builds.builds_app, name="builds")
app.add_typer(addons.addons_app, name="addons")
app.add_typer(runs.runs_app, name="runs")
app.command("run")(runs.run)
app.command("deploy")(deploys.deploy)
app.command("promote")(deploys.promote)
app.command("rollback")(deploys.rollback)
app.command("revisions")(deploys.revisions)
app.command("deploys")(deploys.deploys_list)
app.command("status")(deploys.status)
app.command("usage")(deploys.usage)
app.command("scale")(deploys.scale)
app.command("approve")(deploys.approve)
app.command("reject")(deploys.reject)
app.command("cancel")(deploys.cancel)
app.command("logs")(deploys.logs)
app.command("audit")(audit.audit)
app.command("whoami")(tokens.whoami)
# The seed's spellings: `shipit apps revisions APP`, `shipit apps rollback APP --revision N`.
apps.apps_app.command("revisions")(deploys.revisions)
apps.apps_app.command("rollback")(deploys.rollback)
apps.apps_app.command("deploy")(deploys.deploy)
apps.apps_app.command("status")(deploys.status)
apps.apps_app.command("usage")(deploys.usage)
apps.apps_app.command("policy")(policies.policy)
# Environment protection joins the `envs` and `projects` groups.
envs.envs_app.command("protection")(protection.protection)
envs.envs_app.command("protect")(protection.protect)
envs.envs_app.command("unprotect")(protection.unprotect)
envs.envs_app.command("window")(protection.window)
envs.envs_app.command("freeze")(protection.freeze)
envs.envs_app.command("lock")(protection.lock)
envs.envs_app.command("unlock")(protection.unlock)
projects.projects_app.command("lock")(protection.project_lock)
projects.projects_app.command("unlock")(protection.project_unlock)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"shipit {version('shipit')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """shipit: ship container images to your Kubernetes clusters."""


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (default SHIPIT_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default SHIPIT_PORT or 8000)."),
) -> None:
    """Serve the API, Slack, GitHub and metrics, with the worker, from one process."""
    import uvicorn

    from shipit import logs, serving, telemetry
    from shipit.main import create_app
    from shipit.settings import Settings

    settings = Settings()
    logs.configure(settings.log_level, fmt=settings.log_format)
    telemetry.setup()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        **serving.uvicorn_options(settings),
    )


@app.command()
def builder() -> None:
    """Run build jobs (apps with --build): buildah, the GitHub tarball API, the registry. No HTTP."""
    import asyncio

    from shipit import builder as builder_process
    from shipit import logs
    from shipit.settings import Settings

    settings = Settings()
    logs.configure(settings.log_level, fmt=settings.log_format)
    asyncio.run(builder_process.serve(settings))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (also done at every start)."""
    import asyncio

    from shipit.runtime import upgrade_database
    from shipit.settings import Settings
    from storage import db

    async def run() -> str | None:
        engine = db.create_engine(Settings().database_url)
        try:
            return await upgrade_database(engine)
        finally:
            await engine.dispose()

    typer.echo(f"database at revision {asyncio.run(run())}")


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new random master key (32 bytes, URL-safe base64)."""
    from storage.crypto import generate_key

    typer.echo(generate_key())


@keys_app.command("rotate")
def keys_rotate(
    new_key: str = typer.Option(
        ..., "--new-key", envvar="SHIPIT_NEW_MASTER_KEY", help="The key to rotate to."
    ),
) -> None:
    """Re-encrypt every secret and kubeconfig under a new master key, in one transaction."""
    import asyncio

    from core import keys
    from shipit.runtime import resolve_master_key
    from shipit.settings import Settings
    from storage import db
    from storage.crypto import Cipher, MasterKeyError

    settings = Settings()

    async def run() -> dict[str, int]:
        engine = db.create_engine(settings.database_url)
        try:
            old, new = Cipher(key=resolve_master_key(settings)), Cipher(key=new_key)
            async with db.create_sessionmaker(engine).begin() as session:
                return await keys.rotate(session, old=old, new=new)
        finally:
            await engine.dispose()

    try:
        counts = asyncio.run(run())
    except MasterKeyError as e:
        fail(str(e))
        return
    typer.echo(
        f"re-encrypted {counts['secrets']} secrets, {counts['clusters']} kubeconfigs, "
        f"{counts['projects']} webhook secrets. Now set SHIPIT_MASTER_KEY to the new key and restart."
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
