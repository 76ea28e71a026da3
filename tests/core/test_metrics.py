"""core.metrics.Children: the memo of a labelled metric's children that the hot paths count through."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from core import metrics


def _counter() -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()  # its own registry: the process-wide one already holds these names
    return registry, Counter("test_things_total", "Things", ["kind", "result"], registry=registry)


def _value(registry: CollectorRegistry, **labels: str) -> float | None:
    return registry.get_sample_value("test_things_total", labels)


def test_counts_go_up_on_the_child_of_the_label_values() -> None:
    registry, counter = _counter()
    children = metrics.Children(counter)
    children.labels("push", "accepted").inc()
    children.labels("push", "accepted").inc()
    children.labels("push", "duplicate").inc()
    children.labels("ping", 200).inc()  # not strings: Prometheus shows them as str() of the value

    assert _value(registry, kind="push", result="accepted") == 2
    assert _value(registry, kind="push", result="duplicate") == 1
    assert _value(registry, kind="ping", result="200") == 1
    assert _value(registry, kind="ping", result="accepted") is None
    # The same child as the metric's own look-up: the memo adds no series of its own.
    assert children.labels("push", "accepted") is counter.labels(kind="push", result="accepted")


def test_the_memo_holds_no_more_than_its_bound_and_keeps_counting() -> None:
    registry, counter = _counter()
    children = metrics.Children(counter, bound=4)
    for n in range(10):  # label values a caller chose: more than the bound
        children.labels(f"event-{n}", "ignored").inc()
        assert len(children._children) <= 4
    children.labels("event-0", "ignored").inc()  # dropped from the memo, looked up again

    assert _value(registry, kind="event-0", result="ignored") == 2
    assert all(_value(registry, kind=f"event-{n}", result="ignored") == 1 for n in range(1, 10))


def test_the_core_counters_count_through_their_memos() -> None:
    labels = {"outcome": "succeeded", "trigger": "test-memo"}
    before = REGISTRY.get_sample_value("shipit_deploys_total", labels) or 0
    metrics.DEPLOYS_BY.labels("succeeded", "test-memo").inc()
    assert REGISTRY.get_sample_value("shipit_deploys_total", labels) == before + 1
