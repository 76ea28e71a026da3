"""`shipit clusters`: the Kubernetes clusters apps run on, and which projects may use each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import JsonOpt, read_file
from shipit.cli_client.output import show_json, table, when

clusters_app = typer.Typer(help="Kubernetes clusters apps run on.", no_args_is_help=True)


@clusters_app.command("list")
def clusters_list(as_json: JsonOpt = False) -> None:
    """The clusters your projects may use (all of them, with their servers, for a global admin)."""
    with api() as client:
        rows = client.get("/clusters")
    if as_json:
        show_json(rows)
        return
    empty = "no clusters yet: a global admin adds one (shipit clusters add) and grants it to your project"
    if any(c.get("server") is not None for c in rows):
        table(
            ["NAME", "SERVER", "VERSION", "NAMESPACE", "CHECKED"],
            [
                [
                    c["name"],
                    c["server"],
                    c["server_version"],
                    c["default_namespace"],
                    when(c["last_check_at"]),
                ]
                for c in rows
            ],
            empty=empty,
        )
    else:
        table(["NAME", "NAMESPACE"], [[c["name"], c["default_namespace"]] for c in rows], empty=empty)


def show_grants(path: str, *, as_json: bool, empty: str) -> None:
    """The grants at `path`, as `projects grants` and `clusters grants` print them."""
    with api() as client:
        rows = client.get(path)
    if as_json:
        show_json(rows)
        return
    table(
        ["CLUSTER", "PROJECT", "NAMESPACES", "GRANTED BY"],
        [
            [
                g["cluster"],
                g["project"],
                ", ".join(f"{ns} ({origin})" for ns, origin in g["namespaces"].items()) or "-",
                g["granted_by"],
            ]
            for g in rows
        ],
        empty=empty,
    )


@clusters_app.command("grant")
def clusters_grant(
    cluster: Annotated[str, typer.Argument(help="Cluster name.")],
    project: Annotated[str, typer.Argument(help="Project that may use it.")],
    namespace: Annotated[
        str | None,
        typer.Option(
            help="Also hand the project this namespace, which may already exist (you vouch for it)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Let a project use a cluster (global admins).  Without --namespace shipit creates new namespaces."""
    with api() as client:
        g = client.call(
            "POST", f"/clusters/{q(cluster)}/grants", body={"project": project, "namespace": namespace}
        )
    if as_json:
        show_json(g)
        return
    if namespace:
        typer.echo(
            f"project {g['project']} may use cluster {g['cluster']} and owns namespace {namespace} there"
        )
    else:
        typer.echo(
            f"project {g['project']} may use cluster {g['cluster']}; shipit creates the namespaces its apps need"
        )


@clusters_app.command("revoke")
def clusters_revoke(
    cluster: Annotated[str, typer.Argument(help="Cluster name.")],
    project: Annotated[str, typer.Argument(help="Project to take it from.")],
    namespace: Annotated[
        str | None, typer.Option(help="Take back only this namespace; the project keeps the cluster.")
    ] = None,
) -> None:
    """Take back a cluster grant or one namespace (global admins); refused while apps still use it."""
    with api() as client:
        client.call("DELETE", f"/clusters/{q(cluster)}/grants/{q(project)}", params={"namespace": namespace})
    if namespace:
        typer.echo(f"project {project} no longer owns namespace {namespace} on cluster {cluster}")
    else:
        typer.echo(f"project {project} may no longer use cluster {cluster}")


@clusters_app.command("grants")
def clusters_grants(
    cluster: Annotated[str, typer.Argument(help="Cluster name.")], as_json: JsonOpt = False
) -> None:
    """Which projects may use a cluster, and the namespaces each owns there (global admins)."""
    show_grants(
        f"/clusters/{q(cluster)}/grants",
        as_json=as_json,
        empty=f"no project may use {cluster} yet: shipit clusters grant {cluster} PROJECT",
    )


@clusters_app.command("add")
def clusters_add(
    name: Annotated[str, typer.Argument(help="Cluster name (a DNS label).")],
    kubeconfig: Annotated[
        str, typer.Option("--kubeconfig", help="Path of a kubeconfig for the cluster ('-' reads stdin).")
    ],
    namespace: Annotated[str | None, typer.Option(help="Default namespace for apps.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Connect a cluster: shipit checks it can reach it, then stores the kubeconfig encrypted."""
    text = read_file(kubeconfig, flag="--kubeconfig")
    body = {"name": name, "kubeconfig": text, "namespace": namespace}
    with api() as client:
        c = client.call("POST", "/clusters", body={k: v for k, v in body.items() if v is not None})
    if as_json:
        show_json(c)
    else:
        typer.echo(
            f"added cluster {c['name']}: {c['server']} (Kubernetes {c['server_version']}), "
            f"default namespace {c['default_namespace']}"
        )


@clusters_app.command("update")
def clusters_update(
    name: Annotated[str, typer.Argument(help="Cluster name.")],
    kubeconfig: Annotated[
        str, typer.Option("--kubeconfig", help="Path of the new kubeconfig ('-' reads stdin).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Replace a cluster's kubeconfig (rotated token, moved API server); shipit checks it first."""
    text = read_file(kubeconfig, flag="--kubeconfig")
    with api() as client:
        c = client.call("PUT", f"/clusters/{q(name)}", body={"kubeconfig": text})
    if as_json:
        show_json(c)
    else:
        typer.echo(f"updated cluster {c['name']}: {c['server']} (Kubernetes {c['server_version']})")


@clusters_app.command("delete")
def clusters_delete(name: Annotated[str, typer.Argument(help="Cluster name.")]) -> None:
    """Forget a cluster (global admins); refused while apps use it.  Nothing on the cluster changes."""
    with api() as client:
        client.call("DELETE", f"/clusters/{q(name)}")
    typer.echo(f"deleted cluster {name}")


@clusters_app.command("kubeconfig-from-sa")
def clusters_kubeconfig_from_sa(
    server: Annotated[str, typer.Option("--server", help="API server URL as shipit will reach it.")],
    namespace: Annotated[str, typer.Option(help="Namespace of the service account.")] = "shipit-system",
    service_account: Annotated[str, typer.Option(help="The service account.")] = "shipit",
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            "--kubeconfig",
            help="Admin kubeconfig to read the token with (default $KUBECONFIG or ~/.kube/config).",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the cluster entry in the output.")] = "shipit",
) -> None:
    """Print a kubeconfig for `clusters add` with the service account's token and CA inline.

    Reads the account's token Secret (manifests/target-cluster) through an admin kubeconfig; talks to
    the cluster only, not to the shipit server.
    """
    import asyncio
    import os

    from core import clusters
    from core.errors import ShipitError
    from core.kube.client import Kube

    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    admin = read_file(str(Path(path).expanduser()) if path != "-" else path, flag="--kubeconfig")

    async def read() -> tuple[str, str]:
        kube = await Kube.from_kubeconfig(kubeconfig=admin, local_references=True)
        try:
            return await kube.service_account_token(namespace=namespace, service_account=service_account)
        finally:
            await kube.close()

    try:
        token, ca_data = asyncio.run(read())
    except ShipitError as e:
        fail(str(e))
    typer.echo(
        clusters.kubeconfig_for_service_account(
            server=server,
            name=name,
            namespace=namespace,
            service_account=service_account,
            token=token,
            ca_data=ca_data,
        ),
        nl=False,
    )
