"""`bench --cpu-quota`: a real cgroup really holds a busy process to its budget, and is gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from citycast.tooling.bench.cpu_quota import CpuQuota, CpuQuotaError, cgroup_quota_available

UNAVAILABLE = cgroup_quota_available()
needs_cgroup = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


@needs_cgroup
def test_a_busy_child_is_throttled_to_its_quota_and_the_cgroup_is_removed() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with CpuQuota(10, f"citycast-test-{os.getpid()}") as quota:
            quota.add(busy.pid)
            assert quota.members() == [busy.pid]
            proc = psutil.Process(busy.pid)
            cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            time.sleep(1.5)  # the measurement: 75 periods of 20 ms
            used = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
            stats = quota.stats()
            path = quota.path
        assert stats.throttled_periods > 0 and stats.throttled_s > 0
        # 10 % of a core, with room for the period it was added in; unconfined it would take a whole core
        assert used < 0.25
        assert path is not None and not path.exists()
        assert busy.poll() is None  # left in the parent cgroup, still running
    finally:
        busy.kill()
        busy.wait()


@needs_cgroup
def test_leaving_removes_the_cgroup_even_after_its_member_ended() -> None:
    short = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    with CpuQuota(50, f"citycast-test-end-{os.getpid()}") as quota:
        quota.add(short.pid)
        assert short.stdin is not None
        short.stdin.close()  # it ends now, inside the cgroup
        short.wait()
        path = quota.path
    assert path is not None and not path.exists()


def test_a_quota_outside_what_the_box_has_is_refused() -> None:
    for bad in (0, -5, 100 * (os.cpu_count() or 1) + 1):
        with pytest.raises(CpuQuotaError, match="share of one core"):
            CpuQuota(bad, "never-made")
