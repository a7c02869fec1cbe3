"""A benchmark stopped by SIGTERM (`timeout`, a service manager) takes its nats-server, hub and sites with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tests.helpers import wait_until_sync


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # went between the two questions
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone (or a zombie) by now
        return ""


@pytest.mark.timeout(120)
def test_sigterm_stops_every_process_the_bench_started(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "citycast", "bench", "--sites", "1", "--processes", "1", "--snapclients", "0",
        "--seconds", "5", "--warmup", "300", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    bench = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    seen: dict[int, psutil.Process] = {}
    try:

        def sites_running() -> bool:
            for p in _descendants(bench.pid):
                seen.setdefault(p.pid, p)
            names = [_cmdline(p) for p in seen.values()]
            return any("simulate" in n for n in names) and any("nats-server" in n for n in names)

        wait_until_sync(sites_running, "the bench starting its nats-server and sites", timeout=60, every=0.2)
        for p in _descendants(bench.pid):  # whatever else it started by now
            seen.setdefault(p.pid, p)
        bench.send_signal(signal.SIGTERM)
        code = bench.wait(timeout=60)
        assert code == 128 + signal.SIGTERM, bench.stderr.read().decode(errors="replace") if bench.stderr else ""

        def all_gone() -> bool:
            return not any(_alive(p) for p in seen.values())

        def left() -> list[str]:
            return [_cmdline(p)[:120] for p in seen.values() if _alive(p)]

        wait_until_sync(all_gone, "every process the bench started to end", timeout=10, every=0.2, detail=left)
    finally:
        for p in seen.values():
            if p.is_running():
                os.kill(p.pid, signal.SIGKILL)
        if bench.poll() is None:
            bench.kill()
        bench.wait(timeout=10)
