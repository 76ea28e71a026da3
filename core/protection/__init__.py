"""Protection per environment: approvals, deploy windows, freezes and locks.

`core.deploys` calls two hooks: `check_request` before a deploy is written (locks, windows, freezes,
and how many approvals it will need) and `approve` when someone approves or rejects.  Every channel
goes through them, so Slack, GitHub, the API and the CLI obey the same rules.

Approvals count persons, not subjects: a subject linked to a person (table `identities`) is that
person, so one human approving from Slack and again from GitHub counts once, and nobody approves a
deploy they requested under another identity.

Windows and freezes hold every deploy into the environment except rollbacks: a rollback goes back to
a revision that already ran, which is what one wants at 3 a.m. outside the window or during a freeze.
Locks hold rollbacks too (a lock is a person saying "hands off"); only shipit's own automatic rollback
passes a lock, as it passes the per-app lock.

The package: `windows` (pure arithmetic of windows and freezes), `locks`, `approvals`, `gate` (the
request hook) and `settings`; every name is re-exported here, so callers keep `protection.X`.
"""

from __future__ import annotations

from core.protection.approvals import (
    MAX_APPROVALS,
    REJECTED_BY,
    ROLE_ALIASES,
    Tally,
    approve,
    approver_role,
    needed_for,
    refuse_own_deploy,
    rejected_by,
    tally,
)
from core.protection.gate import Gate, check_request, record_override
from core.protection.locks import Lock, lock_env, lock_of, lock_project, unlock_env, unlock_project
from core.protection.settings import (
    MAX_FREEZE,
    freeze,
    get_environment,
    protect,
    resolve_env,
    set_window,
    unprotect,
)
from core.protection.windows import (
    DAYS,
    HHMM,
    Blocked,
    Freeze,
    Window,
    blocked_at,
    freezes_of,
    parse_days,
    parse_duration,
    parse_hhmm,
    show_time,
    windows_of,
    zone,
)

__all__ = [
    "DAYS",
    "HHMM",
    "MAX_APPROVALS",
    "MAX_FREEZE",
    "REJECTED_BY",
    "ROLE_ALIASES",
    "Blocked",
    "Freeze",
    "Gate",
    "Lock",
    "Tally",
    "Window",
    "approve",
    "approver_role",
    "blocked_at",
    "check_request",
    "freeze",
    "freezes_of",
    "get_environment",
    "lock_env",
    "lock_of",
    "lock_project",
    "needed_for",
    "parse_days",
    "parse_duration",
    "parse_hhmm",
    "protect",
    "record_override",
    "refuse_own_deploy",
    "rejected_by",
    "resolve_env",
    "set_window",
    "show_time",
    "tally",
    "unlock_env",
    "unlock_project",
    "unprotect",
    "windows_of",
    "zone",
]
