"""`make bench`: every benchmark, one after the other; figures go to BENCHMARKS.md by hand.

    .venv/bin/python -m bench.run [NAME ...]      e.g. `bench.run slack_ack replicas` (make bench BENCH="…")

Each line of BENCHES is what BENCHMARKS.md quotes as the command for that benchmark; the durations are
what each took on the 2-core development machine (quiet), control plane start included.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import load_average

BENCHES = [
    ["bench.deploy_core"],  # ~2 min: accepted -> applied (aim p50 < 150 ms) and the queue drain
    ["bench.github_ingest", "--duration", "10"],  # ~1.5 min: bare / app / ingest / deploy / repeat via wrk
    ["bench.slack_ack", "--rate", "20,50", "--duration", "20"],  # ~3 min: /shipit deploy ack, 50 in flight
    # ~2 min: PostgreSQL, 1 vs 3 replicas (the 3 between two runs of 1, averaged), each held to 0.3 cores
    # (a cgroup CPU quota, as a pod's limit); where cgroups are not writable (not root, a container, CI)
    # it says so and runs them unlimited.
    [
        "bench.replicas",
        "--replicas",
        "1,3,1",
        "--duration",
        "15",
        "--cpu-limit",
        "0.3",
        "--cpu-limit-fallback",
    ],
    ["bench.profile_deploy", "--requests", "300"],  # ~1 min: where a deploy request's time goes
    ["bench.dashboard"],  # ~1.5 min: app page and live rollout
]


def main(argv: list[str]) -> int:
    chosen = [b for b in BENCHES if not argv or b[0].removeprefix("bench.") in argv]
    unknown = set(argv) - {b[0].removeprefix("bench.") for b in BENCHES}
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; known: {[b[0] for b in BENCHES]}")
        return 2
    failed = 0
    for args in chosen:
        print(f"\n=== .venv/bin/python -m {' '.join(args)}   (load average {load_average()})", flush=True)
        started = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", *args])
        failed += rc != 0
        print(f"=== {args[0]}: exit {rc} after {time.monotonic() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
