"""`shipit apps policy APP`: show, set or clear the image policy that deploys new registry tags."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail
from shipit.cli_client.output import show_json

EXIT_USAGE = 2

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> int:
    """`90`, `90s`, `5m`, `2h`, `1d` in seconds."""
    m = _DURATION.match(text.strip().lower())
    if m is None:
        fail(f"--poll must be a duration such as 30s, 5m or 1h, got {text!r}", code=EXIT_USAGE)
    return int(m.group(1)) * _UNITS[m.group(2)]


def _when(value: Any) -> str:
    return str(value).replace("T", " ")[:19] if value else "never"


def describe(p: dict[str, Any]) -> str:
    rule = f"{p['kind']} {p['pattern']}" + (f" (sorted {p['sort']})" if p.get("sort") else "")
    lines = [
        f"{p['app']} ({p['environment']}) deploys new tags of {p['repository']} matching {rule}",
        "  triggers:   registry notifications"
        + (f" and polling every {p['poll_seconds']}s" if p.get("poll_seconds") else " only (no polling)"),
        f"  last tag:   {p.get('last_tag') or 'none yet'}",
        f"  last poll:  {_when(p.get('last_polled_at'))}"
        + (f", next {_when(p.get('next_poll_at'))}" if p.get("next_poll_at") else ""),
    ]
    if p.get("failures") or p.get("last_error"):
        lines.append(f"  failures:   {p['failures']} in a row: {p.get('last_error') or ''}")
    if p.get("promote_to"):
        lines.append(f"  promotes to {p['promote_to']} after a successful deploy")
    return "\n".join(lines)


def policy(
    name: Annotated[str, typer.Argument(help="App name.")],
    semver: Annotated[
        str | None, typer.Option("--semver", help="A semver range: ^1.4, ~1.4.2, >=2 <3.")
    ] = None,
    glob: Annotated[str | None, typer.Option("--glob", help="A glob on the whole tag: main-*.")] = None,
    regex: Annotated[
        str | None,
        typer.Option("--regex", help="A regex on the whole tag with a group `key`: main-(?P<key>\\d+)."),
    ] = None,
    sort: Annotated[
        str | None, typer.Option("--sort", help="How a regex's key orders tags: numeric or alpha.")
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", help="The app's environment (if it runs in several).")
    ] = None,
    poll: Annotated[
        str | None, typer.Option("--poll", help="Also poll the tag list this often: 5m, 1h.")
    ] = None,
    promote_to: Annotated[
        str | None,
        typer.Option("--promote-to", help="After a successful deploy, deploy it to this environment."),
    ] = None,
    repository: Annotated[
        str | None, typer.Option("--repository", help="The repository to follow (default: the app's image).")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the policy.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of text.")] = False,
) -> None:
    """Deploy new registry tags by themselves: show, set (--semver/--glob/--regex) or --clear the policy."""
    path = f"/apps/{name}/policy"
    params = {"env": env}
    chosen = [v for v in (semver, glob, regex) if v]
    with api() as client:
        if clear:
            client.call("DELETE", path, params=params)
            typer.echo(f"{name}: image policy removed")
            return
        if not chosen:
            if any(v is not None for v in (sort, poll, promote_to, repository)):
                fail("give --semver, --glob or --regex to set a policy", code=EXIT_USAGE)
            result = client.call("GET", path, params=params)
        else:
            if len(chosen) > 1:
                fail("give only one of --semver, --glob and --regex", code=EXIT_USAGE)
            body: dict[str, Any] = {
                "semver": semver,
                "glob": glob,
                "regex": regex,
                "sort": sort,
                "repository": repository,
                "poll_seconds": seconds(poll) if poll else None,
                "promote_to": promote_to,
            }
            result = client.call(
                "PUT", path, body={k: v for k, v in body.items() if v is not None}, params=params
            )
    if as_json:
        show_json(result)
    else:
        typer.echo(describe(result))
