"""The loudspeaker site (`citycast site`): enrol once, then receive, verify, sync and play."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citycast import runtime
from citycast.cli.common import DEFAULT_NATS, ChannelOpt, PrefixOpt, console, fail

app = typer.Typer()


@app.command()
def site(
    name: Annotated[str, typer.Option(help="This site's name (its telemetry subject).")] = "site-1",
    nats: Annotated[
        list[str] | None,
        typer.Option(
            "--nats",
            help="URL of a NATS server (city server, leafnode or the hub's). Repeat it, or give a comma list, to "
            "connect to every city server of the zone at once: each frame comes once per path and the first copy "
            f"plays. Default: {DEFAULT_NATS}, or the city servers enrolment stored.",
        ),
    ] = None,
    uplink_bind: Annotated[
        list[str] | None,
        typer.Option(
            "--uplink-bind",
            metavar="ADDR|%IFACE|ADDR%IFACE",
            help="The local address and/or interface the i-th --nats connection leaves by (a box with two SIMs, "
            "or fibre and cellular: one uplink per connection). Repeat in --nats order; '-' leaves one unbound.",
        ),
    ] = None,
    trust: Annotated[Path, typer.Option(help="File of trusted ingest public keys.")] = Path("keys/trusted.keys"),
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    delay_ms: Annotated[float, typer.Option(help="Playout delay D: frame T plays at broadcast time T + D.")] = 80.0,
    sink: Annotated[
        str,
        typer.Option(
            help="auto (alsa:pipewire where PipeWire runs with pipewire-alsa, else pulse where a PulseAudio/PipeWire "
            "server is found, else device), device[:NAME] (PortAudio), "
            "alsa[:PCM] (ALSA directly, the device's status timestamps: hw:0, plughw:1, pipewire:NODE=...), "
            "pulse[:SINK] (PulseAudio/PipeWire, the server's own timing reports), timed[:PPM] or wav:PATH. "
            "See docs/operations.md, Choosing a sink."
        ),
    ] = "auto",
    period_ms: Annotated[
        float,
        typer.Option(
            "--period",
            min=2.5,
            max=100.0,
            help="Milliseconds of audio the sink takes each time it wakes. Longer periods wake a small box less "
            "often (on slow hardware a site's CPU follows them) but need more D (50 ms: about 70 ms more). See "
            "docs/operations.md.",
        ),
    ] = 10.0,
    clock: Annotated[
        str,
        typer.Option(help="sync (estimate the broadcast clock over the bus) or system (trust chrony/PTP)."),
    ] = "sync",
    time_zone: Annotated[
        str | None, typer.Option(help="Sync to this city's time responder instead of the hub's.")
    ] = None,
    fallback: Annotated[
        Path | None, typer.Option(help="Audio to play when the stream stops (default: silence).")
    ] = None,
    fallback_after_s: Annotated[float, typer.Option(help="How long a stream may be silent before fallback.")] = 2.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    wav: Annotated[Path | None, typer.Option(help="With a timed sink: also write what it played to this WAV.")] = None,
    sim_clock_offset_ms: Annotated[float, typer.Option(hidden=True)] = 0.0,
    sim_clock_ppm: Annotated[float, typer.Option(hidden=True)] = 0.0,
    enrol: Annotated[
        tuple[str, str] | None,
        typer.Option(
            metavar="HUB_URL TOKEN",
            help="Enrol with the hub once (a one-time token from the console), store the credentials, then run. "
            "HUB_URL is https://HOST:PORT; the token names the hub's certificate, so only that hub is trusted.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(help="Allow enrolling over plain http:// to another machine, or with a hub without TLS."),
    ] = False,
    talkback_source: Annotated[
        str,
        typer.Option(help="Microphone for talkback (enrolled sites): line-in[:DEVICE], or an audio file."),
    ] = "line-in",
    clock_memory: Annotated[
        Path | None,
        typer.Option(
            help="Where the clock's measured drift is kept across restarts, so a site back from a power cut plays "
            "in step within a second or two (default /var/lib/citycast/NAME.clock.json as root, else "
            "~/.local/state/citycast/NAME.clock.json).",
        ),
    ] = None,
    amp_on: Annotated[
        str | None,
        typer.Option(
            metavar="CMD",
            help="Command that switches the amplifier on (e.g. a relay on a Pi: 'pinctrl set 17 op dh'), run "
            "--amp-lead before each address's first sample plays. Goes with --amp-off. See docs/operations.md, "
            "Chime and amplifier power.",
        ),
    ] = None,
    amp_off: Annotated[
        str | None,
        typer.Option(metavar="CMD", help="Command that switches the amplifier off, --amp-hold after an address."),
    ] = None,
    amp_lead: Annotated[
        float, typer.Option(metavar="SECONDS", help="Amplifier on this long before the first sample plays.")
    ] = 1.0,
    amp_hold: Annotated[
        float, typer.Option(metavar="SECONDS", help="Amplifier off this long after the last sample played.")
    ] = 2.0,
    config: Annotated[
        Path | None,
        typer.Option(
            help="This site's credentials file (default /etc/citycast/site.json as root, else "
            "~/.config/citycast/site.json). When it exists, name, bus, keys and D come from it."
        ),
    ] = None,
) -> None:
    """Run a loudspeaker site: receive, verify, sync, play at T + D, report telemetry every second.

    Once enrolled (--enrol HUB_URL TOKEN), `citycast site` needs no arguments."""
    from citycast.clock.memory import default_memory_path
    from citycast.site.enrol import CredentialsFileError, EnrolError, SiteCredentials, default_path
    from citycast.site.enrol import enrol as do_enrol
    from citycast.site.main import exec_site
    from citycast.site.options import SiteOptions
    from citycast.site.uplink_spec import parse_uplinks

    if clock not in ("sync", "system"):
        fail("--clock must be 'sync' or 'system'")
    if amp_on is not None or amp_off is not None:
        from citycast.site.amp import AmpConfig

        try:
            AmpConfig.from_options(amp_on or "", amp_off or "", amp_lead, amp_hold)
        except ValueError as e:
            fail(str(e))
    try:
        uplinks = parse_uplinks(nats or [DEFAULT_NATS], uplink_bind if nats else None)
    except ValueError as e:
        fail(f"--nats/--uplink-bind: {e}")
    cred_path = config or default_path()
    credentials: SiteCredentials | None = None
    if enrol is not None:
        try:
            credentials = runtime.run(do_enrol(enrol[0], enrol[1], cred_path, insecure=insecure))
        except EnrolError as e:
            fail(f"enrolment failed: {e}")
        assert credentials is not None
        console.print(f"enrolled as site {credentials.site!r}; credentials stored in {cred_path} (0600)")
    elif config is not None or cred_path.exists():
        try:
            credentials = SiteCredentials.load(cred_path)
        except CredentialsFileError as e:
            fail(str(e))
    opts = SiteOptions(
        name=name,
        nats_url=uplinks[0].url,
        nats_urls=[u.url for u in uplinks] if nats else [],
        uplink_binds=list(uplink_bind or []),
        trust=trust,
        channel=channel,
        prefix=prefix,
        delay_ms=delay_ms,
        sink=sink,
        period_ms=period_ms,
        clock=clock,
        time_zone=time_zone,
        fallback=fallback,
        fallback_after_s=fallback_after_s,
        duration=duration,
        wav=wav,
        sim_clock_offset_ms=sim_clock_offset_ms,
        sim_clock_ppm=sim_clock_ppm,
        credentials=credentials,
        credentials_path=cred_path,
        talkback_source=talkback_source,
        # a simulated clock's rate is the simulation's, not this box's crystal: nothing to remember by default
        clock_memory=clock_memory
        or (
            None
            if sim_clock_offset_ms or sim_clock_ppm
            else default_memory_path(credentials.site if credentials else name)
        ),
        amp_on=amp_on,
        amp_off=amp_off,
        amp_lead_s=amp_lead,
        amp_hold_s=amp_hold,
    )
    # The site runs in this process re-executed without the command line's libraries (citycast.site.main).
    exec_site(opts)
