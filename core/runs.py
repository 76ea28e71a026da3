"""One-off runs (`shipit run APP -- CMD...`): a command in the app's own image, env and secrets.

Each run is a Kubernetes Job in the app's namespace, rendered like the release Job (core.kube.render:
its own Secret, backoffLimit 0, restartPolicy Never, a deadline and a TTL) from the app's CURRENT
revision, so it runs exactly what the app runs.  A run is a Job carrying shipit's labels for the app
and a run label; its Job TTL deletes it some time after it ends.

The database keeps the history (models.Run): who ran which program (argv[0] and the number of
arguments, never the arguments: they may carry credentials), when, and how it ended.  `start` inserts
the row, status running, in its own transaction with the audit row, and commits it BEFORE asking the
cluster for the Job.  When the API server then refuses the Job, the row is marked failed with reason
"not created" (a short transaction of its own) and the error goes on to the caller: the history never
claims a run that never started.  A process killed between the two leaves a running row whose Job
never existed; it reads as "unknown", like any row whose Job is gone before shipit saw it end.

The row is brought up to date from the Job whenever shipit reads the run while its Job exists (show,
list, the end of a followed log, cancel -> cancelled), in a short transaction after the cluster
answered; a finished row is never rewritten.  Once the Job is gone, the row is the answer.

Reading the database and asking the cluster are separate steps (as in core.status): no transaction
is held open while the Kubernetes API answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets as random
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import apps, audit, claims, deploys, environments, identity, logctx, status
from core import revisions as snapshots
from core import secrets as app_secrets
from core.context import Core
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.identity import Actor, Role
from core.kube import render
from core.kube.applying import NamespaceOrigin
from core.kube.client import Kube
from core.kube.objects import as_list, as_str, dig, str_dict
from core.kube.rules import conditions_of, release_failure
from storage import models

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 1800
MAX_TIMEOUT_SECONDS = 86400
MAX_ARGS = 64
MAX_COMMAND_BYTES = 16 * 1024
LIST_LIMIT = 50
MAX_LIST_LIMIT = 200
# A followed run log: how often the run's end is checked, and how long its last lines may take after it.
POLL_SECONDS = 2.0
FOLLOW_GRACE_SECONDS = 2.0

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
CANCELLED = "cancelled"
UNKNOWN = "unknown"  # its Job is gone and shipit never saw it end
NOT_CREATED = "not created"  # the reason of a run whose Job the cluster refused
REASON_MAX = 100  # models.Run.reason
AUDIT_ACTION = "app.run"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True, kw_only=True)
class RunView:
    """A run as the cluster has it, or as the history has it once its Job is gone.  Never the
    arguments: they may carry credentials."""

    name: str
    app: str
    namespace: str
    revision: int | None
    image: str
    program: str
    state: str  # running, succeeded, failed, cancelled or unknown
    reason: str | None = (
        None  # why it failed: the container's (Error, OOMKilled) or the Job's (DeadlineExceeded)
    )
    message: str | None = None
    exit_code: int | None = None
    pod: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # From the history (None for a run started before shipit kept one).
    actor: str | None = None
    args: int | None = None
    timeout_seconds: int | None = None

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    @property
    def took_seconds(self) -> float | None:
        """How long a finished run took, from the times at hand (None while it runs or without them)."""
        started, ended = time_of(self.started_at), time_of(self.finished_at)
        return (ended - started).total_seconds() if self.finished and started and ended else None


def _owned(where: status.Target) -> dict[str, str]:
    """The labels every run Job of this app carries; a Job without them is not a run."""
    return {
        **render.ownership_labels(project=where.project, app=where.app),
        render.LABEL_COMPONENT: render.RUN_COMPONENT,
    }


def check_command(command: list[str]) -> list[str]:
    if not command:
        raise InvalidInput('command must name a program to run, like ["rake", "db:seed"]', field="command")
    if len(command) > MAX_ARGS:
        raise InvalidInput(f"command has {len(command)} arguments; at most {MAX_ARGS}", field="command")
    if sum(len(a.encode()) for a in command) > MAX_COMMAND_BYTES:
        raise InvalidInput(f"command is longer than {MAX_COMMAND_BYTES} bytes", field="command")
    if any("\0" in a for a in command):
        raise InvalidInput("command must not contain NUL characters", field="command")
    if not command[0].strip():
        raise InvalidInput("command must start with a program name", field="command")
    return list(command)


def check_timeout(timeout_seconds: int | None) -> int:
    if timeout_seconds is None:
        return DEFAULT_TIMEOUT_SECONDS
    if not 1 <= timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(
            f"timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}, got {timeout_seconds}",
            field="timeout_seconds",
        )
    return timeout_seconds


def _new_name(app: str) -> str:
    suffix = "-run-" + "".join(random.choice(_ID_ALPHABET) for _ in range(8))
    # A DNS label (63): the Job controller copies the Job's name into a label of its pod.
    return app[: 63 - len(suffix)].rstrip("-") + suffix


async def _authorized(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, env: str | None, action: str
) -> tuple[models.App, status.Target]:
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action=action)
    return app, await status.target_of(session, ctx=ctx, app=app)


async def _kube(*, ctx: Core, where: status.Target) -> Kube:
    return await ctx.kube.get(key=str(where.cluster_id), kubeconfig=where.kubeconfig)


async def start(
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    env: str | None = None,
    command: list[str],
    timeout_seconds: int | None = None,
) -> RunView:
    """Start `command` (argv, no shell) as a Job from the app's current revision; its view at once."""
    argv = check_command(command)
    deadline = check_timeout(timeout_seconds)
    async with ctx.sessionmaker.begin() as session:
        app, where = await _authorized(
            session, ctx=ctx, actor=actor, app_name=app_name, env=env, action="running a one-off command"
        )
        environment = await environments.of_app(session, app=app)
        if (app.protected or environment.protected) and not await _is_admin(session, actor=actor, app=app):
            # A run changes what it likes with the app's credentials: no review would see it.
            where_protected = f"app {app.name}" if app.protected else f"environment {environment.name}"
            raise PermissionDenied(
                f"{where_protected} is protected (deploys need approval), and a one-off command "
                "bypasses that review: running one there needs the admin role"
            )
        await claims.check_owned(
            session, cluster_id=app.cluster_id, namespace=app.namespace, project_id=app.project_id
        )
        revision = await deploys.current_revision(session, app=app)
        if revision is None:
            raise InvalidInput(
                f"{app.name} has never been deployed: a one-off command runs in the current revision's "
                "image, so deploy it first",
                field="app",
            )
        snapshot = snapshots.of_revision(revision)
        secret_data, secret_checksum = await app_secrets.for_deploy(
            session, ctx=ctx, app_id=app.id, version=snapshot.secrets_version
        )
        spec = deploys.workload_spec(
            ctx=ctx,
            app_name=app.name,
            project=where.project,
            namespace=app.namespace,
            revision=revision.number,
            snapshot=snapshot,
            secret_data=secret_data,
            secret_checksum=secret_checksum,
        )
        claim = await claims.claim_of(session, cluster_id=app.cluster_id, namespace=app.namespace)
        origin: NamespaceOrigin = (
            "created" if claim is not None and claim.origin == claims.CREATED else "granted"
        )
        name = _new_name(app.name)
        # The program and how many arguments, never the arguments: they may carry credentials.
        await audit.write(
            session,
            actor=actor,
            action=AUDIT_ACTION,
            target=app.name,
            project_id=app.project_id,
            details={
                "env": environment.name,
                "job": name,
                "program": argv[0],
                "args": len(argv) - 1,
                "revision": revision.number,
            },
        )
        row = models.Run(
            app_id=app.id,
            environment_id=app.environment_id,
            name=name,
            actor=actor.subject,
            program=argv[0],
            arg_count=len(argv) - 1,
            revision=revision.number,
            image=spec.image,
            timeout_seconds=deadline,
            status=RUNNING,
        )
        session.add(row)
    kube = await _kube(ctx=ctx, where=where)
    logger = logctx.deploy_logger(log, app=app_name, namespace=where.namespace)
    try:
        job = await kube.start_run(
            spec=spec,
            name=name,
            command=argv,
            namespace_origin=origin,
            active_deadline_seconds=deadline,
            ttl_seconds_after_finished=ctx.config.release_ttl_seconds,
        )
    except Exception:
        # The history must not claim a run that never started; the cluster's error goes on.
        try:
            await _settle(ctx, app_id=where.app_id, ended={name: _Ending(status=FAILED, reason=NOT_CREATED)})
        except Exception:
            logger.exception(
                "one-off run %s: its Job was refused and its row not marked %r", name, NOT_CREATED
            )
        raise
    logger.info(
        "one-off run %s of revision %s started by %s: program %s, %d args",
        name, revision.number, actor.subject, argv[0], len(argv) - 1,
    )  # fmt: skip
    return _merged(row, view(job, {}))


async def _is_admin(session: AsyncSession, *, actor: Actor, app: models.App) -> bool:
    have = await identity.role_of(session, actor=actor, project_id=app.project_id)
    return have is not None and have >= Role.ADMIN


def _is_run(job: Mapping[str, Any] | None, *, where: status.Target) -> bool:
    labels = str_dict(dig(job, "metadata", "labels"))
    return bool(job) and _owned(where).items() <= labels.items() and bool(labels.get(render.LABEL_RUN))


def view(job: Mapping[str, Any], pods: Mapping[str, Mapping[str, Any]]) -> RunView:
    """A run from its Job and pods: running until the Job says Complete or Failed (or its pod failed)."""
    labels = str_dict(dig(job, "metadata", "labels"))
    containers = as_list(dig(job, "spec", "template", "spec", "containers"))
    container = containers[0] if containers and isinstance(containers[0], dict) else {}
    command = as_list(container.get("command"))
    revision = labels.get(render.LABEL_REVISION, "")
    pod_name = sorted(pods)[0] if pods else None
    exit_code: int | None = None
    for pod in pods.values():
        for cs in as_list(dig(pod, "status", "containerStatuses")):
            code = dig(cs, "state", "terminated", "exitCode")
            if isinstance(code, int):
                exit_code = code
    conditions = conditions_of(dict(job))
    state, reason, message = RUNNING, None, None
    failure = release_failure({k: dict(v) for k, v in pods.items()})
    complete, failed = conditions.get("Complete"), conditions.get("Failed")
    if complete is not None and complete.status == "True":
        state = SUCCEEDED
    elif failure is not None:
        state, reason, message = FAILED, failure.reason, failure.message
    elif failed is not None and failed.status == "True":
        state, reason = FAILED, failed.reason or "Failed"
        message = failed.message or None
    return RunView(
        name=as_str(dig(job, "metadata", "name")),
        app=labels.get(render.LABEL_APP, ""),
        namespace=as_str(dig(job, "metadata", "namespace")),
        revision=int(revision) if revision.isdigit() else None,
        image=as_str(container.get("image")),
        program=as_str(command[0]) if command else "",
        state=state,
        reason=reason,
        message=message,
        exit_code=exit_code,
        pod=pod_name,
        started_at=as_str(dig(job, "status", "startTime"))
        or as_str(dig(job, "metadata", "creationTimestamp")),
        finished_at=as_str(dig(job, "status", "completionTime")) or None,
    )


async def _pods_of(kube: Kube, *, where: status.Target, name: str) -> dict[str, dict[str, Any]]:
    pods = await kube.list_labelled(
        kind="Pod", namespace=where.namespace, labels={**_owned(where), render.LABEL_RUN: name}
    )
    return {as_str(dig(p, "metadata", "name")): p for p in pods}


def _no_run(*, where: status.Target, name: str) -> NotFound:
    return NotFound(f"app {where.app} has no run named {name!r}")


async def _job_of(kube: Kube, *, where: status.Target, name: str) -> dict[str, Any]:
    job = await kube.get(kind="Job", name=name, namespace=where.namespace)
    if job is None or not _is_run(job, where=where):
        # A Job shipit did not make for this app is not a run of it: the same answer as none.
        raise _no_run(where=where, name=name)
    return job


@dataclass(frozen=True, kw_only=True)
class _Ending:
    status: str
    exit_code: int | None = None
    reason: str | None = None
    finished_at: dt.datetime | None = None


def time_of(value: str | None) -> dt.datetime | None:
    """A run's time as text (the cluster's, or the history's ISO form): an odd one is no time, not an
    error (every channel shows runs with it)."""
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def _ending(found: RunView) -> _Ending | None:
    if not found.finished:
        return None
    return _Ending(
        status=found.state,
        exit_code=found.exit_code,
        reason=found.reason,
        finished_at=time_of(found.finished_at),
    )


async def _settle_in(session: AsyncSession, *, app_id: int, ended: Mapping[str, _Ending]) -> None:
    """Record how runs ended; only rows still running change (a finished row is never rewritten)."""
    now = models.utcnow()
    for name, end in ended.items():
        await session.execute(
            update(models.Run)
            .where(models.Run.app_id == app_id, models.Run.name == name, models.Run.status == RUNNING)
            .values(
                status=end.status,
                exit_code=end.exit_code,
                reason=end.reason[:REASON_MAX] if end.reason else None,
                finished_at=end.finished_at or now,
            )
        )


async def _settle(ctx: Core, *, app_id: int, ended: Mapping[str, _Ending]) -> None:
    """_settle_in, in a short transaction of its own (after the cluster answered)."""
    if ended:
        async with ctx.sessionmaker.begin() as session:
            await _settle_in(session, app_id=app_id, ended=ended)


async def _record(ctx: Core, *, where: status.Target, found: RunView) -> None:
    end = _ending(found)
    if end is not None:
        await _settle(ctx, app_id=where.app_id, ended={found.name: end})


def _merged(row: models.Run | None, live: RunView) -> RunView:
    """The live run with its history; a finished row is the record (a cancelled Job may linger)."""
    if row is None:
        return live  # started before shipit kept a history
    history = dataclasses.replace(
        live, actor=row.actor, args=row.arg_count, timeout_seconds=row.timeout_seconds
    )
    if row.status == RUNNING:
        return history
    return dataclasses.replace(
        history,
        state=row.status,
        reason=row.reason,
        exit_code=row.exit_code,
        message=live.message if live.state == row.status else None,
        finished_at=_iso(row.finished_at),
    )


def _from_row(row: models.Run, *, where: status.Target) -> RunView:
    """A run whose Job is gone: the history's answer; one never seen ending is unknown."""
    return RunView(
        name=row.name,
        app=where.app,
        namespace=where.namespace,
        revision=row.revision,
        image=row.image,
        program=row.program,
        state=UNKNOWN if row.status == RUNNING else row.status,
        reason=row.reason,
        exit_code=row.exit_code,
        started_at=_iso(row.created_at),
        finished_at=_iso(row.finished_at),
        actor=row.actor,
        args=row.arg_count,
        timeout_seconds=row.timeout_seconds,
    )


async def _row_of(session: AsyncSession, *, app_id: int, name: str) -> models.Run | None:
    return await session.scalar(
        select(models.Run).where(models.Run.app_id == app_id, models.Run.name == name)
    )


async def status_of(*, ctx: Core, actor: Actor, app_name: str, env: str | None = None, run: str) -> RunView:
    """The run from its Job while that exists (recording its end), else from the history."""
    async with ctx.sessionmaker.begin() as session:
        _, where = await _authorized(
            session, ctx=ctx, actor=actor, app_name=app_name, env=env, action="reading one-off runs"
        )
        row = await _row_of(session, app_id=where.app_id, name=run)
    kube = await _kube(ctx=ctx, where=where)
    job = await kube.get(kind="Job", name=run, namespace=where.namespace)
    if job is None or not _is_run(job, where=where):
        if row is None:
            raise _no_run(where=where, name=run)
        return _from_row(row, where=where)
    live = view(job, await _pods_of(kube, where=where, name=run))
    if row is not None:
        await _record(ctx, where=where, found=live)
    return _merged(row, live)


def check_limit(limit: int | None) -> int:
    if limit is None:
        return LIST_LIMIT
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}", field="limit")
    return limit


@dataclass(frozen=True, kw_only=True)
class History:
    """The newest `count` rows of an app's run history, read (role checked) before the cluster is asked."""

    where: status.Target
    rows: list[models.Run]
    count: int

    def recorded(self) -> list[RunView]:
        """The rows as last recorded, for when the cluster cannot be reached: a running row stays
        running (not unknown: its Job may well exist)."""
        return [dataclasses.replace(_from_row(r, where=self.where), state=r.status) for r in self.rows]


async def history_of(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    env: str | None = None,
    limit: int | None = None,
) -> History:
    """list_runs' database half, in the caller's transaction (the dashboard reads it in its own)."""
    count = check_limit(limit)
    _, where = await _authorized(
        session, ctx=ctx, actor=actor, app_name=app_name, env=env, action="reading one-off runs"
    )
    rows = list(
        await session.scalars(
            select(models.Run)
            .where(models.Run.app_id == where.app_id)
            .order_by(models.Run.created_at.desc(), models.Run.id.desc())
            .limit(count)
        )
    )
    return History(where=where, rows=rows, count=count)


async def list_runs(
    *, ctx: Core, actor: Actor, app_name: str, env: str | None = None, limit: int | None = None
) -> list[RunView]:
    """The app's runs, newest first: the history, with the live state of those whose Jobs exist."""
    async with ctx.sessionmaker.begin() as session:
        found = await history_of(session, ctx=ctx, actor=actor, app_name=app_name, env=env, limit=limit)
    return await with_live(ctx=ctx, history=found)


async def with_live(*, ctx: Core, history: History) -> list[RunView]:
    """The history merged with the app's run Jobs (recording the endings seen), newest first."""
    where, rows, count = history.where, history.rows, history.count
    kube = await _kube(ctx=ctx, where=where)
    jobs = [j for j in await kube.list_labelled(kind="Job", namespace=where.namespace, labels=_owned(where))]
    pods = await kube.list_labelled(kind="Pod", namespace=where.namespace, labels=_owned(where))
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for pod in pods:
        run = str_dict(dig(pod, "metadata", "labels")).get(render.LABEL_RUN, "")
        by_run.setdefault(run, {})[as_str(dig(pod, "metadata", "name"))] = pod
    live = {
        as_str(dig(j, "metadata", "name")): (j, view(j, by_run.get(as_str(dig(j, "metadata", "name")), {})))
        for j in jobs
        if _is_run(j, where=where)
    }
    ended: dict[str, _Ending] = {}
    found: list[tuple[dt.datetime, str, RunView]] = []
    for row in rows:
        job_and_view = live.pop(row.name, None)
        if job_and_view is None:
            found.append((row.created_at, row.name, _from_row(row, where=where)))
            continue
        end = _ending(job_and_view[1])
        if row.status == RUNNING and end is not None:
            ended[row.name] = end
        found.append((row.created_at, row.name, _merged(row, job_and_view[1])))
    # Jobs of runs started before shipit kept a history, or older than the page: the page's oldest
    # row bounds them, so the page stays the newest `count`.
    oldest = rows[-1].created_at if len(rows) == count else None
    for name, (job, run_view) in live.items():
        created = time_of(as_str(dig(job, "metadata", "creationTimestamp"))) or models.utcnow()
        if oldest is None or created > oldest:
            found.append((created, name, run_view))
    await _settle(ctx, app_id=where.app_id, ended=ended)
    found.sort(key=lambda f: (f[0], f[1]), reverse=True)
    return [f[2] for f in found[:count]]


async def cancel(*, ctx: Core, actor: Actor, app_name: str, env: str | None = None, run: str) -> RunView:
    """Delete the run's Job (its pod and Secret go with it); only a Job shipit made for this app's run.

    Its row ends cancelled, unless the Job had already ended (that ending is recorded instead)."""
    async with ctx.sessionmaker.begin() as session:
        app, where = await _authorized(
            session, ctx=ctx, actor=actor, app_name=app_name, env=env, action="cancelling a one-off run"
        )
        project_id = app.project_id
        row = await _row_of(session, app_id=where.app_id, name=run)
    kube = await _kube(ctx=ctx, where=where)
    job = await kube.get(kind="Job", name=run, namespace=where.namespace)
    if job is None or not _is_run(job, where=where):
        if row is None:
            raise _no_run(where=where, name=run)
        ended = _from_row(row, where=where).state
        raise Conflict(f"run {run} has ended ({ended}): its Job is gone, there is nothing to cancel")
    found = view(job, await _pods_of(kube, where=where, name=run))
    await kube.delete_exact(
        kind="Job",
        name=run,
        namespace=where.namespace,
        project=where.project,
        app=where.app,
        uid=as_str(dig(job, "metadata", "uid")),
    )
    # Recorded once the Job is gone: a refused cancel (no such run, not shipit's) changed nothing.
    async with ctx.sessionmaker.begin() as session:
        await _settle_in(
            session, app_id=where.app_id, ended={run: _ending(found) or _Ending(status=CANCELLED)}
        )
        await audit.write(
            session,
            actor=actor,
            action="app.run.cancel",
            target=where.app,
            project_id=project_id,
            details={"job": run},
        )
    logctx.deploy_logger(log, app=app_name, namespace=where.namespace).info(
        "one-off run %s cancelled by %s", run, actor.subject
    )
    return _merged(row, found)


async def log_lines(
    *, ctx: Core, actor: Actor, app_name: str, env: str | None = None, run: str, follow: bool, tail_lines: int
) -> AsyncGenerator[status.LogLine, None]:
    """The run's pod log, through the app logs' machinery (core.kube.watching pod_logs)."""
    async with ctx.sessionmaker.begin() as session:
        _, where = await _authorized(
            session, ctx=ctx, actor=actor, app_name=app_name, env=env, action="reading one-off runs"
        )
    kube = await _kube(ctx=ctx, where=where)
    try:
        await _job_of(kube, where=where, name=run)
    except NotFound:
        async with ctx.sessionmaker() as session:
            recorded = await _row_of(session, app_id=where.app_id, name=run)
        if recorded is None:
            raise
        # The history outlives the Job (its TTL), the log does not: say so rather than "no such run".
        raise NotFound(
            f"the log of run {run!r} of app {where.app} is gone with its Job, which the cluster deletes "
            f"{ctx.config.release_ttl_seconds}s after the run ends; the run's record is kept"
        ) from None
    selector = ",".join(f"{k}={v}" for k, v in sorted({**_owned(where), render.LABEL_RUN: run}.items()))
    lines = kube.pod_logs(
        namespace=where.namespace,
        app=where.app,
        tail_lines=tail_lines,
        follow=follow,
        selector=selector,
        container=render.RUN_CONTAINER,
    )
    async with contextlib.aclosing(lines):
        if not follow:
            async for line in lines:
                yield line
            return
        # Followed, the log ends with the run: some clusters keep a finished pod's stream open, and a
        # client waiting for the end of the stream must not wait for ever.
        ended = asyncio.create_task(_until_finished(ctx, kube, where=where, name=run))
        following: asyncio.Future[status.LogLine] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(lines))
                await asyncio.wait({following, ended}, return_when=asyncio.FIRST_COMPLETED)
                try:
                    if not following.done():
                        # The run ended: the lines it wrote last still come, then the stream stops.
                        async with asyncio.timeout(FOLLOW_GRACE_SECONDS):
                            await following
                    line = following.result()
                except (StopAsyncIteration, TimeoutError):
                    return
                yield line
        finally:
            # A pending read must end before the stream is closed (a client gone mid-follow).
            for task in (ended, following):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task


async def _until_finished(ctx: Core, kube: Kube, *, where: status.Target, name: str) -> None:
    while True:
        job = await kube.get(kind="Job", name=name, namespace=where.namespace)
        if job is None:
            return
        found = view(job, await _pods_of(kube, where=where, name=name))
        if found.finished:
            await _record(ctx, where=where, found=found)
            return
        await asyncio.sleep(POLL_SECONDS)
