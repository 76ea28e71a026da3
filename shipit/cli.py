"""The `shipit` command: server-side commands (serve, db, keys) here, API commands in cli_client."""

from __future__ import annotations

import asyncio
import sys

import typer

from shipit import cli_client, cli_identities, cli_notify, cli_policies, cli_protection
from shipit.settings import Settings

app = typer.Typer(help="shipit: ship container images to your Kubernetes clusters.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
keys_app = typer.Typer(help="The master key.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
cli_client.register(app)
cli_client.apps_app.command("policy")(cli_policies.policy)
app.add_typer(cli_identities.identities_app, name="identities")
cli_protection.register(app)
cli_notify.register(app)


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

    settings = Settings()
    logs.configure(settings.log_level, fmt=settings.log_format)
    telemetry.setup()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        **serving.uvicorn_options(settings),
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (also done at every start)."""
    from storage import db, migrate

    async def run() -> str | None:
        engine = db.create_engine(Settings().database_url)
        try:
            await migrate.upgrade(engine)
            return await migrate.current(engine)
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
    from core import keys
    from shipit.runtime import resolve_master_key
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
