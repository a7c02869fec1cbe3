"""Where slow secret checks run: Argon2 password and PIN verification, off every event loop, in a bounded pool.

Argon2 costs ~50 ms of CPU by design and anyone who can reach the login page or dial the telephone can ask for
one. Run on an event loop, four wrong logins stall everything on it; run on asyncio's default executor, they
queue behind (and in front of) the database calls that share it. Here they get their own small pool of threads
(argon2-cffi releases the GIL while it hashes, so these threads do not hold up the media thread either) and a
bounded waiting room. The pool's threads run at the lowest CPU priority (nice 19; Argon2's own lane threads
inherit it), so on a busy box a flood of checks gets only the CPU the audio, the bus and the API leave: without
that, a few hashes (each four lanes of pure CPU) starved the media thread and nats-server for hundreds of ms.
When more checks are waiting than the pool can clear in about a second, a new one is
refused at once with `HashPoolBusy` (the API answers 503 with Retry-After) instead of growing a queue a
stranger controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

WORKERS = 2  # this hub's cores; a check is CPU-bound, so more threads would only interleave them
NICE = 19  # the hash threads' CPU priority: the lowest
MAX_WAITING = 32  # checks admitted (running + queued) before new ones are refused


class HashPoolBusy(RuntimeError):
    """Too many secret checks are waiting: the caller should answer "try again later", not queue."""


class HashPool:
    """A bounded pool for CPU-bound secret checks. `run(fn, *args)` runs `fn` in one of `workers` threads."""

    def __init__(self, workers: int = WORKERS, max_waiting: int = MAX_WAITING) -> None:
        if workers < 1 or max_waiting < workers:
            raise ValueError(f"bad hash pool: {workers} workers, {max_waiting} waiting")
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="citycast-hash", initializer=_lowest_priority
        )
        self._lock = threading.Lock()  # admissions come from several event loops (web, media)
        self._admitted = 0
        self.refused = 0
        self.completed = 0

    @property
    def admitted(self) -> int:
        return self._admitted

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._admitted >= self.max_waiting:
                self.refused += 1
                raise HashPoolBusy(f"{self._admitted} secret checks already waiting")
            self._admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            with self._lock:
                self._admitted -= 1
                self.completed += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lowest_priority() -> None:
    """Make the calling thread (and the threads it starts) yield the CPU to everything else. On Linux the nice
    value is per thread; elsewhere this is a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


_default: HashPool | None = None
_default_lock = threading.Lock()


def default_pool() -> HashPool:
    """The process's pool: one per process, so the bound holds across every route and the telephone."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HashPool()
        return _default
