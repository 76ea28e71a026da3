"""Pure parts of the release phase and the dry run: the Job as rendered, the verdict on it, the diff."""

from __future__ import annotations

from typing import Any

import pytest

from core.kube import diff, render, rules
from core.kube.spec import WorkloadSpec


def _spec(**overrides: Any) -> WorkloadSpec:
    base: dict[str, Any] = {
        "app": "web",
        "project": "acme",
        "namespace": "apps",
        "revision": 7,
        "image": "ghcr.io/acme/web:1.6",
        "env": {"MODE": "prod"},
        "secret_data": {"DB": "postgres://secret"},
        "release_command": "bin/migrate && echo done",
    }
    return WorkloadSpec(**{**base, **overrides})


def test_release_job_runs_the_command_once_with_the_new_image_env_and_its_own_secret() -> None:
    job = render.render_release_job(_spec(), active_deadline_seconds=90, ttl_seconds_after_finished=3600)
    assert job["metadata"]["name"] == "web-release-7"
    assert job["metadata"]["labels"] == {
        **render.labels(_spec()),
        "app.kubernetes.io/component": "release",
    }
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 90
    assert spec["ttlSecondsAfterFinished"] == 3600
    pod = spec["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    # Not selected by the app's Service: no app.kubernetes.io/name or instance on the pod.
    assert set(render.selector(_spec())).isdisjoint(pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/web:1.6"
    assert container["command"] == ["/bin/sh", "-c", "bin/migrate && echo done"]
    assert container["env"] == [{"name": "MODE", "value": "prod"}]
    assert container["envFrom"] == [{"secretRef": {"name": "web-release-7"}}]
    with pytest.raises(ValueError):
        render.render_release_job(
            _spec(release_command=None), active_deadline_seconds=1, ttl_seconds_after_finished=1
        )


def test_release_names_stay_dns_labels() -> None:
    long = "a" * 60 + "-b"
    name = render.release_name(_spec(app=long[:63], revision=123456))
    assert len(name) <= 63 and name.endswith("-release-123456") and "--" not in name


def test_release_secret_is_owned_by_the_job_once_it_exists() -> None:
    secret = render.render_release_secret(_spec())
    assert secret["metadata"]["name"] == "web-release-7" and "ownerReferences" not in secret["metadata"]
    assert secret["data"] == render.render_secret(_spec())["data"]
    owned = render.render_release_secret(_spec(), job_uid="uid-1")
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "web-release-7", "uid": "uid-1"}
    ]


def _job(*conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-release-7"},
        "status": {
            "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]
        },
    }


def _pod(state: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "release", "state": state}]}}


def test_release_verdicts() -> None:
    assert rules.evaluate_release(_job(), {}) is None
    assert rules.evaluate_release(_job(), {"p": _pod({"running": {}})}) is None
    ok = rules.evaluate_release(_job(("Complete", "", "")), {})
    assert ok is not None and ok.ok and ok.reason == "Complete"
    crashed = rules.evaluate_release(_job(), {"p": _pod({"terminated": {"exitCode": 3, "reason": "Error"}})})
    assert crashed is not None and not crashed.ok and crashed.reason == "Error"
    assert "pod p container release: Error (exit code 3)" in crashed.message
    oom = rules.evaluate_release(
        _job(), {"p": _pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})}
    )
    assert oom is not None and oom.reason == "OOMKilled"
    late = rules.evaluate_release(
        _job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")),
        {"p": _pod({"waiting": {"reason": "ImagePullBackOff"}})},
    )
    assert late is not None and not late.ok and late.reason == "DeadlineExceeded"
    assert "ImagePullBackOff" in late.message


def test_diff_names_fields_and_never_secret_values() -> None:
    live = {
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "resourceVersion": "5",
            "generation": 2,
            "labels": {"shipit.dev/revision": "1"},
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "x:1"}]}}},
        "status": {"readyReplicas": 2},
    }
    candidate = {
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "resourceVersion": "6",
            "generation": 3,
            "labels": {"shipit.dev/revision": "2"},
        },
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "x:2"}]}}},
        "status": {"readyReplicas": 0},
    }
    lines = [str(c) for c in diff.diff_object(kind="Deployment", name="web", live=live, candidate=candidate)]
    assert lines == [
        "Deployment/web spec.replicas: 2 → 3",
        "Deployment/web spec.template.spec.containers[0].image: x:1 → x:2",
    ]
    secret = diff.diff_object(
        kind="Secret",
        name="web-secrets",
        live={"data": {"A": "b2xk", "GONE": "eA=="}},
        candidate={"data": {"A": "bmV3", "NEW": "eQ=="}},
    )
    assert [str(c) for c in secret] == [
        "Secret/web-secrets data.A: changed",
        "Secret/web-secrets data.GONE: removed",
        "Secret/web-secrets data.NEW: added",
    ]
    assert all(c.old in (None, "") and c.new in (None, "") for c in secret)
    whole = diff.WorkloadDiff(changes=secret, create=["Ingress/web"], delete=["HorizontalPodAutoscaler/web"])
    assert whole.lines()[-2:] == ["create Ingress/web", "delete HorizontalPodAutoscaler/web"]
    assert not whole.empty and diff.WorkloadDiff().empty
