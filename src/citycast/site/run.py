"""`citycast site`: one agent, built from command-line options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from citycast.clock.local import Clock, SkewedClock, SystemClock
from citycast.media.keys import load_trusted_keys
from citycast.media.sinks import Sink, TimedSink, open_sink
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig, load_fallback
from citycast.site.enrol import SiteCredentials
from citycast.site.talkback import key_from_seed


@dataclass
class SiteOptions:
    name: str
    nats_url: str
    trust: Path
    channel: int = 1
    prefix: str = "citycast"
    delay_ms: float = 80.0
    sink: str = "device"
    clock: str = "sync"
    time_zone: str | None = None
    fallback: Path | None = None
    fallback_after_s: float = 2.0
    duration: float | None = None
    wav: Path | None = None
    sim_clock_offset_ms: float = 0.0
    sim_clock_ppm: float = 0.0
    credentials: SiteCredentials | None = None  # from enrolment: name, bus, NATS user, trusted keys, D
    credentials_path: Path | None = None
    talkback_source: str = "line-in"


def build_site(opts: SiteOptions) -> SiteAgent:
    """Raises ValueError (KeyFileError, SinkError, SourceError are all ValueErrors or reported as one)."""
    subjects = Subjects(opts.prefix)
    clock: Clock = SystemClock()
    if opts.sim_clock_offset_ms or opts.sim_clock_ppm:
        # Only for simulations: make this process's idea of time honestly wrong.
        clock = SkewedClock(offset_ns=round(opts.sim_clock_offset_ms * 1e6), ppm=opts.sim_clock_ppm)
    try:
        fallback = load_fallback(opts.fallback)
    except Exception as e:
        raise ValueError(f"fallback audio: {e}") from e
    cred = opts.credentials
    if cred is not None:
        assert opts.credentials_path is not None
        subjects = Subjects(cred.prefix)
        config = SiteConfig(
            name=cred.site,
            nats_url=cred.nats_urls[0],
            trusted_keys=[Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in cred.trusted_keys],
            channel=opts.channel,
            delay_ns=round(cred.delay_ms * 1e6),
            clock_mode=opts.clock,
            time_subject=subjects.time(opts.time_zone) if opts.time_zone else cred.time_subject,
            subjects=subjects,
            fallback=fallback,
            fallback_after_ns=round(opts.fallback_after_s * 1e9),
            creds=cred.creds_file(opts.credentials_path),
            inbox_prefix=cred.inbox_prefix,
            talkback_key=key_from_seed(cred.seed),
            talkback_source=opts.talkback_source,
        )
    else:
        config = SiteConfig(
            name=opts.name,
            nats_url=opts.nats_url,
            trusted_keys=load_trusted_keys(opts.trust),
            channel=opts.channel,
            delay_ns=round(opts.delay_ms * 1e6),
            clock_mode=opts.clock,
            time_subject=subjects.time(opts.time_zone) if opts.time_zone else None,
            subjects=subjects,
            fallback=fallback,
            fallback_after_ns=round(opts.fallback_after_s * 1e9),
        )
    try:
        sink: Sink = open_sink(opts.sink, clock, block=480)
    except Exception as e:
        raise ValueError(str(e)) from e
    if opts.wav is not None:
        if not isinstance(sink, TimedSink):
            raise ValueError("--wav goes with a timed sink (--sink timed[:PPM])")
        sink.wav_path = opts.wav
    return SiteAgent(config, sink, clock=clock)


async def run_site(opts: SiteOptions) -> None:
    agent = build_site(opts)
    await agent.run_until(duration_s=opts.duration)
