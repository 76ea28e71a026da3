"""`shipit status`'s autoscaler line, from an HPA as the controller writes it."""

from __future__ import annotations

import dataclasses
from typing import Any

from core.kube import rules
from shipit.cli_client.deploys import autoscaler_line

SPEC: dict[str, Any] = {
    "minReplicas": 2,
    "maxReplicas": 10,
    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
}  # fmt: skip


def _line(status: dict[str, Any]) -> str:
    # What the API's JSON carries: the dataclass's fields.
    return autoscaler_line(dataclasses.asdict(rules.autoscaler_of({"spec": SPEC, "status": status})))


def test_an_hpa_without_metrics_yet_is_not_said_to_want_zero_pods() -> None:
    # The controller's first syncs without metrics write the pods it counted and leave desiredReplicas 0.
    line = _line({"currentReplicas": 2, "desiredReplicas": 0})
    assert line == "2 pods, no scaling decision yet (min 2, max 10); CPU not measured yet (target 70%)"


def test_an_hpa_with_metrics_says_what_it_wants_and_the_cpu_it_scales_on() -> None:
    status = {
        "currentReplicas": 2,
        "desiredReplicas": 3,
        "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 95}}}
        ],
    }
    assert _line(status) == "2 pods, wants 3 (min 2, max 10); CPU 95% of requests (target 70%)"
