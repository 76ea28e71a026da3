"""bench.cpulimit: a CPU limit read as Kubernetes writes it, the quota it gives, the hierarchies found in
/proc/mounts, cpu.stat of both cgroup versions, and, where this machine lets us, a real group that holds
a busy process to its quota and is gone afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cpulimit

# /proc/mounts of a host with cgroup v1 controllers and a cgroup2 mount beside them (this machine's).
HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
# A host with cpu and cpuacct co-mounted (systemd's v1 layout) and no v2.
COMOUNTED = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n"
# A unified (v2 only) host.
UNIFIED = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


@pytest.mark.parametrize(("text", "cores"), [("0.4", 0.4), ("1", 1.0), ("400m", 0.4), (" 1500m ", 1.5)])
def test_a_cpu_amount_reads_as_kubernetes_writes_it(text: str, cores: float) -> None:
    assert cpulimit.parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize("text", ["0", "0m", "-0.5", "lots", "", "0.4c"])
def test_a_cpu_amount_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        cpulimit.parse_cpu(text)


def test_the_quota_is_the_cores_share_of_a_100_ms_period_and_never_under_the_kernels_minimum() -> None:
    assert cpulimit.quota_us(0.4) == 40_000
    assert cpulimit.quota_us(2) == 200_000
    assert cpulimit.quota_us(0.35, period_us=50_000) == 17_500
    assert cpulimit.quota_us(0.001) == 1_000


def test_the_cpu_hierarchies_are_found_in_proc_mounts() -> None:
    assert cpulimit.cpu_mounts(HYBRID) == (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/cpu"))
    assert cpulimit.cpu_mounts(COMOUNTED) == (None, Path("/sys/fs/cgroup/cpu,cpuacct"))
    assert cpulimit.cpu_mounts(UNIFIED) == (Path("/sys/fs/cgroup"), None)
    assert cpulimit.cpu_mounts("") == (None, None)


def test_cpu_stat_of_v1_counts_throttled_time_in_nanoseconds() -> None:
    text = "nr_periods 17\nnr_throttled 16\nthrottled_time 1161278702\nnr_bursts 0\nburst_time 0\n"
    assert cpulimit.parse_cpu_stat(text) == cpulimit.CpuStat(
        periods=17, throttled=16, throttled_s=pytest.approx(1.161278702), usage_s=None
    )


def test_cpu_stat_of_v2_counts_in_microseconds_and_has_the_groups_usage() -> None:
    text = (
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 30\n"
        "throttled_usec 1200000\nnr_bursts 0\nburst_usec 0\n"
    )
    before = cpulimit.parse_cpu_stat(text)
    assert before == cpulimit.CpuStat(periods=40, throttled=30, throttled_s=1.2, usage_s=2.5)
    after = cpulimit.CpuStat(periods=50, throttled=36, throttled_s=1.5, usage_s=2.9)
    delta = after - before
    assert (delta.periods, delta.throttled) == (10, 6)
    assert delta.throttled_s == pytest.approx(0.3)
    assert delta.usage_s == pytest.approx(0.4)
    assert (cpulimit.CpuStat(usage_s=None) - before).usage_s is None


def _writable() -> str | None:
    """Why no group can be made here, or None when one can."""
    try:
        with cpulimit.cpu_groups(1, cores=0.5, label="shipit-test-probe"):
            return None
    except (cpulimit.CgroupUnavailable, OSError) as e:
        return str(e)


def test_a_group_holds_a_busy_process_to_its_quota_and_is_removed_afterwards() -> None:
    reason = _writable()
    if reason:
        pytest.skip(f"no writable cpu cgroup here: {reason}")
    busy = "while True: pass"
    with cpulimit.cpu_groups(1, cores=0.1, label="shipit-test") as [group]:
        path = group.path
        assert (group.path / ("cpu.max" if group.hierarchy.version == 2 else "cpu.cfs_quota_us")).exists()
        proc = subprocess.Popen(group.command([sys.executable, "-c", busy]))
        try:
            deadline = time.monotonic() + 30
            # In the group from its first instruction: the pid is the one we started (exec kept it).
            while proc.pid not in group.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.pid in group.pids()
            while group.stat().throttled < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            stat = group.stat()
            assert stat.throttled >= 3, stat  # the quota ran out period after period: it is held back
            assert stat.throttled_s > 0
        finally:
            proc.kill()
            proc.wait()
    assert not path.exists()


def test_the_groups_are_removed_when_the_block_fails_even_with_a_process_left_inside() -> None:
    reason = _writable()
    if reason:
        pytest.skip(f"no writable cpu cgroup here: {reason}")
    proc = None
    paths = []
    with pytest.raises(RuntimeError), cpulimit.cpu_groups(2, cores=0.2, label="shipit-test") as groups:
        paths = [g.path for g in groups]
        proc = subprocess.Popen(groups[0].command([sys.executable, "-c", "import time; time.sleep(60)"]))
        while proc.pid not in groups[0].pids():
            time.sleep(0.01)
        raise RuntimeError("the bench failed")
    try:
        assert paths
        assert not any(p.exists() for p in paths)
        assert proc.poll() is None  # still running, moved out of the removed group rather than killed
    finally:
        proc.kill()
        proc.wait()


def test_a_path_that_refuses_says_which_it_is(tmp_path: Path) -> None:
    # No cgroup fs there (as where /sys/fs/cgroup is not mounted or read-only): the error names the path.
    missing = cpulimit.Hierarchy(1, tmp_path / "no-cgroup-fs")
    with pytest.raises(cpulimit.CgroupUnavailable, match=str(missing.root / "g")):
        cpulimit.CpuGroup(missing, "g", cores=0.4)


def test_where_no_cgroup_can_be_made_the_limit_fails_or_with_fallback_is_dropped_with_a_note(
    tmp_path: Path,
) -> None:
    # A machine whose /proc/mounts shows no cgroup cpu controller (a container without one, macOS-like).
    mounts = tmp_path / "mounts"
    mounts.write_text(UNIFIED.replace("cgroup2 /sys/fs/cgroup", f"cgroup2 {tmp_path / 'v2'}"))
    with pytest.raises(cpulimit.CgroupUnavailable, match="no cgroup cpu controller"):
        cpulimit.resolve_limit(0.4, fallback=False, mounts_file=mounts)
    cores, note = cpulimit.resolve_limit(0.4, fallback=True, mounts_file=mounts)
    assert cores is None
    assert note.startswith("no CPU limit: no cgroup cpu controller")
    assert "run unlimited" in note


def test_where_a_cgroup_can_be_made_the_limit_is_kept_and_named() -> None:
    reason = _writable()
    if reason:
        pytest.skip(f"no writable cpu cgroup here: {reason}")
    cores, note = cpulimit.resolve_limit(0.4, fallback=True)
    assert cores == 0.4
    assert "a CFS quota of 40 ms per 100 ms" in note
