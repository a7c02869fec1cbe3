"""`bench --snapclients`: a real snapserver fed the marker signal, a real snapclient playing it into a file; its CPU,
memory, what it played and what its own log reports as a gap or a jump."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from rich.table import Table
from tests.helpers import need_binary, wait_until_sync

from citycast.media.chirp import chirp
from citycast.tooling.bench.fleet import Fleet
from citycast.tooling.bench.snapcast import SnapcastRig, add_rows, comparison, log_events, markers_in
from citycast.tooling.markers import detect_markers

PERIOD_S = 0.5


def _markers(path: Path) -> int:
    if not path.exists():
        return 0
    return len(detect_markers(np.fromfile(path, dtype="<i2")[::2].astype(np.float32) / 32768))


def test_a_snapclient_plays_the_markers_and_a_stall_shows_in_its_log_and_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_binary("snapserver")
    need_binary("snapclient")
    monkeypatch.chdir(tmp_path)  # a relative work directory, as the bench's default --out gives
    with Fleet(tmp_path / "logs") as fleet:
        rig = SnapcastRig(Path("snap"), 1, PERIOD_S)
        rig.start(fleet)
        out = rig.output(0)
        wait_until_sync(lambda: _markers(out) >= 2, "the snapclient playing markers", timeout=15)
        fleet.start_window()
        rig.start_window()
        clean = time.time()
        before = _markers(out)
        wait_until_sync(lambda: _markers(out) >= before + 5, "five more markers played", timeout=10)
        fleet.end_window()
        rig.end_window()
        clean_end = time.time()
        client = next(m for m in fleet.members if m.role == "snapclients")
        os.kill(client.pid, signal.SIGSTOP)
        time.sleep(1.3)  # the fault itself: the client gets no CPU for 1.3 s, not a whole number of periods
        os.kill(client.pid, signal.SIGCONT)
        stalled = time.time() - 1.3
        now = _markers(out)
        wait_until_sync(lambda: _markers(out) >= now + 3, "markers again after the stall", timeout=10)
        stall_end = time.time()
        rig.stop(fleet)
        f = rig.figures(fleet, clean, clean_end, keep=True)
        # Whether it played them without a gap is the benchmark's figure: on a loaded box the feeder itself
        # can be late (a 20 ms jump in what the server sends), so the clean window only has to play.
        assert int(f["snapclient_markers_min"]) >= 4, f  # type: ignore[call-overload]
        # CPU time comes in 10 ms clock ticks: a client at 0.3 % of a core may show none in a 5 s window.
        assert 0 <= float(f["snapclient_cpu_percent"]) < 50, f  # type: ignore[arg-type]
        assert 1 < float(f["snapclient_rss_mb"]) < 200, f  # type: ignore[arg-type]
        # Woken 1.3 s late, snapclient finds its audio too old and jumps ahead, and its log says so. (Its file
        # player has no DAC clock: it skips the writes it missed too, so the file alone need not show the jump.)
        assert client.log is not None
        assert log_events(client.log, stalled, stall_end)[1] >= 1


def _with_markers(starts: list[int], length: int) -> np.ndarray:
    signal = np.zeros(length, np.float32)
    marker = chirp()
    for start in starts:
        signal[start : start + marker.size] += marker
    return signal


def test_markers_missing_and_jumps_in_what_was_played() -> None:
    period = round(PERIOD_S * 48_000)
    steady = [1_000 + k * period for k in range(8)]
    length = 8 * period + 500  # no room for a ninth
    assert markers_in(_with_markers(steady, length), PERIOD_S) == (8, 0, 0)
    # two markers lost in a gap, one at the end; then audio skipped by a quarter period
    lost = [s for k, s in enumerate(steady) if k not in (3, 4, 7)]
    assert markers_in(_with_markers(lost, length), PERIOD_S) == (5, 3, 0)
    skipped = steady[:4] + [s - period // 4 for s in steady[4:]]
    found, _, jumps = markers_in(_with_markers(skipped, length), PERIOD_S)
    assert (found, jumps) == (8, 1)
    assert markers_in(np.zeros(3 * period, np.float32), PERIOD_S) == (0, 3, 0)


def test_no_cpu_ratio_against_snapclients_that_played_nothing() -> None:
    base = {"site_cpu_percent_per_site": 2.0, "snapclient_cpu_percent": 0.5, "processes": {"sites": 1}}
    assert comparison({**base, "snapclient_markers_min": 59})["cpu_vs_snapclient"] == 4.0
    # An idle snapclient (its server had no audio) costs a third of a playing one: no yardstick.
    assert comparison({**base, "snapclient_markers_min": 0})["cpu_vs_snapclient"] is None


def _row(figures: dict[str, object], name: str) -> str:
    table = Table()
    table.add_column("figure")
    table.add_column("value")
    add_rows(table, figures)
    names, values = (list(c.cells) for c in table.columns)
    return str(values[names.index(name)])


def _ratio_row(figures: dict[str, object]) -> str:
    return _row(figures, "CPU per full site ÷ per snapclient")


def test_the_ratio_row_says_why_there_is_no_ratio() -> None:
    snap = {"snapclients": 2, "snapclient_cpu_percent": 0.5, "snapclient_rss_mb": 8.0, "snapclient_underruns": 0,
            "snapclient_hard_syncs": 0, "snapclient_missing_markers": 0, "snapclient_jumps": 0}  # fmt: skip
    assert _ratio_row({**snap, "snapclient_markers_min": 59, "cpu_vs_snapclient": 3.0}) == "3.00"
    assert _ratio_row({**snap, "snapclient_markers_min": 59, "cpu_vs_snapclient": None}) == "—"  # no sites run
    assert "played no marker" in _ratio_row({**snap, "snapclient_markers_min": 0, "cpu_vs_snapclient": None})


def test_the_table_shows_how_much_audio_each_side_takes_per_wake_up() -> None:
    snap = {"snapclients": 2, "snapclient_cpu_percent": 0.5, "snapclient_rss_mb": 8.0, "snapclient_underruns": 0,
            "snapclient_hard_syncs": 0, "snapclient_missing_markers": 0, "snapclient_jumps": 0,
            "snapclient_markers_min": 59, "cpu_vs_snapclient": 3.0}  # fmt: skip
    row = "audio taken per wake-up: site's DAC / snapclient's file player"
    assert _row({**snap, "site_dac_period_ms": 10.0}, row) == "10 ms / 50 ms (--dac-block 2400 compares like with like)"
    assert _row({**snap, "site_dac_period_ms": 50.0}, row) == "50 ms / 50 ms"
