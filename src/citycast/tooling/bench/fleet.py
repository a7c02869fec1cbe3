"""The processes of a demo or benchmark: started, watched for CPU and memory, and always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import psutil


@dataclass
class Member:
    role: str
    name: str
    pid: int
    popen: subprocess.Popen[bytes] | None
    log: Path | None
    cpu0: float = 0.0
    cpu1: float = 0.0
    last_cpu: float = 0.0  # the last reading, for a process that ends before the window does
    last_rss_mb: float = float("nan")

    def cpu_seconds(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            self.last_cpu = float(t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        return self.last_cpu

    def peak_rss_mb(self) -> float:
        # VmHWM is the kernel's own high-water mark of resident memory: no sampling needed while it lives.
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.last_rss_mb = int(line.split()[1]) / 1024
        except OSError:
            pass
        return self.last_rss_mb


def citycast_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "citycast", *args]


def wait_http_ok(url: str, alive: Callable[[], bool], timeout: float) -> bool:
    """Poll `url` until it answers 200 (True), or the process that should serve it dies or `timeout` passes
    (False; `alive()` tells which)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        time.sleep(0.2)
    return False


@dataclass
class Fleet:
    workdir: Path
    members: list[Member] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)

    def spawn(self, role: str, name: str, argv: list[str], prefix: list[str] | None = None) -> Member:
        log = self.workdir / f"{name}.log"
        fh = open(log, "wb")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        popen = subprocess.Popen(
            [*(prefix or []), *argv], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        fh.close()
        m = Member(role, name, popen.pid, popen, log)
        self.members.append(m)
        return m

    def adopt(self, role: str, name: str, pid: int, log: Path | None = None) -> Member:
        m = Member(role, name, pid, None, log)
        self.members.append(m)
        return m

    def sample(self) -> None:
        """Read every member's CPU and memory now; called often, so short-lived members are measured too."""
        for m in self.members:
            m.cpu_seconds()
            m.peak_rss_mb()

    def failed(self) -> list[Member]:
        return [m for m in self.members if m.popen is not None and m.popen.poll() not in (None, 0)]

    def log_tail(self, m: Member, lines: int = 15) -> str:
        if m.log is None or not m.log.exists():
            return ""
        return "\n".join(m.log.read_text(errors="replace").splitlines()[-lines:])

    def start_window(self) -> None:
        for m in self.members:
            m.cpu0 = m.cpu_seconds()
        self.window = (time.monotonic(), 0.0)

    def end_window(self) -> None:
        for m in self.members:
            m.cpu1 = m.cpu_seconds()
            m.peak_rss_mb()
        self.window = (self.window[0], time.monotonic())

    def watch_until(
        self, finished: Callable[[], bool], check: Callable[[], None], seconds: float, on_tick: Callable[[float], None]
    ) -> bool:
        """Sample the fleet every 0.2 s until `finished()`, calling `check()` (which raises on a dead member) and
        `on_tick(elapsed)` each time; False if it has not finished `seconds` + 30 s after the start."""
        t0 = time.monotonic()
        while not finished():
            check()
            self.sample()
            on_tick(time.monotonic() - t0)
            if time.monotonic() - t0 > seconds + 30:
                return False
            time.sleep(0.2)
        return True

    def figures(self) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        """CPU % of one core and peak RSS (MB) summed per role over the window, and process counts."""
        wall = max(1e-9, self.window[1] - self.window[0])
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        count: dict[str, int] = {}
        for m in self.members:
            cpu[m.role] = cpu.get(m.role, 0.0) + 100 * (m.cpu1 - m.cpu0) / wall
            rss[m.role] = rss.get(m.role, 0.0) + m.last_rss_mb
            count[m.role] = count.get(m.role, 0) + 1
        return cpu, rss, count

    def wait(self, role: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.role != role or m.popen is None:
                continue
            left = deadline - time.monotonic()
            try:
                m.popen.wait(timeout=max(0.0, left))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self, role: str | None = None, timeout: float = 10.0) -> None:
        chosen = [m for m in self.members if m.popen is not None and (role is None or m.role == role)]
        for m in chosen:
            if m.popen is not None and m.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for m in chosen:
            if m.popen is None:
                continue
            try:
                m.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                m.popen.kill()
                m.popen.wait(timeout=5)

    def __enter__(self) -> Fleet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
