"""The adapter's pure decisions: rollout verdicts and HTTP-status mapping (no cluster needed).

The cluster tests in test_adapter.py cover the same paths end to end; these pin
the edges the local control plane cannot produce on demand (429, 5xx, 410).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from core import errors
from core.kube import api_errors, rules


def deployment(
    *,
    generation: int = 2,
    observed: int = 2,
    replicas: int = 2,
    updated: int = 2,
    total: int = 2,
    available: int = 2,
    ready: int = 2,
    conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    if conditions is None:
        conditions = [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ]
    return {
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": ready,
            "conditions": conditions,
        },
    }


def pod(name: str, reason: str | None) -> dict[str, Any]:
    state: dict[str, Any] = (
        {"waiting": {"reason": reason, "message": "back-off"}} if reason else {"running": {}}
    )
    return {"metadata": {"name": name}, "status": {"containerStatuses": [{"name": "web", "state": state}]}}


def test_available_at_current_generation_is_success() -> None:
    verdict = rules.evaluate_rollout(deployment(), {})
    assert verdict is not None
    assert verdict.ok
    assert (verdict.ready, verdict.desired) == (2, 2)


def test_status_of_an_older_generation_decides_nothing() -> None:
    assert rules.evaluate_rollout(deployment(generation=3, observed=2), {}) is None
    stale_deadline = deployment(
        generation=3,
        observed=2,
        conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
    )
    assert rules.evaluate_rollout(stale_deadline, {}) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"updated": 1},  # new pods still coming
        {"total": 3},  # an old pod still there
        {"available": 1},
    ],
)
def test_incomplete_rollout_is_undecided(fields: dict[str, int]) -> None:
    assert rules.evaluate_rollout(deployment(**fields), {}) is None


def test_available_condition_false_is_undecided() -> None:
    d = deployment(
        conditions=[{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]
    )
    assert rules.evaluate_rollout(d, {}) is None


def test_progress_deadline_exceeded_fails() -> None:
    d = deployment(
        updated=1,
        available=1,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "web-1" has timed out progressing.',
            }
        ],
    )
    verdict = rules.evaluate_rollout(d, {})
    assert verdict is not None
    assert not verdict.ok
    assert verdict.reason == "ProgressDeadlineExceeded"
    assert "timed out progressing" in verdict.message


@pytest.mark.parametrize(
    "reason",
    [
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
    ],
)
def test_failing_pod_fails_even_before_the_controller_catches_up(reason: str) -> None:
    verdict = rules.evaluate_rollout(
        deployment(generation=3, observed=2), {"web-a": pod("web-a", None), "web-b": pod("web-b", reason)}
    )
    assert verdict is not None
    assert not verdict.ok
    assert verdict.reason == reason
    assert "web-b" in verdict.message


def test_container_creating_is_not_a_failure() -> None:
    assert rules.evaluate_rollout(deployment(updated=1), {"web-a": pod("web-a", "ContainerCreating")}) is None


def status_body(message: str, **extra: Any) -> bytes:
    return json.dumps({"kind": "Status", "status": "Failure", "message": message, **extra}).encode()


def test_http_errors_map_to_core_errors() -> None:
    def err(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> errors.ShipitError:
        return api_errors.http_error(
            status=status, body=body, headers=headers, what="apply Deployment ns/web"
        )

    throttled = err(429, status_body("too many requests"), {"Retry-After": "3"})
    assert isinstance(throttled, errors.TransientError)
    assert throttled.retry_after == 3.0
    unavailable = err(503, b"")
    assert isinstance(unavailable, errors.TransientError)
    assert unavailable.retry_after is None
    assert isinstance(err(409, status_body("Operation cannot be fulfilled")), errors.TransientError)
    invalid = err(422, status_body('Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1'))
    assert isinstance(invalid, errors.PermanentError)
    assert "spec.replicas" in str(invalid)
    assert "apply Deployment ns/web" in str(invalid)
    forbidden = err(403, status_body('deployments.apps "web" is forbidden: User "x" cannot patch resource'))
    assert isinstance(forbidden, errors.PermanentError)
    assert "cannot patch" in str(forbidden)
    assert isinstance(err(401, status_body("Unauthorized")), errors.PermanentError)
    assert isinstance(err(404, status_body('deployments.apps "web" not found')), errors.NotFound)
    terminating = err(
        403,
        status_body(
            "unable to create new content in namespace ns because it is being terminated",
            details={"causes": [{"reason": "NamespaceTerminating"}]},
        ),
    )
    assert isinstance(terminating, errors.TransientError)


def test_long_messages_are_truncated() -> None:
    e = api_errors.http_error(status=422, body=status_body("x" * 5000), headers=None, what="apply")
    assert len(str(e)) < 1000


def test_undecodable_object_is_permanent_not_a_server_fault() -> None:
    # What the API server answers (500) when server-side apply meets a bad quantity.
    body = status_body(
        "failed to convert new object (ns/web; apps/v1, Kind=Deployment) to proper version: "
        "unable to convert "
        "unstructured object to apps/v1, Kind=Deployment: quantities must match the regular expression"
    )
    e = api_errors.http_error(status=500, body=body, headers=None, what="apply Deployment ns/web")
    assert isinstance(e, errors.PermanentError)


def test_bad_quantities_are_located_by_path() -> None:
    manifest = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"resources": {"requests": {"cpu": "100m", "memory": "lots"}, "limits": {"cpu": 1}}},
                        {"resources": {"limits": {"cpu": "1.5", "memory": "12 Gi"}}},
                    ]
                }
            }
        }
    }
    assert api_errors.bad_quantities(manifest) == [
        "spec.template.spec.containers[0].resources.requests.memory",
        "spec.template.spec.containers[1].resources.limits.memory",
    ]
