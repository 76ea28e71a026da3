"""`shipit apps`: what runs where, and how; the settings themselves are in app_settings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from shipit.cli_client import app_settings
from shipit.cli_client.client import Api, api, fail, q
from shipit.cli_client.options import EnvironmentOpt, EnvNameOpt, JsonOpt, WaitOpt, env_flag, parse_pairs
from shipit.cli_client.output import deployed, fields_out, show_json, table

apps_app = typer.Typer(help="Apps: what runs where, and how.", no_args_is_help=True)


def _split_env(items: Sequence[str] | None, environment: str | None) -> tuple[list[str], str | None]:
    """`--env staging` names the environment, `--env KEY=VALUE` sets a variable."""
    # Only a lowercase DNS label names an environment; anything else stays a (malformed) variable.
    names = [i for i in items or [] if "=" not in i and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", i)]
    pairs = [i for i in items or [] if i not in names]
    if environment is not None:
        names.append(environment)
    if len(set(names)) > 1:
        fail(f"give one environment, not {', '.join(names)}")
    return pairs, names[0] if names else None


@apps_app.command("list")
def apps_list(
    project: Annotated[str | None, typer.Option(help="Only apps of this project.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The apps you can see."""
    with api() as client:
        rows = client.get("/apps", project=project)
    if as_json:
        show_json(rows)
        return
    table(
        ["NAME", "PROJECT", "ENV", "CLUSTER", "NAMESPACE", "IMAGE", "REPLICAS", "FLAGS"],
        [
            [
                a["name"],
                a["project"],
                a.get("environment") or "-",
                a["cluster"],
                a["namespace"],
                a["image"],
                _replicas(a),
                _flags(a),
            ]
            for a in rows
        ],
        empty="no apps yet: shipit apps create NAME --project P --cluster C --image IMAGE",
    )


def _replicas(a: dict[str, Any]) -> str:
    s = a.get("autoscaling")
    if s:
        window = s.get("scale_down_window")
        down = "" if window is None else f", down after {window}s"
        return f"{s['min_replicas']}-{s['max_replicas']} @{s['cpu_target'] or 80}% cpu{down}"
    return str(a["replicas"])


def _flags(a: dict[str, Any]) -> str:
    out = []
    if a.get("protected"):
        out.append("protected")
    if a.get("locked"):
        out.append("locked")
    if a.get("auto_deploy_paused"):
        out.append("paused")
    return ",".join(out) or "-"


def _pick(client: Api, *, path: str, flag: str, what: str) -> str:
    """A missing --project/--cluster is fine when there is only one to choose from."""
    names = [row["name"] for row in client.get(path)]
    if len(names) == 1:
        return str(names[0])
    fail(f"{flag} is required; {what}: {', '.join(names) if names else 'none yet'}")


@apps_app.command("create")
@app_settings.options("create")
def apps_create(
    name: Annotated[str | None, typer.Argument(help="App name (a DNS label).", show_default=False)] = None,
    name_opt: Annotated[str | None, typer.Option("--name", help="The app name, seed style.")] = None,
    project: Annotated[str | None, typer.Option(help="Project (default: your only one).")] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster (default: the only one).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace (default: the cluster's).")] = None,
    *,
    settings: dict[str, Any],
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Only record the app; deploy later.")
    ] = False,
    environment: EnvironmentOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an app, and deploy it at once when it has an image (unless --no-deploy).

    `--env staging` (or --environment) creates it in that environment of the project; an app that
    already runs in another environment is copied there, the flags given being this one's overrides
    (cluster and namespace default to the environment's; secrets are not copied).
    """
    env, environment = _split_env(settings["env"], environment)
    if name_opt:
        # Seed style: `apps create CLUSTER --name APP`.
        if name and cluster:
            fail("give the app name once: as NAME or as --name")
        cluster, name = cluster or name, name_opt
    if not name:
        fail("NAME is required: shipit apps create NAME --project P --cluster C --image IMAGE")
    variables = parse_pairs(env, what="--env") if env else None
    body = app_settings.body(settings)
    if variables is not None:
        body["env"] = variables
    with api() as client:
        project = project or _pick(client, path="/projects", flag="--project", what="your projects")
        if environment is None:
            cluster = cluster or _pick(client, path="/clusters", flag="--cluster", what="clusters")
        body.update(name=name, project=project, deploy=not no_deploy)
        if cluster:
            body["cluster"] = cluster
        if environment:
            body["environment"] = environment
        if namespace:
            body["namespace"] = namespace
        created = client.call("POST", "/apps", body=body)
        a, d = created["app"], created["deployment"]
        if not as_json:
            typer.echo(
                f"created app {a['name']} in project {a['project']}"
                + (f", environment {a.get('environment')}" if environment else "")
                + f" (cluster {a['cluster']}, namespace {a['namespace']})"
            )
            if d is None:
                hint = "set an image with --image, then " if not a["image"] else ""
                typer.echo(f"not deployed yet: {hint}shipit deploy {a['name']}{env_flag(environment)}")
        deployed(client, d, wait=wait, as_json=as_json, envelope={"app": a}, environment=environment)


@apps_app.command("update")
@app_settings.options("update")
def apps_update(
    name: Annotated[str, typer.Argument(help="App name.")],
    *,
    settings: dict[str, Any],
    deploy: Annotated[
        bool, typer.Option("--deploy", help="Roll the change out now (--wait implies it).")
    ] = False,
    environment: EnvironmentOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change an app's settings; they reach the cluster with the next deploy (or now with --deploy).

    In an app that runs in several environments, `--env staging` (or --environment) says which.
    """
    env, environment = _split_env(settings["env"], environment)
    unset_env = settings["unset_env"]
    where = {"env": environment}
    body = app_settings.body(settings)
    with api() as client:
        if env or unset_env:
            # --env adds to the app's variables instead of replacing them all.
            current = dict(client.get(f"/apps/{q(name)}", **where)["env"])
            current.update(parse_pairs(env or [], what="--env"))
            for key in unset_env or []:
                current.pop(key, None)
            body["env"] = current
        if not body:
            fail("nothing to change: give at least one flag, see shipit apps update --help")
        deploy = deploy or wait
        a = client.call("PATCH", f"/apps/{q(name)}", body=body, params=where)
        d = client.call("POST", f"/apps/{q(name)}/deploys", body={}, params=where) if deploy else None
        if as_json and not deploy:
            show_json(a)
            return
        if not as_json:
            typer.echo(f"updated app {a['name']}: {', '.join(sorted(body))}")
            if not deploy and app_settings.reaches_workload(body):
                typer.echo(
                    "the change reaches the cluster with the next deploy: "
                    f"shipit deploy {a['name']}{env_flag(environment)}"
                )
            elif not deploy:
                typer.echo("shipit's own settings: in effect now, nothing changes on the cluster")
        deployed(client, d, wait=wait, as_json=as_json, envelope={"app": a}, environment=environment)


@apps_app.command("show")
def apps_show(
    name: Annotated[str, typer.Argument(help="App name.")],
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An app's settings."""
    with api() as client:
        a = client.get(f"/apps/{q(name)}", env=environment)
    if as_json:
        show_json(a)
        return
    fields_out(
        [
            ("name", a["name"]),
            ("project", a["project"]),
            ("environment", a.get("environment")),
            ("cluster", a["cluster"]),
            ("namespace", a["namespace"]),
            ("image", a["image"] or "(none yet)"),
            ("revision", _current_revision(a)),
            ("last attempt", _attempt(a.get("last_attempt"))),
            ("auto-rollback", "on" if a.get("auto_rollback", True) else "off"),
            ("replicas", _replicas(a)),
            ("port", a["port"]),
            ("env", a["env"]),
            ("resources", a["resources"]),
            ("health", a["health"]),
            ("autoscaling", a["autoscaling"]),
            ("domain", a["domain"]),
            ("protected", a["protected"]),
            ("locked", a["locked"]),
            ("paused", a["paused_reason"] if a["auto_deploy_paused"] else None),
            ("git", a["git"]),
            ("previews", a["previews"]),
            ("release command", a.get("release_command")),
        ]
    )


def _current_revision(a: dict[str, Any]) -> str:
    number = a.get("current_revision")
    return f"{number} (the settings here are what it runs)" if number else "none yet"


def _attempt(la: dict[str, Any] | None) -> str | None:
    """The last finished deploy, apart from what runs: a failed one never shows as the app's image."""
    if not la:
        return None
    reason = f": {la['error']}" if la.get("status") == "failed" and la.get("error") else ""
    return f"deploy #{la['deployment']} of revision {la['revision']} ({la['image']}) {la['outcome']}{reason}"


@apps_app.command("delete")
def apps_delete(
    name: Annotated[str, typer.Argument(help="App name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete an app (in one environment, with --env) and its objects in the cluster."""
    if not yes:
        try:
            sure = typer.confirm(f"Delete app {name}, its secrets and its workload in the cluster?")
        except typer.Abort:
            sure = False
        if not sure:
            fail(f"{name} not deleted (pass --yes to skip this question)")
    with api() as client:
        result = client.call("DELETE", f"/apps/{q(name)}", params={"env": environment}) or {
            "deleted": name,
            "warning": None,
        }
    if as_json:
        show_json(result)
        return
    typer.echo(f"deleted app {name}")
    if result.get("warning"):
        typer.echo(f"warning: {result['warning']}", err=True)


def _set_flag(name: str, action: str, *, reason: str | None, environment: str | None, as_json: bool) -> None:
    with api() as client:
        a = client.call(
            "POST", f"/apps/{q(name)}/{action}", body={"reason": reason}, params={"env": environment}
        )
    if as_json:
        show_json(a)
        return
    # The command to undo it names the environment, or it would be refused for an app in several.
    env = env_flag(environment)
    done = {
        "lock": f"locked {name}: no deploys until `shipit apps unlock {name}{env}`",
        "unlock": f"unlocked {name}",
        "pause": f"paused automatic deploys of {name} (`shipit apps resume {name}{env}` to resume)",
        "resume": f"automatic deploys of {name} resumed",
    }
    typer.echo(done[action])


ReasonOpt = Annotated[str | None, typer.Option(help="Why (shown to others).")]


@apps_app.command("lock")
def apps_lock(
    name: Annotated[str, typer.Argument()],
    reason: ReasonOpt = None,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop all deploys of an app."""
    _set_flag(name, "lock", reason=reason, environment=environment, as_json=as_json)


@apps_app.command("unlock")
def apps_unlock(
    name: Annotated[str, typer.Argument()],
    reason: ReasonOpt = None,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Allow deploys again."""
    _set_flag(name, "unlock", reason=reason, environment=environment, as_json=as_json)


@apps_app.command("pause")
def apps_pause(
    name: Annotated[str, typer.Argument()],
    reason: ReasonOpt = None,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop automatic (push) deploys; manual ones still work."""
    _set_flag(name, "pause", reason=reason, environment=environment, as_json=as_json)


@apps_app.command("resume")
def apps_resume(
    name: Annotated[str, typer.Argument()],
    reason: ReasonOpt = None,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume automatic deploys (after a rollback paused them)."""
    _set_flag(name, "resume", reason=reason, environment=environment, as_json=as_json)
