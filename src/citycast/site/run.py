"""`citycast site`: one agent, built from command-line options."""

from __future__ import annotations

from citycast.clock.local import Clock, SkewedClock, SystemClock
from citycast.media.audio import SAMPLE_RATE
from citycast.media.keys import RawPublicKey, load_trusted_keys
from citycast.media.sinks import Sink, TimedSink, open_sink
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig, load_fallback
from citycast.site.amp import AmpConfig
from citycast.site.options import SiteOptions
from citycast.site.talkback import key_from_seed
from citycast.site.uplink_spec import Uplink, parse_uplinks

__all__ = ["SiteOptions", "build_site", "run_site", "uplinks_of"]


def uplinks_of(opts: SiteOptions, enrolled: list[str] | None = None) -> list[Uplink]:
    """The connections the site makes: the URLs given on the command line, else those enrolment stored (the
    zone's city servers, else every URL the hub names), each with its bind. One unbound URL: [] (the agent's one
    connection, as ever)."""
    given = opts.nats_urls or ([opts.nats_url] if opts.nats_url else [])
    urls = enrolled if enrolled and not opts.nats_urls else given
    uplinks = parse_uplinks(urls, opts.uplink_binds)
    return [] if len(uplinks) == 1 and uplinks[0].bind is None else uplinks


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
        uplinks = uplinks_of(opts, cred.city_servers or cred.nats_urls)
        config = SiteConfig(
            name=cred.site,
            nats_url=uplinks[0].url if uplinks else (opts.nats_urls or cred.city_servers or cred.nats_urls)[0],
            uplinks=uplinks,
            trusted_keys=[RawPublicKey(bytes.fromhex(k)) for k in cred.trusted_keys],
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
            receipt_key=key_from_seed(cred.seed),
            talkback_source=opts.talkback_source,
        )
    else:
        uplinks = uplinks_of(opts)
        config = SiteConfig(
            name=opts.name,
            nats_url=uplinks[0].url if uplinks else parse_uplinks(opts.nats_urls or [opts.nats_url])[0].url,
            uplinks=uplinks,
            trusted_keys=load_trusted_keys(opts.trust),
            channel=opts.channel,
            delay_ns=round(opts.delay_ms * 1e6),
            clock_mode=opts.clock,
            time_subject=subjects.time(opts.time_zone) if opts.time_zone else None,
            subjects=subjects,
            fallback=fallback,
            fallback_after_ns=round(opts.fallback_after_s * 1e9),
        )
    config.clock_memory = opts.clock_memory
    if opts.amp_on is not None or opts.amp_off is not None:
        config.amp = AmpConfig.from_options(opts.amp_on or "", opts.amp_off or "", opts.amp_lead_s, opts.amp_hold_s)
    try:
        sink: Sink = open_sink(opts.sink, clock, block=round(opts.period_ms * SAMPLE_RATE / 1000))
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
