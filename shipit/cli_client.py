"""API-client commands of the `shipit` CLI (talk to SHIPIT_URL with SHIPIT_TOKEN)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the API commands to the main CLI."""
