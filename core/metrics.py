"""Prometheus metrics the core owns; the composition root exposes them at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
