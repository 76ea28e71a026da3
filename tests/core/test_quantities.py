"""Kubernetes quantity strings as exact numbers: what the Metrics API writes and what apps request."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core import quantities, usage
from core.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", Decimal(0)),
        ("1", Decimal(1)),
        ("250m", Decimal("0.25")),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("+2", Decimal(2)),
        ("-1", Decimal(-1)),
        ("20000000n", Decimal("0.02")),
        ("1500u", Decimal("0.0015")),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("2G", Decimal(2 * 10**9)),
        ("1T", Decimal(10**12)),
        ("1P", Decimal(10**15)),
        ("1E", Decimal(10**18)),  # a lone E is exa, not an exponent
        ("1Ki", Decimal(1024)),
        ("128Mi", Decimal(128 * 2**20)),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("1Ti", Decimal(2**40)),
        ("1Pi", Decimal(2**50)),
        ("1Ei", Decimal(2**60)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("12e-3", Decimal("0.012")),
        ("5e+2", Decimal(500)),
        (" 64Mi ", Decimal(64 * 2**20)),
        (3, Decimal(3)),
        (0.5, Decimal("0.5")),
    ],
)
def test_parse(text: str | int | float, value: Decimal) -> None:
    assert quantities.parse(text) == value


@pytest.mark.parametrize(
    "text", ["", "m", "Mi", "1.2.3", "1KiB", "1mi", "1K", "1 m", "1e", "1e1.5", "0x10", "--1", "1Mi5", "∞"]
)
def test_malformed_quantities_name_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        quantities.parse(text, field="cpu_request")
    assert err.value.field == "cpu_request"
    assert "cpu_request must be a quantity such as 250m or 128Mi" in str(err.value)


def test_a_boolean_is_not_a_quantity() -> None:
    with pytest.raises(InvalidInput):
        quantities.parse(True)


def test_cpu_in_millicores_and_memory_in_whole_bytes() -> None:
    assert quantities.millicores("250m") == 250.0
    assert quantities.millicores("20000000n") == 20.0
    assert quantities.millicores("1.5") == 1500.0
    assert quantities.millicores("250004963n") == pytest.approx(250.004963)
    assert quantities.bytes_of("128Mi") == 134217728
    assert quantities.bytes_of("1k") == 1000
    assert quantities.bytes_of("32768Ki") == 32 * 2**20  # how metrics-server writes memory
    # A fraction of a byte rounds up, as Kubernetes does.
    assert quantities.bytes_of("1500m") == 2
    assert quantities.bytes_of("0.1") == 1


def test_usage_shares_are_none_where_nothing_was_requested() -> None:
    # A limit or request of 0 (or none at all) is no denominator: the share is unknown, not infinite.
    allocation = usage.Allocation(
        cpu_request="0",
        cpu_limit="500m",
        memory_request="64Mi",
        memory_limit="0",
        cpu_request_millicores=0.0,
        cpu_limit_millicores=500.0,
        memory_request_bytes=64 * 2**20,
        memory_limit_bytes=0,
    )
    f = usage.figures(cpu_millicores=50.0, memory_bytes=32 * 2**20, allocation=allocation, pods=2)
    assert f.cpu_of_requests_percent is None and f.memory_of_limits_percent is None
    assert f.cpu_of_limits_percent == 5.0  # 50m of 2 x 500m
    assert f.memory_of_requests_percent == 25.0  # 32Mi of 2 x 64Mi
