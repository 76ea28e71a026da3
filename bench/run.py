"""`make bench`: every benchmark, one after the other; figures go to BENCHMARKS.md by hand."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["bench.deploy_core"],
    ["bench.github_ingest", "--duration", "10"],
    ["bench.slack_ack"],
    ["bench.dashboard"],
]


def main() -> int:
    failed = 0
    for args in BENCHES:
        print(f"\n=== python -m {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, "-m", *args]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
