"""The states, triggers and job kind of a deploy: shared by every part of the package."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

QUEUED = "queued"
AWAITING_APPROVAL = "awaiting_approval"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
SUPERSEDED = "superseded"
CANCELLED = "cancelled"
TERMINAL = (SUCCEEDED, FAILED, SUPERSEDED, CANCELLED)
PENDING = (QUEUED, AWAITING_APPROVAL)

AUTO_ROLLBACK = "auto-rollback"
TRIGGERS = (
    "api",
    "cli",
    "web",
    "slack",
    "push",
    "pr",
    "rollback",
    "scale",
    "config",
    "promote",
    "registry",
    AUTO_ROLLBACK,
)
ROLLBACK_TRIGGERS = ("rollback", AUTO_ROLLBACK)
# Redeploys of the settings (scale, config, secrets), not of a new image: they keep the running digest.
SETTINGS_TRIGGERS = ("scale", "config")
DEPLOY_JOB = "deploy"
