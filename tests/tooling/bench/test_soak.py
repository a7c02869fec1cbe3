from __future__ import annotations

from citycast.tooling.bench.soak import run_soak


def test_a_short_soak_keeps_every_marker_on_time() -> None:
    sites = run_soak(hours=0.05, sites=1, checkpoint_every_s=60, window_s=8)
    site = sites[0]
    assert site.dac_ppm == 100.0
    assert len(site.checkpoints) >= 2
    for c in site.checkpoints:
        assert c.markers >= 7
        assert c.max_abs_error_ms < 0.05
    assert site.engine.stats.resyncs == 0
    assert site.engine.stats.underruns == 0
