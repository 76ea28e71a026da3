"""The worker instance lock: one live process per data dir, and a dead one's lock is free at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from core import instance

HOLD = """
import sys, time
from pathlib import Path
from core import instance
held = instance.acquire(Path(sys.argv[1]))
print(held.prefix if held else "-", flush=True)
time.sleep(600)
"""


def test_one_holder_at_a_time_and_the_same_identity_after_release(tmp_path: Path) -> None:
    first = instance.acquire(tmp_path)
    assert first is not None and first.prefix.endswith("/")
    assert instance.acquire(tmp_path) is None, "held, even by this very process"
    a, b = first.owner(), first.owner()
    assert a != b and a.startswith(first.prefix) and b.startswith(first.prefix)
    first.release()
    again = instance.acquire(tmp_path)
    assert again is not None and again.prefix == first.prefix, "the data dir keeps its identity"
    other = instance.acquire(tmp_path / "elsewhere")
    assert other is not None and other.prefix != again.prefix
    again.release()
    other.release()


def test_a_killed_holder_frees_the_lock_and_a_live_one_keeps_it(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        theirs = proc.stdout.readline().strip()
        assert theirs.endswith("/")
        assert instance.acquire(tmp_path) is None, "a live process holds it"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    mine = instance.acquire(tmp_path)
    assert mine is not None and mine.prefix == theirs, "the successor is the same instance"
    mine.release()


def test_an_unwritable_data_dir_means_no_instance(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert instance.acquire(blocker / "var") is None
