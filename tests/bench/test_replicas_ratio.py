"""bench.replicas' ratio: a replica count run twice (`--replicas 1,3,1`) is averaged, so that a machine
getting busier between the runs moves both sides of the 3-vs-1 ratio alike."""

from __future__ import annotations

from typing import Any

import pytest

from bench import replicas


def _run(n: int, rps: float, replica_ms: float) -> dict[str, Any]:
    return {
        "replicas": n, "rps": rps, "replica_ms": replica_ms, "pg_ms": 1.5, "replica_cores": 0.4 * n,
        "pg_cores": 0.1 * n, "driver_cores": 0.03, "cpu_limit": 0.4, "db_ok": True,
    }  # fmt: skip


def test_runs_of_one_count_are_averaged_and_counted() -> None:
    by = replicas.mean_by_count([_run(1, 100, 4.0), _run(3, 270, 4.4), _run(1, 80, 5.0)])
    assert sorted(by) == [1, 3]
    assert by[1]["runs"] == 2
    assert by[1]["rps"] == pytest.approx(90)
    assert by[1]["replica_ms"] == pytest.approx(4.5)
    assert by[3]["runs"] == 1
    assert by[3]["rps"] == 270
    assert by[3]["rps"] / by[1]["rps"] == pytest.approx(3.0)


def test_a_single_run_per_count_is_itself() -> None:
    one, three = _run(1, 100, 4.0), _run(3, 280, 4.3)
    by = replicas.mean_by_count([one, three])
    assert by[1] == {**one, "runs": 1}
    assert by[3] == {**three, "runs": 1}
