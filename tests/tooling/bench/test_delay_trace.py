"""`citycast bench-delay`: the real delay tuner on a worsening path in simulated time, beside a fixed D."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from citycast.cli import app
from citycast.tooling.bench.delay_trace import T0, S, simulate, worsening


def test_every_schedule_starts_ahead_and_continues_where_the_last_one_ended() -> None:
    trace = simulate(worsening, 900)
    assert len(trace.changes) >= 4
    previous = 200_000_000
    for sec, schedule in trace.changes:
        # decided at the end of second `sec`, it starts a whole lead later: every site has it before it applies
        assert schedule.from_ts_ns >= T0 + (sec + 2) * S - 1
        assert schedule.old_delay_ns == previous
        previous = schedule.new_delay_ns


def test_the_bench_reports_d_rising_and_falling_with_nothing_late_against_a_fixed_d(tmp_path: Path) -> None:
    out = tmp_path / "delay.json"
    result = CliRunner().invoke(app, ["bench-delay", "--seconds", "600", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "too late" in result.output
    figures = json.loads(out.read_text())
    assert figures["too_late_auto"] == 0
    assert figures["too_late_fixed"] > 10_000  # the same path with D fixed at 200 ms: the worsening is real
    assert figures["delay_max_ms"] >= 330 and figures["delay_end_ms"] < figures["delay_max_ms"]
    rows = figures["rows"]
    assert [r["t_s"] for r in rows] == list(range(0, 600, 30))
    assert all(r["too_late_auto"] == 0 for r in rows)
    assert figures["changes"][0]["to_ms"] > figures["changes"][0]["from_ms"]
    assert figures["changes"][-1]["to_ms"] < figures["changes"][-1]["from_ms"]
