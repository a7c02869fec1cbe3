"""What a site remembers of its clock across a restart: the oscillator's measured drift.

After a power cut the local clock's offset is anyone's guess (a box without a battery-backed clock boots at the
time it last wrote down), but the crystal's rate against the broadcast clock is what it was before, to within a
few ppm of temperature. An estimator seeded with that rate (`ClockEstimator.seed_drift`) needs only the offset,
which a burst of exchanges gives in well under a second; without it a young estimate's drift is uncertain by tens
of ppm and its error grows by that much per second of extrapolation.

`DriftMemory` is the file's content; `MemoryKeeper` decides, without I/O, when it is worth writing (a drift known
well, at most every few minutes: a Raspberry Pi's SD card should not be written every second); `load_memory` and
`save_memory` are the file I/O, which never raises: a site that cannot remember still plays. `keep_memory` is the
loop a site and a city time responder both run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from citycast.clock.estimator import ClockEstimator
from citycast.ticks import sleep_to_grid

log = logging.getLogger(__name__)

_S = 1_000_000_000
VERSION = 1
MAX_FILE_BYTES = 4096


@dataclass(frozen=True)
class DriftMemory:
    """The local clock's rate against the broadcast clock, as an estimator last knew it."""

    drift_ppm: float  # positive: the local clock runs fast
    sigma_ppm: float  # one sigma of `drift_ppm`, from the samples alone
    saved_at_ns: int  # broadcast time of the measurement (for an operator reading the file)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "drift_ppm": self.drift_ppm,
                "sigma_ppm": self.sigma_ppm,
                "saved_at_ns": self.saved_at_ns,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DriftMemory:
        """Raises ValueError for anything but a version-1 record of finite numbers."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e}") from e
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} clock memory")
        drift, sigma, saved = data.get("drift_ppm"), data.get("sigma_ppm"), data.get("saved_at_ns")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (drift, sigma)):
            raise ValueError("drift_ppm and sigma_ppm must be numbers")
        if not isinstance(saved, int) or isinstance(saved, bool):
            raise ValueError("saved_at_ns must be an integer")
        assert isinstance(drift, int | float) and isinstance(sigma, int | float)
        if not (math.isfinite(drift) and math.isfinite(sigma)) or sigma < 0:
            raise ValueError("drift_ppm and sigma_ppm must be finite, sigma_ppm ≥ 0")
        return cls(float(drift), float(sigma), saved)


class MemoryKeeper:
    """When to write the drift down (sans-IO): once the samples alone know it to `max_sigma_ppm` over at least
    `min_span_ns` of exchanges, then every `every_ns` at most."""

    def __init__(self, *, max_sigma_ppm: float = 2.0, min_span_ns: int = 60 * _S, every_ns: int = 600 * _S) -> None:
        self.max_sigma_ppm = max_sigma_ppm
        self.min_span_ns = min_span_ns
        self.every_ns = every_ns
        self._last: int | None = None

    def _worth(self, estimator: ClockEstimator) -> bool:
        return (
            estimator.synced
            and estimator.span_ns >= self.min_span_ns
            and estimator.drift_sigma_ppm <= self.max_sigma_ppm
        )

    def due(self, estimator: ClockEstimator, mono_ns: int, broadcast_ns: int) -> DriftMemory | None:
        """The memory to write now, or None (`mono_ns`: a clock that only moves forward)."""
        if self._last is not None and mono_ns - self._last < self.every_ns:
            return None
        if not self._worth(estimator):
            return None
        self._last = mono_ns
        return DriftMemory(estimator.drift_ppm, estimator.drift_sigma_ppm, broadcast_ns)


def default_memory_path(site: str) -> Path:
    """Where `citycast site` keeps its clock memory: system-wide when run as root (a service), else per user."""
    # a name is the operator's or the hub's, but never a way out of the directory
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", site) or "site"
    if os.geteuid() == 0:
        return Path("/var/lib/citycast") / f"{safe}.clock.json"
    return Path.home() / ".local" / "state" / "citycast" / f"{safe}.clock.json"


def load_memory(path: Path) -> DriftMemory | None:
    """The remembered drift, or None (no file yet, unreadable, or not a clock memory: logged, never raised)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError("file too large")
        return DriftMemory.from_json(raw.decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("clock memory %s ignored: %s", path, e)
        return None


def save_memory(path: Path, memory: DriftMemory) -> bool:
    """Write `memory` to `path` atomically (a power cut mid-write leaves the old file or the new, never half of
    one). False, logged, if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(memory.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True
    except OSError as e:
        log.warning("clock memory %s not written: %s", path, e)
        return False


async def keep_memory(
    path: Path,
    keeper: MemoryKeeper,
    estimator: Callable[[], ClockEstimator],
    broadcast_now: Callable[[], int | None],
    monotonic_ns: Callable[[], int],
    every_s: float = 10.0,
) -> None:
    """Write the clock's drift down once it is known, then as `keeper` allows (a power cut gives no warning).
    `estimator` is asked each time: a site replaces its estimator when it moves to another time responder."""
    while True:
        await sleep_to_grid(every_s)
        now = broadcast_now()
        memory = keeper.due(estimator(), monotonic_ns(), now) if now is not None else None
        if memory is not None:
            await asyncio.to_thread(save_memory, path, memory)


def seed_from(estimator: ClockEstimator, path: Path) -> DriftMemory | None:
    """Seed `estimator` with the drift remembered at `path`; the memory used, or None."""
    memory = load_memory(path)
    if memory is None:
        return None
    if not estimator.seed_drift(memory.drift_ppm, memory.sigma_ppm):
        log.warning("clock memory %s ignored: a drift of %.1f ppm is no crystal's", path, memory.drift_ppm)
        return None
    return memory
