from __future__ import annotations

from citycast.tooling.bench.delivery import MODES, best, run_delivery


def test_both_ways_receive_every_message_and_their_cpu_is_measured() -> None:
    rounds = run_delivery(count=200, size=300, interval_s=0.001, rounds=1)
    assert [r.mode for r in rounds] == list(MODES)
    for r in rounds:
        assert r.messages == 199  # from the first message to the last
        assert r.cpu_ns > 0 and r.wall_s > 0.1  # paced: 200 messages at 1 ms take about 0.2 s
    least = best(rounds)
    assert set(least) == set(MODES) and all(0 < us < 10_000 for us in least.values())
