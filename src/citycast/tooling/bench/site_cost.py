"""`citycast bench --site-cost`: what one full site agent's media path costs, per stage, in simulated time.

The fleet benchmark measures a site's CPU as a whole, on a shared and often busy box, where wall-clock stage
timers include preemption. This workload is fixed instead: real speech, encoded with libopus and signed with
Ed25519 as ingest does, is fed through one real `SiteAgent`'s `on_frame_bytes` at the instants frames would
arrive (a seeded network jitter), while its renderer is called for every DAC block at the instants a sound card
would ask. Time is simulated (no waits), so the run is as fast as the CPU allows and the same on every run; each
call is timed with the thread's CPU clock, which a busy box does not inflate. Under `valgrind --tool=callgrind`
the same run gives instruction counts (docs/benchmarks.md "Site cost").

Stages: `signature` (the verifier: parse and Ed25519), `receive` (the rest of `on_frame_bytes`: freshness,
replay, queueing), `decode` (libopus, concealment included), `render` (the rest of rendering: clock map, control
loop, resampling, levels). NATS and the event loop are not in it: `citycast bench --sites N` measures them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from citycast.media.audio import FRAME_NS, FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.codec import OpusDecoder, OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.render import Samples
from citycast.media.sinks import TimedSink
from citycast.media.sources import read_audio
from citycast.protocol.frame import Frame, FrameSigner, FrameVerifier
from citycast.site.agent import SiteAgent, SiteConfig

T0_NS = 1_780_000_000_000_000_000  # a fixed broadcast-clock epoch: the run is the same every time
STAGES = ("signature", "receive", "decode", "render")
ROUNDS = 3  # `citycast bench --site-cost` runs the workload this often and keeps each stage's least CPU


class SimClock:
    """Simulated time: the site's local clock and its monotonic clock, both moved by the workload."""

    def __init__(self, now_ns: int) -> None:
        self.t = now_ns

    def now_ns(self) -> int:
        return self.t

    def at(self, true_ns: int) -> int:
        return true_ns


@dataclass
class CpuMeter:
    """Thread CPU nanoseconds and calls per stage."""

    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def add(self, stage: str, ns: int) -> None:
        self.ns[stage] += ns
        self.calls[stage] += 1


class _TimedVerifier:
    def __init__(self, inner: FrameVerifier, meter: CpuMeter) -> None:
        self.inner = inner
        self.meter = meter

    def verify(self, data: bytes) -> Frame:
        t0 = time.thread_time_ns()
        try:
            return self.inner.verify(data)
        finally:
            self.meter.add("signature", time.thread_time_ns() - t0)


class _TimedDecoder:
    """The agent's own decoder, its calls timed (the engine creates one per stream through the factory)."""

    def __init__(self, inner: Any, meter: CpuMeter) -> None:
        self.inner = inner
        self.meter = meter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name not in ("decode", "conceal", "decode_into", "conceal_into"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return attr(*args, **kwargs)
            finally:
                self.meter.add("decode", time.thread_time_ns() - t0)

        return timed


def speech_frames(seconds: float, packets_per_message: int, seed: int) -> tuple[FrameSigner, list[tuple[int, bytes]]]:
    """(signer, [(arrival_ns, frame bytes)]) for `seconds` of looped speech, 64 kbit/s Opus, as ingest signs it.
    Arrival: when the message's last packet was captured, plus 2 ms and a uniform jitter of up to 3 ms."""
    speech = read_audio(str(resources.files("citycast") / "assets" / "speech.opus")).astype(np.float32)
    packets_total = max(1, round(seconds * SAMPLE_RATE / FRAME_SAMPLES))
    loop = np.resize(speech, packets_total * FRAME_SAMPLES)  # repeats the speech to the length asked
    encoder = OpusEncoder(64_000)
    packets = [encoder.encode(loop[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(packets_total)]
    signer = FrameSigner(generate_private_key())
    rng = random.Random(seed)
    stream = rng.getrandbits(32)
    frames: list[tuple[int, bytes]] = []
    for first in range(0, packets_total, packets_per_message):
        chunk = packets[first : first + packets_per_message]
        ts = T0_NS + first * FRAME_NS
        data = signer.sign(channel=1, stream=stream, seq=first, ts_ns=ts, packets=chunk)
        arrival = ts + len(chunk) * FRAME_NS + 2_000_000 + rng.randrange(3_000_000)
        frames.append((arrival, data))
    frames.sort()
    return signer, frames


@dataclass
class SiteCost:
    seconds: float
    block: int
    packets_per_message: int
    cpu_ns: dict[str, int]
    calls: dict[str, int]
    played_rms_dbfs: float
    stats: dict[str, int]

    def per_minute_s(self) -> dict[str, float]:
        """CPU seconds per minute of audio, per stage and in total."""
        scale = 60.0 / self.seconds / 1e9
        out = {k: v * scale for k, v in self.cpu_ns.items()}
        out["total"] = sum(out.values())
        return out

    def as_dict(self) -> dict[str, object]:
        per_min = self.per_minute_s()
        return {
            "seconds_of_audio": self.seconds,
            "dac_block": self.block,
            "packets_per_message": self.packets_per_message,
            "cpu_s_per_audio_minute": {k: round(v, 4) for k, v in per_min.items()},
            "core_percent": round(100 * per_min["total"] / 60.0, 3),
            "us_per_call": {k: round(self.cpu_ns[k] / 1e3 / n, 1) for k, n in self.calls.items() if n},
            "calls": self.calls,
            "played_rms_dbfs": round(self.played_rms_dbfs, 2),
            "playout": self.stats,
        }


def run_site_cost(
    seconds: float = 60.0, *, block: int = 480, packets_per_message: int = 1, delay_ms: float = 80.0, seed: int = 1
) -> SiteCost:
    """Feed `seconds` of signed speech through one site agent and render it in `block`-sample DAC blocks."""
    signer, frames = speech_frames(seconds, packets_per_message, seed)
    clock = SimClock(T0_NS)
    meter = CpuMeter()
    config = SiteConfig(
        name="site-cost",
        nats_url="nats://127.0.0.1:4222",  # never dialled: frames and DAC blocks are handed in directly
        trusted_keys=[signer.public_key],
        delay_ns=round(delay_ms * 1e6),
        clock_mode="system",  # the broadcast clock is the simulated one: the estimator is not what is measured
        watch_desired=False,
        renew_creds=False,
    )
    sink = TimedSink(clock, block=block, paced=False)
    agent = SiteAgent(config, sink, clock=clock)
    agent.monotonic = clock.now_ns  # the step guard must see the simulated time pass, not the real one
    agent.verifier = _TimedVerifier(agent.verifier, meter)  # type: ignore[assignment]
    agent.engine._decoder_factory = lambda: _TimedDecoder(OpusDecoder(), meter)
    agent.engine.set_clock(agent._clock_map())
    renderer = agent.renderer
    lead_ns = sink.lead_ns  # a sound card asks for a block this long before it plays
    block_ns = block * 1e9 / SAMPLE_RATE
    end_ns = T0_NS + round(seconds * 1e9) + round(delay_ms * 1e6)
    sumsq = 0.0
    played = 0
    k = 0
    i = 0
    while True:
        dac = T0_NS + round(k * block_ns)
        ask = dac - lead_ns
        if i < len(frames) and frames[i][0] <= ask:
            clock.t = frames[i][0]
            t0 = time.thread_time_ns()
            agent.on_frame_bytes(frames[i][1])
            meter.add("receive", time.thread_time_ns() - t0)
            i += 1
            continue
        if dac >= end_ns:
            break
        clock.t = ask
        t0 = time.thread_time_ns()
        out: Samples = renderer.render(block, dac)
        meter.add("render", time.thread_time_ns() - t0)
        sumsq += float(np.dot(out, out))
        played += len(out)
        k += 1
    # Nested stages were counted inside their callers: leave each caller its own share.
    cpu = dict(meter.ns)
    cpu["receive"] -= cpu["signature"]
    cpu["render"] -= cpu["decode"]
    rms = (sumsq / played) ** 0.5 if played else 0.0
    st = agent.engine.stats
    stats = {
        "decoded": st.decoded,
        "concealed": st.concealed,
        "underruns": st.underruns,
        "late": st.late,
        "resyncs": st.resyncs,
        "rejected": sum(agent.rejected.values()),
    }
    return SiteCost(
        seconds=seconds,
        block=block,
        packets_per_message=packets_per_message,
        cpu_ns=cpu,
        calls=dict(meter.calls),
        played_rms_dbfs=20 * np.log10(rms) if rms > 0 else -180.0,
        stats=stats,
    )


def fastest(runs: list[SiteCost]) -> SiteCost:
    """Each stage's least CPU over identical runs: on a shared box, what the work costs when nothing else
    disturbs its caches or its core's sibling thread."""
    best = runs[0]
    cpu = {stage: min(r.cpu_ns[stage] for r in runs) for stage in best.cpu_ns}
    return SiteCost(
        best.seconds, best.block, best.packets_per_message, cpu, best.calls, best.played_rms_dbfs, best.stats
    )


def site_cost_command(
    *, seconds: float, block: int, packets_per_message: int, delay_ms: float, seed: int, json_out: Path | None
) -> SiteCost:
    """`citycast bench --site-cost`: run, print a table (standard output) and optionally write the JSON."""
    from rich.console import Console
    from rich.table import Table

    out = Console()
    runs = []
    for k in range(ROUNDS):
        with out.status(f"site cost, round {k + 1} of {ROUNDS}: {seconds:g} s of speech through one site agent"):
            runs.append(
                run_site_cost(
                    seconds, block=block, packets_per_message=packets_per_message, delay_ms=delay_ms, seed=seed
                )
            )
    result = fastest(runs)
    figures = result.as_dict()
    per_min = result.per_minute_s()
    title = f"one site, {packets_per_message} packet(s) a message, {block}-sample DAC blocks, best of {ROUNDS}"
    table = Table(title=title)
    for name in ("stage", "CPU s / audio minute", "% of a core", "calls", "µs / call"):
        table.add_column(name, justify="right")
    for stage in (*STAGES, "total"):
        calls = result.calls.get(stage, 0)
        per_call = f"{result.cpu_ns[stage] / 1e3 / calls:.1f}" if calls else ""
        table.add_row(stage, f"{per_min[stage]:.3f}", f"{100 * per_min[stage] / 60:.2f}", str(calls or ""), per_call)
    out.print(table)
    out.print(f"playout: {figures['playout']}; played {figures['played_rms_dbfs']} dBFS RMS")
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=1))
    return result
