"""API-client commands of the `shipit` CLI: every one of them is a call to the REST API.

The CLI holds no logic of its own beyond parsing flags and printing answers, so it obeys exactly
the permissions and validation every other channel does.  It reaches the service at SHIPIT_URL with
the token in SHIPIT_TOKEN.  People get aligned tables; scripts pass `--json` and get the API's JSON.
Failures are one line on stderr: exit 1 when the API said no (or a deploy failed), exit 2 when the
service could not be reached or the CLI is not configured.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import pydantic
import typer

from shipit.settings import Settings

USER_AGENT = "shipit-cli/0.5"
POLL_SECONDS = 1.0
FINAL = ("succeeded", "failed", "superseded", "cancelled")
EXIT_API = 1
EXIT_SETUP = 2

projects_app = typer.Typer(help="Projects, their members and roles.", no_args_is_help=True)
clusters_app = typer.Typer(help="Kubernetes clusters apps run on.", no_args_is_help=True)
apps_app = typer.Typer(help="Apps: what runs where, and how.", no_args_is_help=True)
secrets_app = typer.Typer(help="App secrets (write-only: values are never shown).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
previews_app = typer.Typer(help="Preview environments of pull requests.", no_args_is_help=True)
registries_app = typer.Typer(
    help="Credentials for private registries (passwords are write-only).", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Follow the deploy until it ends; exit 1 unless it succeeds.")
]


# --------------------------------------------------------------------------- plumbing


def fail(message: str, *, code: int = EXIT_API) -> NoReturn:
    """One line on stderr, then exit: scripts read the code, people read the line."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"])
        field = error.get("field")
        # The API names the field in its messages; make sure it is there even when it is not.
        if field and str(field) not in message:
            message = f"{field}: {message}"
        if response.status_code == 401:
            message += " (check SHIPIT_TOKEN)"
        return message
    if isinstance(body, dict) and body.get("detail"):
        return f"{body['detail']} (HTTP {response.status_code})"
    return f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}"


class Api:
    """A thin synchronous client for /api/v1; every failure ends the command with one line."""

    def __init__(self, *, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self._http.close()

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as e:
            fail(
                f"cannot connect to shipit at {self.url} ({_reason(e)}): is it running? "
                "Set SHIPIT_URL to where `shipit serve` listens.",
                code=EXIT_SETUP,
            )
        except httpx.TimeoutException:
            fail(f"shipit at {self.url} did not answer in time (SHIPIT_URL)", code=EXIT_SETUP)
        except httpx.TransportError as e:
            fail(f"talking to shipit at {self.url} failed: {_reason(e)} (SHIPIT_URL)", code=EXIT_SETUP)

    def call(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        with self._transport_errors():
            response = self._http.request(
                method,
                f"/api/v1{path}",
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        if response.status_code >= 400:
            fail(_error_message(response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            fail(f"{self.url} did not answer like shipit does (not JSON): check SHIPIT_URL", code=EXIT_SETUP)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def lines(self, path: str, *, params: dict[str, Any]) -> Iterator[str]:
        """Stream a text response line by line (pod logs), without a read timeout."""
        with (
            self._transport_errors(),
            self._http.stream(
                "GET", f"/api/v1{path}", params=params, timeout=httpx.Timeout(None, connect=10.0)
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                fail(_error_message(response))
            yield from response.iter_lines()


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.split("\n")[0]


@contextlib.contextmanager
def api() -> Iterator[Api]:
    try:
        settings = Settings()
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        name = "SHIPIT_" + "_".join(str(p) for p in first["loc"]).upper()
        fail(f"{name}: {first['msg']}", code=EXIT_SETUP)
    token = settings.token.get_secret_value().strip() if settings.token else ""
    if not token:
        fail(
            "no API token: set SHIPIT_TOKEN (the first `shipit serve` prints an admin token; "
            "`shipit tokens create NAME` makes more)",
            code=EXIT_SETUP,
        )
    if not settings.url.startswith(("http://", "https://")):
        fail(f"SHIPIT_URL must start with http:// or https://, got {settings.url!r}", code=EXIT_SETUP)
    client = Api(url=settings.url, token=token)
    try:
        yield client
    finally:
        client.close()


def _q(segment: str) -> str:
    """A path segment: names are DNS labels, but a typo must not turn into another route."""
    return urllib.parse.quote(segment, safe="")


# --------------------------------------------------------------------------- output


def show_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> None:
    if not rows:
        typer.echo(empty)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields_out(pairs: Sequence[tuple[str, Any]]) -> None:
    """`key   value` lines, aligned, skipping empty values."""
    shown = [(k, _cell(v)) for k, v in pairs if v not in (None, "", [], {})]
    width = max((len(k) for k, _ in shown), default=0)
    for key, value in shown:
        typer.echo(f"{key.ljust(width)}  {value}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value)


def when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def deploy_line(d: dict[str, Any]) -> str:
    line = f"deploy #{d['id']} {d['status']}: {d['app']} {d['image']} (revision {d['revision']})"
    if d["status"] == "running" and d.get("desired"):
        line += f", {d['ready']}/{d['desired']} ready"
    if d["status"] == "awaiting_approval":
        if d.get("approvals_needed"):
            line += f" ({d.get('approvals') or 0} of {d['approvals_needed']} approvals)"
        line += f"; someone else on the project approves it with `shipit approve {d['id']}`"
    if d.get("error") and d["status"] != "succeeded":
        line += f" - {d['error']}"
    return line


def follow(client: Api, deployment: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Poll the deploy until it is final, printing each change unless quiet; returns the final state."""
    d, last = deployment, None
    try:
        while True:
            seen = (d["status"], d["ready"], d["desired"])
            if seen != last and not quiet:
                typer.echo(deploy_line(d))
            last = seen
            if d["status"] in FINAL:
                break
            time.sleep(POLL_SECONDS)
            d = client.get(f"/deploys/{d['id']}")
    except KeyboardInterrupt:
        typer.echo(f"stopped waiting; deploy #{d['id']} carries on (`shipit status {d['app']}`)", err=True)
        raise typer.Exit(130) from None
    if d.get("logs") and not quiet:
        typer.echo("last log lines:")
        for line in d["logs"]:
            typer.echo(f"  {line}")
    return d


def deployed(
    client: Api,
    d: dict[str, Any] | None,
    *,
    wait: bool,
    as_json: bool,
    envelope: dict[str, Any] | None = None,
) -> None:
    """Print a deploy the API just accepted (inside `envelope` for --json), and follow it with --wait.

    With --wait the command exits 1 unless the deploy succeeded, after printing it either way.
    """
    if d is not None and wait:
        d = follow(client, d, quiet=as_json)
    if as_json:
        show_json({**envelope, "deployment": d} if envelope is not None else d)
    elif d is not None and not wait:
        typer.echo(deploy_line(d))
    if d is not None and wait and d["status"] != "succeeded":
        fail(f"deploy #{d['id']} {d['status']}: {d.get('error') or 'no reason given'}")


# --------------------------------------------------------------------------- whoami


def whoami(as_json: JsonOpt = False) -> None:
    """Who the API token in SHIPIT_TOKEN is."""
    with api() as client:
        me = client.get("/me")
    if as_json:
        show_json(me)
    else:
        typer.echo(f"{me['subject']}{' (global admin)' if me['admin'] else ''} at {client.url}")


# --------------------------------------------------------------------------- projects


@projects_app.command("list")
def projects_list(as_json: JsonOpt = False) -> None:
    """The projects you can see."""
    with api() as client:
        rows = client.get("/projects")
    if as_json:
        show_json(rows)
        return
    table(
        ["NAME", "SLACK CHANNEL", "WEBHOOK", "CREATED"],
        [[p["name"], p["slack_channel"], _webhook(p), when(p["created_at"])] for p in rows],
        empty="no projects yet: shipit projects create NAME",
    )


def _webhook(p: dict[str, Any]) -> str:
    if not p.get("webhook_url"):
        return "-"
    return f"{p['webhook_url']}{' (signed)' if p.get('webhook_signed') else ''}"


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name (a DNS label).")],
    slack_channel: Annotated[str | None, typer.Option(help="Slack channel for deploy cards.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Send signed deploy events to this URL.")] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(help="HMAC-SHA256 key for the webhook ('-' reads stdin).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project; you become its owner."""
    body = {
        "name": name,
        "slack_channel": slack_channel,
        "webhook_url": webhook_url,
        "webhook_secret": _stdin_if_dash(webhook_secret, flag="--webhook-secret"),
    }
    with api() as client:
        p = client.call("POST", "/projects", body={k: v for k, v in body.items() if v is not None})
    if as_json:
        show_json(p)
    else:
        typer.echo(f"created project {p['name']}; you are its owner")


@projects_app.command("delete")
def projects_delete(name: Annotated[str, typer.Argument(help="Project name.")]) -> None:
    """Delete a project (owners); refused while it still has apps."""
    with api() as client:
        client.call("DELETE", f"/projects/{_q(name)}")
    typer.echo(f"deleted project {name}")


@projects_app.command("update")
def projects_update(
    name: Annotated[str, typer.Argument(help="Project name.")],
    slack_channel: Annotated[str | None, typer.Option(help="Slack channel ('' to clear).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Webhook URL ('' to clear).")] = None,
    webhook_secret: Annotated[str | None, typer.Option(help="Webhook key ('-' reads stdin).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a project's notification settings."""
    body = {
        "slack_channel": slack_channel,
        "webhook_url": webhook_url,
        "webhook_secret": _stdin_if_dash(webhook_secret, flag="--webhook-secret"),
    }
    with api() as client:
        p = client.call(
            "PATCH", f"/projects/{_q(name)}", body={k: v for k, v in body.items() if v is not None}
        )
    if as_json:
        show_json(p)
    else:
        typer.echo(f"updated project {p['name']}")


@projects_app.command("members")
def projects_members(
    name: Annotated[str, typer.Argument(help="Project name.")], as_json: JsonOpt = False
) -> None:
    """Who has which role in a project."""
    with api() as client:
        rows = client.get(f"/projects/{_q(name)}/members")
    if as_json:
        show_json(rows)
        return
    table(["SUBJECT", "ROLE"], [[m["subject"], m["role"]] for m in rows], empty="no members")


@projects_app.command("grants")
def projects_grants(
    project: Annotated[str, typer.Argument(help="Project name.")], as_json: JsonOpt = False
) -> None:
    """Where a project may deploy: the clusters it is granted and the namespaces it owns."""
    with api() as client:
        rows = client.get(f"/projects/{_q(project)}/grants")
    if as_json:
        show_json(rows)
        return
    table(
        ["CLUSTER", "PROJECT", "NAMESPACES", "GRANTED BY"],
        _grant_rows(rows),
        empty=f"{project} may use no cluster yet: a global admin runs shipit clusters grant CLUSTER {project}",
    )


@projects_app.command("access")
def projects_access(
    project: Annotated[str, typer.Argument(help="Project name.")],
    subject: Annotated[str, typer.Argument(help="Who: user:alice, slack:U123, github:octocat.")],
    role: Annotated[str | None, typer.Argument(help="viewer, developer, admin or owner.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Take the subject's role away.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Grant a role in a project (or take it away with --remove)."""
    if remove and role:
        fail("give either a ROLE or --remove, not both")
    if not remove and not role:
        fail("ROLE is required (viewer, developer, admin or owner), or pass --remove")
    with api() as client:
        if remove:
            client.call("DELETE", f"/projects/{_q(project)}/members/{_q(subject)}")
            result: dict[str, Any] = {"project": project, "subject": subject, "role": None}
        else:
            result = client.call("PUT", f"/projects/{_q(project)}/members/{_q(subject)}", body={"role": role})
    if as_json:
        show_json(result)
    elif remove:
        typer.echo(f"{subject} has no role in {project} any more")
    else:
        typer.echo(f"{result['subject']} is {result['role']} in {project}")


# --------------------------------------------------------------------------- clusters


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


def _grant_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            g["cluster"],
            g["project"],
            ", ".join(f"{ns} ({origin})" for ns, origin in g["namespaces"].items()) or "-",
            g["granted_by"],
        ]
        for g in rows
    ]


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
            "POST", f"/clusters/{_q(cluster)}/grants", body={"project": project, "namespace": namespace}
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
        client.call(
            "DELETE", f"/clusters/{_q(cluster)}/grants/{_q(project)}", params={"namespace": namespace}
        )
    if namespace:
        typer.echo(f"project {project} no longer owns namespace {namespace} on cluster {cluster}")
    else:
        typer.echo(f"project {project} may no longer use cluster {cluster}")


@clusters_app.command("grants")
def clusters_grants(
    cluster: Annotated[str, typer.Argument(help="Cluster name.")], as_json: JsonOpt = False
) -> None:
    """Which projects may use a cluster, and the namespaces each owns there (global admins)."""
    with api() as client:
        rows = client.get(f"/clusters/{_q(cluster)}/grants")
    if as_json:
        show_json(rows)
        return
    table(
        ["CLUSTER", "PROJECT", "NAMESPACES", "GRANTED BY"],
        _grant_rows(rows),
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
    text = _read_file(kubeconfig, flag="--kubeconfig")
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
    text = _read_file(kubeconfig, flag="--kubeconfig")
    with api() as client:
        c = client.call("PUT", f"/clusters/{_q(name)}", body={"kubeconfig": text})
    if as_json:
        show_json(c)
    else:
        typer.echo(f"updated cluster {c['name']}: {c['server']} (Kubernetes {c['server_version']})")


@clusters_app.command("delete")
def clusters_delete(name: Annotated[str, typer.Argument(help="Cluster name.")]) -> None:
    """Forget a cluster (global admins); refused while apps use it.  Nothing on the cluster changes."""
    with api() as client:
        client.call("DELETE", f"/clusters/{_q(name)}")
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
    admin = _read_file(str(Path(path).expanduser()) if path != "-" else path, flag="--kubeconfig")

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


def _read_file(path: str, *, flag: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{flag}: {path} is not a text file")
    except OSError as e:
        fail(f"{flag}: cannot read {path}: {e.strerror or e}")


def _stdin_if_dash(value: str | None, *, flag: str) -> str | None:
    if value != "-":
        return value
    text = sys.stdin.read()
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        fail(f"{flag} -: read nothing from stdin")
    return text


# --------------------------------------------------------------------------- apps

ImageOpt = Annotated[str | None, typer.Option(help="Container image, like ghcr.io/acme/web:1.4.")]
ReplicasOpt = Annotated[int | None, typer.Option(help="Fixed number of pods (without autoscaling).")]
PortOpt = Annotated[int | None, typer.Option(help="Container port (default 8080).")]
EnvOpt = Annotated[
    list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE environment variable; repeatable.")
]
CpuRequestOpt = Annotated[str | None, typer.Option(help="CPU request (default 100m).")]
CpuLimitOpt = Annotated[str | None, typer.Option(help="CPU limit (default 500m).")]
MemRequestOpt = Annotated[str | None, typer.Option(help="Memory request (default 128Mi).")]
MemLimitOpt = Annotated[str | None, typer.Option(help="Memory limit (default 256Mi).")]
HealthPathOpt = Annotated[str | None, typer.Option(help="HTTP path for liveness/readiness probes.")]
HealthPortOpt = Annotated[int | None, typer.Option(help="Probe port (default: the container port).")]
HealthDelayOpt = Annotated[int | None, typer.Option(help="Seconds before the first probe.")]
HealthPeriodOpt = Annotated[int | None, typer.Option(help="Seconds between probes.")]
MinOpt = Annotated[int | None, typer.Option(help="Autoscaling: fewest pods.")]
MaxOpt = Annotated[int | None, typer.Option(help="Autoscaling: most pods.")]
CpuTargetOpt = Annotated[int | None, typer.Option(help="Autoscaling: target CPU use in percent (1-100).")]
DomainOpt = Annotated[str | None, typer.Option(help="Serve on this host (Ingress + TLS); '' removes it.")]
ProtectedOpt = Annotated[
    bool | None,
    typer.Option("--protected/--unprotected", help="Deploys need approval from a second person."),
]
DeadlineOpt = Annotated[int | None, typer.Option(help="Seconds a rollout may take before it fails.")]
GitRepoOpt = Annotated[str | None, typer.Option(help="GitHub repository owner/name to deploy from.")]
GitBranchOpt = Annotated[str | None, typer.Option(help="Branch whose pushes deploy.")]
ImageTemplateOpt = Annotated[
    str | None, typer.Option(help="Image built for a commit, like ghcr.io/acme/web:{sha}.")
]
DeployOnOpt = Annotated[str | None, typer.Option(help="Deploy on 'push' or after 'ci' passes.")]
PreviewsOpt = Annotated[
    bool | None, typer.Option("--previews/--no-previews", help="A preview environment per pull request.")
]
PreviewDomainOpt = Annotated[str | None, typer.Option(help="Base domain of preview URLs.")]
PreviewTtlOpt = Annotated[int | None, typer.Option(help="Hours an idle preview lives.")]
ForksOpt = Annotated[
    str | None,
    typer.Option(
        "--previews-from-forks",
        metavar="never|approved|always",
        help="Pull requests from forks: no preview (never), one once a project developer approves "
        "each commit (approved, without the app's secrets), or always (with secrets; admins only).",
    ),
]


ReleaseCommandOpt = Annotated[
    str | None,
    typer.Option(
        "--release-command",
        help="Run this (sh -c) as a Job with the new image, env and secrets before each rollout; "
        "the deploy fails, and nothing changes, if it fails. '' removes it.",
    ),
]


AutoRollbackOpt = Annotated[
    str | None,
    typer.Option(
        "--auto-rollback",
        metavar="on|off",
        help="When a rollout fails, deploy the current revision again by itself (default on).",
    ),
]


# The environment an app command addresses (staging, production...); needed only when the app runs in
# several.  On `apps create/update`, where --env sets variables, an --env without "=" names it too.
EnvNameOpt = Annotated[
    str | None,
    typer.Option(
        "--env",
        "--environment",
        help="The environment (staging, production...) when the app runs in several.",
    ),
]
EnvironmentOpt = Annotated[
    str | None, typer.Option("--environment", help="The environment (staging, production...).")
]


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


def parse_pairs(items: Sequence[str], *, what: str) -> dict[str, str]:
    """KEY=VALUE arguments.  A malformed one is named by position, never echoed (it may be a secret)."""
    out: dict[str, str] = {}
    for n, item in enumerate(items, start=1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{what} takes KEY=VALUE; item {n} has no KEY= in front")
        out[key.strip()] = value
    return out


def _app_body(**flags: Any) -> dict[str, Any]:
    env = flags.pop("env")
    body = {k: v for k, v in flags.items() if v is not None}
    if env:
        body["env"] = parse_pairs(env, what="--env")
    if body.get("previews") is not None:
        body["previews_enabled"] = body.pop("previews")
    if body.get("auto_rollback") is not None:
        word = str(body["auto_rollback"]).lower()
        if word not in ("on", "off"):
            fail("--auto-rollback takes on or off")
        body["auto_rollback"] = word == "on"
    return body


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
        return f"{s['min_replicas']}-{s['max_replicas']} @{s['cpu_target'] or 80}% cpu"
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
def apps_create(
    name: Annotated[str | None, typer.Argument(help="App name (a DNS label).", show_default=False)] = None,
    name_opt: Annotated[str | None, typer.Option("--name", help="The app name, seed style.")] = None,
    project: Annotated[str | None, typer.Option(help="Project (default: your only one).")] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster (default: the only one).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace (default: the cluster's).")] = None,
    image: ImageOpt = None,
    replicas: ReplicasOpt = None,
    port: PortOpt = None,
    env: EnvOpt = None,
    cpu_request: CpuRequestOpt = None,
    cpu_limit: CpuLimitOpt = None,
    memory_request: MemRequestOpt = None,
    memory_limit: MemLimitOpt = None,
    health_path: HealthPathOpt = None,
    health_port: HealthPortOpt = None,
    health_initial_delay: HealthDelayOpt = None,
    health_period: HealthPeriodOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    cpu_target: CpuTargetOpt = None,
    domain: DomainOpt = None,
    protected: ProtectedOpt = None,
    progress_deadline: DeadlineOpt = None,
    git_repo: GitRepoOpt = None,
    git_branch: GitBranchOpt = None,
    image_template: ImageTemplateOpt = None,
    deploy_on: DeployOnOpt = None,
    previews: PreviewsOpt = None,
    preview_domain: PreviewDomainOpt = None,
    preview_ttl_hours: PreviewTtlOpt = None,
    previews_from_forks: ForksOpt = None,
    release_command: ReleaseCommandOpt = None,
    auto_rollback: AutoRollbackOpt = None,
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
    env, environment = _split_env(env, environment)
    if name_opt:
        # Seed style: `apps create CLUSTER --name APP`.
        if name and cluster:
            fail("give the app name once: as NAME or as --name")
        cluster, name = cluster or name, name_opt
    if not name:
        fail("NAME is required: shipit apps create NAME --project P --cluster C --image IMAGE")
    body = _app_body(
        image=image,
        replicas=replicas,
        port=port,
        env=env,
        cpu_request=cpu_request,
        cpu_limit=cpu_limit,
        memory_request=memory_request,
        memory_limit=memory_limit,
        health_path=health_path,
        health_port=health_port,
        health_initial_delay=health_initial_delay,
        health_period=health_period,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_target=cpu_target,
        domain=domain,
        protected=protected,
        progress_deadline_seconds=progress_deadline,
        git_repo=git_repo,
        git_branch=git_branch,
        image_template=image_template,
        deploy_on=deploy_on,
        previews=previews,
        preview_domain=preview_domain,
        preview_ttl_hours=preview_ttl_hours,
        previews_from_forks=previews_from_forks,
        release_command=release_command,
        auto_rollback=auto_rollback,
    )
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
                typer.echo(f"not deployed yet: {hint}shipit deploy {a['name']}")
        deployed(client, d, wait=wait, as_json=as_json, envelope={"app": a})


@apps_app.command("update")
def apps_update(
    name: Annotated[str, typer.Argument(help="App name.")],
    image: ImageOpt = None,
    replicas: ReplicasOpt = None,
    port: PortOpt = None,
    env: EnvOpt = None,
    unset_env: Annotated[
        list[str] | None, typer.Option("--unset-env", help="Remove an environment variable; repeatable.")
    ] = None,
    cpu_request: CpuRequestOpt = None,
    cpu_limit: CpuLimitOpt = None,
    memory_request: MemRequestOpt = None,
    memory_limit: MemLimitOpt = None,
    health_path: HealthPathOpt = None,
    health_port: HealthPortOpt = None,
    health_initial_delay: HealthDelayOpt = None,
    health_period: HealthPeriodOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    cpu_target: CpuTargetOpt = None,
    domain: DomainOpt = None,
    protected: ProtectedOpt = None,
    progress_deadline: DeadlineOpt = None,
    git_repo: GitRepoOpt = None,
    git_branch: GitBranchOpt = None,
    image_template: ImageTemplateOpt = None,
    deploy_on: DeployOnOpt = None,
    previews: PreviewsOpt = None,
    preview_domain: PreviewDomainOpt = None,
    preview_ttl_hours: PreviewTtlOpt = None,
    previews_from_forks: ForksOpt = None,
    release_command: ReleaseCommandOpt = None,
    auto_rollback: AutoRollbackOpt = None,
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
    env, environment = _split_env(env, environment)
    where = {"env": environment}
    body = _app_body(
        image=image,
        replicas=replicas,
        port=port,
        env=None,
        cpu_request=cpu_request,
        cpu_limit=cpu_limit,
        memory_request=memory_request,
        memory_limit=memory_limit,
        health_path=health_path,
        health_port=health_port,
        health_initial_delay=health_initial_delay,
        health_period=health_period,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_target=cpu_target,
        domain=domain,
        protected=protected,
        progress_deadline_seconds=progress_deadline,
        git_repo=git_repo,
        git_branch=git_branch,
        image_template=image_template,
        deploy_on=deploy_on,
        previews=previews,
        preview_domain=preview_domain,
        preview_ttl_hours=preview_ttl_hours,
        previews_from_forks=previews_from_forks,
        release_command=release_command,
        auto_rollback=auto_rollback,
    )
    with api() as client:
        if env or unset_env:
            # --env adds to the app's variables instead of replacing them all.
            current = dict(client.get(f"/apps/{_q(name)}", **where)["env"])
            current.update(parse_pairs(env or [], what="--env"))
            for key in unset_env or []:
                current.pop(key, None)
            body["env"] = current
        if not body:
            fail("nothing to change: give at least one flag, see shipit apps update --help")
        deploy = deploy or wait
        a = client.call("PATCH", f"/apps/{_q(name)}", body=body, params=where)
        d = client.call("POST", f"/apps/{_q(name)}/deploys", body={}, params=where) if deploy else None
        if as_json and not deploy:
            show_json(a)
            return
        if not as_json:
            typer.echo(f"updated app {a['name']}: {', '.join(sorted(body))}")
            if not deploy:
                typer.echo(f"the change reaches the cluster with the next deploy: shipit deploy {a['name']}")
        deployed(client, d, wait=wait, as_json=as_json, envelope={"app": a})


@apps_app.command("show")
def apps_show(
    name: Annotated[str, typer.Argument(help="App name.")],
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An app's settings."""
    with api() as client:
        a = client.get(f"/apps/{_q(name)}", env=environment)
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
        result = client.call("DELETE", f"/apps/{_q(name)}", params={"env": environment}) or {
            "deleted": name,
            "warning": None,
        }
    if as_json:
        show_json(result)
        return
    typer.echo(f"deleted app {name}")
    if result.get("warning"):
        typer.echo(f"warning: {result['warning']}", err=True)


def _set_flag(name: str, action: str, reason: str | None, as_json: bool) -> None:
    with api() as client:
        a = client.call("POST", f"/apps/{_q(name)}/{action}", body={"reason": reason})
    if as_json:
        show_json(a)
        return
    done = {
        "lock": f"locked {name}: no deploys until `shipit apps unlock {name}`",
        "unlock": f"unlocked {name}",
        "pause": f"paused automatic deploys of {name} (`shipit apps resume {name}` to resume)",
        "resume": f"automatic deploys of {name} resumed",
    }
    typer.echo(done[action])


ReasonOpt = Annotated[str | None, typer.Option(help="Why (shown to others).")]


@apps_app.command("lock")
def apps_lock(
    name: Annotated[str, typer.Argument()], reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop all deploys of an app."""
    _set_flag(name, "lock", reason, as_json)


@apps_app.command("unlock")
def apps_unlock(
    name: Annotated[str, typer.Argument()], reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Allow deploys again."""
    _set_flag(name, "unlock", reason, as_json)


@apps_app.command("pause")
def apps_pause(
    name: Annotated[str, typer.Argument()], reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop automatic (push) deploys; manual ones still work."""
    _set_flag(name, "pause", reason, as_json)


@apps_app.command("resume")
def apps_resume(
    name: Annotated[str, typer.Argument()], reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Resume automatic deploys (after a rollback paused them)."""
    _set_flag(name, "resume", reason, as_json)


# --------------------------------------------------------------------------- deploys


AppArg = Annotated[str, typer.Argument(help="App name.")]
RevisionOpt = Annotated[int | None, typer.Option(help="Revision to go back to (default: the previous one).")]


def deploy(
    app_name: AppArg,
    image: Annotated[
        str | None,
        typer.Argument(help="Image (ghcr.io/acme/web:1.5) or just a tag (1.5); default: redeploy as is."),
    ] = None,
    wait: WaitOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what the deploy would change on the cluster; change nothing."),
    ] = False,
    override_window: Annotated[
        bool,
        typer.Option(
            "--override-window", help="Deploy outside the environment's windows or in a freeze (admins)."
        ),
    ] = False,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy an app: a new image, a new tag, or the current config again (`--env staging`: there)."""
    if image is not None and not image.strip():
        # `deploy web "$TAG"` with TAG unset must not quietly redeploy the old image.
        fail("image must not be empty: give an image or a tag, or leave it out to redeploy as is")
    if dry_run:
        _dry_run(app_name, image, as_json=as_json, environment=environment)
        return
    with api() as client:
        body: dict[str, Any] = {"image": image} if image else {}
        if override_window:
            body["override_window"] = True
        d = client.call("POST", f"/apps/{_q(app_name)}/deploys", body=body, params={"env": environment})
        deployed(client, d, wait=wait, as_json=as_json)


def _dry_run(app_name: str, image: str | None, *, as_json: bool, environment: str | None = None) -> None:
    body: dict[str, Any] = {"dry_run": True, **({"image": image} if image else {})}
    with api() as client:
        result = client.call("POST", f"/apps/{_q(app_name)}/deploys", body=body, params={"env": environment})
    if as_json:
        show_json(result)
        return
    typer.echo(
        f"dry run: deploying {result['app']} {result['image']} (revision {result['revision']}) "
        f"into {result['namespace']} would change:"
    )
    for line in result["lines"]:
        typer.echo(f"  {line}")
    if not result["lines"]:
        typer.echo("  nothing: the cluster already runs this")


def rollback(
    app_name: AppArg,
    revision: RevisionOpt = None,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Go back to an earlier revision; automatic deploys pause until `apps resume`."""
    with api() as client:
        d = client.call(
            "POST", f"/apps/{_q(app_name)}/rollback", body={"revision": revision}, params={"env": environment}
        )
        if not as_json:
            typer.echo(
                f"rolling {app_name} back; automatic deploys are paused until `shipit apps resume {app_name}`"
            )
        deployed(client, d, wait=wait, as_json=as_json)


def revisions(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """Kept revisions of an app, newest first."""
    with api() as client:
        rows = client.get(f"/apps/{_q(app_name)}/revisions", env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["REVISION", "IMAGE", "SOURCE", "ROLLBACK OF", "BY", "CREATED"],
        [
            [r["number"], r["image"], r["source"], r["rollback_of"], r["created_by"], when(r["created_at"])]
            for r in rows
        ],
        empty=f"{app_name} has no revisions yet: shipit deploy {app_name}",
    )


def deploys_list(
    app_name: AppArg,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy history of an app."""
    with api() as client:
        rows = client.get(f"/apps/{_q(app_name)}/deploys", limit=limit, env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["ID", "STATUS", "REVISION", "IMAGE", "TRIGGER", "BY", "CREATED", "ERROR"],
        [
            [
                d["id"],
                d["status"],
                d["revision"],
                d["image"],
                d["trigger"],
                d["actor"],
                when(d["created_at"]),
                d["error"],
            ]
            for d in rows
        ],
        empty=f"{app_name} has not been deployed yet",
    )


def status(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """What runs now, what is queued, and what the cluster says."""
    with api() as client:
        s = client.get(f"/apps/{_q(app_name)}/status", env=environment)
    if as_json:
        show_json(s)
        return
    current, live = s.get("current"), s.get("live")
    if s.get("current_revision") is not None:
        running = f"revision {s['current_revision']}, {s['current_image']}"
        if current:
            running += f" (deploy #{current['id']}, finished {when(current['finished_at'])})"
    elif current:
        running = (
            f"deploy #{current['id']}, revision {current['revision']}, {current['image']}, "
            f"finished {when(current['finished_at'])}"
        )
    else:
        running = "nothing deployed yet"
    la = s.get("last_attempt")
    attempt = None
    if la and not (current and la["id"] == current["id"]):
        reason = f": {la['error']}" if la["status"] == "failed" and la.get("error") else ""
        attempt = (
            f"deploy #{la['id']} of revision {la['revision']} ({la['image']}) {s.get('last_outcome')}{reason}"
        )
    pods: list[tuple[str, Any]] = []
    if live:
        observed = f"Deployment at revision {live['revision'] or '-'}, image {live['image']}"
        for rs in live.get("replica_sets") or []:
            pods.append(
                (
                    "new pods" if rs["new"] else "old pods",
                    f"{rs['ready']}/{rs['desired']} ready, revision {rs['revision'] or '-'}, {rs['image']}",
                )
            )
        if not pods:
            observed += f", {live['ready']}/{live['desired']} ready"
    elif s.get("live_error"):
        observed = f"unknown: {s['live_error']}"
    else:
        observed = "no deployment in the cluster"
    pairs: list[tuple[str, Any]] = [
        ("app", f"{s['app']} (project {s['project']}, cluster {s['cluster']}, namespace {s['namespace']})"),
        ("image", s["image"] or "(none yet)"),
        ("running", running),
        ("last attempt", attempt),
        ("cluster", observed),
        *pods,
        ("locked", s["locked"]),
        ("paused", s["paused"]),
    ]
    for d in s.get("active") or []:
        position = f", position {d['queue_position']} in queue" if d.get("queue_position") else ""
        pairs.append(
            ("active", f"#{d['id']} {d['status']}{position}: {d['image']} (revision {d['revision']})")
        )
    fields_out(pairs)


def scale(
    app_name: AppArg,
    replicas: Annotated[
        int | None, typer.Option(help="A fixed number of pods (turns autoscaling off).")
    ] = None,
    min_replicas: Annotated[int | None, typer.Option("--min", help="Autoscaling: fewest pods.")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max", help="Autoscaling: most pods.")] = None,
    cpu: Annotated[int | None, typer.Option("--cpu", help="Autoscaling: CPU target in percent.")] = None,
    auto_off: Annotated[bool, typer.Option("--auto-off", help="Turn autoscaling off.")] = False,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Scale: --replicas N, or autoscale with --min N --max N [--cpu N], or --auto-off."""
    auto = min_replicas is not None or max_replicas is not None or cpu is not None
    modes = sum([replicas is not None, auto, auto_off])
    if modes != 1:
        fail(
            "give one of --replicas N, --min N --max N [--cpu N], or --auto-off"
            + (" (not several)" if modes > 1 else "")
        )
    body: dict[str, Any] = {
        "replicas": replicas,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "cpu_target": cpu,
    }
    if auto_off:
        body["autoscaling"] = False
    with api() as client:
        d = client.call(
            "POST",
            f"/apps/{_q(app_name)}/scale",
            body={k: v for k, v in body.items() if v is not None},
            params={"env": environment},
        )
        deployed(client, d, wait=wait, as_json=as_json)


def _deploy_action(deployment_id: int, action: str, as_json: bool) -> None:
    with api() as client:
        d = client.call("POST", f"/deploys/{deployment_id}/{action}")
    if as_json:
        show_json(d)
    else:
        typer.echo(deploy_line(d))


def approve(
    deployment_id: Annotated[int, typer.Argument(help="Deploy id.")], as_json: JsonOpt = False
) -> None:
    """Approve a deploy of a protected app (not your own)."""
    _deploy_action(deployment_id, "approve", as_json)


def reject(
    deployment_id: Annotated[int, typer.Argument(help="Deploy id.")], as_json: JsonOpt = False
) -> None:
    """Reject a deploy awaiting approval."""
    _deploy_action(deployment_id, "reject", as_json)


def cancel(
    deployment_id: Annotated[int, typer.Argument(help="Deploy id.")], as_json: JsonOpt = False
) -> None:
    """Cancel a deploy that has not started yet."""
    _deploy_action(deployment_id, "cancel", as_json)


def logs(
    app_name: AppArg,
    tail: Annotated[int, typer.Option(help="Lines per pod from the end.")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")] = False,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Logs of an app's pods, each line prefixed with its pod."""
    with api() as client:
        try:
            for line in client.lines(
                f"/apps/{_q(app_name)}/logs",
                params={
                    "tail": tail,
                    "follow": str(follow).lower(),
                    **({"env": environment} if environment else {}),
                },
            ):
                typer.echo(json.dumps({"line": line}) if as_json else line)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


# --------------------------------------------------------------------------- secrets


@secrets_app.command("set")
def secrets_set(
    app_name: AppArg,
    pairs: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE pairs (prefer --value - to keep values out of history)."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Secret name (with --value).")] = None,
    value: Annotated[
        str | None, typer.Option("--value", help="Secret value; '-' reads it from stdin.", show_default=False)
    ] = None,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Do not roll the pods now; the next deploy picks it up.")
    ] = False,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Set secrets of an app; a deployed app rolls its pods to pick them up.  Values are never shown."""
    values = parse_pairs(pairs or [], what="secrets set")
    if (key is None) != (value is None):
        fail("--key and --value go together")
    if key is not None:
        values[key] = _stdin_if_dash(value, flag="--value") or ""
    if not values:
        fail("give KEY=VALUE pairs, or --key KEY --value VALUE")
    with api() as client:
        result = client.call(
            "PUT",
            f"/apps/{_q(app_name)}/secrets",
            body={"values": values},
            params={"deploy": "false" if no_deploy else "true", "env": environment},
        )
        if not as_json:
            typer.echo(
                f"set {', '.join(result['keys'])} on {app_name} (values are stored encrypted and never shown)"
            )
        deployed(client, result["deployment"], wait=wait, as_json=as_json, envelope={"keys": result["keys"]})


@secrets_app.command("list")
def secrets_list(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """The names of an app's secrets (never their values)."""
    with api() as client:
        rows = client.get(f"/apps/{_q(app_name)}/secrets", env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["KEY", "UPDATED"],
        [[s["key"], when(s["updated_at"])] for s in rows],
        empty=f"{app_name} has no secrets",
    )


@secrets_app.command("delete")
def secrets_delete(
    app_name: AppArg,
    keys: Annotated[list[str] | None, typer.Argument(help="Secret names.")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Secret name; repeatable.")] = None,
    no_deploy: Annotated[bool, typer.Option("--no-deploy", help="Do not roll the pods now.")] = False,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete secrets of an app; a deployed app rolls its pods once."""
    wanted = list(dict.fromkeys([*(keys or []), *(key or [])]))
    if not wanted:
        fail("give the KEY(s) to delete")
    with api() as client:
        # Check them all first, so a typo deletes nothing.
        have = {s["key"] for s in client.get(f"/apps/{_q(app_name)}/secrets", env=environment)}
        missing = [k for k in wanted if k not in have]
        if missing:
            fail(f"keys: {app_name} has no secret {', '.join(missing)}")
        deployment = None
        for n, k in enumerate(wanted, start=1):
            last = n == len(wanted)
            result = client.call(
                "DELETE",
                f"/apps/{_q(app_name)}/secrets/{_q(k)}",
                params={"deploy": "true" if last and not no_deploy else "false", "env": environment},
            )
            deployment = result.get("deployment") if last else None
        if not as_json:
            typer.echo(f"deleted {', '.join(wanted)} from {app_name}")
        deployed(client, deployment, wait=wait, as_json=as_json, envelope={"keys": wanted})


# --------------------------------------------------------------------------- registries

RegistryProjectOpt = Annotated[
    str | None,
    typer.Option("--project", help="The project whose credentials these are (default: global, admins only)."),
]


@registries_app.command("add")
def registries_add(
    host: Annotated[str, typer.Argument(help="Registry host, like ghcr.io or registry.local:5000.")],
    username: Annotated[str, typer.Option("--username", "-u", help="Registry user name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password (or token) from stdin.")
    ] = False,
    project: RegistryProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store credentials for a registry: deploys pull with them and pin tags to digests.  Replaces old ones."""
    if not password_stdin:
        fail(
            "give the password on stdin with --password-stdin (never as an argument: it would stay in history)"
        )
    password = _stdin_if_dash("-", flag="--password-stdin") or ""
    with api() as client:
        result = client.call(
            "POST",
            "/registries",
            body={"host": host, "username": username, "password": password, "project": project},
        )
    if as_json:
        show_json(result)
        return
    where = f"project {project}" if project else "every project"
    verb = "stored" if result["created"] else "replaced"
    typer.echo(f"{verb} credentials for {result['host']} as {result['username']} ({where})")


@registries_app.command("list")
def registries_list(project: RegistryProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Registries with credentials: host, project and user name (never the password)."""
    with api() as client:
        rows = client.get("/registries", project=project)
    if as_json:
        show_json(rows)
        return
    table(
        ["HOST", "PROJECT", "USERNAME", "BY", "UPDATED"],
        [
            [r["host"], r["project"] or "(global)", r["username"], r["created_by"], when(r["updated_at"])]
            for r in rows
        ],
        empty="no registry credentials",
    )


@registries_app.command("remove")
def registries_remove(
    host: Annotated[str, typer.Argument(help="Registry host.")], project: RegistryProjectOpt = None
) -> None:
    """Forget credentials for a registry; the next deploy of each app removes its pull secret."""
    with api() as client:
        client.call("DELETE", f"/registries/{_q(host)}", params={"project": project} if project else None)
    typer.echo(f"removed credentials for {host}" + (f" (project {project})" if project else " (global)"))


# --------------------------------------------------------------------------- audit and tokens


def audit(
    target: Annotated[str | None, typer.Option(help="Only targets containing this, like app/web.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, like deploy.request.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonOpt = False,
    since: Annotated[
        str | None, typer.Option(help="Everything from this date or time on (UTC), oldest first, all pages.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, or jsonl: one JSON object per line (an export).")
    ] = "table",
) -> None:
    """Who did what, when (the append-only audit log)."""
    if fmt not in ("table", "jsonl"):
        fail(f"--format: expected table or jsonl, got {fmt!r}")
    if since is not None:
        try:
            dt.datetime.fromisoformat(since)
        except ValueError:
            fail(f"--since: expected a date like 2026-11-01 or a time like 2026-11-01T12:00, got {since!r}")
    with api() as client:
        if since is not None or fmt == "jsonl":
            _audit_export(client, target=target, action=action, since=since or "1970-01-01")
            return
        rows = client.get("/audit", target=target, action=action, limit=limit)
    if as_json:
        show_json(rows)
        return
    table(
        ["AT", "ACTOR", "CHANNEL", "ACTION", "TARGET", "DETAILS"],
        [
            [when(r["at"]), r["actor"], r["channel"], r["action"], r["target"], _details(r["details"])]
            for r in rows
        ],
        empty="no audit events",
    )


def _audit_export(client: Any, *, target: str | None, action: str | None, since: str) -> None:
    """Every audit event since `since`, oldest first, one JSON object per line, page after page."""
    after: int | None = None
    while True:
        rows = client.get("/audit", target=target, action=action, since=since, after_id=after, limit=1000)
        for r in rows:
            typer.echo(json.dumps(r, sort_keys=True))
        if len(rows) < 1000:
            return
        after = int(rows[-1]["id"])


def _details(details: dict[str, Any]) -> str:
    text = " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in details.items() if v is not None
    )
    return text if len(text) <= 80 else text[:77] + "..."


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="What the token is for, like ci or alice-laptop.")],
    subject: Annotated[
        str | None, typer.Option(help="Who it acts as, like user:ci (admins only; default: you).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="A global admin token (admins only).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token.  It is shown once and stored only as a hash."""
    body: dict[str, Any] = {"name": name, "admin": admin}
    if subject:
        body["subject"] = subject
    with api() as client:
        t = client.call("POST", "/tokens", body=body)
    if as_json:
        show_json(t)
        return
    typer.echo(
        f"created token {t['id']} ({t['name']}) for {t['subject']}{', global admin' if t['admin'] else ''}. "
        "It is shown ONCE, store it now:",
        err=True,
    )
    typer.echo(t["token"])


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    """API tokens (yours, or all of them for an admin)."""
    with api() as client:
        rows = client.get("/tokens")
    if as_json:
        show_json(rows)
        return
    table(
        ["ID", "NAME", "PREFIX", "SUBJECT", "ADMIN", "CREATED", "LAST USED", "REVOKED"],
        [
            [
                t["id"],
                t["name"],
                t["prefix"] + "...",
                t["subject"],
                t["admin"],
                when(t["created_at"]),
                when(t["last_used_at"]),
                when(t["revoked_at"]),
            ]
            for t in rows
        ],
        empty="no tokens",
    )


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (see tokens list).")], as_json: JsonOpt = False
) -> None:
    """Revoke an API token; it stops working at once."""
    with api() as client:
        t = client.call("DELETE", f"/tokens/{token_id}")
    if as_json:
        show_json(t)
    else:
        typer.echo(f"revoked token {t['id']} ({t['name']}, {t['subject']})")


# --------------------------------------------------------------------------- previews


def _preview_line(p: dict[str, Any]) -> str:
    source = f" from fork {p['head_repo'] or '(deleted)'}" if p["is_fork"] else ""
    line = f"preview {p['namespace']} of {p['app']}: pull request #{p['pr']}{source} at {p['head_sha'][:7]}"
    line += f", {p['status']}"
    if p.get("deployment"):
        line += f", deploy #{p['deployment']} queued"
    return line


@previews_app.command("list")
def previews_list(app_name: AppArg, as_json: JsonOpt = False) -> None:
    """The open previews of an app, and which wait for approval."""
    with api() as client:
        rows = client.get(f"/apps/{_q(app_name)}/previews")
    if as_json:
        show_json(rows)
        return
    table(
        ["PR", "NAMESPACE", "STATUS", "COMMIT", "FORK", "APPROVED BY", "URL"],
        [
            [
                p["pr"],
                p["namespace"],
                p["status"],
                p["head_sha"][:7],
                (p["head_repo"] or "(deleted)") if p["is_fork"] else "-",
                p["approved_by"],
                p["url"],
            ]
            for p in rows
        ],
        empty=f"{app_name} has no open previews",
    )


@previews_app.command("approve")
def previews_approve(
    app_name: AppArg,
    number: Annotated[int, typer.Argument(help="Pull request number.", min=1)],
    as_json: JsonOpt = False,
) -> None:
    """Deploy the waiting preview of a pull request from a fork (its current commit, without secrets)."""
    with api() as client:
        p = client.call("POST", f"/apps/{_q(app_name)}/previews/{number}/approve")
    if as_json:
        show_json(p)
    else:
        typer.echo(_preview_line(p))


# --------------------------------------------------------------------------- environments

envs_app = typer.Typer(
    help="A project's environments (staging -> production), in order.", no_args_is_help=True
)
ProjectArg = Annotated[str, typer.Argument(help="Project name.")]
EnvArg = Annotated[str, typer.Argument(help="Environment name.")]


def _env_line(e: dict[str, Any]) -> str:
    where = f"{e['cluster'] or '-'}/{e['namespace'] or '-'}"
    return (
        f"{e['project']} {e['name']} (position {e['position']}, {where}): {', '.join(e['apps']) or 'no apps'}"
    )


@envs_app.command("list")
def envs_list(project: ProjectArg, as_json: JsonOpt = False) -> None:
    """A project's environments, in promotion order."""
    with api() as client:
        rows = client.get(f"/projects/{_q(project)}/environments")
    if as_json:
        show_json(rows)
        return
    table(
        ["ENV", "CLUSTER", "NAMESPACE", "APPS"],
        [[e["name"], e["cluster"] or "-", e["namespace"] or "-", ", ".join(e["apps"]) or "-"] for e in rows],
        empty=f"{project} has no environments",
    )


@envs_app.command("create")
def envs_create(
    project: ProjectArg,
    name: EnvArg,
    cluster: Annotated[str | None, typer.Option(help="Default cluster of apps created in it.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Default namespace of apps created in it.")] = None,
    after: Annotated[str | None, typer.Option(help="Place it right after this environment.")] = None,
    before: Annotated[str | None, typer.Option(help="Place it right before this environment.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an environment (last, or --after/--before another); then `shipit apps create APP --env NAME`."""
    body = {"name": name, "cluster": cluster, "namespace": namespace, "after": after, "before": before}
    with api() as client:
        e = client.call(
            "POST",
            f"/projects/{_q(project)}/environments",
            body={k: v for k, v in body.items() if v is not None},
        )
    if as_json:
        show_json(e)
    else:
        typer.echo(f"created environment {_env_line(e)}")


@envs_app.command("update")
def envs_update(
    project: ProjectArg,
    name: EnvArg,
    cluster: Annotated[str | None, typer.Option(help="Default cluster ('' clears).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Default namespace ('' clears).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an environment's default cluster/namespace (apps already there stay where they are)."""
    body = {k: v for k, v in {"cluster": cluster, "namespace": namespace}.items() if v is not None}
    if not body:
        fail("nothing to change: give --cluster or --namespace")
    with api() as client:
        e = client.call("PATCH", f"/projects/{_q(project)}/environments/{_q(name)}", body=body)
    if as_json:
        show_json(e)
    else:
        typer.echo(f"updated environment {_env_line(e)}")


@envs_app.command("delete")
def envs_delete(project: ProjectArg, name: EnvArg) -> None:
    """Delete an environment that has no apps."""
    with api() as client:
        client.call("DELETE", f"/projects/{_q(project)}/environments/{_q(name)}")
    typer.echo(f"deleted environment {name} of {project}")


def promote(
    app_name: AppArg,
    source: Annotated[str, typer.Argument(help="Environment whose current revision moves (staging).")],
    target: Annotated[str, typer.Argument(help="Environment to deploy it to (production).")],
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Deploy to TARGET exactly what runs in SOURCE: the image by digest and its release command, with
    TARGET's own replicas, env, resources and secrets (TARGET's approvals still apply)."""
    with api() as client:
        d = client.call("POST", f"/apps/{_q(app_name)}/promote", body={"from": source, "to": target})
        if not as_json:
            typer.echo(f"promoting {app_name} from {source} to {target}: {d['image']}")
        deployed(client, d, wait=wait, as_json=as_json)


# --------------------------------------------------------------------------- wiring


def register(app: typer.Typer) -> None:
    """Add the API commands to the main CLI."""
    app.add_typer(projects_app, name="projects")
    app.add_typer(clusters_app, name="clusters")
    app.add_typer(apps_app, name="apps")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(previews_app, name="previews")
    app.add_typer(registries_app, name="registries")
    app.add_typer(envs_app, name="envs")
    app.command("deploy")(deploy)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("revisions")(revisions)
    app.command("deploys")(deploys_list)
    app.command("status")(status)
    app.command("scale")(scale)
    app.command("approve")(approve)
    app.command("reject")(reject)
    app.command("cancel")(cancel)
    app.command("logs")(logs)
    app.command("audit")(audit)
    app.command("whoami")(whoami)
    # The seed's spellings: `shipit apps revisions APP`, `shipit apps rollback APP --revision N`.
    apps_app.command("revisions")(revisions)
    apps_app.command("rollback")(rollback)
    apps_app.command("deploy")(deploy)
    apps_app.command("status")(status)
