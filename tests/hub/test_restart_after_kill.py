"""`citycast serve` killed hard (SIGKILL, the OOM killer) leaves its nats-server running on the port; started again
on the same data directory, the hub stops that orphan and comes up, instead of failing on a taken port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from tests.helpers import wait_until_sync

from citycast.bus.server import free_port


def _nats_of(data: Path) -> list[int]:
    conf = str(data / "nats" / "nats.conf").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if conf in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _start(data: Path, http: int, nats_port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citycast", "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{nats_port}",
             "--http", f"127.0.0.1:{http}", "--https", "off"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{http}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until_sync(
        lambda: proc.poll() is not None or healthy(),
        "the hub to come up",
        timeout=60,
        every=0.25,
        detail=lambda: f"exit {proc.poll()}: {log.read_text(errors='replace')[-2000:]}",
    )
    assert proc.poll() is None, f"the hub exited ({proc.poll()}): {log.read_text(errors='replace')[-2000:]}"
    return proc


def test_a_killed_hub_restarts_on_the_same_data_directory(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "hub.log"
    http, nats_port = free_port(), free_port()
    first = _start(data, http, nats_port, log)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    orphans = _nats_of(data)
    assert len(orphans) == 1  # the hard way of dying leaves it behind
    second = _start(data, http, nats_port, log)
    try:
        assert _nats_of(data) != orphans and len(_nats_of(data)) == 1
        assert "left running" in log.read_text(errors="replace")
    finally:
        second.terminate()
        second.wait(timeout=30)
    # The hub stops its nats-server on the way out; the server's own exit may end a moment after the hub's (a CI run
    # saw it still there right after). Left running for good is what this guards against.
    wait_until_sync(lambda: _nats_of(data) == [], "the hub's nats-server to end with it", timeout=10, every=0.1,
                    detail=lambda: f"still running: {_nats_of(data)}")  # fmt: skip
