"""The `shipit` CLI's wall time per run: `--help`, an API command against nothing, and against a server.

    .venv/bin/python -m bench.cli_start [TREE ...]      e.g. `bench.cli_start /work/main .` (before, after)

Each TREE is put on PYTHONPATH so its shipit is the one that runs (default: this tree).  A real
`shipit serve` (SQLite in a temporary directory, no worker) answers the live cases; the trees take
turns run by run, so both see the same machine.  The median of `--runs` per case, after one run each
to warm the page cache.  Not in `make bench`: it measures the CLI, not the service.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from bench.common import free_port, load_average

ENTRY = "import sys; sys.argv[0] = 'shipit'; from shipit.cli import main; main()"  # the console script


def _without_shipit_settings() -> dict[str, str]:
    """This process's environment less any SHIPIT_* setting: each case sets its own."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("SHIPIT_")}


def serve(tree: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    env = _without_shipit_settings()
    env.update(
        PYTHONPATH=tree,
        SHIPIT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/bench.db",
        SHIPIT_DATA_DIR=str(tmp / "data"),
        SHIPIT_BOOTSTRAP_TOKEN_FILE=str(tmp / "token"),
        SHIPIT_RUN_WORKER="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "serve", "--port", str(port)],
        env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
            return proc, url, (tmp / "token").read_text().strip()
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("shipit serve did not answer /healthz in 30 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs="*", default=["."])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "cwd").mkdir()  # the CLI runs here: no .env
        server, live, token = serve(trees[-1], tmp)
        port = free_port()
        nothing, nothing_tls = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{port}"
        cases = [
            ("shipit --help", ["--help"], {}),
            ("shipit apps list, nothing at an http:// URL", ["apps", "list"], {"SHIPIT_URL": nothing}),
            ("shipit apps list, nothing at an https:// URL", ["apps", "list"], {"SHIPIT_URL": nothing_tls}),
            ("shipit apps list, live server", ["apps", "list"], {"SHIPIT_URL": live}),
            ("shipit whoami, live server", ["whoami"], {"SHIPIT_URL": live}),
        ]
        base = _without_shipit_settings()
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load_average()}")
        try:
            for name, argv, extra in cases:
                times: dict[str, list[float]] = {t: [] for t in trees}
                for n in range(args.runs + 1):
                    for tree in trees:
                        env = {**base, "PYTHONPATH": tree, "SHIPIT_TOKEN": token, **extra}
                        start = time.perf_counter()
                        subprocess.run(
                            [sys.executable, "-c", ENTRY, *argv], env=env, cwd=tmp / "cwd",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                        if n:
                            times[tree].append(time.perf_counter() - start)
                cells = [f"{statistics.median(times[t]) * 1000:.0f} ms" for t in trees]
                print(f"| {name} | " + " | ".join(cells) + " |")
        finally:
            server.terminate()
            server.wait()
        print(f"{datetime.now(UTC):%H:%M} UTC, load average {load_average()}")


if __name__ == "__main__":
    main()
