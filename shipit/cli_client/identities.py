"""`shipit identities`: which subjects (slack:U1, github:octocat, user:alice) are one person."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, q
from shipit.cli_client.options import JsonOpt
from shipit.cli_client.output import show_json, table, when

identities_app = typer.Typer(
    help="One person, several identities: roles held by any of them hold for all.", no_args_is_help=True
)


def _rows(rows: list[dict[str, Any]]) -> None:
    table(
        ["PERSON", "SUBJECT", "VERIFIED BY", "LINKED BY", "LINKED"],
        [[r["person"], r["subject"], r["verified_by"], r["created_by"], when(r["created_at"])] for r in rows],
        empty="no linked identities",
    )


@identities_app.command("link")
def identities_link(
    subjects: Annotated[
        list[str], typer.Argument(help="Two or more subjects, like slack:U123 github:octocat.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Make subjects one person (global admins; people link their own with `/shipit link github LOGIN`)."""
    with api() as client:
        rows = client.call("POST", "/identities", body={"subjects": subjects})
    if as_json:
        show_json(rows)
    else:
        typer.echo(f"person {rows[0]['person']}: {', '.join(r['subject'] for r in rows)}")


@identities_app.command("list")
def identities_list(
    subject: Annotated[str | None, typer.Argument(help="Whose identities (default: yours).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The identities of a person (yours by default; an admin without SUBJECT sees every link)."""
    with api() as client:
        rows = client.get("/identities", subject=subject)
    if as_json:
        show_json(rows)
    else:
        _rows(rows)


@identities_app.command("unlink")
def identities_unlink(
    subject: Annotated[str, typer.Argument(help="The subject to take off its person.")],
    as_json: JsonOpt = False,
) -> None:
    """Take a subject off its person (global admins)."""
    with api() as client:
        row = client.call("DELETE", f"/identities/{q(subject)}")
    if as_json:
        show_json(row)
    else:
        typer.echo(f"{row['subject']} is no longer linked to person {row['person']}")
