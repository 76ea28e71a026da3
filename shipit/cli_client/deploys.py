"""Deploy commands: deploy, promote, rollback, revisions, deploys, status, usage, scale, approve/reject/cancel,
logs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shipit.cli_client.client import api, fail, q
from shipit.cli_client.options import AppArg, EnvNameOpt, JsonOpt, WaitOpt, env_flag
from shipit.cli_client.output import deploy_line, deployed, fields_out, show_json, table, when

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
        d = client.call("POST", f"/apps/{q(app_name)}/deploys", body=body, params={"env": environment})
        deployed(client, d, wait=wait, as_json=as_json, environment=environment)


def _dry_run(app_name: str, image: str | None, *, as_json: bool, environment: str | None = None) -> None:
    body: dict[str, Any] = {"dry_run": True, **({"image": image} if image else {})}
    with api() as client:
        result = client.call("POST", f"/apps/{q(app_name)}/deploys", body=body, params={"env": environment})
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
            "POST", f"/apps/{q(app_name)}/rollback", body={"revision": revision}, params={"env": environment}
        )
        if not as_json:
            resume = f"shipit apps resume {app_name}{env_flag(environment)}"
            typer.echo(f"rolling {app_name} back; automatic deploys are paused until `{resume}`")
        deployed(client, d, wait=wait, as_json=as_json, environment=environment)


def revisions(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """Kept revisions of an app, newest first."""
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/revisions", env=environment)
    if as_json:
        show_json(rows)
        return
    table(
        ["REVISION", "IMAGE", "SOURCE", "ROLLBACK OF", "BY", "CREATED"],
        [
            [r["number"], r["image"], r["source"], r["rollback_of"], r["created_by"], when(r["created_at"])]
            for r in rows
        ],
        empty=f"{app_name} has no revisions yet: shipit deploy {app_name}{env_flag(environment)}",
    )


def deploys_list(
    app_name: AppArg,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    environment: EnvNameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy history of an app."""
    with api() as client:
        rows = client.get(f"/apps/{q(app_name)}/deploys", limit=limit, env=environment)
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
        s = client.get(f"/apps/{q(app_name)}/status", env=environment)
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
        if hpa := live.get("autoscaler"):
            pods.append(("autoscaler", autoscaler_line(hpa)))
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


def usage(app_name: AppArg, environment: EnvNameOpt = None, as_json: JsonOpt = False) -> None:
    """CPU and memory the app's pods use now, against their requests and limits (the Metrics API)."""
    with api() as client:
        u = client.get(f"/apps/{q(app_name)}/usage", env=environment)
    if as_json:
        show_json(u)
        return
    per_pod, total = u["per_pod"], u["total"]
    rows = [
        [p["pod"], _cpu_text(p["usage"]), _memory_text(p["usage"]), p["window"] or "-"]
        for p in u.get("pods") or []
    ]
    table(
        ["POD", "CPU (OF REQUEST/LIMIT)", "MEMORY (OF REQUEST/LIMIT)", "WINDOW"],
        rows,
        empty="no pod metrics yet",
    )
    scaling = u.get("autoscaling")
    pairs: list[tuple[str, Any]] = [
        ("app", f"{u['app']} (project {u['project']}, env {u['environment']}, namespace {u['namespace']})"),
        (
            "per pod",
            f"cpu {per_pod['cpu_request']}/{per_pod['cpu_limit']}, "
            f"memory {per_pod['memory_request']}/{per_pod['memory_limit']} (request/limit"
            + (f", revision {u['revision']})" if u.get("revision") is not None else ", app settings)"),
        ),
        ("total", f"cpu {_cpu_text(total)}, memory {_memory_text(total)}" if rows else None),
        (
            "autoscaling",
            f"{scaling['min_replicas']}-{scaling['max_replicas']} pods at {scaling['cpu_target_percent']}% "
            f"of the CPU request; now {_percent(total['cpu_of_requests_percent'])}"
            + _scales_down_text(scaling.get("scale_down_window_seconds"))
            if scaling
            else None,
        ),
    ]
    history = u.get("history") or {}
    pairs += [(f"last {w['window']}", _window_text(w)) for w in history.get("windows") or []]
    pairs += [("hint", hint) for hint in history.get("hints") or []]
    typer.echo()
    fields_out(pairs)


def _window_text(w: dict[str, Any]) -> str:
    """One window of the stored samples (core.usage_history): totals over the app's pods."""
    avg_mib, peak_mib = w["memory_average_bytes"] / 2**20, w["memory_peak_bytes"] / 2**20
    return (
        f"cpu avg {round(w['cpu_average_millicores'], 1):g}m peak {round(w['cpu_peak_millicores'], 1):g}m, "
        f"memory avg {avg_mib:.1f}Mi peak {peak_mib:.1f}Mi ({w['samples']} samples, up to {w['max_pods']} pods)"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:g}%"


def _cpu_text(f: dict[str, Any]) -> str:
    return f"{round(f['cpu_millicores'], 1):g}m ({_percent(f['cpu_of_requests_percent'])}/{_percent(f['cpu_of_limits_percent'])})"


def _memory_text(f: dict[str, Any]) -> str:
    mib = f["memory_bytes"] / 2**20
    return (
        f"{mib:.1f}Mi ({_percent(f['memory_of_requests_percent'])}/{_percent(f['memory_of_limits_percent'])})"
    )


def scale(
    app_name: AppArg,
    replicas: Annotated[
        int | None, typer.Option(help="A fixed number of pods (turns autoscaling off).")
    ] = None,
    min_replicas: Annotated[int | None, typer.Option("--min", help="Autoscaling: fewest pods.")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max", help="Autoscaling: most pods.")] = None,
    cpu: Annotated[int | None, typer.Option("--cpu", help="Autoscaling: CPU target in percent.")] = None,
    scale_down_window: Annotated[
        str | None,
        typer.Option(
            "--scale-down-window",
            metavar="SECONDS|default",
            help="Autoscaling: seconds the HPA waits before scaling down (0-3600); "
            "default: Kubernetes' own (300).",
        ),
    ] = None,
    auto_off: Annotated[bool, typer.Option("--auto-off", help="Turn autoscaling off.")] = False,
    environment: EnvNameOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Scale: --replicas N, or autoscale with --min N --max N [--cpu N] [--scale-down-window S], or --auto-off."""
    auto = any(v is not None for v in (min_replicas, max_replicas, cpu, scale_down_window))
    modes = sum([replicas is not None, auto, auto_off])
    if modes != 1:
        fail(
            "give one of --replicas N, --min N --max N [--cpu N] [--scale-down-window S], or --auto-off"
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
    body = {k: v for k, v in body.items() if v is not None}
    if scale_down_window is not None:
        # null (default) is sent as such: it sets Kubernetes' own window back.
        body["scale_down_window"] = _window(scale_down_window)
    with api() as client:
        d = client.call(
            "POST",
            f"/apps/{q(app_name)}/scale",
            body=body,
            params={"env": environment},
        )
        deployed(client, d, wait=wait, as_json=as_json, environment=environment)


def _window(text: str) -> int | None:
    """--scale-down-window: seconds (the API checks the range and names the field), or `default`."""
    if text.strip().lower() == "default":
        return None
    try:
        return int(text.strip().removesuffix("s"))
    except ValueError:
        fail(f"--scale-down-window takes seconds (0-3600) or default, got {text[:20]!r}")


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
    """Logs of an app's pods, each line prefixed with its pod when there are several (--json: one
    object a line with `pod`, `container` and `line`)."""
    with api() as client:
        try:
            for line in client.lines(
                f"/apps/{q(app_name)}/logs",
                params={
                    "tail": tail,
                    "follow": str(follow).lower(),
                    **({"env": environment} if environment else {}),
                    **({"format": "json"} if as_json else {}),
                },
            ):
                typer.echo(line)  # with --json, the server's object as it sent it
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


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
        d = client.call("POST", f"/apps/{q(app_name)}/promote", body={"from": source, "to": target})
        if not as_json:
            typer.echo(f"promoting {app_name} from {source} to {target}: {d['image']}")
        deployed(client, d, wait=wait, as_json=as_json, environment=target)


def autoscaler_line(hpa: dict[str, Any]) -> str:
    """The HPA's own figures: the pods it counts and wants, and the CPU use it scales on."""
    # 0 wanted is the controller not having decided yet (no metrics): an HPA never wants fewer than min.
    wants = f"wants {hpa['desired_replicas']}" if hpa["desired_replicas"] else "no scaling decision yet"
    target = f" (target {hpa['cpu_target_percent']}%)" if hpa["cpu_target_percent"] is not None else ""
    cpu = (
        "not measured yet"
        if hpa["cpu_current_percent"] is None
        else f"{hpa['cpu_current_percent']}% of requests"
    )
    return (
        f"{hpa['current_replicas']} pods, {wants} "
        f"(min {hpa['min_replicas']}, max {hpa['max_replicas']}); CPU {cpu}{target}"
        + _scales_down_text(hpa.get("scale_down_window_seconds"))
    )


def _scales_down_text(window: int | None) -> str:
    return "" if window is None else f"; scales down after {window}s"
