"""Pushes to one repository whose app runs in two environments: staging tracks `main`, production
tracks release tags, and each push deploys exactly the row that tracks it, in that row's namespace."""

from __future__ import annotations

import pytest

from core import apps, environment_admin
from tests.conftest import ADMIN
from tests.webhooks.conftest import (
    Hook,
    deployments,
    make_app,
    offline_cluster,
    push_payload,
    submit_together,
)

pytestmark = pytest.mark.both_databases


async def test_a_branch_push_deploys_staging_and_a_tag_deploys_production(hook: Hook) -> None:
    await offline_cluster(hook.rt)
    await make_app(hook.rt, git_ref_type="tag", git_branch="v*")
    async with hook.rt.sessionmaker.begin() as session:
        await environment_admin.create(
            session, actor=ADMIN, project="acme", name="staging", namespace="staging", before="production"
        )
        row = await apps.create(
            session, actor=ADMIN, project="acme", cluster="", name="web", env="staging",
            changes=apps.AppChanges(git_ref_type="branch", git_branch="main"),
        )  # fmt: skip
        assert (row.git_repo, row.image_template) == ("acme/web", "ghcr.io/acme/web:{sha}")

    sha = "a" * 40
    r = await hook.post("push", push_payload(ref="refs/heads/main", sha=sha))
    assert r.status_code in (200, 202), r.text
    [staged] = await deployments(hook.rt)
    assert (staged.namespace, staged.image) == ("staging", f"ghcr.io/acme/web:{sha}")

    tag_sha = "b" * 40
    r = await hook.post("push", push_payload(ref="refs/tags/v1.0", sha=tag_sha))
    assert r.status_code in (200, 202), r.text
    rows = await deployments(hook.rt)
    assert [(d.namespace, d.image) for d in rows] == [
        ("staging", f"ghcr.io/acme/web:{sha}"),
        ("default", f"ghcr.io/acme/web:{tag_sha}"),
    ]


async def test_one_batch_of_pushes_deploys_each_environments_row(hook: Hook) -> None:
    """A batch's pushes share one transaction, where gitops remembers each app row's environment
    (issue 13): pushes to `main` and to a tag, together, still deploy each the row that tracks it."""
    await offline_cluster(hook.rt)
    await make_app(hook.rt, git_ref_type="tag", git_branch="v*")
    async with hook.rt.sessionmaker.begin() as session:
        await environment_admin.create(
            session, actor=ADMIN, project="acme", name="staging", namespace="staging", before="production"
        )
        await apps.create(
            session, actor=ADMIN, project="acme", cluster="", name="web", env="staging",
            changes=apps.AppChanges(git_ref_type="branch", git_branch="main"),
        )  # fmt: skip
    shas = ["c" * 40, "d" * 40, "e" * 40]
    answers = await submit_together(
        hook.rt,
        [
            ("batch-1", push_payload(ref="refs/heads/main", sha=shas[0])),
            ("batch-2", push_payload(ref="refs/tags/v2.0", sha=shas[1])),
            ("batch-3", push_payload(ref="refs/heads/main", sha=shas[2])),
        ],
    )
    assert [[d.action for d in a.decisions] for a in answers] == [["deploy"], ["deploy"], ["deploy"]]
    rows = await deployments(hook.rt)
    assert [(d.namespace, d.image, d.status) for d in rows] == [
        ("staging", f"ghcr.io/acme/web:{shas[0]}", "superseded"),
        ("default", f"ghcr.io/acme/web:{shas[1]}", "queued"),
        ("staging", f"ghcr.io/acme/web:{shas[2]}", "queued"),
    ]
