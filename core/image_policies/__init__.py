"""Deploys from the registry (Keel, Flux image automation): a new matching tag deploys by itself.

A policy belongs to one app row (an app in one environment) and names a repository and which of its
tags count: a semver range (`^1.4`, `>=2.0.0 <3`), a glob (`main-*`), or a regex that must match the
whole tag and is ordered by its named group `key` (numerically or alphabetically).  Two triggers:

- registry notifications (webhooks.registry and GitHub's `package` events) call `on_pushed` inside
  the delivery's transaction: a notification that carries the digest deploys at once; one without
  (Docker Hub, GitHub) queues a `registry.tag` job that looks the digest up first;
- polling: `poll_due` lists the tags of every policy whose `next_poll_at` has come, with exponential
  backoff after failures (`failures` and `last_error` are kept and shown).

Only a tag strictly newer than what runs (and than what the policy last deployed) deploys, pinned to
its digest; the deploy's dedupe key is the app and the digest, so a redelivered notification or a
poll racing a notification deploys once.  Glob policies have no order of their own: a notification
is newer by arriving, a poll takes the alphabetically last tag.  Paused or locked apps are skipped.
With `promote_to`, the image of a registry deploy that succeeded is requested on the app's row in
that environment (`promote`, the one place to switch to core.promotion).

The package: `tags` (pure: which tags match, which is newest), `policies` (managing them), `triggers`
(deciding and deploying on a notification), `polling` and `promoting`; every public name is re-exported.
"""

from __future__ import annotations

from core.image_policies.policies import (
    POLL_MAX_SECONDS,
    POLL_MIN_SECONDS,
    Policy,
    app_row,
    clear,
    set_policy,
    show,
)
from core.image_policies.polling import (
    BACKOFF_CAP_SECONDS,
    POLL_LEASE_SECONDS,
    backoff_seconds,
    poll_due,
    poll_forever,
    poll_one,
)
from core.image_policies.promoting import Promoter, after_success
from core.image_policies.tags import KINDS, SORTS, Matcher, matcher
from core.image_policies.triggers import (
    ACTOR,
    HANDLERS,
    TAG_JOB,
    TRIGGER,
    Pushed,
    on_pushed,
    repository_of,
    run_tag_job,
    valid_digest,
)

__all__ = [
    "ACTOR",
    "BACKOFF_CAP_SECONDS",
    "HANDLERS",
    "KINDS",
    "POLL_LEASE_SECONDS",
    "POLL_MAX_SECONDS",
    "POLL_MIN_SECONDS",
    "SORTS",
    "TAG_JOB",
    "TRIGGER",
    "Matcher",
    "Policy",
    "Promoter",
    "Pushed",
    "after_success",
    "app_row",
    "backoff_seconds",
    "clear",
    "matcher",
    "on_pushed",
    "poll_due",
    "poll_forever",
    "poll_one",
    "repository_of",
    "run_tag_job",
    "set_policy",
    "show",
    "valid_digest",
]
