"""buildah for the build tests: skipped with one line when missing (fails under CI=true), always run
with the test's own image store (`--root`/`--runroot` under a temp dir, vfs), never the machine's.

`busybox_base` makes the base image a test builds on without Docker Hub: `buildah from scratch` plus
Debian's static busybox (package busybox-static) as /bin/busybox and /bin/sh, pushed to the test's
registry.  scripts/test-buildah-install installs both packages (`make test` runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

BUSYBOX = "/bin/busybox"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_buildah() -> str:
    """The buildah binary (and a static busybox), or skip (developer machine) / fail (CI=true)."""
    found = shutil.which("buildah")
    missing = []
    if not found:
        missing.append("buildah")
    if not os.access(BUSYBOX, os.X_OK):
        missing.append("busybox-static")
    if missing:
        reason = f"{' and '.join(missing)} missing: run scripts/test-buildah-install (Debian packages)"
        if _in_ci():
            pytest.fail(f"buildah unavailable under CI=true: {reason}", pytrace=False)
        pytest.skip(f"no buildah: {reason}")
    assert found is not None
    return found


@dataclass(frozen=True, kw_only=True)
class Store:
    """A private buildah image store for one test."""

    binary: str
    root: Path
    runroot: Path

    def run(self, *args: str) -> str:
        command = [
            self.binary,
            "--storage-driver",
            "vfs",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
        ]
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise AssertionError(f"buildah {args[0]} failed: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def remove(self) -> None:
        if not shutil.which(self.binary):
            return
        # vfs layers hold files owned by root with odd modes: buildah removes them best.
        subprocess.run(
            [self.binary, "--storage-driver", "vfs", "--root", str(self.root), "--runroot", str(self.runroot),
             "rmi", "--all", "--force"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


def store(tmp_path: Path) -> Store:
    """A store under `tmp_path` (tests that run buildah call `require_buildah` first)."""
    binary = shutil.which("buildah") or "buildah"
    root, runroot = tmp_path / "buildah-root", tmp_path / "buildah-run"
    root.mkdir()
    runroot.mkdir()
    return Store(binary=binary, root=root, runroot=runroot)


def push_busybox_base(s: Store, *, image: str, creds: str | None = None) -> None:
    """A tiny base image (busybox as /bin/busybox and /bin/sh) pushed to `image` over plain HTTP."""
    container = s.run("from", "scratch")
    s.run("copy", container, BUSYBOX, "/bin/busybox")
    s.run("copy", container, BUSYBOX, "/bin/sh")
    s.run("config", "--cmd", '["/bin/sh"]', container)
    s.run("commit", container, image)
    s.run("rm", container)
    s.run("push", "--tls-verify=false", *(["--creds", creds] if creds else []), image, f"docker://{image}")
