"""The words of a notice, shared by email, Teams and Discord: a title, a few facts, a colour.

Rendered from the state at delivery time (like the Slack card), never with a secret: only names,
the image, the status, the error and the pod's last log lines, which shipit shows everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.notices import TEST_KIND, Notice

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
