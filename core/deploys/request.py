"""Requesting a deploy: the one transaction a channel runs before it answers (DESIGN.md section 3).

`request` writes the revision, deployment, job, events and audit in the caller's transaction and does
nothing slow; rollbacks, config and secret redeploys are requests too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import (
    String,
    Table,
    bindparam,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict, instance_state
from sqlalchemy.orm.util import identity_key

from core import (
    apps,
    audit,
    claims,
    dialects,
    events,
    jobs,
    logctx,
    metrics,
    protection,
    readcache,
    secrets,
    validation,
)
from core import revisions as snapshots  # `revisions` is this module's list of an app's revisions
from core.context import Core
from core.deploys.queries import (
    current_deployment,
    current_revision,
    revisions,
)
from core.deploys.states import (
    AUTO_ROLLBACK,
    AWAITING_APPROVAL,
    DEPLOY_JOB,
    PENDING,
    QUEUED,
    ROLLBACK_TRIGGERS,
    RUNNING,
    SETTINGS_TRIGGERS,
    SUCCEEDED,
    SUPERSEDED,
    TRIGGERS,
)
from core.errors import Conflict, InvalidInput, NotFound
from core.identity import Actor, Role
from storage import models

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Requested:
    deployment: models.Deployment
    created: bool  # False when the dedupe key matched an earlier request
    # Held so the channel's answer finds them in the session (its identity map is weak): no re-read.
    app: models.App | None = None
    project: models.Project | None = None
    revision: models.Revision | None = None
    # Its place in the queue (1: it runs next) when the request learnt it; None when it waits for an
    # approval, or for an earlier request's answer (the dedupe key matched): then it is counted.
    queue_position: int | None = None


# The request's statements are built once per process, with bind parameters for what varies (issue 13:
# building a statement, and its cache key, cost more CPU per request than the database spends on it).
# Parameters are named p_<column>: SQLAlchemy keeps the bare column names for its own VALUES and SET.


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return {f"p_{k}": v for k, v in values.items()}


def _values_of(*columns: str) -> dict[str, Any]:
    return {c: bindparam(f"p_{c}") for c in columns}


_REVISION_COLUMNS = (
    "app_id", "image", "snapshot", "secret_checksum", "secrets_version", "source", "rollback_of", "created_by",
)  # fmt: skip


def _columns_of(model: type[models.Base]) -> tuple[Any, tuple[str, ...], tuple[int, ...]]:
    """The model's mapper, the ORM attribute of each of its table's columns, in order, and where its
    primary key's columns are in that order."""
    mapper = sa_inspect(model)
    assert not mapper.relationships, "`_persistent` builds column attributes only"
    keys = tuple(mapper.get_property_by_column(c).key for c in cast(Table, model.__table__).c)
    return mapper, keys, tuple(keys.index(mapper.get_property_by_column(c).key) for c in mapper.primary_key)


_REVISION_MAPPING = _columns_of(models.Revision)
_DEPLOYMENT_MAPPING = _columns_of(models.Deployment)


def _persistent(
    session: AsyncSession, mapping: tuple[Any, tuple[str, ...], tuple[int, ...]], values: Any
) -> Any:
    """The row as the session would have loaded it from these column values (all of its table's,
    in order): persistent, in its identity map, nothing dirty.  Issue 13: the ORM's loader of an
    INSERT .. RETURNING, set up again at each execution, cost more CPU per push than the INSERT.
    Only for a model with no relationships (Revision, Deployment): every attribute is a column."""
    return _persistent_of(session, mapping, dict(zip(mapping[1], values, strict=True)))


def _persistent_of(
    session: AsyncSession, mapping: tuple[Any, tuple[str, ...], tuple[int, ...]], values: dict[str, Any]
) -> Any:
    """`_persistent` from a dict of every column attribute's value by its key."""
    mapper, keys, primary_key = mapping
    row = mapper.class_manager.new_instance()
    row.__dict__.update(values)
    # What `make_transient_to_detached` and `Session.add` do for a new instance whose every attribute
    # is a loaded column (nothing to commit or expire, nothing to cascade), without their generic
    # steps (issue 13: two thirds of this function's CPU, once per push of a batch): its identity
    # key, then into the session's identity map as a detached row added back.
    state = instance_state(row)
    state.key = mapper.identity_key_from_primary_key([values[keys[i]] for i in primary_key])
    session.sync_session._update_impl(state)
    return row


def _build_insert_revision(*, orm: bool) -> Any:
    r, d = cast(Table, models.Revision.__table__), models.Deployment
    top = func.coalesce(func.max(d.revision_number), 0) + 1
    number = select(top).where(d.app_id == bindparam("p_app_id")).scalar_subquery()
    stmt = insert(r).values(number=number, **_values_of(*_REVISION_COLUMNS))
    # A Core INSERT on the table (an ORM-enabled one would rebuild the statement, and its cache key,
    # at each execution); `_persistent` makes the ORM row of the whole RETURNING row.
    return stmt.returning(*r.c) if orm else stmt.returning(r.c.id, r.c.number)


_INSERT_REVISION = _build_insert_revision(orm=True)
_INSERT_REVISION_ROW = _build_insert_revision(orm=False)


async def _insert_revision(session: AsyncSession, **values: Any) -> models.Revision:
    """The revision row, numbered in the same statement (issue 13: no read of the number first).

    One past the app's highest deploy number: deployments keep their numbers when old revisions are
    pruned, so a number is never given twice.  Two requests for one app never compute the same one:
    SQLite runs one write transaction at a time (BEGIN IMMEDIATE), and on PostgreSQL `_lock_app`
    holds the app's row until commit; the unique (app_id, number) refuses a duplicate regardless.
    """
    row = (await session.execute(_INSERT_REVISION, _params(values))).one()
    revision: models.Revision = _persistent(session, _REVISION_MAPPING, row)
    return revision


async def _insert_revision_row(session: AsyncSession, **values: Any) -> tuple[int, int]:
    """`_insert_revision` for a caller that needs only the new revision's id and number."""
    id_, number = (await session.execute(_INSERT_REVISION_ROW, _params(values))).one()
    return int(id_), int(number)


_DEPLOYMENT_COLUMNS = (
    "app_id", "revision_id", "revision_number", "image", "preview_id", "namespace", "trigger", "actor",
    "status", "dedupe_key", "git_sha", "git_ref", "approval_expires_at", "logs", "notify_refs",
)  # fmt: skip


def _build_insert_deployment() -> Any:
    d = models.Deployment
    running = (
        select(func.count())
        .select_from(d)
        .where(
            d.app_id == bindparam("p_app_id"), d.namespace == bindparam("p_namespace"), d.status == RUNNING
        )
        .scalar_subquery()
    )
    table = cast(Table, d.__table__)
    # As the revision's: a Core INSERT, its RETURNING row made the ORM row by `_persistent`.
    return (
        insert(table).values(**_values_of(*_DEPLOYMENT_COLUMNS)).returning(*table.c, running.label("running"))
    )


_INSERT_DEPLOYMENT = _build_insert_deployment()


def _scalar_defaults(table: Table) -> dict[str, Any]:
    """Each column's value when an INSERT leaves it out (None where the default is computed: the
    caller gives those)."""
    return {
        c.name: cast(Any, c.default).arg if c.default is not None and c.default.is_scalar else None
        for c in table.c
    }


_DEPLOYMENT_DEFAULTS = _scalar_defaults(cast(Table, models.Deployment.__table__))
_DEPLOYMENT_NAMES = tuple(c.name for c in cast(Table, models.Deployment.__table__).c)
assert _DEPLOYMENT_MAPPING[1] == _DEPLOYMENT_NAMES, "`_persistent_of` takes column names for attributes"


async def _insert_deployment(session: AsyncSession, **values: Any) -> tuple[models.Deployment, int]:
    """The deployment row, and in the same statement how many deploys of its target are running:
    with the older queued ones about to be superseded, what is ahead of it in the queue."""
    row = (await session.execute(_INSERT_DEPLOYMENT, _params(values))).one()
    deployment: models.Deployment = _persistent(session, _DEPLOYMENT_MAPPING, row[:-1])
    return deployment, int(row[-1] or 0)


async def _lock_app(session: AsyncSession, *, app: models.App) -> None:
    # Serialises revision numbering per app on PostgreSQL; SQLite transactions are already serial
    # (BEGIN IMMEDIATE), so there the statement would only cost a round trip.
    if not dialects.is_postgres(session):
        return
    await session.execute(select(models.App.id).where(models.App.id == app.id).with_for_update())


async def by_dedupe_key(session: AsyncSession, *, key: str) -> models.Deployment | None:
    """The deployment a request with this dedupe key wrote (`key` as `validation.dedupe_key` gave it)."""
    return await session.scalar(select(models.Deployment).where(models.Deployment.dedupe_key == key))


# ------------------------------------------------------------------ a batch of requests (issue 13)
#
# A webhook batch (webhooks.ingest) runs many deploy requests in one all-or-nothing transaction, most
# of them pushes to the same app, each superseding the one before.  `defer` lets such a transaction
# write three of each request's statements once for the whole batch, in `flush`, before it commits:
# - the supersede of a deploy queued earlier in the same transaction (this request knows it, it made
#   it): one UPDATE for the batch, each row still "superseded by" the next deploy of its target;
# - the events (their notify jobs queued then, as each event's id is known): one INSERT;
# - the audit rows: one INSERT;
# - the prune of old revisions: once per app, which leaves what pruning after each request would (the
#   revisions kept are the newest ones and those of pending deploys, and numbers only grow).
# The revision, the deployment and the jobs are written as without a batch.  Only a
# request outside any savepoint defers: a savepoint rolled back alone would leave its deferred work
# behind.


@dataclass(kw_only=True)
class _Batch:
    transaction: Any
    # (app id, namespace) -> the newest deploy this transaction queued for it.  Every older pending
    # deploy of that target was superseded (or is in `superseded`): only this one is left to supersede.
    last: dict[tuple[int, str], models.Deployment] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)  # ids of the deploys `last` ever held
    # To mark superseded in `flush`; held so that a read of them in this transaction (the session's
    # identity map is weak) finds them as they are now, not as the database still has them.
    superseded: list[models.Deployment] = field(default_factory=list)
    events: list[tuple[Core, events.NewEvent]] = field(default_factory=list)
    # The deploys those events are of, held until they are written: the notify jobs read them
    # (events._audience) from the session, whose identity map is weak.
    held: list[models.Deployment] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    prune: dict[int, tuple[Core, models.App]] = field(default_factory=dict)
    # What the batch's requests checked and looked up (the app and the caller's role on it, the
    # gate, the namespace claim, the secrets checksum), by what they depend on: a batch's pushes
    # are mostly to one app.  Only while nothing the read cache holds was written since
    # (`readcache.write_mark`): the same answers the cache would give again.
    checked: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    checked_at: int | None = None
    # SQLite: the revisions and deployments numbered here and not written yet (see `_Rows`).
    rows: _Rows | None = None
    listening: Any = None  # the connection `write_first` listens on
    info: dict[Any, Any] = field(default_factory=dict)  # the session's
    # SQLite, seeded by `seed` (a read): (app id, namespace) -> the pending deploys of that target
    # before the batch, which its first request there supersedes in `flush` (not in an UPDATE of its own).
    older: dict[tuple[int, str], list[models.Deployment]] = field(default_factory=dict)
    # PostgreSQL: the apps whose rows `reserve` locked (FOR UPDATE) for the rest of the transaction.
    locked: set[int] = field(default_factory=set)
    postgres: bool = False  # the session's dialect, read once for the batch (issue 13: once a push)

    def pending(self) -> bool:
        return bool(
            self.superseded or self.events or self.audit or self.prune or (self.rows and self.rows.waiting())
        )

    def checks(self, session: AsyncSession) -> dict[tuple[Any, ...], Any] | None:
        """`checked`, emptied if it may no longer hold; None when nothing may be kept now."""
        mark = readcache.write_mark(session)
        if mark is None:
            return None
        if mark != self.checked_at:
            self.checked.clear()
            self.checked_at = mark
        return self.checked

    def write_first(self, conn: Any, *args: Any) -> None:
        """Before any other statement on the transaction's connection: the rows waiting, one INSERT per table."""
        if self.rows is not None and self.rows.waiting():
            revisions, deployments = self.rows.take()
            if revisions:
                conn.execute(_INSERT_REVISIONS, revisions)
            if deployments:
                conn.execute(_INSERT_DEPLOYMENTS, deployments)
                # Written on the connection, past the session's do_orm_execute hook that tells the
                # dashboard's streams a deployment changed (core.worker.install_wakeup): say it here.
                self.info["deploys_changed"] = True


# ------------------------------------------------------------------ a batch's rows (issue 13, SQLite)
#
# On SQLite a batch's transaction is the only writer (BEGIN IMMEDIATE), so it can give the revisions
# and deployments it requests their ids and numbers itself and write them in one INSERT per table (an
# executemany, one trip to the driver's thread) instead of two INSERTs per request.  A batch of
# pushes reads what it numbers them from before any push runs (`seed`, with the dedupe look-up), so
# its first push to an app is numbered too; otherwise the first request of the batch for an app and
# target inserts its own rows, as a request outside a batch does, and what they returned seeds the
# counts the next ones number theirs from (`_seed`): rowids are the highest one plus one either way
# (the tables are not AUTOINCREMENT), numbers one past the app's highest deploy number.  Nothing
# may see the database without the rows, so they are written before any other statement of the
# transaction runs (`write_first`, a listener on its connection): a read, an UPDATE, a SAVEPOINT
# (the rows stay outside it), and `flush` before the commit.  A row inserted inside a savepoint
# (which may roll back) makes the counts stale: the batch's next request for any app inserts its
# own again.


@dataclass(kw_only=True)
class _Rows:
    next_revision: int  # the next free id
    next_deployment: int
    numbers: dict[int, int] = field(default_factory=dict)  # app id -> its highest deploy number
    running: dict[tuple[int, str], int] = field(default_factory=dict)  # target -> deploys running
    revisions: list[dict[str, Any]] = field(default_factory=list)
    # id -> its column values as they will be inserted (a deploy the batch superseded before it was
    # written is inserted superseded).
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    # PostgreSQL: ids taken from the tables' sequences by `reserve`, highest first (`pop` gives them
    # in ascending order, as the requests come: a later deploy of a target has the higher id).
    # None on SQLite, where the batch counts on from the highest ids.
    revision_ids: list[int] | None = None
    deployment_ids: list[int] | None = None

    def waiting(self) -> bool:
        return bool(self.revisions or self.deployments)

    def has_ids(self, *, revision: bool) -> bool:
        """Ids left for one more request (with a revision of its own, unless it reruns one)."""
        if self.deployment_ids is None:
            return True
        return bool(self.deployment_ids) and (not revision or bool(self.revision_ids))

    def revision_id(self) -> int:
        if self.revision_ids is not None:
            return self.revision_ids.pop()
        self.next_revision += 1
        return self.next_revision - 1

    def deployment_id(self) -> int:
        if self.deployment_ids is not None:
            return self.deployment_ids.pop()
        self.next_deployment += 1
        return self.next_deployment - 1

    def take(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        revisions, deployments = self.revisions, list(self.deployments.values())
        self.revisions, self.deployments = [], {}
        return revisions, deployments


_INSERT_REVISIONS = insert(cast(Table, models.Revision.__table__))
_INSERT_DEPLOYMENTS = insert(cast(Table, models.Deployment.__table__))


def _numbering(batch: _Batch | None, *, app_id: int, namespace: str, rerun: bool) -> _Rows | None:
    """The batch's rows, when it can number this request's itself: a request of the batch for this
    app and target inserted its own before (`_seed`)."""
    rows = batch.rows if batch is not None else None
    if rows is None or (app_id, namespace) not in rows.running or (not rerun and app_id not in rows.numbers):
        return None
    return rows if rows.has_ids(revision=not rerun) else None


async def _seed(
    session: AsyncSession,
    *,
    batch: _Batch,
    app_id: int,
    namespace: str,
    revision: tuple[int, int] | None,
    deployment_id: int,
    running: int,
) -> None:
    """A request of the batch inserted its own rows (its revision's id and number, unless it reran
    one): the batch numbers the next ones of this app and target from them."""
    rows = batch.rows
    if rows is None:
        rows = batch.rows = _Rows(next_revision=0, next_deployment=0)
    if revision is not None:
        rows.next_revision = max(rows.next_revision, revision[0] + 1)
        rows.numbers[app_id] = revision[1]
    rows.next_deployment = max(rows.next_deployment, deployment_id + 1)
    rows.running[app_id, namespace] = running
    await _listen(session, batch)


async def _listen(session: AsyncSession, batch: _Batch) -> None:
    if batch.listening is None:
        # The session's connection is the transaction's own (a new one for each): the listener goes with it.
        batch.listening = (await session.connection()).sync_connection
        event.listen(batch.listening, "before_execute", batch.write_first)


def _build_seed(*, postgres: bool = False) -> Any:
    # Core, on the tables: the pending deploys' ORM rows are made by `_persistent` (issue 13: the
    # ORM's loading of an entity, set up at each execution, cost more than the read).
    apps_table, deployments = cast(Table, models.App.__table__), cast(Table, models.Deployment.__table__)
    a, d, r = apps_table.c, deployments.c, cast(Table, models.Revision.__table__).c
    pending = deployments.alias("pending")
    number = select(func.coalesce(func.max(d.revision_number), 0)).where(d.app_id == a.id).scalar_subquery()
    running = (
        select(func.count())
        .select_from(deployments)
        .where(d.app_id == a.id, d.namespace == a.namespace, d.status == RUNNING)
        .scalar_subquery()
    )
    # The dedupe keys' earlier deploys come back in the same statement, as one JSON array (SQLite's
    # json1, built in): what `core.gitops.prefetch_pushes` would otherwise read in a SELECT of its own.
    earlier = (
        select(func.json_group_array(func.json_array(d.dedupe_key, d.id, d.status, d.image)))
        .where(d.dedupe_key.in_(bindparam("p_keys", expanding=True)))
        .scalar_subquery()
    )
    # PostgreSQL: ids come from the sequences (`reserve`), the dedupe keys from gitops' own look-up.
    none = literal(None)
    return (
        select(
            a.id,
            a.namespace,
            number,
            running,
            none if postgres else select(func.max(r.id)).scalar_subquery(),
            none if postgres else select(func.max(d.id)).scalar_subquery(),
            none if postgres else earlier,
            *pending.c,
        )
        .select_from(apps_table)
        .outerjoin(
            pending,
            (pending.c.app_id == a.id) & (pending.c.namespace == a.namespace) & pending.c.status.in_(PENDING),
        )
        .where(a.id.in_(bindparam("p_ids", expanding=True)))
    )


_SEED = _build_seed()
_SEED_POSTGRES = _build_seed(postgres=True)


def _build_reserve() -> Any:
    # The apps locked in id order (two batches never wait on each other crosswise), with as many new
    # ids from each table's sequence as the batch may need, each array built once (an uncorrelated
    # subquery; only the first row's are used should one be built again).
    a = cast(Table, models.App.__table__).c
    wanted = func.generate_series(1, bindparam("p_n")).table_valued("n")

    def ids(table: str) -> Any:
        sequence = func.pg_get_serial_sequence(table, "id")
        return select(func.array_agg(func.nextval(sequence))).select_from(wanted).scalar_subquery()

    return (
        select(a.id, ids("revisions"), ids("deployments"))
        .where(a.id.in_(bindparam("p_ids", expanding=True)))
        .order_by(a.id)
        .with_for_update()
    )


_RESERVE = _build_reserve()


async def reserve(session: AsyncSession, *, wanted: dict[int, int]) -> None:
    """PostgreSQL: let a batch number its requests for these apps itself (app id -> how many deploys
    of it the batch may request), as `seed` does on SQLite, in two statements whatever their number.

    Without it each request locks its app (`_lock_app`), inserts its revision and its deployment,
    and supersedes the deploys queued before: four statements a deploy, eighty for a monorepo push
    that deploys twenty apps (issue 13).  Here the batch locks its apps first, in one SELECT .. FOR
    UPDATE that also takes the ids from the sequences; then, the locks held, reads (as a statement
    of its own, so it sees what was committed while it waited for them) each app's highest deploy
    number, the deploys running ahead and the pending deploys it will supersede in `flush`.  A
    request with no id left, or for a target not read here (a preview), inserts its own rows as
    before.  Nothing when the transaction is not a deferring batch, or on SQLite."""
    batch = _batch(session)
    if (
        batch is None
        or not wanted
        or not dialects.is_postgres(session)
        or session.sync_session.in_nested_transaction()
        or batch.rows is not None
    ):
        return
    app_ids = sorted(wanted)
    reserved = (await session.execute(_RESERVE, {"p_ids": app_ids, "p_n": sum(wanted.values())})).all()
    if not reserved:
        return
    batch.locked.update(id_ for id_, _, _ in reserved)
    found = (await session.execute(_SEED_POSTGRES, {"p_ids": app_ids})).all()
    rows = batch.rows = _Rows(
        next_revision=0,
        next_deployment=0,
        revision_ids=sorted(reserved[0][1], reverse=True),
        deployment_ids=sorted(reserved[0][2], reverse=True),
    )
    _take_seed(session, batch=batch, rows=rows, found=found)
    await _listen(session, batch)


async def seed(
    session: AsyncSession, *, app_ids: set[int], dedupe_keys: list[str]
) -> dict[str, tuple[int, str, str]] | None:
    """SQLite: number a batch's requests for these apps from one read, the first ones included; and
    in the same statement, which of these dedupe keys an earlier deploy holds (key -> its id,
    status and image).  None when it read nothing: the caller looks the keys up itself.

    What a batch's first request for an app would learn from inserting its own rows (the next ids,
    the app's highest deploy number, the deploys running ahead) and the pending deploys it would
    supersede, read for all of them in one SELECT before any request runs (issue 13: the three
    statements of a batch's first push cost more than the read).  Those deploys are superseded in
    `flush`, as a deploy the batch queued itself is; should something else in the transaction move
    one of them on first, `flush` finds it and fails the batch, which then runs one delivery at a time.
    Nothing when the transaction is not a deferring batch, or on PostgreSQL (ids come from sequences)."""
    batch = _batch(session)
    if (
        batch is None
        or not app_ids
        or dialects.is_postgres(session)
        or session.sync_session.in_nested_transaction()
    ):
        return None
    found = (await session.execute(_SEED, {"p_ids": sorted(app_ids), "p_keys": dedupe_keys})).all()
    if not found:
        return None
    rows = batch.rows
    if rows is None:
        rows = batch.rows = _Rows(next_revision=0, next_deployment=0)
    _take_seed(session, batch=batch, rows=rows, found=found)
    await _listen(session, batch)
    return {
        key: (id_, status, image) for key, id_, status, image in json.loads(found[0][6]) if key is not None
    }


def _take_seed(session: AsyncSession, *, batch: _Batch, rows: _Rows, found: Sequence[Any]) -> None:
    """What `seed` or `reserve` read (a row per app and pending deploy), into the batch's counts."""
    seeded: set[tuple[int, str]] = set()
    held = session.sync_session.identity_map
    for app_id, namespace, number, running, top_revision, top_deployment, _, *pending in found:
        rows.next_revision = max(rows.next_revision, (top_revision or 0) + 1)
        rows.next_deployment = max(rows.next_deployment, (top_deployment or 0) + 1)
        target = (app_id, namespace)
        if target not in seeded:
            if target in rows.running:
                continue  # a request of the batch inserted its own rows there already
            seeded.add(target)
            rows.numbers[app_id] = max(rows.numbers.get(app_id, 0), int(number))
            rows.running[target] = int(running)
            batch.older[target] = []
        if pending[0] is not None:  # its id: the outer join found one
            older = held.get(identity_key(models.Deployment, pending[0]))
            if older is None:
                older = _persistent(session, _DEPLOYMENT_MAPPING, pending)
            batch.older[target].append(older)


def _stale(batch: _Batch | None) -> None:
    """A revision or deployment was inserted inside a savepoint: the batch's counts no longer hold."""
    if batch is not None and batch.rows is not None:
        assert not batch.rows.waiting()  # `write_first` wrote them before that INSERT
        batch.rows = None
        batch.older.clear()  # read before that INSERT: a request after it supersedes with its own UPDATE


_BATCH = "deploys.batch"


def defer(session: AsyncSession) -> None:
    """Requests in this transaction (outside savepoints) defer their batchable statements to `flush`,
    which the caller must await before it commits (a commit with work left unflushed fails)."""
    session.info[_BATCH] = _Batch(
        transaction=session.sync_session.get_transaction(),
        info=session.info,
        postgres=dialects.is_postgres(session),
    )


def _batch(session: AsyncSession) -> _Batch | None:
    batch: _Batch | None = session.info.get(_BATCH)
    if batch is None or batch.transaction is not session.sync_session.get_transaction():
        return None
    return batch


def _build_batch_supersede() -> Any:
    # On the table (Core): as `_build_prune`, no ORM bulk UPDATE set up at each batch.
    table = cast(Table, models.Deployment.__table__)
    d, later = table.c, table.alias().c
    # The deploy that superseded each row: the next one this transaction queued for its target.
    by = (
        select(func.min(later.id))
        .where(
            later.app_id == d.app_id,
            later.namespace == d.namespace,
            later.id > d.id,
            later.id.in_(bindparam("p_created", expanding=True)),
        )
        .scalar_subquery()
    )
    return (
        update(table)
        .where(d.id.in_(bindparam("p_ids", expanding=True)), d.status.in_(PENDING))
        .values(
            status=SUPERSEDED,
            finished_at=bindparam("p_finished_at"),
            error=literal("superseded by deploy #") + sql_cast(by, String),
        )
        .returning(d.id)
    )


_BATCH_SUPERSEDE = _build_batch_supersede()


async def flush(session: AsyncSession) -> None:
    """Write what the requests of a `defer`red transaction left for the batch (see above)."""
    batch = _batch(session)
    if batch is None or not batch.pending():
        return
    if batch.rows is not None:
        revisions, deployments = batch.rows.take()
        batch.rows = None  # a request after this inserts its own rows again, and seeds new counts
        if revisions:
            await session.execute(_INSERT_REVISIONS, revisions)
        if deployments:
            await session.execute(_INSERT_DEPLOYMENTS, deployments)
    batch.older.clear()  # a request after this supersedes with its own UPDATE
    superseded = [d.id for d in batch.superseded]
    news, rows, prune, held = batch.events, batch.audit, batch.prune, batch.held
    batch.superseded, batch.events, batch.audit, batch.prune, batch.held = [], [], [], {}, []
    if superseded:
        done = await session.execute(
            _BATCH_SUPERSEDE,
            {"p_ids": superseded, "p_created": batch.created, "p_finished_at": models.utcnow()},
        )
        if sorted(id_ for (id_,) in done) != sorted(superseded):
            # Something else in this transaction moved one of them on: its superseded event was
            # already written, so the batch is not what one-at-a-time would have done.  The caller
            # rolls it back and runs its deliveries one by one.
            raise RuntimeError("a deploy queued in this batch changed before it was superseded")
    by_ctx: dict[int, tuple[Core, list[events.NewEvent]]] = {}
    for ctx, new in news:  # in the order the requests made them, as one at a time would insert them
        by_ctx.setdefault(id(ctx), (ctx, []))[1].append(new)
    for ctx, batched in by_ctx.values():
        await events.emit_all(session, ctx=ctx, events=batched)
    del held  # the notify jobs are queued: no longer needed
    await audit.write_all(session, rows=rows)
    by_kept: dict[int, list[models.App]] = {}
    for ctx, app in prune.values():
        by_kept.setdefault(ctx.config.revisions_kept, []).append(app)
    for kept, pruned in by_kept.items():
        await _prune_all(session, kept=kept, apps=pruned)


@event.listens_for(Session, "before_commit")
def _refuse_unflushed(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint's release (this event fires for those too): the batch goes on
    batch: _Batch | None = session.info.get(_BATCH)
    if batch is not None and batch.transaction is session.get_transaction() and batch.pending():
        raise RuntimeError("deploys.flush was not awaited before the commit: deferred writes would be lost")


async def request(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    image: str | None = None,
    trigger: str,
    dedupe_key: str | None = None,
    dedupe_fresh: bool = False,
    git_sha: str | None = None,
    git_ref: str | None = None,
    preview: models.Preview | None = None,
    snapshot: snapshots.Snapshot | None = None,
    rollback_of: int | None = None,
    reason: str | None = None,
    rerun: models.Revision | None = None,
    notify_refs: dict[str, Any] | None = None,
    override_window: bool = False,
    env: str | None = None,
) -> Requested:
    """Queue a deploy of `app_name`, optionally with a new image (or just a tag: `1.5`).

    The deploy is a candidate: the app's settings (apps.image and the rest) and its current revision
    move only when the rollout succeeds.  `rerun` deploys an existing revision again as it is (the
    automatic rollback to the current revision) instead of writing a new one.

    `dedupe_fresh`: `dedupe_key` is not looked up first (issue 13: one statement less on the usual
    path).  Either the caller looked it up already and found none (core.gitops, a whole batch of
    pushes in one SELECT), or the key is new unless this very request is a replay (a slash command's
    trigger id).  A key taken all the same fails the deployment's unique INSERT (IntegrityError, the
    transaction rolls back) and the caller answers it: never a second deploy.
    """
    batch = _batch(session)
    # Not inside a savepoint (see `defer`): such a request writes everything at once.  Should its
    # supersede catch a deploy the batch marked superseded but has not written yet, `flush` finds it
    # moved on and fails the batch, which is then run one delivery at a time.
    deferring = None if batch is None or session.sync_session.in_nested_transaction() else batch
    # The role check comes before anything else, the dedupe key included: an earlier answer is only
    # ever returned to someone allowed to deploy this very app.
    checked = deferring.checks(session) if deferring is not None else None
    app_key = ("app", actor.subject, app_name, env)
    if checked is not None and app_key in checked:
        app, project = checked[app_key]
    else:
        app = await apps.get(session, actor=actor, name=app_name, env=env)
        # Held for the whole request: the session's identity map is weak, and the events emitted below
        # would read the project again once `authorize` let go of it (issue 13: statements per request).
        project = await apps.project_of(session, app=app)
        await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="deploying")
        if checked is not None:
            checked[app_key] = (app, project)
    app_id, project_id = app.id, app.project_id  # read once (issue 13: each read is an ORM attribute's)
    if trigger not in TRIGGERS:
        raise InvalidInput(f"trigger must be one of {', '.join(TRIGGERS)}", field="trigger")
    if git_ref is not None:
        # Shown and matched by prefix only (refs/tags/...): a ref longer than the column is cut, not refused.
        git_ref = git_ref[: validation.limit(models.Deployment, "git_ref")]
    if dedupe_key is not None:
        dedupe_key = validation.dedupe_key(dedupe_key)
        earlier = None if dedupe_fresh else await by_dedupe_key(session, key=dedupe_key)
        if earlier is not None:
            if earlier.app_id != app_id:
                # Says nothing about what the key was used for.
                raise Conflict("this idempotency key was already used for another request; use a new one")
            return Requested(deployment=earlier, created=False)
    automatic = trigger == AUTO_ROLLBACK
    if app.locked_reason and preview is None and not automatic:
        raise Conflict(f"{app.name} is locked by {app.locked_by}: {app.locked_reason}. Unlock it first.")
    # The environment's and project's locks, windows and freezes; how many approvals it will need.
    # (A batch checks its windows once, as of its first request: it commits as one.)
    rollback = trigger in ROLLBACK_TRIGGERS or rollback_of is not None
    # Keyed by what the gate reads of the app (its project, its environment, whether it is
    # protected), not by the app: a monorepo push's apps in one environment share one check (issue 13).
    gate_key = (
        "gate", project_id, app.environment_id, app.protected, actor.subject, trigger, preview is None,
        rollback, override_window,
    )  # fmt: skip
    gate = checked.get(gate_key) if checked is not None else None
    if gate is None:
        gate = await protection.check_request(
            session, actor=actor, app=app, trigger=trigger, preview=preview is not None, automatic=automatic,
            rollback=rollback, override_window=override_window,
            default_ttl_seconds=ctx.config.approval_ttl_seconds,
        )  # fmt: skip
        if checked is not None:
            checked[gate_key] = gate
    # Only into a namespace the project owns, checked at every deploy (rollbacks and previews too).
    namespace = preview.namespace if preview else app.namespace
    claim_key = ("claim", app.cluster_id, namespace, project_id)
    if checked is None or claim_key not in checked:
        await claims.check_owned(
            session, cluster_id=app.cluster_id, namespace=namespace, project_id=project_id
        )
        if checked is not None:
            checked[claim_key] = True
    if batch is None or app_id not in batch.locked:  # (`reserve` locked the batch's apps at its start)
        await _lock_app(session, app=app)
    # A batch numbers its rows itself and writes them together (see `_Rows`); on SQLite a batch's
    # first request for an app and target may insert its own rows and seed the count from them.
    seeding = deferring is not None and not deferring.postgres
    rows = (
        _numbering(deferring, app_id=app_id, namespace=namespace, rerun=rerun is not None)
        if deferring is not None
        else None
    )
    inserted: tuple[int, int] | None = None  # this request's own revision, when it inserted one
    now = models.utcnow()  # the rows' and the supersede's time

    revision: models.Revision | None
    revision_row: dict[str, Any] | None = None  # the new revision's row, when the batch writes it
    if rerun is not None:
        revision = rerun
        revision_id, number, revision_image = rerun.id, rerun.number, rerun.image
    else:
        snapshot_json: dict[str, Any] | None = None  # the new snapshot's JSON, when built from the base's
        if snapshot is None:
            # Built on the app's settings, which follow its current (good) revision: never on a failed one.
            if checked is None or ("secrets", app_id) not in checked:
                await secrets.ensure_version(session, ctx=ctx, app=app)
                if checked is not None:
                    checked["secrets", app_id] = True
            on_its_way: str | None = None
            if image is not None:  # "" is refused, not read as "redeploy as is"
                new_image = validation.requested_image(image, current=app.image)
            elif preview is None:
                # A scale or config change while a deploy is on its way keeps that deploy's image
                # (it would otherwise undo it); if that rollout fails, the rollback supersedes this.
                on_its_way = await _image_on_its_way(session, app=app)
                new_image = on_its_way or app.image or ""
            else:
                new_image = app.image or ""
            if not new_image:
                raise InvalidInput(
                    f"{app.name} has no image yet: give one, like ghcr.io/acme/web:1.4", field="image"
                )
            held = checked.get(("snapshot", app_id)) if checked is not None else None
            if held is None:
                base = snapshots.from_app(app)
                held = (base, base.to_json() if checked is not None else None)
                if checked is not None:
                    checked["snapshot", app_id] = held
            base, base_json = held
            if image is None and preview is None and on_its_way is None and trigger in SETTINGS_TRIGGERS:
                # (A deploy on its way pins its own digest when it runs: the settings follow it.)
                snapshot = await _running_digest(session, app=app, snapshot=base.replace(image=new_image))
            elif base_json is not None:
                # The base's JSON with its image changed, as `to_json` would give it (issue 13: CPU per
                # push).  Its nested values are shared by the batch's rows: they are only written.
                snapshot = base
                snapshot_json = {**base_json, "image": new_image}
            else:
                snapshot = base.replace(image=new_image)
        checksum_key = ("checksum", app_id, snapshot.secrets_version)
        checksum = checked.get(checksum_key) if checked is not None else None
        if checksum is None:
            checksum = await secrets.checksum_for_deploy(
                session, app_id=app_id, version=snapshot.secrets_version
            )
            if checked is not None:
                checked[checksum_key] = checksum
        if snapshot_json is None:
            snapshot_json = snapshot.to_json()
        revision_image = snapshot_json["image"]
        revision_values = dict(
            app_id=app_id,
            image=revision_image,
            snapshot=snapshot_json,
            secret_checksum=checksum,
            secrets_version=snapshot.secrets_version,
            source="rollback" if rollback_of else ("preview" if preview else "deploy"),
            rollback_of=rollback_of,
            created_by=actor.subject,
        )
        if rows is not None:
            revision = None
            revision_id, number = rows.revision_id(), rows.numbers[app_id] + 1
            rows.numbers[app_id] = number
            revision_row = {**revision_values, "id": revision_id, "number": number, "created_at": now}
        elif deferring is not None:
            # A batch's channel answers with the deployment alone: the revision's id and number
            # will do, with no ORM row built from it (issue 13: CPU per push).
            revision = None
            revision_id, number = inserted = await _insert_revision_row(session, **revision_values)
        else:
            revision = await _insert_revision(session, **revision_values)
            revision_id, number = revision.id, revision.number
            _stale(batch)

    # An automatic rollback redeploys what was already approved and ran: it does not wait.
    needs_approval = gate.needs_approval and preview is None and not automatic
    status = AWAITING_APPROVAL if needs_approval else QUEUED
    deployment_values = {
        "app_id": app_id,
        "revision_id": revision_id,
        "revision_number": number,
        "image": revision_image,
        "preview_id": preview.id if preview else None,
        "namespace": namespace,
        "trigger": trigger,
        "actor": actor.subject,
        "status": status,
        "dedupe_key": dedupe_key,
        "git_sha": git_sha,
        "git_ref": git_ref,
        "approval_expires_at": now + dt.timedelta(seconds=gate.approval_ttl_seconds)
        if needs_approval
        else None,
        "logs": [],
        # Set before the queued event is emitted, so notifiers can tell whom to report to (a PR comment).
        "notify_refs": dict(notify_refs or {}),
    }
    values: dict[str, Any] | None = None  # this deployment's row, when the batch writes it
    if rows is not None:
        values = {**_DEPLOYMENT_DEFAULTS, **deployment_values, "id": rows.deployment_id(), "created_at": now}
        deployment = _persistent_of(session, _DEPLOYMENT_MAPPING, values)
        running_ahead = rows.running[(app_id, namespace)]
    else:
        deployment, running_ahead = await _insert_deployment(session, **deployment_values)
        if seeding and deferring is not None:
            await _seed(
                session, batch=deferring, app_id=app_id, namespace=namespace, revision=inserted,
                deployment_id=deployment.id, running=running_ahead,
            )  # fmt: skip
        else:
            _stale(batch)

    deployment_id = deployment.id
    superseded = await _supersede_older(
        session, deployment=deployment, batch=batch, deferring=deferring, now=now
    )
    if rows is not None and values is not None:
        # Only now: the supersede's UPDATE above wrote the rows waiting then, and need not wait for these.
        assert deferring is not None and deferring.rows is rows  # nothing inserted since they were numbered
        if revision_row is not None:
            rows.revisions.append(revision_row)
        rows.deployments[deployment_id] = values
    if status == QUEUED:
        # The key names a deployment inserted in this transaction: it cannot exist yet.
        jobs.enqueue_fresh(
            session, **_deploy_job(deployment_id=deployment_id, app_id=app_id, namespace=namespace)
        )
    # The superseded deploys' events and this one's, in one INSERT (issue 13).
    # From the values at hand, not the row's attributes (issue 13: once a push).
    requested = events.of_deploy(
        kind=events.DEPLOY_AWAITING_APPROVAL if needs_approval else events.DEPLOY_QUEUED,
        deployment_id=deployment_id,
        app_id=app_id,
        preview_id=preview.id if preview else None,
        project_id=project_id,
        step="requested",
        payload={"reason": reason} if reason else {},
    )
    gone = [
        events.of_deployment(
            kind=events.DEPLOY_SUPERSEDED,
            deployment=old,
            project_id=project_id,
            step="final",
            payload={"by": deployment_id},
        )
        for old in superseded
    ]
    if deferring is not None:
        deferring.events.extend((ctx, new) for new in (*gone, requested))
        deferring.held.extend((*superseded, deployment))
    else:
        await events.emit_all(session, ctx=ctx, events=[*gone, requested])
    audit_row = audit.row(
        actor=actor,
        action="deploy.rollback" if rollback_of or automatic else "deploy.request",
        target=f"app/{app.name}",
        project_id=project_id,
        details={
            "deployment": deployment_id,
            "revision": number,
            "image": revision_image,
            "trigger": trigger,
            "namespace": namespace,
            **({"rollback_of": rollback_of} if rollback_of else {}),
            **({"git_sha": git_sha} if git_sha else {}),
        },
    )
    if deferring is not None:
        deferring.audit.append(audit_row)
    else:
        await audit.write_all(session, rows=[audit_row])
    await protection.record_override(session, actor=actor, app=app, gate=gate, deployment_id=deployment_id)
    if rerun is not None or number > ctx.config.revisions_kept:  # else fewer revisions than kept
        if deferring is not None:
            deferring.prune[app_id] = (ctx, app)
        else:
            await _prune_revisions(session, kept=ctx.config.revisions_kept, app=app)
    if log.isEnabledFor(logging.INFO):  # (issue 13: no logger built, once a push, for a line not logged)
        logctx.deploy_logger(log, deployment=deployment_id, app=app.name, namespace=namespace).info(
            "queued: revision=%s image=%s trigger=%s actor=%s status=%s",
            number, revision_image, trigger, actor.subject, status,
        )  # fmt: skip
    # Every older queued deploy of this target was just superseded: only running ones are ahead.
    position = running_ahead + 1 if status == QUEUED else None
    return Requested(
        deployment=deployment,
        created=True,
        app=app,
        project=project,
        revision=revision,
        queue_position=position,
    )


async def _running_digest(
    session: AsyncSession, *, app: models.App, snapshot: snapshots.Snapshot
) -> snapshots.Snapshot:
    """A scale, config or secrets redeploy of the image that runs now carries the digest that runs
    (its current revision's), so the worker does not resolve the tag again: a tag moved since then
    must not slip a new image in with a settings change."""
    current = await current_revision(session, app=app)
    if current is None:
        return snapshot
    running = snapshots.of_revision(current)
    if running.image != snapshot.image or not running.digest:
        return snapshot
    return snapshot.replace(digest=running.digest)


async def _image_on_its_way(session: AsyncSession, *, app: models.App) -> str | None:
    """The image of the newest queued or running deploy of the app (not one waiting for approval)."""
    return await session.scalar(
        select(models.Deployment.image)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.namespace == app.namespace,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status.in_((QUEUED, RUNNING)),
            models.Deployment.trigger != AUTO_ROLLBACK,
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )


def _deploy_job(*, deployment_id: int, app_id: int, namespace: str) -> dict[str, Any]:
    """A deploy's job, as it is queued and as it is cancelled (`jobs.cancel_with_pending`)."""
    return {
        "kind": DEPLOY_JOB,
        "payload": {"deployment_id": deployment_id},
        "dedupe_key": f"deploy:{deployment_id}",
        "concurrency_key": f"deploy:{app_id}:{namespace}",
        "max_attempts": 6,
    }


async def _enqueue(session: AsyncSession, *, deployment: models.Deployment) -> None:
    # The key names a deployment inserted in this transaction: it cannot exist yet.
    jobs.enqueue_fresh(
        session,
        **_deploy_job(deployment_id=deployment.id, app_id=deployment.app_id, namespace=deployment.namespace),
    )


def _build_supersede() -> Any:
    d = models.Deployment
    return (
        update(d)
        .where(
            d.app_id == bindparam("p_app_id"),
            d.namespace == bindparam("p_namespace"),
            d.status.in_(PENDING),
            d.id < bindparam("p_id"),
        )
        .values(status=SUPERSEDED, finished_at=bindparam("p_finished_at"), error=bindparam("p_error"))
        .returning(d)
        # The rows come back as they are now, in the session too (a deploy read earlier in it).
        .execution_options(synchronize_session=False, populate_existing=True)
    )


_SUPERSEDE = _build_supersede()


async def _supersede_older(
    session: AsyncSession,
    *,
    deployment: models.Deployment,
    batch: _Batch | None = None,
    deferring: _Batch | None = None,
    now: dt.datetime | None = None,  # when the batch supersedes it (the request's time)
) -> list[models.Deployment]:
    """A newer deploy of the same target replaces older ones that have not started.

    One `UPDATE .. RETURNING` (issue 13); their queued jobs are cancelled in the request's one jobs
    INSERT, and the caller writes their events with its own.  A job a worker claimed meanwhile is
    not cancelled, but its handler finds its deploy superseded and ends without touching the cluster.

    In a deferring batch, the second deploy of a target supersedes the one the batch queued before
    it (every older one went then) in `flush`, shown superseded in the session at once.
    """
    target = (deployment.app_id, deployment.namespace)
    previous = deferring.last.get(target) if deferring is not None else None
    # The target's pending deploys as `seed` read them, when this is the batch's first request there.
    seeded = batch.older.pop(target, None) if batch is not None else None
    if deferring is not None:
        deferring.last[target] = deployment
        deferring.created.append(deployment.id)
    elif batch is not None:
        batch.last.pop(target, None)  # superseded below whatever the batch queued; it may roll back
    if deferring is not None and (previous is not None or seeded is not None):
        older = [d for d in ([previous] if previous is not None else seeded or []) if d.status in PENDING]
        now = now or models.utcnow()
        waiting = deferring.rows.deployments if deferring.rows is not None else {}
        for old in older:
            change = {
                "status": SUPERSEDED,
                "finished_at": now,
                "error": f"superseded by deploy #{deployment.id}",
            }
            # As the UPDATE's RETURNING would show it, without making the row dirty (no ORM flush):
            # what `set_committed_value` does, for the three at once (issue 13: once a push).
            instance_dict(old).update(change)
            instance_state(old)._commit(instance_dict(old), change)
            if old.id in waiting:
                waiting[old.id].update(change)  # not written yet: it is inserted superseded
            else:
                deferring.superseded.append(old)
    else:
        older = list(
            await session.scalars(
                _SUPERSEDE,
                {
                    "p_app_id": deployment.app_id,
                    "p_namespace": deployment.namespace,
                    "p_id": deployment.id,
                    "p_finished_at": models.utcnow(),
                    "p_error": f"superseded by deploy #{deployment.id}",
                },
            )
        )
    for old in older:
        # Only a queued deploy has a job: one waiting for approval has none until it is approved
        # (which sets approved_by).  RETURNING shows the new status, so tell them apart by these.
        if old.approval_expires_at is None or old.approved_by is not None:
            jobs.cancel_with_pending(
                session, **_deploy_job(deployment_id=old.id, app_id=old.app_id, namespace=old.namespace)
            )
        metrics.DEPLOYS_BY.labels(SUPERSEDED, old.trigger).inc()
    return older


def _build_prune() -> Any:
    # On the tables (Core), not the mapped classes: an ORM-enabled DELETE sets up its ORM bulk
    # handling at each execution (issue 13: a batch's fixed cost), and nothing here needs it.
    r, d = cast(Table, models.Revision.__table__).c, cast(Table, models.Deployment.__table__).c
    app_id: Any = bindparam("p_app_id")
    newest = select(r.number).where(r.app_id == app_id).order_by(r.number.desc()).limit(bindparam("p_kept"))
    in_use = select(d.revision_id).where(
        d.app_id == app_id, d.status.in_((*PENDING, RUNNING)), d.revision_id.is_not(None)
    )
    return (
        delete(cast(Table, models.Revision.__table__))
        .where(
            r.app_id == app_id,
            r.number.not_in(newest),
            r.id.not_in(in_use),
            # What runs now is what a rollback or the next change needs: never pruned.
            r.id != bindparam("p_current"),
        )
        .returning(r.secrets_version)
    )


_PRUNE = _build_prune()


def _build_prune_all() -> Any:
    # `_PRUNE` for several apps at once (a batch's, in `flush`): each revision against its own app's
    # newest (a correlated subquery); a revision's id names one app, so the ids in use and the
    # current ones need not be told apart by app.
    table = cast(Table, models.Revision.__table__)
    r, newer, d = table.c, table.alias("newer").c, cast(Table, models.Deployment.__table__).c
    app_ids: Any = bindparam("p_app_ids", expanding=True)
    newest = (
        select(newer.number)
        .where(newer.app_id == r.app_id)
        .order_by(newer.number.desc())
        .limit(bindparam("p_kept"))
        .correlate(table)
    )
    in_use = select(d.revision_id).where(
        d.app_id.in_(app_ids), d.status.in_((*PENDING, RUNNING)), d.revision_id.is_not(None)
    )
    return (
        delete(table)
        .where(
            r.app_id.in_(app_ids),
            r.number.not_in(newest),
            r.id.not_in(in_use),
            r.id.not_in(bindparam("p_current", expanding=True)),
        )
        .returning(r.app_id, r.secrets_version)
    )


_PRUNE_ALL = _build_prune_all()


async def _prune_all(session: AsyncSession, *, kept: int, apps: list[models.App]) -> None:
    """`_prune_revisions` for a batch's apps in one DELETE (issue 13: a monorepo push that deploys
    twenty apps past their kept revisions pruned in twenty), and their secrets versions in one
    look-up more when a pruned revision used one."""
    if len(apps) == 1:
        await _prune_revisions(session, kept=kept, app=apps[0])
        return
    gone = await session.execute(
        _PRUNE_ALL,
        {
            "p_app_ids": [a.id for a in apps],
            "p_kept": kept,
            "p_current": [a.current_revision_id or 0 for a in apps],
        },
    )
    pruned = {app_id for app_id, version in gone if version}
    if pruned:
        await secrets.prune_versions_of(
            session, apps=[a for a in apps if a.id in pruned], keep=secrets.VERSIONS_KEPT
        )


async def _prune_revisions(session: AsyncSession, *, kept: int, app: models.App) -> None:
    """Keep the app's newest `kept` revisions, those a pending or running deploy uses and the current one.

    One DELETE (issue 13: an app past its kept revisions prunes one at every request); the
    deployments' revision_id goes NULL by the foreign key (ON DELETE SET NULL), and they keep their
    number and image for the history.
    """
    gone = await session.execute(
        _PRUNE, {"p_app_id": app.id, "p_kept": kept, "p_current": app.current_revision_id or 0}
    )
    # A secrets version can only have become prunable if a revision that used one went.
    if any(version for (version,) in gone):
        await secrets.prune_versions(session, app=app, keep=secrets.VERSIONS_KEPT)


async def roll_config(
    session: AsyncSession, *, ctx: Core, actor: Actor, app_name: str, env: str | None = None
) -> Requested | None:
    """After a secret or config change, deploy it, but only for an app that is already running."""
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    if app.current_revision_id is None and await current_deployment(session, app=app) is None:
        return None
    return await request(
        session,
        ctx=ctx,
        actor=actor,
        app_name=app.name,
        trigger="config",
        env=await apps.env_name(session, app=app),
    )


@dataclass(frozen=True, kw_only=True)
class SecretChange:
    app: models.App
    keys: list[str]
    # The deploy that rolls the pods onto the new values; None when nothing runs yet (the first deploy
    # takes them) or the caller asked for no redeploy.
    redeploy: Requested | None


async def set_secrets(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    values: dict[str, str],
    redeploy: bool = True,
    env: str | None = None,
) -> SecretChange:
    """Set secrets and, for a running app, redeploy so the pods get them: the rule of every channel."""
    app = await secrets.set_values(session, ctx=ctx, actor=actor, app_name=app_name, values=values, env=env)
    rolled = (
        await roll_config(session, ctx=ctx, actor=actor, app_name=app.name, env=env) if redeploy else None
    )
    return SecretChange(app=app, keys=sorted(values), redeploy=rolled)


async def unset_secrets(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    keys: list[str],
    redeploy: bool = True,
    env: str | None = None,
) -> SecretChange:
    """Remove secrets and, for a running app, redeploy so the pods lose them (as `set_secrets`)."""
    removed = await secrets.unset(session, ctx=ctx, actor=actor, app_name=app_name, keys=keys, env=env)
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    rolled = (
        await roll_config(session, ctx=ctx, actor=actor, app_name=app.name, env=env) if redeploy else None
    )
    return SecretChange(app=app, keys=removed, redeploy=rolled)


async def rollback_target(
    session: AsyncSession, *, app: models.App, before: models.Deployment | None = None
) -> int:
    """The revision a rollback without a number goes back to, whatever the channel.

    The newest successful deploy of the app's own namespace before `before` (default: what runs now)
    that ran another revision, one still kept.  The Roll back button of a deploy card passes its deploy.
    """
    if before is None:
        before = await current_deployment(session, app=app)
        if before is None:
            raise Conflict(f"{app.name} has no successful deploy to roll back from")
        missing = f"{app.name} has no earlier successful revision to roll back to"
    else:
        missing = f"{app.name} has no successful deploy before #{before.id} to roll back to"
    revision = await session.scalar(
        select(models.Deployment.revision_number)
        .where(
            models.Deployment.app_id == app.id,
            models.Deployment.preview_id.is_(None),
            models.Deployment.status == SUCCEEDED,
            models.Deployment.id < before.id,
            models.Deployment.revision_number != before.revision_number,
            models.Deployment.revision_id.is_not(None),
        )
        .order_by(models.Deployment.id.desc())
        .limit(1)
    )
    if revision is None:
        raise Conflict(missing)
    return revision


async def rollback(
    session: AsyncSession,
    *,
    ctx: Core,
    actor: Actor,
    app_name: str,
    revision: int | None = None,
    from_deployment: int | None = None,
    trigger: str = "rollback",
    dedupe_key: str | None = None,
    notify_refs: dict[str, Any] | None = None,
    env: str | None = None,
) -> Requested:
    """Deploy a copy of an older revision and pause auto-deploy.

    Without `revision`: the one `rollback_target` picks, before what runs now or before the deploy
    `from_deployment` (a deploy card's Roll back button: run again what ran before that deploy).
    """
    if env is None and from_deployment is not None and validation.is_id(from_deployment):
        # A card's Roll back button names a deploy: that deploy's environment is the one meant.
        card = await session.get(models.Deployment, from_deployment)
        row = await session.get(models.App, card.app_id) if card is not None else None
        if row is not None and row.name == app_name:
            env = await apps.env_name(session, app=row)
    app = await apps.get(session, actor=actor, name=app_name, env=env)
    env = await apps.env_name(session, app=app)
    await apps.authorize(session, actor=actor, app=app, role=Role.DEVELOPER, action="rolling back")
    if revision is None:
        before = None
        if from_deployment is not None:
            ok = validation.is_id(from_deployment)
            before = await session.get(models.Deployment, from_deployment) if ok else None
            if before is None or before.app_id != app.id or before.preview_id is not None:
                raise NotFound(f"no deploy #{from_deployment} of {app.name}")
        revision = await rollback_target(session, app=app, before=before)
    validation.int_range(revision, field="revision", low=1, high=validation.INT32_MAX)
    target = await session.scalar(
        select(models.Revision).where(models.Revision.app_id == app.id, models.Revision.number == revision)
    )
    if target is None:
        kept = await revisions(session, actor=actor, app_name=app.name, env=env)
        numbers = ", ".join(str(r.number) for r in kept) or "none"
        raise NotFound(f"{app.name} has no revision {revision} (kept: {numbers})")
    # The whole snapshot, secrets version included; the app's settings follow once it rolls out.
    snapshot = snapshots.of_revision(target)
    result = await request(
        session,
        ctx=ctx,
        actor=actor,
        app_name=app.name,
        trigger=trigger,
        snapshot=snapshot,
        rollback_of=target.number,
        dedupe_key=dedupe_key,
        reason=f"roll back to revision {target.number}",
        notify_refs=notify_refs,
        env=env,
    )
    if result.created and not app.auto_deploy_paused:
        app.auto_deploy_paused = True
        app.paused_reason = (
            f"rolled back to revision {target.number} by {actor.name}; resume to deploy on push again"
        )
        await events.emit(
            session,
            ctx=ctx,
            kind=events.APP_PAUSED,
            dedupe_key=f"app:{app.id}:paused:{result.deployment.id}",
            project_id=app.project_id,
            app_id=app.id,
            payload={"reason": app.paused_reason},
        )
    return result
