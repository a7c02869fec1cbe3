"""`citycast bench --site-cost`: real signed speech through one site agent in simulated time."""

from __future__ import annotations

import json
from pathlib import Path

from citycast.tooling.bench.site_cost import STAGES, run_site_cost, site_cost_command


def test_every_frame_is_verified_decoded_and_played_and_each_stage_costs_something() -> None:
    result = run_site_cost(3.0, block=480)
    assert result.stats["decoded"] == 150 and result.stats["rejected"] == 0
    assert result.stats["underruns"] == 0 and result.stats["resyncs"] == 0 and result.stats["concealed"] == 0
    assert result.calls["signature"] == 150 and result.calls["render"] >= 300
    assert all(result.cpu_ns[stage] > 0 for stage in STAGES)
    assert -40 < result.played_rms_dbfs < -6  # speech came out, not silence


def test_two_packets_a_message_halve_the_signatures(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    result = site_cost_command(seconds=2.0, block=960, packets_per_message=2, delay_ms=120.0, seed=3, json_out=out)
    assert result.calls["signature"] == 50 and result.stats["decoded"] == 100
    figures = json.loads(out.read_text())
    per_min = figures["cpu_s_per_audio_minute"]
    assert per_min["total"] > 0 and set(STAGES) <= set(per_min)
