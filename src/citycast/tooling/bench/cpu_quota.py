"""A CPU budget for one process: a cgroup of its own with a CFS quota (`bench --cpu-quota`).

A small ARM board gives a site agent perhaps a tenth of a fast core. The kernel can enforce such a budget on a
process here: a child cgroup whose quota is `percent` % of one core per period (cgroup v2 `cpu.max`, or
`cpu.cfs_quota_us` where the cpu controller is still mounted as cgroup v1, as on this box's hybrid layout). The
process runs at full speed until it has used its share of the period, then waits for the next period: a
process that needs more than the budget falls behind, which is what a slow board does to it. The period is
20 ms, one audio frame, not the kernel's default 100 ms: a slow board is slow all the time, while a 100 ms period
would let the process run freely and then stall it for up to 90 ms, longer than a site's whole playout delay.

Root is needed to make the cgroup. Leaving always removes it: its processes go back to the parent first (a
cgroup with members cannot be removed).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from citycast.tooling.bench.fleet import Fleet

PERIOD_US = 20_000
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota: tiny shares get a longer period
CGROUP_ROOT = Path("/sys/fs/cgroup")


class CpuQuotaError(RuntimeError):
    pass


@dataclass(frozen=True)
class ThrottleStats:
    periods: int  # quota periods in which a member ran
    throttled_periods: int  # of those, periods in which the quota ran out
    throttled_s: float  # time members spent waiting for the next period

    def as_dict(self) -> dict[str, float]:
        return {"periods": self.periods, "throttled_periods": self.throttled_periods, "throttled_s": self.throttled_s}


def _own_cgroup(hierarchy: str) -> str:
    """This process's cgroup path in one hierarchy of /proc/self/cgroup ("" = the v2 unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == hierarchy or hierarchy in controllers.split(","):
            return path.lstrip("/")
    raise CpuQuotaError(f"this process is in no {hierarchy or 'cgroup v2'} cgroup")


def _v2_root() -> Path | None:
    """The cgroup v2 mount whose cpu controller is free to use, if any."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return root
    return None


def _v1_root() -> Path | None:
    for root in (CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpu,cpuacct"):
        if (root / "cpu.cfs_quota_us").exists():
            return root
    return None


def cgroup_quota_available() -> str | None:
    """None when a quota can be set here, else why not (a test skips with it, the benchmark fails with it)."""
    if os.geteuid() != 0:
        return "a CPU quota needs root (it makes a cgroup)"
    root = _v2_root() or _v1_root()
    if root is None:
        return "no cgroup with the cpu controller is mounted under /sys/fs/cgroup"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (a container without cgroup delegation?)"
    return None


class CpuQuota:
    """A cgroup allowing its members `percent` % of one core in total; `add(pid)` confines a process.

    A context manager: entering makes the cgroup, leaving moves any members back to the parent and removes it."""

    def __init__(self, percent: float, name: str) -> None:
        if not 0 < percent <= 100 * (os.cpu_count() or 1):
            raise CpuQuotaError(f"a CPU quota is a share of one core in (0, {100 * (os.cpu_count() or 1)}] %")
        self.percent = percent
        self.name = name
        self.period_us = max(PERIOD_US, round(MIN_QUOTA_US * 100 / percent))
        self.quota_us = round(self.period_us * percent / 100)
        self.path: Path | None = None
        self.parent: Path | None = None
        self.version = 0

    def __enter__(self) -> CpuQuota:
        why = cgroup_quota_available()
        if why is not None:
            raise CpuQuotaError(why)
        v2 = _v2_root()
        try:
            if v2 is not None:
                self.version = 2
                # v2's "no internal processes" rule forbids enabling a controller for the children of a cgroup
                # that has processes of its own, except at the root: so the quota's cgroup hangs off the root.
                self.parent = v2
                subtree = v2 / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                self.path = v2 / self.name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
            else:
                v1 = _v1_root()
                assert v1 is not None
                self.version = 1
                self.parent = v1 / _own_cgroup("cpu")
                self.path = self.parent / self.name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as e:
            self._remove()
            raise CpuQuotaError(f"cannot make the cgroup {self.name}: {e}") from e
        return self

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the cgroup."""
        assert self.path is not None, "enter the CpuQuota first"
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as e:
            raise CpuQuotaError(f"cannot move process {pid} into {self.path}: {e}") from e

    def members(self) -> list[int]:
        if self.path is None or not self.path.exists():
            return []
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def stats(self) -> ThrottleStats:
        assert self.path is not None
        fields = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if " " in line)
        if self.version == 2:
            throttled_s = int(fields.get("throttled_usec", 0)) / 1e6
        else:
            throttled_s = int(fields.get("throttled_time", 0)) / 1e9
        return ThrottleStats(int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0)), throttled_s)

    def _remove(self) -> None:
        if self.path is None or not self.path.exists():
            return
        assert self.parent is not None
        for pid in self.members():
            with contextlib.suppress(OSError):  # it may have ended meanwhile
                (self.parent / "cgroup.procs").write_text(str(pid))
        # The kernel lets a cgroup go only once its last member has left, which an exiting process does a moment
        # after it is gone from cgroup.procs.
        deadline = time.monotonic() + 5
        while True:
            try:
                self.path.rmdir()
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise CpuQuotaError(f"cannot remove the cgroup {self.path}: {e}") from e
                time.sleep(0.05)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._remove()


def confine(fleet: Fleet, roles: tuple[str, ...], percent: float, stack: contextlib.ExitStack) -> dict[str, CpuQuota]:
    """Each process of these roles in a cgroup of its own with `percent` % of one core; removed with `stack`."""
    quotas: dict[str, CpuQuota] = {}
    for m in fleet.members:
        if m.role in roles:
            q = stack.enter_context(CpuQuota(percent, f"citycast-bench-{os.getpid()}-{m.name}"))
            q.add(m.pid)
            quotas[m.name] = q
    return quotas


def throttling(quotas: dict[str, CpuQuota]) -> dict[str, object]:
    return {name: q.stats().as_dict() for name, q in quotas.items()}
