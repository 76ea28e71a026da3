"""Preview environments: one namespace per pull request, with its own URL, deleted when done.

A pull request opened (or pushed to) deploys the app's image for the PR head
into `<app>-pr-<n>`, with one replica, no HPA, the app's secrets, its
preview-only env overrides and an Ingress at `<app>-pr-<n>.<preview domain>`
(the deploy core renders all of that from the Preview row).  Closing the PR,
or leaving it idle longer than the app's TTL, queues a teardown job that
deletes the namespace whole; the PREVIEW_CLOSED event then lets notifiers mark
the GitHub deployments inactive and update the PR comment.

Pull requests from forks run code nobody on the team has reviewed, so the
app's `previews_from_forks` decides (core.apps): `never` (the default) answers
with one PR comment and deploys nothing; `approved` keeps a Preview row in
`pending_approval` (nothing in the cluster) until a project developer
approves the head commit, by adding the `shipit:preview` label on GitHub or
with `/shipit preview approve` / the API; a later push needs a new approval,
as GitHub Actions does for forks.  Only `always` (admins only) gives a fork's
preview the app's secrets: deploys.py leaves them out otherwise.

The teardown job shares the concurrency key of the preview's deploys, so a
deploy and the deletion of its namespace never run at the same time.
`closed_at` is the source of truth: a PR reopened before its teardown ran
clears it, and the stale teardown then leaves the namespace alone.

An app that builds from source (core.builds) has no image to render: the pull request's head commit
is built first (one build per app and commit, the branch's build reused; a fork's only once its
commit is approved), the preview waits in `building`, and `after_build` deploys the pushed digest
through the same deploy_head when the builder reports success (or marks the preview failed).

The package: `base` (states, names, the cap, deploying a head commit), `opening` (pull request
events), `approvals` (forks) and `teardown` (closing, the reaper, the job); every public name is re-exported.
"""

from __future__ import annotations

from core.gitops import Decision
from core.previews.approvals import Approval, approve, on_label
from core.previews.base import (
    APPROVE_LABEL,
    AWAITING_APPROVAL,
    BUILDING,
    CLOSED,
    CLOSING,
    CREATING,
    DEPLOYING,
    FAILED,
    NAMESPACE_GONE_WAIT_SECONDS,
    OPENING_ACTIONS,
    READY,
    TEARDOWN_JOB,
    after_build,
    list_open,
    namespace_for,
    url_for,
)
from core.previews.opening import on_pull_request, open_or_update
from core.previews.teardown import HANDLERS, close, reap, reap_forever, run_teardown

__all__ = [
    "APPROVE_LABEL",
    "AWAITING_APPROVAL",
    "BUILDING",
    "CLOSED",
    "CLOSING",
    "CREATING",
    "DEPLOYING",
    "FAILED",
    "HANDLERS",
    "NAMESPACE_GONE_WAIT_SECONDS",
    "OPENING_ACTIONS",
    "READY",
    "TEARDOWN_JOB",
    "Approval",
    "Decision",
    "after_build",
    "approve",
    "close",
    "list_open",
    "namespace_for",
    "on_label",
    "on_pull_request",
    "open_or_update",
    "reap",
    "reap_forever",
    "run_teardown",
    "url_for",
]
