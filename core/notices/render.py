"""The words of a notice, shared by email, Teams and Discord: a title, a few facts, a colour.

Rendered from the state at delivery time (like the Slack card), never with a secret: only names,
the image, the status, the error and the pod's last log lines, which shipit shows everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from core import notices
from core.notices import BUILD_FAILED, TEST_KIND, Notice

GREEN, RED, GREY, AMBER = 0x2EB67D, 0xE01E5A, 0x9E9E9E, 0xECB22E


@dataclass(frozen=True, kw_only=True)
class Summary:
    title: str
    status: str
    facts: list[tuple[str, str]]
    error: str | None
    logs: list[str]
    color: int
    app: str | None


@dataclass(frozen=True, kw_only=True)
class BuildFailure:
    """A failed build's facts, from its event's payload (the build row's own, already scrubbed)."""

    build: int
    app: str
    sha: str  # short
    ref: str
    actor: str
    error: str  # its first line only: the rest is in the log
    logs: str  # the command that prints the build's log


def build_failure(notice: Notice) -> BuildFailure:
    p = notice.payload
    app = str(p.get("app") or (notice.app.name if notice.app else "-"))
    build = int(p.get("build") or 0)
    error = str(p.get("error") or "").strip()
    return BuildFailure(
        build=build,
        app=app,
        sha=str(p.get("sha") or "")[:7],
        ref=str(p.get("ref") or "").removeprefix("refs/heads/"),
        actor=str(p.get("actor") or "-").removeprefix("github:"),
        error=error.splitlines()[0] if error else "failed",
        logs=build_logs_command(notice, app=app, build=build),
    )


def build_logs_command(notice: Notice, *, app: str, build: int) -> str:
    """The command that prints a build's log, as every notice of a failed build names it."""
    # Among several environments an app name alone may be refused ("say which"): name this build's,
    # as the card names it (and `--env NAME` is right whether or not the app runs elsewhere too).
    several = notice.app is not None and notice.app.environments > 1
    return notices.build_logs_command(app=app, build=build, env=notice.environment if several else None)


def place(notice: Notice) -> str:
    """What a notice is about as titles name it: "acme/web (production)"."""
    project = notice.project.name if notice.project else "shipit"
    app = notice.app.name if notice.app else None
    env = f" ({notice.environment})" if notice.environment else ""
    return f"{project}/{app}{env}" if app else f"{project}{env}"


def summary(notice: Notice) -> Summary:
    project = notice.project.name if notice.project else "shipit"
    app = notice.app.name if notice.app else None
    where = f"{project}/{app}" if app else project
    env = f" ({notice.environment})" if notice.environment else ""
    d = notice.deployment
    if notice.kind == TEST_KIND:
        return Summary(
            title=f"shipit: test notice for {project}",
            status="test",
            facts=[("Project", project), ("Target", f"#{notice.target.id}" if notice.target else "-")],
            error=None,
            logs=[],
            color=GREY,
            app=None,
        )
    if notice.kind == BUILD_FAILED:
        b = build_failure(notice)
        return Summary(
            title=f"{place(notice)}: build #{b.build} of {b.sha} ({b.ref}) failed, nothing deployed",
            status="failed",
            facts=[
                ("Project", project),
                ("App", app or b.app),
                ("Environment", notice.environment or "-"),
                ("Commit", f"{b.sha} ({b.ref})"),
                ("Pushed by", b.actor),
                ("Log", b.logs),
            ],
            error=b.error,
            logs=[],
            color=RED,
            app=app,
        )
    if d is None:
        return Summary(
            title=f"shipit: {where}{env}: {notice.kind}",
            status=notice.kind,
            facts=[("Project", project), ("App", app or "-"), ("Event", notice.kind)],
            error=None,
            logs=[],
            color=GREY,
            app=app,
        )
    outcome = "rolled back" if notice.kind == "deploy.rolled_back" and d.status == "succeeded" else d.outcome
    facts = [
        ("Project", project),
        ("App", app or "-"),
        ("Environment", notice.environment or "-"),
        ("Image", d.image),
        ("Revision", str(d.revision) if d.revision is not None else "-"),
        ("Deploy", f"#{d.id} by {d.actor} ({d.trigger})"),
    ]
    if d.git_sha:
        facts.append(("Commit", d.git_sha[:12]))
    if d.duration_seconds is not None:
        facts.append(("Took", f"{d.duration_seconds:.0f}s"))
    color = {"succeeded": GREEN, "failed": RED, "awaiting_approval": AMBER}.get(d.status, GREY)
    return Summary(
        title=f"{where}{env}: deploy #{d.id} {outcome}",
        status=d.status,
        facts=facts,
        error=d.error if d.status == "failed" else None,
        logs=list(d.logs[-20:]) if d.status == "failed" else [],
        color=color,
        app=app,
    )
