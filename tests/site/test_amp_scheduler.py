"""Amplifier power in simulated time: on a lead before the first sample plays, off a hold after the last; back to
back addresses keep it on; an address cancelled or pre-empted turns it off; and the commands' failures are
counted, never raised."""

from __future__ import annotations

import asyncio
import sys

import pytest

from citycast.protocol.desired import DesiredState
from citycast.site.amp import AmpAction, AmpConfig, AmpRunner, AmpScheduler

MS = 1_000_000
S = 1_000_000_000
LEAD, HOLD, D = 800 * MS, 2 * S, 200 * MS


def run(sched: AmpScheduler, until: int, start: int = 0, step: int = MS) -> list[tuple[bool, int]]:
    """Poll every `step` from `start` to `until`: the switches made, with the instant each was made."""
    out: list[tuple[bool, int]] = []
    for now in range(start, until, step):
        action = sched.poll(now)
        if action is not None:
            assert action.due_ns == now  # polled every ms from the start: never late
            out.append((action.on, now))
    return out


def test_on_a_lead_before_the_first_sample_plays_and_off_a_hold_after_the_last() -> None:
    sched = AmpScheduler(LEAD, HOLD)
    first, last = 10 * S, 14 * S  # frame timestamps; they play D later
    sched.follow(first, None, D, now_ns=0)
    assert sched.next_due(0) == first + D - LEAD
    switches = run(sched, 12 * S)
    assert switches == [(True, first + D - LEAD)]
    sched.follow(first, last, D, now_ns=12 * S)  # the hub tells where it ends
    switches = run(sched, 20 * S, start=12 * S)
    assert switches == [(False, last + D + HOLD)]
    assert not sched.is_on


def test_back_to_back_addresses_keep_it_on() -> None:
    sched = AmpScheduler(LEAD, HOLD)
    sched.follow(1 * S, None, D, 0)
    switches = run(sched, 3 * S)
    sched.follow(1 * S, 3 * S, D, 3 * S)
    switches += run(sched, 3 * S + 300 * MS, start=3 * S)
    sched.follow(None, None, D, 3 * S + 300 * MS)  # the site goes back to its idle channel
    switches += run(sched, 4 * S, start=3 * S + 300 * MS)
    # The next begins 2.5 s after: inside lead + hold of the gap, so the amplifier never goes off in between.
    sched.follow(5 * S + 500 * MS, 8 * S, D, 4 * S)
    switches += run(sched, 12 * S, start=4 * S)
    assert switches == [(True, 1 * S + D - LEAD), (False, 8 * S + D + HOLD)]


def test_a_gap_longer_than_lead_and_hold_switches_off_in_between() -> None:
    sched = AmpScheduler(LEAD, HOLD)
    sched.follow(1 * S, 2 * S, D, 0)
    switches = run(sched, 5 * S)
    sched.follow(10 * S, 11 * S, D, 5 * S)
    switches += run(sched, 15 * S, start=5 * S)
    assert switches == [
        (True, 1 * S + D - LEAD),
        (False, 2 * S + D + HOLD),
        (True, 10 * S + D - LEAD),
        (False, 11 * S + D + HOLD),
    ]


def test_a_cancelled_address_turns_it_off() -> None:
    # Cancelled before it began: never switched on at all.
    sched = AmpScheduler(LEAD, HOLD)
    sched.follow(5 * S, None, D, 0)
    sched.follow(None, None, D, 1 * S)
    assert run(sched, 10 * S) == [] and sched.next_due(0) is None
    # Stopped while on the air, its end never announced (the stop lost on the way): off a hold after the site
    # moved off it, not left on.
    sched = AmpScheduler(LEAD, HOLD)
    sched.follow(1 * S, None, D, 0)
    switches = run(sched, 3 * S)
    sched.follow(None, None, D, 3 * S)
    switches += run(sched, 10 * S, start=3 * S)
    assert switches == [(True, 1 * S + D - LEAD), (False, 3 * S + HOLD)]
    # Pre-empted by another address that starts at once: on throughout, off a hold after the second.
    sched = AmpScheduler(LEAD, HOLD)
    sched.follow(1 * S, None, D, 0)
    switches = run(sched, 3 * S)
    sched.follow(3 * S + 100 * MS, 4 * S, D, 3 * S)
    switches += run(sched, 10 * S, start=3 * S)
    assert switches == [(True, 1 * S + D - LEAD), (False, 4 * S + D + HOLD)]


def test_announced_late_it_switches_at_once_and_says_when_it_was_due() -> None:
    sched = AmpScheduler(LEAD, HOLD)
    sched.follow(1 * S, None, D, 1 * S)  # told only when the first sample was already stamped
    assert sched.poll(1 * S) == AmpAction(True, 1 * S + D - LEAD)


def _desired(start: int | None, end: int | None = None) -> DesiredState:
    return DesiredState(channel=1000 if start is not None else 1, start_ns=start, end_ns=end)


def test_a_failing_or_hanging_command_is_counted_and_the_runner_goes_on() -> None:
    cfg = AmpConfig(
        on=[sys.executable, "-c", "import time; time.sleep(30)"],  # hangs: killed at the timeout
        off=["/nonexistent/amp-off"],  # cannot start
        lead_ns=0,
        hold_ns=0,
        timeout_s=0.3,
    )
    now = [0]

    async def scenario() -> AmpRunner:
        runner = AmpRunner(cfg, lambda: now[0], lambda: 0)
        task = asyncio.create_task(runner.run())
        runner.follow(_desired(1 * S, 2 * S))
        now[0] = 3 * S // 2  # inside the address: on (hangs), then past its end: off (fails)
        await asyncio.sleep(0.6)
        now[0] = 3 * S
        for _ in range(100):
            if runner.switched == 2:
                break
            await asyncio.sleep(0.05)
        assert not task.done()  # failures never end the runner
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return runner

    runner = asyncio.run(scenario())
    assert runner.switched == 2 and runner.failures == 2


@pytest.mark.parametrize(
    ("on", "off", "lead", "hold", "reason"),
    [
        ("", "x", 1.0, 1.0, "together"),
        ("x 'unclosed", "y", 1.0, 1.0, "--amp-on"),
        ("x", "y", -1.0, 1.0, "--amp-lead"),
        ("x", "y", 1.0, 1e6, "--amp-hold"),
    ],
)
def test_bad_amplifier_options_are_refused_with_a_reason(
    on: str, off: str, lead: float, hold: float, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        AmpConfig.from_options(on, off, lead, hold)
