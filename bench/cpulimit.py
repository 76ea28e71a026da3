"""Hold a process to a CPU budget the way Kubernetes holds a pod to `resources.limits.cpu`: a CFS quota
(`quota` µs of CPU per `period` µs, period 100 ms) on a cgroup of the cpu controller of its own.

cgroup v2 is used when its cpu controller is available on the v2 mount (cpu.max, cpu.stat in µs), else
cgroup v1's cpu hierarchy (cpu.cfs_quota_us / cpu.cfs_period_us, cpu.stat's throttled_time in ns).  A
process is spawned INTO its group (a `sh` that writes its own pid to cgroup.procs, then execs the
command), so it never runs a moment unlimited.  The groups are removed on the way out, error or Ctrl-C
included.  Where no cpu hierarchy is writable (an unprivileged container, CI), CgroupUnavailable says
which path refused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000  # the kubelet's CFS period
MIN_QUOTA_US = 1_000  # the kernel refuses a quota under 1 ms


class CgroupUnavailable(Exception):
    """No cpu cgroup can be made here; the message names the path that refused and why."""


def parse_cpu(text: str) -> float:
    """A CPU amount as Kubernetes writes one: "0.4", "1", "400m" -> cores (0.4, 1.0, 0.4)."""
    raw = text.strip()
    try:
        cores = int(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)
    except ValueError:
        raise ValueError(f"not a CPU amount: {text!r} (e.g. 0.4 or 400m)") from None
    if not cores > 0:
        raise ValueError(f"a CPU limit must be above zero: {text!r}")
    return cores


def quota_us(cores: float, *, period_us: int = PERIOD_US) -> int:
    """The CFS quota that gives `cores` cores per period: 0.4 cores -> 40000 µs per 100000 µs."""
    return max(MIN_QUOTA_US, round(cores * period_us))


def cpu_mounts(mounts: str) -> tuple[Path | None, Path | None]:
    """(the cgroup v2 mount, the cgroup v1 mount carrying the cpu controller) in /proc/mounts' text."""
    v2 = v1 = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        where, kind, options = fields[1], fields[2], fields[3].split(",")
        if kind == "cgroup2" and v2 is None:
            v2 = Path(where)
        elif kind == "cgroup" and "cpu" in options and v1 is None:
            v1 = Path(where)
    return v2, v1


@dataclass(frozen=True)
class CpuStat:
    """A group's CFS accounting: periods with runnable tasks, periods in which the quota ran out, time its
    tasks were held back for it; `usage_s` is the group's CPU (None on v1, whose cpu.stat lacks it)."""

    periods: int = 0
    throttled: int = 0
    throttled_s: float = 0.0
    usage_s: float | None = None

    def __sub__(self, before: CpuStat) -> CpuStat:
        usage = None
        if self.usage_s is not None and before.usage_s is not None:
            usage = self.usage_s - before.usage_s
        return CpuStat(
            periods=self.periods - before.periods,
            throttled=self.throttled - before.throttled,
            throttled_s=self.throttled_s - before.throttled_s,
            usage_s=usage,
        )


def parse_cpu_stat(text: str) -> CpuStat:
    """cpu.stat of either version: v1 gives throttled_time in ns, v2 throttled_usec and usage_usec."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    if "throttled_usec" in values or "usage_usec" in values:
        throttled_s = values.get("throttled_usec", 0) / 1e6
        usage: float | None = values["usage_usec"] / 1e6 if "usage_usec" in values else None
    else:
        throttled_s, usage = values.get("throttled_time", 0) / 1e9, None
    return CpuStat(
        periods=values.get("nr_periods", 0),
        throttled=values.get("nr_throttled", 0),
        throttled_s=throttled_s,
        usage_s=usage,
    )


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    root: Path


def find_hierarchy(mounts_file: Path = Path("/proc/mounts")) -> Hierarchy:
    """Where a cpu group can be made: cgroup v2 if its cpu controller is there, else v1's cpu mount."""
    try:
        v2, v1 = cpu_mounts(mounts_file.read_text())
    except OSError as e:  # not Linux
        raise CgroupUnavailable(f"cannot read {mounts_file}: {e.strerror or e}") from e
    if v2 is not None:
        try:
            available = (v2 / "cgroup.controllers").read_text().split()
        except OSError:
            available = []
        if "cpu" in available:  # bound to v2 (elsewhere it is v1's, as on hosts with both mounted)
            return Hierarchy(2, v2)
    if v1 is not None:
        if not (v1 / "cpu.cfs_quota_us").exists():
            raise CgroupUnavailable(f"{v1} has no cpu.cfs_quota_us (a kernel without CFS bandwidth)")
        return Hierarchy(1, v1)
    raise CgroupUnavailable(
        f"no cgroup cpu controller: none mounted for v1, and {v2 or 'no cgroup2 mount'} does not offer it"
    )


class CpuGroup:
    """One cgroup with a CPU quota; `command()` wraps an argv so that it starts inside the group."""

    def __init__(self, hierarchy: Hierarchy, name: str, *, cores: float) -> None:
        self.hierarchy = hierarchy
        self.cores = cores
        self.path = hierarchy.root / name
        if hierarchy.version == 2:
            self._enable_v2_cpu()
        try:
            self.path.mkdir()
        except OSError as e:
            raise CgroupUnavailable(f"cannot create a cpu cgroup at {self.path}: {e.strerror or e}") from e
        try:
            quota = quota_us(cores)
            if hierarchy.version == 2:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as e:
            self.remove()
            raise CgroupUnavailable(f"cannot set a CPU quota on {self.path}: {e.strerror or e}") from e

    def _enable_v2_cpu(self) -> None:
        control = self.hierarchy.root / "cgroup.subtree_control"
        try:
            if "cpu" not in control.read_text().split():
                control.write_text("+cpu")
        except OSError as e:
            raise CgroupUnavailable(
                f"cannot enable the cpu controller in {control}: {e.strerror or e}"
            ) from e

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def command(self, argv: list[str]) -> list[str]:
        """`argv` started inside this group: the shell joins it with its own pid, then becomes argv
        (same pid), so not one instruction of it runs outside the quota."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs), *argv]

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in self.procs.read_text().split()]
        except OSError:
            return []

    def stat(self) -> CpuStat:
        return parse_cpu_stat((self.path / "cpu.stat").read_text())

    def remove(self) -> None:
        """Remove the group; a process still in it goes back to the root group first (its quota gone)."""
        if not self.path.exists():
            return
        for pid in self.pids():
            with contextlib.suppress(OSError):
                (self.hierarchy.root / "cgroup.procs").write_text(str(pid))
        for _ in range(50):  # a process that just exited may hold the group a moment longer (EBUSY)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        self.path.rmdir()


@contextlib.contextmanager
def cpu_groups(
    count: int, *, cores: float, label: str = "shipit-bench", hierarchy: Hierarchy | None = None
) -> Iterator[list[CpuGroup]]:
    """`count` groups of `cores` each, removed on the way out whatever happens."""
    hierarchy = hierarchy or find_hierarchy()
    groups: list[CpuGroup] = []
    try:
        for i in range(count):
            groups.append(CpuGroup(hierarchy, f"{label}-{os.getpid()}-{i}", cores=cores))
        yield groups
    finally:
        for group in groups:
            group.remove()


def resolve_limit(
    cores: float, *, fallback: bool, mounts_file: Path = Path("/proc/mounts")
) -> tuple[float | None, str]:
    """(the limit to apply, what to say about it): a group is made and removed first to prove the
    hierarchy writable.  Where none can be made: CgroupUnavailable, or with `fallback` no limit (None)
    and a note saying why, so that `make bench` still runs in a container or on CI."""
    try:
        hierarchy = find_hierarchy(mounts_file)
        with cpu_groups(1, cores=cores, label="shipit-bench-probe", hierarchy=hierarchy):
            pass
    except CgroupUnavailable as e:
        if not fallback:
            raise
        return None, f"no CPU limit: {e}; the replicas run unlimited, sharing the cores"
    return cores, (
        f"each replica limited to {cores:g} cores (a CFS quota of {quota_us(cores) / 1000:g} ms per "
        f"{PERIOD_US / 1000:g} ms, cgroup v{hierarchy.version} at {hierarchy.root})"
    )
