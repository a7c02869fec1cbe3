"""Amplifier power: on a lead time before an address's first sample plays, off a hold time after its last.

The hub tells each site, in its desired state, the broadcast-clock instant of the first sample of the address
the site is to play (`start_ns`, told at least the zone's lead ahead) and, once known, where its last sample ends
(`end_ns`); both are frame timestamps, played D later. `AmpScheduler` turns those changes into on/off instants:
sans-IO, time passed in, so its rules are checked in simulated time. `AmpRunner` runs the operator's commands at
those instants, in order, off the audio path: a command that fails or hangs is logged and counted, and the site
plays on regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from citycast.protocol.desired import DesiredState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmpConfig:
    on: list[str]  # argv of the command that powers the amplifier (run without a shell)
    off: list[str]
    lead_ns: int = 1_000_000_000  # on this long before the first sample plays (an amplifier's warm-up, a relay)
    hold_ns: int = 2_000_000_000  # off this long after the last sample played
    timeout_s: float = 5.0

    @classmethod
    def from_options(cls, on: str, off: str, lead_s: float, hold_s: float) -> AmpConfig:
        """From `citycast site --amp-on CMD --amp-off CMD --amp-lead S --amp-hold S`; ValueError when bad."""
        try:
            on_argv, off_argv = shlex.split(on), shlex.split(off)
        except ValueError as e:
            raise ValueError(f"--amp-on/--amp-off: {e}") from None
        if not on_argv or not off_argv:
            raise ValueError("--amp-on and --amp-off go together, each a command")
        if not 0 <= lead_s <= 60 or not 0 <= hold_s <= 3600:
            raise ValueError("--amp-lead must be 0..60 s and --amp-hold 0..3600 s")
        return cls(on_argv, off_argv, round(lead_s * 1e9), round(hold_s * 1e9))


@dataclass(frozen=True)
class AmpAction:
    on: bool
    due_ns: int  # the broadcast-clock instant it was due at


@dataclass
class _Window:
    start_ns: int  # the address's first-sample timestamp: which address this window is for
    on_ns: int
    off_ns: int | None  # None: the address's end is not known yet


class AmpScheduler:
    """Whether the amplifier should be on: inside the union of one window per address, [first sample plays − lead,
    last sample ends playing + hold). Windows that touch merge, so back-to-back addresses keep it on."""

    def __init__(self, lead_ns: int, hold_ns: int) -> None:
        self.lead_ns = lead_ns
        self.hold_ns = hold_ns
        self.is_on = False
        self._windows: list[_Window] = []
        self._current: _Window | None = None

    def follow(self, start_ns: int | None, end_ns: int | None, delay_ns: int, now_ns: int) -> None:
        """The hub's latest wish: the address to play (frame timestamps, played `delay_ns` later) or none."""
        cur = self._current
        if cur is not None and start_ns == cur.start_ns:
            if end_ns is not None:
                cur.off_ns = end_ns + delay_ns + self.hold_ns
            return
        if cur is not None:
            # Moved off it (ended, stopped, pre-empted, cancelled before it began): the site stops playing it now.
            closing = now_ns + self.hold_ns
            cur.off_ns = closing if cur.off_ns is None else min(cur.off_ns, closing)
            if cur.off_ns <= cur.on_ns:
                self._windows.remove(cur)
        self._current = None
        if start_ns is not None:
            off = end_ns + delay_ns + self.hold_ns if end_ns is not None else None
            self._current = _Window(start_ns, start_ns + delay_ns - self.lead_ns, off)
            self._windows.append(self._current)

    def wanted(self, now_ns: int) -> bool:
        return any(w.on_ns <= now_ns and (w.off_ns is None or now_ns < w.off_ns) for w in self._windows)

    def poll(self, now_ns: int) -> AmpAction | None:
        """The switch to make now, if any; windows wholly past are forgotten."""
        self._windows = [w for w in self._windows if w.off_ns is None or w.off_ns > now_ns or w is self._current]
        want = self.wanted(now_ns)
        if want == self.is_on:
            return None
        self.is_on = want
        return AmpAction(want, self._due(want, now_ns))

    def next_due(self, now_ns: int) -> int | None:
        """The next instant the wanted state may change (a window's edge after now), or None."""
        edges = [t for w in self._windows for t in (w.on_ns, w.off_ns) if t is not None and t > now_ns]
        return min(edges) if edges else None

    def _due(self, on: bool, now_ns: int) -> int:
        if on:
            return max((w.on_ns for w in self._windows if w.on_ns <= now_ns), default=now_ns)
        past = [w.off_ns for w in self._windows if w.off_ns is not None and w.off_ns <= now_ns]
        return max(past, default=now_ns)


class AmpRunner:
    """Runs the amplifier commands of `config` when `AmpScheduler` says, on the broadcast clock `now` (None while
    the site is not synced: nothing plays then, nothing is switched)."""

    POLL_S = 0.05  # the longest sleep: a new desired state or a clock correction is noticed this soon

    def __init__(
        self, config: AmpConfig, now: Callable[[], int | None], delay_ns: Callable[[], int], name: str = "site"
    ) -> None:
        self.config = config
        self.now = now
        self.delay_ns = delay_ns
        self.name = name
        self.scheduler = AmpScheduler(config.lead_ns, config.hold_ns)
        self.failures = 0  # commands that failed, timed out or could not start (telemetry `amp_failures`)
        self.switched = 0
        self._wake = asyncio.Event()
        self._pending: DesiredState | None = None

    def follow(self, state: DesiredState) -> None:
        """A new desired state (from the agent's `apply_desired`): taken in on the runner's next turn."""
        self._pending = state
        self._wake.set()

    async def run(self) -> None:
        while True:
            now = self.now()
            if now is not None:
                if self._pending is not None:
                    state, self._pending = self._pending, None
                    self.scheduler.follow(state.start_ns, state.end_ns, self.delay_ns(), now)
                action = self.scheduler.poll(now)
                if action is not None:
                    await self._switch(action, now)
                    continue
                due = self.scheduler.next_due(now)
                wait = self.POLL_S if due is None else min(self.POLL_S, max(0.0, (due - now) / 1e9))
            else:
                wait = self.POLL_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def close(self) -> None:
        """The site stops: an amplifier it switched on is not left on."""
        if self.scheduler.is_on:
            self.scheduler.is_on = False
            await self._run(self.config.off, "off")

    async def _switch(self, action: AmpAction, now: int) -> None:
        late_ms = (now - action.due_ns) / 1e6
        log.info("%s: amplifier %s (%.1f ms after due)", self.name, "on" if action.on else "off", late_ms)
        await self._run(self.config.on if action.on else self.config.off, "on" if action.on else "off")
        self.switched += 1

    async def _run(self, argv: list[str], what: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
            )
        except OSError as e:
            self.failures += 1
            log.error("%s: amplifier %s command %r could not start: %s", self.name, what, argv[0], e)
            return
        try:
            async with asyncio.timeout(self.config.timeout_s):
                code = await proc.wait()
        except TimeoutError:
            self.failures += 1
            log.error("%s: amplifier %s command timed out after %.0f s: killed", self.name, what, self.config.timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return
        if code != 0:
            self.failures += 1
            log.error("%s: amplifier %s command exited with %d", self.name, what, code)
