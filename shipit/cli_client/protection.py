"""CLI commands that protect environments: `shipit envs protect|unprotect|window|freeze|lock|unlock|protection`
and `shipit projects lock|unlock`.  Each is one call to the API's protection routes.

They join the `envs` and `projects` groups; shipit/cli.py wires them there.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import JsonOpt
from shipit.cli_client.output import fields_out, show_json, when

ProjectArg = Annotated[str, typer.Argument(help="Project name.")]
EnvArg = Annotated[str, typer.Argument(help="Environment name (staging, production, ...).")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why: shown to whoever is refused.")]


def _path(project: str, env: str, what: str) -> str:
    return f"/projects/{q(project)}/environments/{q(env)}/{what}"


def _seconds(text: str | None, *, flag: str) -> int | None:
    """ "30m", "2h", "1d" -> seconds (None stays None)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", text.lower())
    if not text.strip() or m is None or not any(m.groups()):
        fail(f"{flag} must be a duration like 30m, 2h or 1d, got {text!r}")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def _lock(lock: dict[str, Any] | None) -> str | None:
    if not lock:
        return None
    until = f" (until {when(lock['until'])} UTC)" if lock["until"] else ""
    return f"by {lock['by']}: {lock['reason']}{until}"


def _show(e: dict[str, Any], as_json: bool) -> None:
    if as_json:
        show_json(e)
        return
    approvals = (
        f"{e['required_approvals']} from the {e['approver_role']} role"
        + (f", expire after {e['approval_ttl_seconds']}s" if e.get("approval_ttl_seconds") else "")
        if e["protected"]
        else "not needed"
    )
    windows = [f"{','.join(w['days'])} {w['start']}-{w['end']}" for w in e.get("windows") or []]
    freezes = [f"{when(f.get('start'))} to {when(f['end'])} ({f['reason']})" for f in e.get("freezes") or []]
    fields_out(
        [
            ("environment", f"{e['project']}/{e['environment']}"),
            ("approvals", approvals),
            ("timezone", e["timezone"]),
            ("windows", "; ".join(windows) or "any time"),
            ("freezes", "; ".join(freezes)),
            ("locked", _lock(e.get("lock"))),
            ("project locked", _lock(e.get("project_lock"))),
        ]
    )


def protection(project: ProjectArg, env: EnvArg, as_json: JsonOpt = False) -> None:
    """Show an environment's approvals, windows, freezes and lock."""
    with api() as client:
        _show(client.get(_path(project, env, "protection")), as_json)


def protect(
    project: ProjectArg,
    env: EnvArg,
    approvals: Annotated[
        int, typer.Option("--approvals", min=1, help="Approvals from different people.")
    ] = 1,
    approver_role: Annotated[
        str,
        typer.Option("--approver-role", metavar="deployer|developer|admin|owner", help="Who may approve."),
    ] = "deployer",
    approval_ttl: Annotated[
        str | None, typer.Option("--approval-ttl", help="How long a deploy waits for approval: 30m, 2h, 1d.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploys into the environment wait for approvals from people other than the requester."""
    body = {
        "approvals": approvals,
        "approver_role": approver_role,
        "approval_ttl_seconds": _seconds(approval_ttl, flag="--approval-ttl"),
    }
    with api() as client:
        _show(client.call("PUT", _path(project, env, "protection"), body=body), as_json)


def unprotect(project: ProjectArg, env: EnvArg, as_json: JsonOpt = False) -> None:
    """Deploys into the environment no longer wait for approval (apps marked protected still do)."""
    with api() as client:
        _show(client.call("DELETE", _path(project, env, "protection")), as_json)


def window(
    project: ProjectArg,
    env: EnvArg,
    days: Annotated[str | None, typer.Option("--days", help="mon-fri, sat,sun, all.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Opens at, like 09:00.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Closes at, like 17:00 (24:00: midnight).")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="Time zone, like Europe/Berlin.")] = None,
    add: Annotated[bool, typer.Option("--add", help="Add to the windows instead of replacing them.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="No windows: deploys at any time.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Deploys into the environment only inside its windows (an admin may override, audited)."""
    with api() as client:
        if clear:
            e = client.call("DELETE", _path(project, env, "windows"))
        else:
            if not (days and start and end):
                fail("a window needs --days, --from and --to (or --clear)")
            body = {"days": days, "start": start, "end": end, "timezone": tz, "add": add}
            e = client.call("PUT", _path(project, env, "windows"), body=body)
    _show(e, as_json)


def freeze(
    project: ProjectArg,
    env: EnvArg,
    until: Annotated[
        str | None, typer.Option("--until", help="Ends at, like 2027-01-04T09:00 (environment's time zone).")
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Starts at (default: now).")] = None,
    reason: ReasonOpt = None,
    clear: Annotated[bool, typer.Option("--clear", help="End every freeze now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """No deploys into the environment during the freeze."""
    with api() as client:
        if clear:
            e = client.call("DELETE", _path(project, env, "freezes"))
        else:
            if not until:
                fail("a freeze needs --until (or --clear)")
            body = {"until": until, "start": start, "reason": reason}
            e = client.call("POST", _path(project, env, "freezes"), body=body)
    _show(e, as_json)


ForOpt = Annotated[str | None, typer.Option("--for", help="Unlock by itself after 30m, 2h, 1d.")]


def lock(
    project: ProjectArg, env: EnvArg, reason: ReasonOpt = None, for_: ForOpt = None, as_json: JsonOpt = False
) -> None:
    """No deploys into the environment until unlocked (by you or an admin) or the lock runs out."""
    body = {"reason": reason, "seconds": _seconds(for_, flag="--for")}
    with api() as client:
        _show(client.call("POST", _path(project, env, "lock"), body=body), as_json)


def unlock(project: ProjectArg, env: EnvArg, as_json: JsonOpt = False) -> None:
    """Allow deploys into the environment again."""
    with api() as client:
        _show(client.call("POST", _path(project, env, "unlock")), as_json)


def _project_lock_out(p: dict[str, Any], as_json: bool) -> None:
    if as_json:
        show_json(p)
    elif p.get("lock"):
        lk = p["lock"]
        until = f" until {when(lk['until'])} UTC" if lk.get("until") else ""
        typer.echo(f"project {p['project']} is locked by {lk['by']}{until}: {lk['reason']}")
    else:
        typer.echo(f"project {p['project']} is unlocked")


def project_lock(
    project: ProjectArg, reason: ReasonOpt = None, for_: ForOpt = None, as_json: JsonOpt = False
) -> None:
    """No deploys into any environment of the project until unlocked or the lock runs out."""
    body = {"reason": reason, "seconds": _seconds(for_, flag="--for")}
    with api() as client:
        _project_lock_out(client.call("POST", f"/projects/{q(project)}/lock", body=body), as_json)


def project_unlock(project: ProjectArg, as_json: JsonOpt = False) -> None:
    """Allow deploys into the project again."""
    with api() as client:
        _project_lock_out(client.call("POST", f"/projects/{q(project)}/unlock"), as_json)
