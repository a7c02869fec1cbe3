"""The self-tuning playout delay: the fleet's margins in, a channel's signed delay schedule out (sans-IO).

Every site reports each second how early its frames came before their play time (telemetry `margin_ms`, with the
D it plays with, `delay_ms`). D − margin is how late after its stamp a frame reached the site (its *lateness*):
the path's own delay and jitter, whatever D is. The tuner keeps, per channel and per second, the worst lateness
of any site, and:

- **recommends** D = the worst lateness of the last `long_window` + `target_margin`, rounded up to `step`,
  within [`min_delay`, `max_delay`] (shown on the console whether "auto" is on or not);
- with **auto** on, **raises** D to the recommendation as soon as the fleet's margin over the last
  `short_window` falls below `raise_below` (before a frame comes too late, which is what makes a site conceal),
  stretching the stream by `raise_stretch` (1 %) until the new D is reached;
- **lowers** D when the margin has stayed above `lower_above` for all of `long_window` and no raise happened in
  `hold_after_raise`, by at most `max_lower_step` at a time, squeezing by `lower_stretch` (0.5 %).

Raising leaves `target_margin` (> `raise_below`) and lowering needs `lower_above` (> `target_margin`): a path
that wobbles between two states does not make D flap. A change never starts while the last one still ramps.
The output is a `DelaySchedule` starting `lead` after now: the hub signs it into every frame of the channel
(`FrameSigner.delays`), and every site switches at the same sample (docs/protocol.md "Delay schedule").

Time is broadcast-clock ns, passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from citycast.protocol.delay import MAX_DELAY_NS, DelaySchedule
from citycast.protocol.telemetry import Telemetry

SECOND_NS = 1_000_000_000


@dataclass(frozen=True)
class TunerSettings:
    min_delay_ns: int = 80_000_000
    max_delay_ns: int = 2_000_000_000
    step_ns: int = 10_000_000
    raise_below_ns: int = 40_000_000
    target_margin_ns: int = 80_000_000
    lower_above_ns: int = 150_000_000
    short_window_ns: int = 5 * SECOND_NS
    long_window_ns: int = 60 * SECOND_NS
    hold_after_raise_ns: int = 60 * SECOND_NS
    max_lower_step_ns: int = 100_000_000
    raise_stretch: float = 0.01
    lower_stretch: float = 0.005
    lead_ns: int = SECOND_NS

    def problem(self) -> str | None:
        if not 0 < self.min_delay_ns <= self.max_delay_ns <= MAX_DELAY_NS:
            return f"need 0 < min_delay ({self.min_delay_ns}) <= max_delay ({self.max_delay_ns}) <= {MAX_DELAY_NS}"
        if not 0 <= self.raise_below_ns < self.target_margin_ns < self.lower_above_ns:
            return "need raise_below < target_margin < lower_above (the hysteresis)"
        if not 0 < self.raise_stretch <= 0.05 or not 0 < self.lower_stretch <= 0.05:
            return "stretch must be in (0, 0.05]"
        if self.step_ns <= 0 or self.short_window_ns <= 0 or self.long_window_ns < self.short_window_ns:
            return "step and windows must be positive, the long window at least the short one"
        return None


@dataclass
class _Second:
    at: int  # whole seconds of broadcast time
    lateness_ns: int  # the worst of any site that second


@dataclass
class ChannelTuner:
    """One channel's delay: the margins of its sites, its current schedule, and the decisions."""

    settings: TunerSettings
    schedule: DelaySchedule
    auto: bool = False
    last_raise_ns: int | None = None
    changes: int = 0
    _seconds: deque[_Second] = field(default_factory=deque)
    _since_ns: int | None = None  # first observation: no lowering before a whole long window was seen

    @property
    def delay_ns(self) -> int:
        """The D the channel ends up at once the current schedule has run."""
        return self.schedule.new_delay_ns

    def observe(self, now_ns: int, margin_min_ms: float, delay_ms: float) -> None:
        """One site's report: the smallest margin of its frames over its last second, and the D it played."""
        if not (math.isfinite(margin_min_ms) and math.isfinite(delay_ms)):
            return
        lateness = round((delay_ms - margin_min_ms) * 1e6)
        sec = now_ns // SECOND_NS
        if self._since_ns is None:
            self._since_ns = now_ns
        if self._seconds and self._seconds[-1].at == sec:
            self._seconds[-1].lateness_ns = max(self._seconds[-1].lateness_ns, lateness)
        elif not self._seconds or self._seconds[-1].at < sec:
            self._seconds.append(_Second(sec, lateness))
        self._forget(now_ns)

    def _forget(self, now_ns: int) -> None:
        oldest = (now_ns - self.settings.long_window_ns) // SECOND_NS
        while self._seconds and self._seconds[0].at < oldest:
            self._seconds.popleft()

    def worst_lateness_ns(self, now_ns: int, window_ns: int) -> int | None:
        since = (now_ns - window_ns) // SECOND_NS
        values = [s.lateness_ns for s in self._seconds if s.at >= since]
        return max(values) if values else None

    def margin_ns(self, now_ns: int) -> int | None:
        """The fleet's worst margin over the short window, at the D the channel is going to."""
        worst = self.worst_lateness_ns(now_ns, self.settings.short_window_ns)
        return None if worst is None else self.delay_ns - worst

    def recommend_ns(self, now_ns: int) -> int | None:
        worst = self.worst_lateness_ns(now_ns, self.settings.long_window_ns)
        if worst is None:
            return None
        return self._fit(worst + self.settings.target_margin_ns)

    def _fit(self, delay_ns: int) -> int:
        s = self.settings
        stepped = -(-delay_ns // s.step_ns) * s.step_ns
        return min(s.max_delay_ns, max(s.min_delay_ns, stepped))

    def decide(self, now_ns: int) -> DelaySchedule | None:
        """A new schedule to sign into the channel's frames, or None. Only with `auto` on."""
        self._forget(now_ns)
        if not self.auto or now_ns < self.schedule.end_ts_ns:
            return None  # off, or the last change still ramps
        s = self.settings
        margin = self.margin_ns(now_ns)
        recommended = self.recommend_ns(now_ns)
        if margin is None or recommended is None:
            return None
        current = self.delay_ns
        if margin < s.raise_below_ns and recommended > current:
            # Cover at least this second's worst with the target margin, even if the long window said less.
            return self._change(now_ns, max(recommended, self._fit(current - margin + s.target_margin_ns)), True)
        if (
            margin > s.lower_above_ns
            and recommended < current
            and self._since_ns is not None
            and now_ns - self._since_ns >= s.long_window_ns
            and (self.last_raise_ns is None or now_ns - self.last_raise_ns >= s.hold_after_raise_ns)
        ):
            worst = self.worst_lateness_ns(now_ns, s.long_window_ns)
            assert worst is not None
            if current - worst > s.lower_above_ns:
                return self._change(now_ns, max(recommended, current - s.max_lower_step_ns), False)
        return None

    def _change(self, now_ns: int, new_ns: int, rising: bool) -> DelaySchedule | None:
        old = self.delay_ns
        if new_ns == old:
            return None
        stretch = self.settings.raise_stretch if rising else self.settings.lower_stretch
        schedule = DelaySchedule(
            from_ts_ns=now_ns + self.settings.lead_ns,
            old_delay_ns=old,
            new_delay_ns=new_ns,
            ramp_ns=math.ceil(abs(new_ns - old) / stretch),
        )
        self.schedule = schedule
        self.changes += 1
        if rising:
            self.last_raise_ns = now_ns
        return schedule


class DelayTuner:
    """Every channel's `ChannelTuner`, fed from the fleet's telemetry."""

    def __init__(self, settings: TunerSettings, default_delay_ns: int) -> None:
        problem = settings.problem()
        if problem is not None:
            raise ValueError(f"delay tuner settings: {problem}")
        self.settings = settings
        self.default_delay_ns = default_delay_ns
        self.channels: dict[int, ChannelTuner] = {}
        self.auto_all = False  # the global switch; a channel's own setting wins (`set_auto`)
        self._auto: dict[int, bool] = {}
        self._seen: dict[str, int] = {}  # each site's last report taken (its ts_ns), so a report counts once

    def channel(self, channel: int) -> ChannelTuner:
        tuner = self.channels.get(channel)
        if tuner is None:
            tuner = ChannelTuner(self.settings, DelaySchedule.steady(self.default_delay_ns))
            tuner.auto = self._auto.get(channel, self.auto_all)
            self.channels[channel] = tuner
        return tuner

    def set_auto(self, on: bool, channel: int | None = None) -> None:
        """`channel` None: the global switch (every channel without its own setting)."""
        if channel is None:
            self.auto_all = on
            for ch, tuner in self.channels.items():
                tuner.auto = self._auto.get(ch, on)
        else:
            self._auto[channel] = on
            self.channel(channel).auto = on

    def auto_of(self, channel: int) -> bool:
        return self._auto.get(channel, self.auto_all)

    def auto_settings(self) -> dict[str, object]:
        """The switches as stored and shown: `auto` (global) and `channels` (channel -> its own setting)."""
        return {"auto": self.auto_all, "channels": {str(ch): on for ch, on in sorted(self._auto.items())}}

    def forget_site(self, site: str) -> None:
        self._seen.pop(site, None)

    def on_telemetry(self, t: Telemetry, now_ns: int) -> None:
        """A site's report. Channel 0 carries nothing; a site without margins (no frames) tells nothing."""
        if t.channel <= 0 or t.margin_ms is None or t.delay_ms is None or self._seen.get(t.site) == t.ts_ns:
            return
        self._seen[t.site] = t.ts_ns
        low = t.margin_ms.get("min")
        if not isinstance(low, int | float):
            return
        tuner = self.channel(t.channel)
        if tuner.changes == 0 and tuner.schedule.new_delay_ns != round(t.delay_ms * 1e6):
            # The hub restarted (or the sites were set up with another D): start from what the sites really play,
            # or the first schedule would make them jump.
            tuner.schedule = DelaySchedule.steady(min(MAX_DELAY_NS, max(0, round(t.delay_ms * 1e6))))
        tuner.observe(now_ns, float(low), float(t.delay_ms))

    def decide(self, now_ns: int) -> dict[int, DelaySchedule]:
        """The channels whose D changes now, with their new schedule."""
        out: dict[int, DelaySchedule] = {}
        for channel, tuner in self.channels.items():
            schedule = tuner.decide(now_ns)
            if schedule is not None:
                out[channel] = schedule
        return out

    def view(self, now_ns: int) -> list[dict[str, object]]:
        """Per channel, for the console and the API: D now, the recommendation, the fleet's margin."""
        rows: list[dict[str, object]] = []
        for channel, tuner in sorted(self.channels.items()):
            margin = tuner.margin_ns(now_ns)
            rec = tuner.recommend_ns(now_ns)
            rows.append(
                {
                    "channel": channel,
                    "auto": tuner.auto,
                    "delay_ms": tuner.schedule.delay_at(now_ns - tuner.schedule.new_delay_ns) / 1e6,
                    "target_delay_ms": tuner.delay_ns / 1e6,
                    "recommended_ms": None if rec is None else rec / 1e6,
                    "margin_min_ms": None if margin is None else margin / 1e6,
                    "changes": tuner.changes,
                    # the fleet's worst margin, second by second over the long window (the console's sparkline)
                    "margin_history_ms": [round((tuner.delay_ns - s.lateness_ns) / 1e6, 1) for s in tuner._seconds],
                }
            )
        return rows
