"""Deploys, revisions and rollbacks: the life of a deploy (DESIGN.md section 3).

One package, one module per concern; `from core import deploys` -> `deploys.request(...)` keeps working
through the names re-exported here.  `request` (request.py) does everything a channel needs in the
caller's transaction (revision, deployment, job, events, audit) and nothing slow, so channels answer at
once.  `run_job` (running.py) is the worker side: render, apply, watch, written to be run again after a
crash.
"""

from __future__ import annotations

# Module names the single module had (callers and tests reach them as `deploys.models`, `deploys.snapshots`).
from core import revisions as snapshots
from core.deploys.approvals import (
    _finish_pending,
    approve,
    cancel,
    expire_approvals,
)
from core.deploys.queries import (
    _authorized,
    current_deployment,
    current_revision,
    get,
    history,
    last_attempt,
    revisions,
)
from core.deploys.request import (
    Requested,
    SecretChange,
    _enqueue,
    _image_on_its_way,
    _lock_app,
    _prune_revisions,
    _supersede_older,
    by_dedupe_key,
    defer,
    flush,
    request,
    reserve,
    roll_config,
    rollback,
    rollback_target,
    seed,
    set_secrets,
    unset_secrets,
)
from core.deploys.running import (
    _auto_rollback,
    _finish,
    _keep_current,
    _Plan,
    _promote,
    _redraw_rolled_back,
    _release_phase,
    _start,
    job_failed,
    run_job,
)
from core.deploys.spec import (
    workload_spec,
)
from core.deploys.states import (
    AUTO_ROLLBACK,
    AWAITING_APPROVAL,
    CANCELLED,
    DEPLOY_JOB,
    FAILED,
    PENDING,
    QUEUED,
    ROLLBACK_TRIGGERS,
    RUNNING,
    SETTINGS_TRIGGERS,
    SUCCEEDED,
    SUPERSEDED,
    TERMINAL,
    TRIGGERS,
)
from core.protection import REJECTED_BY, rejected_by  # there: core.events' read model needs it too
from storage import models

__all__ = [
    "AUTO_ROLLBACK",
    "AWAITING_APPROVAL",
    "CANCELLED",
    "DEPLOY_JOB",
    "FAILED",
    "PENDING",
    "QUEUED",
    "REJECTED_BY",
    "ROLLBACK_TRIGGERS",
    "RUNNING",
    "SETTINGS_TRIGGERS",
    "SUCCEEDED",
    "SUPERSEDED",
    "TERMINAL",
    "TRIGGERS",
    "Requested",
    "SecretChange",
    "_Plan",
    "_authorized",
    "_auto_rollback",
    "_enqueue",
    "_finish",
    "_finish_pending",
    "_image_on_its_way",
    "_keep_current",
    "_lock_app",
    "_promote",
    "_prune_revisions",
    "_redraw_rolled_back",
    "_release_phase",
    "_start",
    "_supersede_older",
    "approve",
    "by_dedupe_key",
    "cancel",
    "current_deployment",
    "current_revision",
    "defer",
    "expire_approvals",
    "flush",
    "get",
    "history",
    "job_failed",
    "last_attempt",
    "models",
    "rejected_by",
    "request",
    "reserve",
    "revisions",
    "roll_config",
    "rollback",
    "rollback_target",
    "run_job",
    "seed",
    "set_secrets",
    "snapshots",
    "unset_secrets",
    "workload_spec",
]
