"""Prometheus metrics the core owns; the composition root exposes them at /metrics."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """A labelled metric's children by label values, each looked up once (issue 13: `labels` checks
    its arguments and takes a lock at every call).

    Bounded: some label values come from callers (a GitHub event name, an HTTP method), so the memo
    is emptied when it reaches `bound` instead of growing with whatever they send.
    """

    __slots__ = ("_bound", "_children", "_metric")

    def __init__(self, metric: M, *, bound: int = 1024) -> None:
        self._metric, self._bound = metric, bound
        self._children: dict[tuple[object, ...], M] = {}

    def labels(self, *values: object) -> M:
        """`metric.labels(*values)`, memoised: values in the order of the metric's label names."""
        child = self._children.get(values)
        if child is None:
            if len(self._children) >= self._bound:
                self._children.clear()
            child = self._children[values] = self._metric.labels(*values)
        return child


DEPLOYS = Counter("shipit_deploys_total", "Deploys that reached a final state", ["outcome", "trigger"])
DEPLOY_DURATION = Histogram(
    "shipit_deploy_duration_seconds",
    "From the worker starting a deploy to its final state",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
)
DEPLOY_APPLY = Histogram(
    "shipit_deploy_apply_seconds",
    "From a deploy request being accepted to all its objects applied",
    buckets=(0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30),
)
NOTIFICATIONS = Counter("shipit_notifications_total", "Notifier deliveries", ["notifier", "outcome"])

# The children as the paths that count them look them up: (outcome, trigger) and (notifier, outcome).
DEPLOYS_BY = Children(DEPLOYS)
NOTIFICATIONS_BY = Children(NOTIFICATIONS)
