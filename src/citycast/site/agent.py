"""The site agent: on the loudspeaker box, for months. Bus in, verified frames, clock sync, playout, telemetry.

The same class runs once per box in production and hundreds of times per process in simulations and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from citycast.bus.connection import connect, retire, settle
from citycast.clock.estimator import ClockEstimator, StepGuard
from citycast.clock.local import Clock, SystemClock
from citycast.clock.memory import MemoryKeeper, keep_memory, seed_from
from citycast.clock.service import ClockSync
from citycast.media import fallback_file
from citycast.media.audio import FRAME_SAMPLES, NS_PER_SAMPLE
from citycast.media.codec import OpusDecoder
from citycast.media.keys import PrivateKey, PublicKey
from citycast.media.playout import ClockMap, PlayoutEngine, PlayoutState
from citycast.media.render import Samples
from citycast.media.sinks import Sink
from citycast.protocol.commands import CommandError, TalkbackCommand, decode_command
from citycast.protocol.desired import DesiredState
from citycast.protocol.frame import MAX_FRAME_SIZE, FrameError, FrameVerifier, ReplayWindow, is_fresh
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Rejection, Telemetry, frame_rejection, margin_summary
from citycast.site.amp import AmpConfig, AmpRunner
from citycast.site.credentials import CredentialsRenewer
from citycast.site.desired import DesiredWatcher
from citycast.site.receipts import PlayLog, ReceiptSender
from citycast.site.talkback import TalkbackSender
from citycast.site.uplinks import ClockFailover, Copy, FrameMerge, Uplink, UplinkSet, parse_uplinks
from citycast.tasks import cancel_and_wait
from citycast.ticks import GRID_S, sleep_to_grid

log = logging.getLogger(__name__)

# How old a frame may be against the site's own idea of now beyond its playout delay (the freshness bound
# `is_fresh` also applies): 1 s, as the freshness check allows.
REPLAY_HORIZON_NS = 1_000_000_000
SINK_HEALTHY_AFTER_S = 2.0  # a sink that runs this long is working again
SINK_RETRY_FIRST_S = 1.0
SINK_RETRY_MAX_S = 30.0
RENDER_GAP_NS = 10_000_000  # a DAC instant this far from where the last block ended: the sink restarted
# A change of playing state (fallback → playing after a cut, playing → idle) is reported within this, not at the
# next period: the console, the hub's desired-state check and a drill's resync time see it one round trip later.
STATE_POLL_S = 0.1  # not on citycast.ticks' grid: at 250 ms there, a path's return reached the console ~1 s late
STATE_GAP_S = 0.25  # a state that flaps is reported at most this often
PLAYED_BYTES_KEPT = 128  # frames (2.6 s at one packet a message): more than two paths ever differ by


def raw_monotonic_ns() -> int:
    """The oscillator itself: unlike CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW is not slewed by NTP, so whoever can
    lie to the site's time daemon cannot bend it either."""
    try:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic_ns()


@dataclass
class SiteConfig:
    name: str
    nats_url: str
    trusted_keys: Sequence[PublicKey]
    channel: int = 1
    delay_ns: int = 80_000_000
    clock_mode: str = "sync"  # "sync": estimate the broadcast clock over the bus; "system": trust chrony/PTP
    time_subject: str | None = None  # a city responder near the site; default: the hub's
    subjects: Subjects = field(default_factory=Subjects)
    fallback: Samples | None = None
    fallback_after_ns: int = 2_000_000_000
    telemetry_interval_s: float = 1.0
    max_future_ns: int = 5_000_000_000
    creds: Path | None = None  # this site's NATS credentials (from enrolment); None: anonymous (private bus)
    inbox_prefix: str | None = None  # the reply-subject prefix the site's NATS user may subscribe to
    watch_desired: bool = True  # follow the hub's desired state (channel, volume, mute, fallback) in NATS KV
    talkback_key: PrivateKey | None = None  # the site's own key (from its NATS seed): enables talkback
    talkback_source: str = "line-in"  # the microphone: "line-in[:DEVICE]" or a file (tests)
    # The site's own key (from its NATS seed): sign proof-of-play receipts for the hub (citycast.site.receipts).
    receipt_key: PrivateKey | None = None
    renew_creds: bool = True  # ask the hub for fresh credentials before `creds` expire (citycast.hub.credentials)
    # Every city server of the zone, one connection each (citycast.site.uplinks): frames come once per path and the
    # first copy plays. Empty: one connection to `nats_url`.
    uplinks: list[Uplink] = field(default_factory=list)
    # Where the clock's measured drift is kept across restarts (citycast.clock.memory); None: nowhere.
    clock_memory: Path | None = None
    # Amplifier power switched around each address (citycast.site.amp); None: the amplifier is left alone.
    amp: AmpConfig | None = None

    def __post_init__(self) -> None:
        # A comma list in `nats_url` (`citycast simulate --nats A,B`, the benchmark's two paths) is one uplink each.
        if not self.uplinks and "," in self.nats_url:
            self.uplinks = parse_uplinks([self.nats_url])
            self.nats_url = self.uplinks[0].url


class StageTimer:
    """Seconds spent per stage, to tell where a site's cost goes.

    Wall time (perf_counter), not thread CPU time: the thread CPU clock is a system call here and cost more than
    some of the stages it timed. On a loaded box a stage's wall time includes being preempted.
    """

    def __init__(self) -> None:
        self.ns: Counter[str] = Counter()

    @staticmethod
    def now() -> int:
        return time.perf_counter_ns()

    def add(self, stage: str, t0: int) -> None:
        self.ns[stage] += time.perf_counter_ns() - t0

    def seconds(self) -> dict[str, float]:
        return {k: v / 1e9 for k, v in self.ns.items()}


class TimedRenderer:
    """Wraps the engine so the render stage (decode + resample) is timed like the others, and applies the
    operator's volume. Muting scales to zero rather than stopping playout, so unmuting is instant and in sync.

    It renders at least a frame (20 ms, one Opus packet) per call to the engine: a sink that asks for 10 ms blocks
    gets the second half of the frame from the first call, at half the engine's per-call cost (clock map, control
    loop, resampler set-up, which cost as much as the samples themselves at 10 ms). The sink's DAC plays its blocks
    back to back, so the rest of a frame is due exactly where the last block ended; only a jump of the DAC instant
    beyond the engine's resync threshold (a sink that restarted) drops it, and the engine then places playout anew.
    The DAC instants of the blocks served from the rest are not read; the control loop sees one per frame."""

    def __init__(
        self,
        engine: PlayoutEngine,
        timer: StageTimer,
        *,
        min_samples: int = FRAME_SAMPLES,
        now_ns: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.timer = timer
        self._now_ns = now_ns  # the clock the sink dates its DAC instants on
        self.lead_ns: int | None = None  # how far ahead of play the sink asked for audio, at most, since last taken
        self.gain = 1.0
        self.min_samples = min_samples
        self._rest: Samples = np.zeros(0, np.float32)
        self._rest_dac_ns = 0.0  # local-clock DAC instant of the rest's first sample
        # Sees what the engine renders, after volume (proof of play: citycast.site.receipts), in the render thread.
        self.on_block: Callable[[Samples], None] | None = None

    def take_lead_ns(self) -> int | None:
        lead, self.lead_ns = self.lead_ns, None
        return lead

    def render(self, n: int, dac_local_ns: int) -> Samples:
        t0 = self.timer.now()
        if self._now_ns is not None:
            # A frame must arrive this long before its play time, or it is late for the block that holds it.
            lead = dac_local_ns - self._now_ns()
            if self.lead_ns is None or lead > self.lead_ns:
                self.lead_ns = lead
        have = len(self._rest)
        if have and abs(dac_local_ns - self._rest_dac_ns) > RENDER_GAP_NS:
            self._rest, have = self._rest[:0], 0  # the DAC did not continue where it was: the rest is not due
        if n <= have:
            out, self._rest = self._rest[:n], self._rest[n:]
        else:
            need = n - have
            fresh = self.engine.render(max(need, self.min_samples), dac_local_ns + round(have * NS_PER_SAMPLE))
            if self.on_block is not None:
                self.on_block(fresh if self.gain == 1.0 else (fresh * self.gain).astype(np.float32, copy=False))
            out = np.concatenate((self._rest, fresh[:need])) if have else fresh[:need]
            self._rest = fresh[need:]
        self._rest_dac_ns = dac_local_ns + n * NS_PER_SAMPLE
        if self.gain != 1.0:
            out = (out * self.gain).astype(np.float32, copy=False)
        self.timer.add("render", t0)
        return out


class SiteAgent:
    def __init__(self, config: SiteConfig, sink: Sink, clock: Clock | None = None) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock or SystemClock()
        self.verifier = FrameVerifier(config.trusted_keys)
        self.replay = ReplayWindow()
        self.engine = PlayoutEngine(
            delay_ns=config.delay_ns,
            decoder_factory=OpusDecoder,
            fallback=config.fallback,
            fallback_after_ns=config.fallback_after_ns,
        )
        self.estimator = ClockEstimator()
        # The site's own monotonic idea of broadcast time: a synced site refuses an estimate that jumps (a
        # hostile responder's step), and frames older than this idea by more than the replay horizon never play.
        self.guard = StepGuard()
        self.monotonic = raw_monotonic_ns
        self.timer = StageTimer()
        self.rejected: Counter[Rejection] = Counter()
        self.frames = 0
        self._margins_ms: list[float] = []  # how early each frame came before its play time, since the last report
        self._losses_logged = (0, 0, 0)  # underruns, concealed, late at the last report (see _log_losses)
        self.bad_commands = 0  # messages on the command subject that are no command (see citycast.protocol.commands)
        self.nc: Client | None = None
        self.clock_sync: ClockSync | ClockFailover | None = None
        self.merge = FrameMerge()  # first copy of a frame plays, whichever uplink brought it
        self.duplicates = 0  # second copies from another uplink: expected with two paths, never an alert
        # The bytes of the frames lately played, with their (stream, seq): the other uplink's copy of one is the
        # same bytes, so it is known genuine without a second signature check (half the verifying on two paths).
        self._played_bytes: dict[bytes, tuple[int, int]] = {}
        self.uplinks: UplinkSet | None = None
        self._command_sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.sink_task: asyncio.Task[None] | None = None
        self.sink_error: str | None = None
        self.sink_failures = 0
        self.renderer = TimedRenderer(self.engine, self.timer, now_ns=self.clock.now_ns)
        self.desired: DesiredState | None = None
        self.desired_watcher: DesiredWatcher | None = None
        self._audio_sub: Subscription | None = None
        # Channel changes resubscribe in the background, one at a time; finished ones leave the set, so an agent
        # that runs for months does not keep a task per change it ever made.
        self._audio_lock = asyncio.Lock()
        self._resubscribing: set[asyncio.Task[None]] = set()
        self._own_fallback = config.fallback
        self.talkback: TalkbackSender | None = None
        self.renewer: CredentialsRenewer | None = None
        self.swaps = 0  # connections replaced after a credentials renewal
        self.swap_duplicates = 0  # frames that came on both connections while they overlapped (played once)
        self._overlap = False
        self._watch_task: asyncio.Task[None] | None = None
        self.clock_memory: MemoryKeeper | None = None
        self.play_log = PlayLog(config.name)  # what played, for proof-of-play receipts
        self.receipts: ReceiptSender | None = None
        if config.receipt_key is not None:
            self.renderer.on_block = self._played
        self.amp = (
            AmpRunner(config.amp, self.broadcast_now, self.engine.current_delay_ns, config.name) if config.amp else None
        )

    # -- clock ---------------------------------------------------------------------------------------------
    def _estimate(self, local_ns: int) -> int | None:
        if self.config.clock_mode == "system":
            return local_ns
        if not self.estimator.synced:
            return None
        return self.estimator.to_broadcast(local_ns)

    def broadcast_now(self) -> int | None:
        """The broadcast time now: the estimate, unless the step guard refuses it (then its own idea)."""
        est = self._estimate(self.clock.now_ns())
        if est is None:
            return None
        mono = self.monotonic()
        return est if self.guard.check(mono, est) else self.guard.now(mono)

    def _clock_map(self) -> ClockMap | None:
        ref = self.clock.now_ns()
        mono = self.monotonic()
        bt = self._estimate(ref)
        if bt is None:
            return None
        if not self.guard.check(mono, bt):
            # fly on the monotonic clock: the local clock's rate against it is 1 to within the oscillator's
            # tolerance, which the resampler follows
            own = self.guard.now(mono)
            return ClockMap(ref, own, 1.0) if own is not None else None
        if self.config.clock_mode == "system":
            return ClockMap(0, 0, 1.0)
        bt_later = self.estimator.to_broadcast(ref + 1_000_000_000)
        return ClockMap(ref, bt, (bt_later - bt) / 1e9)

    def _longest_delay_ns(self) -> int:
        """The longest D a frame may be waiting for: the site's own, or its channel's signed delay schedule's."""
        return max(self.config.delay_ns, self.engine.delay_schedule.max_delay_ns)

    def horizon_floor(self) -> int | None:
        """Frames ending before this broadcast time are too old by the site's monotonic clock, whatever the
        estimate: the guard's own idea of now, less the replay horizon and everything the guard allows for."""
        own = self.guard.now(mono := self.monotonic())
        if own is None:
            return None
        return own - self._longest_delay_ns() - REPLAY_HORIZON_NS - self.guard.tolerance(mono)

    async def _follow_clock(self) -> None:
        # The estimator moves once per exchange; the engine slews to each new line, so polling is enough. Until
        # the first map, poll often: a site that has just started is silent until then.
        while True:
            clock_map = self._clock_map()
            self.engine.set_clock(clock_map)
            await (sleep_to_grid(GRID_S) if clock_map is not None else asyncio.sleep(0.02))

    async def _keep_clock_memory(self, path: Path) -> None:
        keeper = self.clock_memory = MemoryKeeper()
        await keep_memory(path, keeper, lambda: self.estimator, self.broadcast_now, self.monotonic)

    # -- frames --------------------------------------------------------------------------------------------
    async def _on_audio(self, msg: Msg) -> None:
        self.on_frame_bytes(msg.data)

    def on_frame_bytes(self, data: bytes, uplink: int = 0) -> None:
        """Verify and queue one message from the bus (from connection `uplink`). Never raises: bad input is
        counted, not played."""
        t0 = self.timer.now()
        try:
            if len(data) > MAX_FRAME_SIZE:  # dropped before any parsing
                self.rejected[Rejection.OVERSIZED] += 1
                return
            known = self._played_bytes.get(data)
            offered = self.merge.offer(known[0], known[1], uplink) if known is not None else None
            if offered is Copy.DUPLICATE:
                self.duplicates += 1
                return  # anything else (this uplink sent it before: a replay) takes the full path below
            try:
                frame = self.verifier.verify(data)
            except FrameError as e:
                self.rejected[frame_rejection(e)] += 1
                return
            if frame.channel != self.config.channel:
                self.rejected[Rejection.WRONG_CHANNEL] += 1
                return
            now = self.broadcast_now()
            if now is None:
                self.rejected[Rejection.UNSYNCED] += 1
                return
            copy = offered if offered is not None else self.merge.offer(frame.stream, frame.seq, uplink)
            if copy is Copy.DUPLICATE:
                self.duplicates += 1
                return
            if copy is Copy.REPLAY:
                if self._overlap:  # the same frame from a connection and its renewed successor
                    self.swap_duplicates += 1
                else:
                    self.rejected[Rejection.REPLAYED] += 1
                return
            if not is_fresh(
                frame,
                now,
                max_age_ns=self._longest_delay_ns() + REPLAY_HORIZON_NS,
                max_future_ns=self.config.max_future_ns,
            ):
                self.rejected[Rejection.STALE] += 1
                return
            floor = self.horizon_floor()
            if floor is not None and frame.end_ns <= floor:
                self.rejected[Rejection.STALE] += 1
                return
            if not self.replay.check_and_mark(frame.stream, frame.seq):
                if self._overlap:  # the same frame from the old and the new connection: no attack, no news
                    self.swap_duplicates += 1
                else:
                    self.rejected[Rejection.REPLAYED] += 1
                return
        finally:
            self.timer.add("verify", t0)
        t1 = self.timer.now()
        self.frames += 1
        played = self._played_bytes
        played[data] = (frame.stream, frame.seq)
        if len(played) > PLAYED_BYTES_KEPT:
            del played[next(iter(played))]
        if frame.delay is not None:  # the channel's D, signed with the audio (protocol.delay)
            self.engine.set_delay_schedule(frame.delay)
        if len(self._margins_ms) < 1000:  # 50 a second; bounded if reports stall
            self._margins_ms.append((frame.ts_ns + self.engine.delay_at(frame.ts_ns) - now) / 1e6)
        for i, packet in enumerate(frame.packets):
            self.engine.push(frame.stream, frame.packet_seq(i), frame.packet_ts(i), frame.packet_ns, packet)
        self.timer.add("queue", t1)

    def _played(self, out: Samples) -> None:
        engine = self.engine
        self.play_log.on_block(
            self.config.channel,
            engine.playing(),
            out,
            fallback=engine.state is PlayoutState.FALLBACK,
            concealed=engine.stats.concealed,
        )

    # -- desired state -------------------------------------------------------------------------------------
    def apply_desired(self, state: DesiredState) -> None:
        """Take the hub's wish for this site. Volume and mute act on the next block; a new channel is
        subscribed at once (the old stream is dropped, so the site goes idle rather than "lost")."""
        self.desired = state
        if self.amp is not None:
            self.amp.follow(state)
        self.renderer.gain = state.gain
        self.engine.set_fallback(self._own_fallback if state.fallback == "default" else None)
        if state.channel != self.config.channel:
            self.config.channel = state.channel
            self.engine.drop_stream()
            self.engine.reset_delay()  # another channel's delay schedule is not this one's
            if self.nc is not None:
                task = asyncio.create_task(self._subscribe_audio())
                self._resubscribing.add(task)
                task.add_done_callback(self._resubscribing.discard)

    async def _subscribe_audio(self) -> None:
        assert self.nc is not None
        async with self._audio_lock:  # two quick changes must not leave two subscriptions behind
            subject = self.config.subjects.audio(self.config.channel)
            if self.uplinks is not None:
                await self.uplinks.subscribe(subject)
                return
            if self._audio_sub is not None and self._audio_sub.subject == subject:
                return
            old, self._audio_sub = self._audio_sub, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.unsubscribe()
            self._audio_sub = await self.nc.subscribe(subject, cb=self._on_audio, pending_msgs_limit=4096)
            # Once this returns the server holds the subscription: a frame published from now on comes here (a
            # test that started publishing right after `start()` lost its first frame now and then).
            with contextlib.suppress(Exception):
                await settle(self.nc, 2)

    # -- telemetry -----------------------------------------------------------------------------------------
    def telemetry(self) -> Telemetry:
        st = self.engine.stats
        rms, peak = self.engine.take_levels()
        # What the loudspeaker plays, after the operator's volume and mute.
        gain = self.renderer.gain
        rms, peak = (rms + 20 * math.log10(gain), peak + 20 * math.log10(gain)) if gain > 0 else (-180.0, -180.0)
        est = self.estimator
        synced = self.config.clock_mode == "system" or est.synced
        # The estimate's own error beyond the path's constant asymmetry (which no exchange can see, and which is
        # reported apart): across a 60-80 ms long haul the asymmetry bound is ~60 ms while the estimate holds to
        # tenths of a ms, and only the latter says whether this site plays in step.
        system = self.config.clock_mode == "system"
        clock_err_ms = 0.0 if system else est.precision_ns / 1e6
        tracking_ms = self.engine.tracking_error_ns / 1e6
        now = self.broadcast_now()
        margins, self._margins_ms = self._margins_ms, []
        self.play_log.note_sync_error(clock_err_ms + abs(tracking_ms))
        self._log_losses(margins, self.renderer.take_lead_ns())
        return Telemetry(
            site=self.config.name,
            ts_ns=now or 0,
            state=self.engine.state.value,
            channel=self.config.channel,
            buffer_ms=round(self.engine.buffer_ms(), 2),
            clock_offset_ms=est.offset_ns / 1e6 if synced else 0.0,
            clock_drift_ppm=est.drift_ppm if synced else 0.0,
            clock_error_ms=clock_err_ms,
            sync_error_ms=clock_err_ms + abs(tracking_ms),
            clock_asymmetry_ms=0.0 if system or not synced else est.asymmetry_bound_ns / 1e6,
            tracking_error_ms=tracking_ms,
            resample_ppm=(self.engine.ratio - 1.0) * 1e6,
            underruns=st.underruns,
            concealed=st.concealed,
            late=st.late,
            rejected={str(reason): n for reason, n in self.rejected.items()},
            level_rms_dbfs=round(rms, 1),
            level_peak_dbfs=round(peak, 1),
            link_rtt_ms=(self.clock_sync.last_rtt_ns / 1e6) if self.clock_sync and self.clock_sync.last_rtt_ns else 0.0,
            sink_xruns=self.sink.xruns,
            resyncs=st.resyncs,
            frames=self.frames,
            cpu=self.timer.seconds(),
            volume=self.desired.volume if self.desired else 1.0,
            muted=self.desired.muted if self.desired else False,
            sink_error=self.sink_error,
            clock_step_refused_ms=(step / 1e6) if (step := self.guard.reported_step_ns(self.monotonic())) else None,
            clock_steps_refused=self.guard.refused_steps,
            creds_expire_s=self.renewer.expires_s if self.renewer is not None else None,
            duplicates=self.duplicates,
            paths=self._paths(),
            delay_ms=self.engine.current_delay_ns() / 1e6,
            margin_ms=margin_summary(margins),
            amp_on=self.amp.scheduler.is_on if self.amp is not None else None,
            amp_failures=self.amp.failures if self.amp is not None else 0,
        )

    def _log_losses(self, margins_ms: list[float], lead_ns: int | None) -> None:
        """Say in the log when frames were concealed, with how early the frames that did come were and how far
        ahead the sink asks for audio: the console shows counts, and an operator (or a drill) matching a glitch to
        a cause needs its time and its kind (frames late on every path, lost before they reached the site, or a D
        too short for this sound device's queue: late frames while the least margin is below the sink's lead)."""
        st = self.engine.stats
        seen = (st.underruns, st.concealed, st.late)
        before, self._losses_logged = self._losses_logged, seen
        if seen[1] == before[1]:
            return
        earliest = f"{min(margins_ms):.1f} ms" if margins_ms else "no frame"
        lead = f"{lead_ns / 1e6:.1f} ms" if lead_ns is not None else "unknown"
        log.warning(
            "%s: %d frames concealed (%d underruns, %d late) since the last report; least margin %s, the sink "
            "asks for audio %s ahead of play",
            self.config.name, seen[1] - before[1], seen[0] - before[0], seen[2] - before[2], earliest, lead,
        )  # fmt: skip

    async def _report(self) -> None:
        loop = asyncio.get_running_loop()
        reported, last = (self.engine.state, self._paths()), loop.time()
        while True:
            await asyncio.sleep(STATE_POLL_S)
            # A path going down or up is news for the console too (its spare is gone or back), whichever
            # connection carries control.
            seen, now = (self.engine.state, self._paths()), loop.time()
            periodic = now - last >= self.config.telemetry_interval_s
            if periodic or (seen != reported and now - last >= STATE_GAP_S):
                reported, last = seen, now
                await self._report_once()

    def _paths(self) -> dict[str, bool]:
        return self.uplinks.up() if self.uplinks is not None else {}

    async def _report_once(self) -> None:
        if self.nc is not None and self.nc.is_connected:
            t0 = self.timer.now()
            with contextlib.suppress(Exception):  # a dropped heartbeat is fine; the next one follows
                await self.nc.publish(self.config.subjects.telemetry(self.config.name), self.telemetry().to_json())
            self.timer.add("telemetry", t0)

    async def _run_sink(self) -> None:
        """Play into the sink; when the audio output fails (a sound card unplugged, a dead USB DAC), say so in
        telemetry at once, keep everything else running (clock, bus, buffer), and reopen it with back-off. The
        console shows the site as a fault with the reason instead of losing it as offline, and the site plays
        again by itself once the output is back. A sink that ends (a file of given length) ends the task."""
        delay = SINK_RETRY_FIRST_S
        while True:
            run = asyncio.ensure_future(self.sink.run(self.renderer))
            try:
                done, _ = await asyncio.wait({run}, timeout=SINK_HEALTHY_AFTER_S)
                if not done:  # it has played for a while: whatever failed before is over
                    if self.sink_error is not None:
                        log.warning("%s: audio output works again", self.config.name)
                    self.sink_error, delay = None, SINK_RETRY_FIRST_S
                await run
                return
            except asyncio.CancelledError:
                await cancel_and_wait(run)
                raise
            except Exception as exc:
                self.sink_failures += 1
                self.sink_error = (str(exc) or type(exc).__name__)[:200]
                log.error("%s: audio output failed (%s); retrying in %.0f s", self.config.name, self.sink_error, delay)
                await self._report_once()
                await asyncio.sleep(delay)
                delay = min(delay * 2, SINK_RETRY_MAX_S)

    # -- life cycle ----------------------------------------------------------------------------------------
    async def _connect(self) -> Client:
        cfg = self.config
        auth: dict[str, Any] = {}
        if cfg.creds is not None:
            auth["user_credentials"] = str(cfg.creds)
        if cfg.inbox_prefix:
            auth["inbox_prefix"] = cfg.inbox_prefix
        return await connect(cfg.nats_url, name=f"site:{cfg.name}", **auth)

    async def swap_connections(self) -> None:
        """Move onto connections made with the renewed creds file (the renewer calls this after writing it)."""
        if self.uplinks is not None:
            await self._renew_uplinks()
        else:
            await self._swap_connection()

    async def _swap_connection(self) -> None:
        """Move to a connection made with the renewed creds file, without a gap: the new connection hears the
        channel before the old one stops (the replay window plays each frame once), then takes over commands,
        desired state and reports, and the old one is drained before its JWT expires. The clock's own
        connection re-reads the file when the server drops it at the old JWT's expiry."""
        old = self.nc
        try:
            async with asyncio.timeout(30.0):
                new = await self._connect()
        except TimeoutError:
            log.warning(
                "%s: renewed credentials, but no new connection yet; the next renewal retries", self.config.name
            )
            return
        cfg = self.config
        self._overlap = True
        try:
            async with self._audio_lock:
                try:
                    sub = await new.subscribe(
                        cfg.subjects.audio(cfg.channel), cb=self._on_audio, pending_msgs_limit=4096
                    )
                    await settle(new)  # the server holds the subscription: every frame from now on comes on `new`
                except BaseException:
                    with contextlib.suppress(Exception):
                        await new.close()  # never a second connection left behind
                    raise
                old_sub, self._audio_sub = self._audio_sub, sub
                self.nc = new
            if self.talkback is not None:
                self.talkback.nc = new
                await new.subscribe(cfg.subjects.commands(cfg.name), cb=self._on_command)
            await self._rewatch_desired(new)
            if old is not None:
                await retire(old, old_sub)
        finally:
            self._overlap = False
        self.swaps += 1

    async def start(self) -> None:
        cfg = self.config
        if cfg.uplinks:
            self.uplinks = UplinkSet(
                cfg.uplinks,
                self.on_frame_bytes,
                self._move_control,
                name=cfg.name,
                creds=cfg.creds,
                inbox_prefix=cfg.inbox_prefix,
            )
            self.nc = await self.uplinks.start(cfg.subjects.audio(cfg.channel))
        else:
            self.nc = await self._connect()
        if cfg.clock_mode == "sync" and cfg.clock_memory is not None:
            seed_from(self.estimator, cfg.clock_memory)  # before the first exchange: only the offset is left
        if cfg.clock_mode == "sync" and self.uplinks is not None:
            self.clock_sync = ClockFailover(
                [u.url for u in cfg.uplinks],
                cfg.time_subject or cfg.subjects.time(),
                self.clock,
                self.estimator,
                on_estimator=self._take_estimator,
                binds=[u.local() for u in cfg.uplinks],
                creds=cfg.creds,
                inbox_prefix=cfg.inbox_prefix,
                site=cfg.name if cfg.creds is not None else None,
            )
            await self.clock_sync.start()
        elif cfg.clock_mode == "sync":
            self.clock_sync = ClockSync(
                cfg.nats_url,
                cfg.time_subject or cfg.subjects.time(),
                self.clock,
                estimator=self.estimator,
                creds=cfg.creds,
                inbox_prefix=cfg.inbox_prefix,
                # With its own NATS user a site may ask only on its own subject (answered on its own inbox).
                site=cfg.name if cfg.creds is not None else None,
            )
            await self.clock_sync.start()
        await self._subscribe_audio()
        self.sink_task = asyncio.create_task(self._run_sink(), name=f"sink:{cfg.name}")
        self._tasks = [
            asyncio.create_task(self._follow_clock()),
            asyncio.create_task(self._report()),
            self.sink_task,
        ]
        if cfg.clock_mode == "sync" and cfg.clock_memory is not None:
            self._tasks.append(asyncio.create_task(self._keep_clock_memory(cfg.clock_memory)))
        if cfg.watch_desired:
            self.desired_watcher = DesiredWatcher(self.nc, cfg.subjects, cfg.name, self.apply_desired)
            self._watch_task = asyncio.create_task(self.desired_watcher.run())
            self._tasks.append(self._watch_task)
        if self.amp is not None:
            self._tasks.append(asyncio.create_task(self.amp.run(), name=f"amp:{cfg.name}"))
        if cfg.creds is not None and cfg.renew_creds:
            self.renewer = CredentialsRenewer(lambda: self.nc, cfg.subjects, cfg.name, cfg.creds, self.swap_connections)
            self._tasks.append(asyncio.create_task(self.renewer.run(), name=f"creds:{cfg.name}"))
        if cfg.talkback_key is not None:
            from citycast.media.sources import open_source  # PyAV: mapped only by sites that may talk back

            spec = cfg.talkback_source
            self.talkback = TalkbackSender(self.nc, cfg.subjects, cfg.name, cfg.talkback_key, lambda: open_source(spec))
            self._command_sub = await self.nc.subscribe(cfg.subjects.commands(cfg.name), cb=self._on_command)
        if cfg.receipt_key is not None:
            self.receipts = ReceiptSender(
                lambda: self.nc, cfg.subjects, cfg.name, cfg.receipt_key, self.play_log, self.broadcast_now
            )
            self._tasks.append(asyncio.create_task(self.receipts.run(), name=f"receipts:{cfg.name}"))

    def _take_estimator(self, estimator: ClockEstimator) -> None:
        """Clock sync moved to another city server's responder, whose own estimator is now synced: use it. The
        engine slews to the new line; the step guard still refuses a jump beyond its tolerance."""
        self.estimator = estimator

    async def _move_control(self, new: Client) -> None:
        """Carry control (telemetry, desired state, commands, renewal) on `new`, another uplink, because the one
        that carried it dropped. Audio is untouched: every uplink hears the channel all along."""
        cfg = self.config
        self.nc = new
        if self.talkback is not None:
            self.talkback.nc = new
            old_sub, self._command_sub = self._command_sub, None
            if old_sub is not None:  # the old connection comes back some day: it must not deliver commands twice
                with contextlib.suppress(Exception):
                    await old_sub.unsubscribe()
            self._command_sub = await new.subscribe(cfg.subjects.commands(cfg.name), cb=self._on_command)
        await self._rewatch_desired(new)
        # The console has heard nothing from this site since the old path went quiet, and a report of a state
        # change made meanwhile went down that path: tell it now rather than at the next heartbeat (after both
        # long-haul paths were cut, this is what the operator waits for).
        await self._report_once()

    async def _rewatch_desired(self, nc: Client) -> None:
        """Move the desired-state watch to connection `nc`, keeping what it already knows (value and revision), so
        an answer from before the move is never taken over a newer one."""
        watcher = self.desired_watcher
        if watcher is None:
            return
        cfg = self.config
        fresh = DesiredWatcher(nc, cfg.subjects, cfg.name, self.apply_desired)
        fresh.current, fresh.revision = watcher.current, watcher.revision
        self.desired_watcher = fresh
        task = self._watch_task
        self._watch_task = asyncio.create_task(fresh.run())
        self._tasks = [t for t in self._tasks if t is not task] + [self._watch_task]
        if task is not None:
            await cancel_and_wait(task)

    async def _renew_uplinks(self) -> None:
        """Renewed credentials with several uplinks: replace one uplink's connection at a time, so the others
        carry the channel meanwhile; control follows its connection."""
        assert self.uplinks is not None

        async def swapped(old: Client, new: Client) -> None:
            if old is self.nc:
                await self._move_control(new)

        self._overlap = True
        try:
            for index in range(len(self.uplinks.uplinks)):
                try:
                    await self.uplinks.replace(index, swapped)
                except TimeoutError:
                    log.warning("%s: renewed credentials, but uplink %d did not reconnect yet", self.config.name, index)
        finally:
            self._overlap = False
        self.swaps += 1

    async def _on_command(self, msg: Msg) -> None:
        self.on_command_bytes(msg.data)

    def on_command_bytes(self, data: bytes) -> None:
        """Act on one message from the site's command subject. Never raises: a bad command is counted and logged."""
        try:
            command = decode_command(data)
        except CommandError as e:
            self.bad_commands += 1
            log.warning("%s: command refused: %s", self.config.name, e)
            return
        if isinstance(command, TalkbackCommand) and self.talkback is not None:
            self.talkback.on_command(command)

    async def stop(self) -> None:
        if self.talkback is not None:
            await self.talkback.stop()
        if self.receipts is not None:  # what played until now: the hub hears of it before the site goes
            await self.receipts.flush()
        tasks = [*self._tasks, *self._resubscribing]
        await cancel_and_wait(*tasks)
        if self.amp is not None:
            await self.amp.close()
        if self.clock_sync is not None:
            await self.clock_sync.stop()
        if self.uplinks is not None:
            await self.uplinks.stop()  # every connection, the control one (self.nc) among them
            self.nc = None
        if self.nc is not None:
            # A site publishes nothing that matters at shutdown; never let a slow drain hold it up.
            await retire(self.nc)

    async def run_until(self, done: asyncio.Event | None = None, duration_s: float | None = None) -> None:
        """Run until `done`, `duration_s`, or the sink ends (a file of given length). A failing sink does not
        end the run: it is retried (see `_run_sink`) while telemetry reports the site as faulty."""
        await self.start()
        assert self.sink_task is not None
        waiter = asyncio.create_task(
            asyncio.sleep(duration_s) if duration_s is not None else (done or asyncio.Event()).wait()
        )
        try:
            await asyncio.wait({waiter, self.sink_task}, return_when=asyncio.FIRST_COMPLETED)
            if self.sink_task.done() and not self.sink_task.cancelled() and self.sink_task.exception():
                raise RuntimeError(f"the sink stopped: {self.sink_task.exception()}")
        finally:
            waiter.cancel()
            await self.stop()


def load_fallback(path: Path | None) -> Samples | None:
    return None if path is None else fallback_file.load(path)
