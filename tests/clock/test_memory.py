"""The clock memory: written when the drift is known, read back at a restart, and nothing bad taken from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.clock.sim import MS, S, Sim, lan_path

from citycast.clock.estimator import ClockEstimator
from citycast.clock.memory import (
    MAX_FILE_BYTES,
    DriftMemory,
    MemoryKeeper,
    default_memory_path,
    load_memory,
    save_memory,
    seed_from,
)


def test_the_drift_is_written_once_known_and_seeds_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "state" / "s1.clock.json"
    sim = Sim(lan_path, 1, 2 * S, -73.0)
    keeper = MemoryKeeper()
    sim.run(20)
    assert keeper.due(sim.estimator, sim.now, sim.now) is None  # 20 s of samples: not known well enough yet
    sim.run(60)
    memory = keeper.due(sim.estimator, sim.now, sim.now)
    assert memory is not None
    assert memory.drift_ppm == pytest.approx(-73.0, abs=1.0)
    assert memory.sigma_ppm <= 2.0
    assert keeper.due(sim.estimator, sim.now + 60 * S, sim.now) is None  # not again for ten minutes
    assert keeper.due(sim.estimator, sim.now + 601 * S, sim.now) is not None
    assert save_memory(path, memory)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it

    fresh = ClockEstimator()
    assert seed_from(fresh, path) == memory
    assert fresh.drift_seeded


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe not text",
        b"[1, 2]",
        b'{"version": 2, "drift_ppm": 1, "sigma_ppm": 1, "saved_at_ns": 1}',
        b'{"version": 1, "drift_ppm": "12", "sigma_ppm": 1, "saved_at_ns": 1}',
        b'{"version": 1, "drift_ppm": true, "sigma_ppm": 1, "saved_at_ns": 1}',
        b'{"version": 1, "drift_ppm": NaN, "sigma_ppm": 1, "saved_at_ns": 1}',
        b'{"version": 1, "drift_ppm": 1e400, "sigma_ppm": 1, "saved_at_ns": 1}',
        b'{"version": 1, "drift_ppm": 1, "sigma_ppm": -1, "saved_at_ns": 1}',
        b'{"version": 1, "drift_ppm": 1, "sigma_ppm": 1, "saved_at_ns": 1.5}',
        b'{"version": 1, "drift_ppm": 1, "sigma_ppm": 1}',
        b'{"version": 1, "drift_ppm": 1, "sigma_ppm": 1, "saved_at_ns": 1, "pad": "' + b"x" * MAX_FILE_BYTES + b'"}',
    ],
)
def test_a_bad_file_is_ignored_and_the_site_starts_from_nothing(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s1.clock.json"
    path.write_bytes(content)
    assert load_memory(path) is None
    est = ClockEstimator()
    assert seed_from(est, path) is None
    assert not est.drift_seeded


def test_a_drift_no_crystal_has_is_not_seeded(tmp_path: Path) -> None:
    path = tmp_path / "s1.clock.json"
    assert save_memory(path, DriftMemory(drift_ppm=25_000.0, sigma_ppm=0.5, saved_at_ns=1))
    est = ClockEstimator()
    assert seed_from(est, path) is None
    assert not est.drift_seeded


def test_no_file_and_an_unwritable_place_are_not_errors(tmp_path: Path) -> None:
    assert load_memory(tmp_path / "missing.json") is None
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert not save_memory(blocker / "s1.clock.json", DriftMemory(1.0, 1.0, 1))


def test_a_site_name_cannot_lead_the_file_elsewhere() -> None:
    path = default_memory_path("../../etc/passwd")
    assert path.name == "______etc_passwd.clock.json"
    assert ".." not in path.parts


def test_a_young_estimate_is_not_written_down() -> None:
    sim = Sim(lan_path, 2, 0, 30.0)
    sim.run(0.5)
    assert MemoryKeeper(min_span_ns=100 * MS).due(sim.estimator, sim.now, sim.now) is None  # drift still vague
