"""The hub process: every part of the control plane started, wired and stopped in one place.

Embedded nats-server in operator (JWT) mode, the broadcast clock's time service, the database, the address
manager, the fleet monitor, the recorder, the scheduler, and the HTTP API + console under uvicorn. The control
plane (API, database, scheduler, monitor) runs on the process's main loop; the city's audio (broadcasts, the
recorders' input, the time responder) on the media plane's own thread and loop (`media_plane.py`,
`docs/hub-internals.md`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import uvicorn
from nats.aio.client import Client
from sqlalchemy import select

from citycast.bus.authority import NatsAuthority, site_inbox_prefix
from citycast.bus.connection import connect
from citycast.bus.server import EmbeddedNats, LeafRemote, ServerTls, port_is_free
from citycast.bus.tls import HubTls, is_loopback
from citycast.hub.addresses import AddressManager, RecordingHandle
from citycast.hub.alerts import AlertRules
from citycast.hub.api import create_app
from citycast.hub.api.limits import uvicorn_limits
from citycast.hub.api.settings import load_delay_auto
from citycast.hub.auth import ensure_admin
from citycast.hub.cap.running import CapAlerts
from citycast.hub.context import HubContext
from citycast.hub.credentials import CredentialsService, enrolled_key
from citycast.hub.db.engine import Database, default_sqlite_url
from citycast.hub.db.models import Recording, Setting, Site, utcnow
from citycast.hub.delay_tuner import DelayTuner, TunerSettings
from citycast.hub.desired import DesiredStore
from citycast.hub.events import EventHub
from citycast.hub.fleet import FleetState
from citycast.hub.golive import GoLive
from citycast.hub.icecast.control import IcecastControl
from citycast.hub.icecast.control import load_setting as load_icecast_setting
from citycast.hub.icecast.service import IcecastOptions, start_icecast
from citycast.hub.media_plane import MediaPlane
from citycast.hub.monitor import FleetMonitor
from citycast.hub.receipts import ReceiptService
from citycast.hub.recorder import ChannelRecorder, Recorder, RecordingWriter, apply_retention
from citycast.hub.scheduler import Scheduler
from citycast.hub.talkback import TalkbackControl
from citycast.hub.telephone.hub_services import TelephoneServices, telephone_services
from citycast.hub.telephone.pins import PinGuard
from citycast.hub.telephone.service import Telephone
from citycast.hub.timeserver import TimeService
from citycast.media.keys import generate_private_key, load_private_key, public_key_text, save_private_key
from citycast.protocol.frame import FrameSigner, FrameVerifier
from citycast.protocol.subjects import Subjects
from citycast.sip.register import RegisterConfig
from citycast.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ADMIN_PASSWORD_FILE = "initial-admin-password"


@dataclass
class HubOptions:
    data_dir: Path
    db_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Peers whose X-Forwarded-For is believed (uvicorn's proxy headers): the client address for audit and limits.
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    nats_host: str = "127.0.0.1"
    nats_port: int = 4222
    nats_url: str | None = None  # an existing NATS (its auth is then the operator's business)
    nats_creds: Path | None = None
    nats_binary: str | None = None
    leaf_listen_port: int | None = None
    leaf_remote: str | None = None
    public_nats_urls: list[str] = field(default_factory=list)
    prefix: str = "citycast"
    delay_ms: float = 80.0
    # Opus packets per bus message of an address; None: by the channel's D (ingest.pacing.packets_for_delay)
    packets_per_message: int | None = None
    media_dir: Path | None = None
    sip: tuple[str, int] | None = None  # the telephone's SIP address (UDP and TCP)
    rtp_ports: tuple[int, int] = (20000, 20999)
    sip_register: RegisterConfig | None = None  # register with a SIP trunk (a PSTN number routed to us)
    # Trunk ranges (IP or CIDR) whose calls' SDP c= may name a media address other than the signalling peer.
    sip_trusted_media: list[str] = field(default_factory=list)
    # SIP trunks (IP or CIDR) whose callers are told apart by identity (P-Asserted-Identity/From) for PIN limits.
    sip_trusted_trunks: list[str] = field(default_factory=list)
    # The API and console over HTTPS with the hub's own certificate (what `--enrol https://…` dials); None: off.
    https: tuple[str, int] | None = None
    tls_names: list[str] = field(default_factory=list)  # more names for the hub's certificate (--tls-name)
    # Plaintext NATS and a plain-HTTP API on a non-loopback address: only when the operator says so.
    insecure: bool = False
    # Web exposure (citycast.hub.api.exposure, headers): closed unless the operator opens it.
    allowed_origins: list[str] = field(default_factory=list)
    public_metrics: bool = False
    metrics_token: str | None = None
    public_api_docs: bool = False
    # The self-tuning playout delay (hub/delay_tuner.py): bounds, thresholds, windows; "auto" is a setting (API).
    delay_tuner: TunerSettings = field(default_factory=TunerSettings)
    # CAP feeds polled besides those in the settings (--cap-feed; hub/cap/)
    cap_feeds: list[str] = field(default_factory=list)
    # Every address also on an Icecast server's mounts (hub/icecast): None, off.
    icecast: IcecastOptions | None = None


class ServeError(RuntimeError):
    pass


class _AddressRecording:
    """A recording of one address: bus → verify → Ogg Opus, with its database row."""

    def __init__(self, hub: Hub, channel_recorder: ChannelRecorder, writer: RecordingWriter, row_id: int) -> None:
        self.hub = hub
        self.channel_recorder = channel_recorder
        self.writer = writer
        self.row_id = row_id

    async def close(self) -> None:
        # The subscription lives on the media loop; the row is written from the control loop (a thread).
        media = self.hub.media
        await (media.run(self.channel_recorder.stop()) if media is not None else self.channel_recorder.stop())
        await asyncio.to_thread(self._finish_row)

    def _finish_row(self) -> None:
        with self.hub.db.session() as s:
            row = s.get(Recording, self.row_id)
            if row is not None:
                row.ended_at = utcnow()
                row.frames = self.writer.frames
                row.bytes = self.writer.bytes
                first = self.writer.first_ts_ns
                if first is not None:
                    row.first_sample_at = dt.datetime.fromtimestamp(first / 1e9, dt.UTC)


class _QuietServer(uvicorn.Server):
    """uvicorn inside a bigger process: the process, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Hub:
    def __init__(self, opts: HubOptions) -> None:
        self.opts = opts
        self.subjects = Subjects(opts.prefix)
        self.data_dir = opts.data_dir
        self.db = Database(opts.db_url or default_sqlite_url(opts.data_dir))
        self.recordings_dir = opts.data_dir / "recordings"
        self.media_dir = opts.media_dir or opts.data_dir / "media"
        self.server: EmbeddedNats | None = None
        self.authority: NatsAuthority | None = None
        self.nc: Client | None = None
        self.admin_password: str | None = None
        self.fleet = FleetState()
        self.events = EventHub()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_tls: uvicorn.Server | None = None
        self.tls: HubTls | None = None
        self.time_service: TimeService | None = None
        self.monitor: FleetMonitor | None = None
        self.addresses: AddressManager | None = None
        self.context: HubContext | None = None
        self.talkback: TalkbackControl | None = None
        self.receipts: ReceiptService | None = None
        self.golive: GoLive | None = None
        self.cap: CapAlerts | None = None
        self.telephone: Telephone | None = None
        # One count of wrong PINs per caller address, whether they come by phone or from a browser.
        self.pin_guard = PinGuard()
        self.signer: FrameSigner | None = None
        self.delay_tuner = DelayTuner(opts.delay_tuner, round(opts.delay_ms * 1e6))
        # The city's audio runs on its own thread and loop (see media_plane.py and docs/hub-internals.md).
        self.media: MediaPlane | None = None
        self.icecast: IcecastControl | None = None  # the Icecast side tap, on a thread of its own

    @property
    def nats_url(self) -> str:
        if self.opts.nats_url:
            return self.opts.nats_url
        assert self.server is not None
        return self.server.url

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.opts.http_host in ("0.0.0.0", "") else self.opts.http_host
        return f"http://{host}:{self.opts.http_port}"

    @property
    def https_url(self) -> str | None:
        if self.opts.https is None:
            return None
        host = "127.0.0.1" if self.opts.https[0] in ("0.0.0.0", "") else self.opts.https[0]
        return f"https://{host}:{self.opts.https[1]}"

    def _tls_names(self) -> list[str]:
        """Every name a client may dial this hub by: the listen hosts, the public NATS URLs, --tls-name."""
        names = [self.opts.nats_host, self.opts.http_host, *self.opts.tls_names]
        names += [urlparse(u).hostname or "" for u in self.opts.public_nats_urls]
        if self.opts.https is not None:
            names.append(self.opts.https[0])
        return [n for n in names if n]

    def _public_nats_urls(self) -> list[str]:
        urls = self.opts.public_nats_urls or [self.nats_url]
        if self.authority is None or self.authority.hub_ca is None:
            return urls
        # A TLS hub tells its sites tls:// so the URL says what the connection is (the CA is what enforces it).
        return [f"tls://{u.split('://', 1)[1]}" if u.startswith("nats://") else u for u in urls]

    def telephone_services(self) -> TelephoneServices:
        """What a telephone may use of this started hub (hub/telephone/hub_services.py), and nothing more."""
        if self.addresses is None or self.nc is None or self.signer is None:
            raise RuntimeError("start the hub before its telephone")
        return telephone_services(
            db=self.db,
            fleet_snapshot=self.fleet.snapshot,
            publish=self.events.publish,
            addresses=self.addresses,
            nc=self.nc,
            signer=self.signer,
            subjects=self.subjects,
            talkback=lambda: self.talkback.current if self.talkback is not None else None,
            media_plane=self.media,
        )

    # -- start --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.opts.insecure and not is_loopback(self.opts.http_host):
            raise ServeError(
                f"--http {self.opts.http_host}:{self.opts.http_port} would serve logins and enrolment tokens in "
                "plaintext to the network: serve them with --https HOST:PORT (the hub's own certificate), keep "
                "--http on 127.0.0.1 for a local reverse proxy, or say --insecure"
            )
        if not port_is_free(self.opts.http_host, self.opts.http_port):
            raise ServeError(
                f"the HTTP server could not listen on {self.opts.http_host}:{self.opts.http_port}: the port is in "
                "use (choose another with --http HOST:PORT)"
            )
        for d in (self.data_dir, self.recordings_dir, self.media_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        await asyncio.to_thread(self.db.upgrade)
        with self.db.session() as s:
            self.admin_password = ensure_admin(s)
        if self.admin_password:
            path = self.data_dir / ADMIN_PASSWORD_FILE
            path.write_text(self.admin_password + "\n")
            path.chmod(0o600)
        self.signer = FrameSigner(self._ingest_key())
        creds = self.opts.nats_creds
        if self.opts.nats_url is None or self.opts.https is not None:
            self.tls = await asyncio.to_thread(HubTls.load_or_create, self.data_dir / "tls", self._tls_names())
        if self.opts.nats_url is None:
            nats_tls = self.tls if not self.opts.insecure else None
            NatsAuthority.trust_hub_ca(self.data_dir / "nats-auth", nats_tls.ca_pem() if nats_tls else None)
            self.authority = NatsAuthority.load_or_create(self.data_dir / "nats-auth", self.subjects)
            self.server = EmbeddedNats(
                host=self.opts.nats_host,
                port=self.opts.nats_port,
                binary=self.opts.nats_binary,
                leaf_listen_port=self.opts.leaf_listen_port,
                leaf_remotes=[LeafRemote(self.opts.leaf_remote)] if self.opts.leaf_remote else [],
                workdir=self.data_dir / "nats",
                auth_config=self.authority.server_config(),
                tls=ServerTls(nats_tls.cert_path, nats_tls.key_path) if nats_tls else None,
            )
            await asyncio.to_thread(self.server.start)
            creds = self.authority.hub_creds_path
        auth: dict[str, Any] = {"user_credentials": str(creds)} if creds else {}
        self.nc = await connect(self.nats_url, name="hub", **auth)
        self.media = MediaPlane(self.nats_url, creds=creds)
        await self.media.start()
        self.time_service = TimeService(self.nats_url, self.subjects, creds=creds)
        await self.media.run(self.time_service.start())  # the sites' clock answers on the media loop
        # With per-site users, a site's request for its desired state is answered only on that site's own inbox.
        desired = DesiredStore(self.nc, self.subjects, reply_prefix=site_inbox_prefix if self.authority else None)
        await desired.open()
        if self.authority is not None:  # site JWTs expire: re-minted on the site's request (hub/credentials.py)
            self.credentials = CredentialsService(
                self.nc, self.authority, self.subjects, lambda site: enrolled_key(self.db, site)
            )
            await self.credentials.start()
        self.addresses = AddressManager(
            db=self.db,
            nc=self.nc,
            subjects=self.subjects,
            desired=desired,
            signer=self.signer,
            media_dir=self.media_dir,
            record=self._record,
            fleet_snapshot=self.fleet.snapshot,
            publish=self.events.publish,
            delay_ms=self.opts.delay_ms,
            media=self.media,
            packets_per_message=self.opts.packets_per_message,
        )
        await self._close_interrupted()
        await self.addresses.refresh_sites()
        self.talkback = TalkbackControl(self.nc, self.subjects, self.db)
        self.receipts = ReceiptService(self.nc, self.subjects, self.db)  # proof of play from the sites
        await self.receipts.start()
        self.monitor = FleetMonitor(
            self.nc,
            self.subjects,
            self.fleet,
            AlertRules(),
            self.events,
            self.db,
            site_ids=self._site_ids,
            on_report=desired.nudge,  # a site playing the wrong channel missed a publish: send it again
        )
        await self.monitor.start()
        signer, addresses = self.signer, self.addresses
        assert signer is not None
        self.icecast = IcecastControl(
            lambda opts: start_icecast(
                opts,
                nats_url=self.nats_url,
                authority=self.authority,
                creds=creds,
                subjects=self.subjects,
                trusted=[signer.public_key],
                db=self.db,
                live=addresses.live,
                events=self.events,
            )
        )
        with self.db.session() as s:  # the command line's --icecast wins over the console's setting
            stored = load_icecast_setting(s)
        icecast_opts = self.opts.icecast or (stored.options() if stored is not None else None)
        await self.icecast.apply(icecast_opts)
        self.context = HubContext(
            db=self.db,
            subjects=self.subjects,
            fleet=self.fleet,
            events=self.events,
            addresses=self.addresses,
            authority=self.authority,
            nats_url=self.nats_url,
            public_nats_urls=self._public_nats_urls(),
            hub_ca_pem=self.authority.hub_ca if self.authority is not None else None,
            enrol_url=self.https_url,
            insecure=self.opts.insecure,
            trusted_keys_hex=[self.signer.public_key.public_bytes_raw().hex()],
            delay_ms=self.opts.delay_ms,
            recordings_dir=self.recordings_dir,
            media_dir=self.media_dir,
            telemetry_counters=self.monitor.counters,
            talkback=self.talkback,
            allowed_origins=self.opts.allowed_origins,
            public_metrics=self.opts.public_metrics,
            metrics_token=self.opts.metrics_token,
            public_api_docs=self.opts.public_api_docs,
            receipts=self.receipts,
        )
        scheduler = Scheduler(self.db, self.addresses, clock=lambda: dt.datetime.now(dt.UTC))
        self._tasks.append(asyncio.create_task(scheduler.run(self._stop)))
        self._tasks.append(asyncio.create_task(self._retention()))
        self._tasks.append(asyncio.create_task(self._tune_delay()))
        self.cap = CapAlerts(self.db, self.addresses, self.opts.cap_feeds)  # alerts from the authorities
        self.context.cap = self.cap.service
        self.context.cap_feeds_status = self.cap.feeds_status
        self.cap.start(self._stop)
        if self.opts.sip is not None:
            self.telephone = Telephone(
                self.telephone_services(),
                self.opts.sip[0],
                self.opts.sip[1],
                self.opts.rtp_ports,
                guard=self.pin_guard,
                register=self.opts.sip_register,
                trusted_media=self.opts.sip_trusted_media,
                trusted_trunks=self.opts.sip_trusted_trunks,
            )
            await self.telephone.start()
            self.context.sip_counters = self.telephone.counters
            self.context.telephone_status = self.telephone.status
        app = create_app(self.context)
        self.golive = GoLive(
            self.addresses, self.db, self.fleet, publish=self.events.publish, guard=self.pin_guard, media=self.media
        )  # the speakers' peer connections, audio and broadcasters run on the media plane
        app.state.golive = self.golive
        app.state.icecast = self.icecast  # the Icecast setting's route (api/icecast.py)
        app.state.delay_tuner = self.delay_tuner  # the delay settings route (api/settings.py)
        app.state.pin_guard = self.pin_guard  # the PINs page unlocks what the telephone and go-live count
        config = uvicorn.Config(
            app,
            host=self.opts.http_host,
            port=self.opts.http_port,
            log_level="warning",
            lifespan="off",
            ws_ping_interval=20,
            proxy_headers=True,
            forwarded_allow_ips=self.opts.trusted_proxies,
            **uvicorn_limits(self.opts.trusted_proxies),  # slow and many connections bounded (api/limits.py)
        )
        self._uvicorn = _QuietServer(config)
        serving = asyncio.create_task(self._serve_http(self._uvicorn))
        self._tasks.append(serving)
        for _ in range(200):
            if self._uvicorn.started or serving.done():
                break
            await asyncio.sleep(0.05)
        if serving.done() or not self._uvicorn.started:
            await self.stop()
            raise ServeError(f"the HTTP server could not listen on {self.opts.http_host}:{self.opts.http_port}")
        if self.opts.https is not None:
            assert self.tls is not None
            tls_config = uvicorn.Config(
                app,
                host=self.opts.https[0],
                port=self.opts.https[1],
                log_level="warning",
                lifespan="off",
                ws_ping_interval=20,
                proxy_headers=True,
                forwarded_allow_ips=self.opts.trusted_proxies,
                ssl_certfile=str(self.tls.cert_path),
                ssl_keyfile=str(self.tls.key_path),
            )
            self._uvicorn_tls = _QuietServer(tls_config)
            serving_tls = asyncio.create_task(self._serve_http(self._uvicorn_tls))
            self._tasks.append(serving_tls)
            for _ in range(200):
                if self._uvicorn_tls.started or serving_tls.done():
                    break
                await asyncio.sleep(0.05)
            if serving_tls.done() or not self._uvicorn_tls.started:
                await self.stop()
                raise ServeError(f"the HTTPS server could not listen on {self.opts.https[0]}:{self.opts.https[1]}")

    @staticmethod
    async def _serve_http(server: uvicorn.Server) -> None:
        # uvicorn ends a failed start with sys.exit(); inside a bigger process that must not end the process.
        try:
            await server.serve()
        except SystemExit as e:
            raise ServeError(f"the HTTP server stopped (exit {e.code})") from None

    def _ingest_key(self) -> Any:
        path = self.data_dir / "ingest.key"
        if path.exists():
            key = load_private_key(path)
        else:
            key = generate_private_key()
            save_private_key(key, path)
        (self.data_dir / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
        return key

    async def _record(self, address_id: int, channel: int, title: str) -> RecordingHandle:
        assert self.nc is not None and self.signer is not None
        now = utcnow()
        name = f"{now:%Y/%m}/address-{address_id}-{now:%Y%m%dT%H%M%S}.ogg"
        writer = await asyncio.to_thread(Recorder(self.recordings_dir).open, name, channel)
        verifier = FrameVerifier([self.signer.public_key])
        # The hub's clock is the broadcast clock: a replay of old audio cannot open or fill a recording.
        media = self.media
        assert media is not None
        # Subscribed from the media loop, so each frame is verified and muxed there, beside the broadcast.
        rec = ChannelRecorder(media.nc, writer, verifier, subjects=self.subjects, clock=time.time_ns)
        await media.run(rec.start())

        def insert() -> int:
            with self.db.session() as s:
                row = Recording(address_id=address_id, channel=channel, path=name, started_at=now)
                s.add(row)
                s.flush()
                return int(row.id)

        return _AddressRecording(self, rec, writer, await asyncio.to_thread(insert))

    def _site_ids(self) -> dict[str, int]:
        with self.db.session() as s:
            return {name: sid for sid, name in s.execute(select(Site.id, Site.name))}

    async def _close_interrupted(self) -> None:
        """Addresses and recordings left open by a hub that died are closed as interrupted."""
        from citycast.hub.db.models import Address, AddressStatus

        def close() -> None:
            with self.db.session() as s:
                for a in s.scalars(select(Address).where(Address.ended_at.is_(None))):
                    a.ended_at, a.status, a.end_reason = utcnow(), AddressStatus.failed, "hub restarted"
                for r in s.scalars(select(Recording).where(Recording.ended_at.is_(None))):
                    r.ended_at = utcnow()

        await asyncio.to_thread(close)

    async def _retention(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._apply_retention)
            except Exception as e:
                log.error("recording retention failed: %s", e)
            await asyncio.sleep(3600)

    async def _tune_delay(self) -> None:
        """Feed the fleet's margins to the delay tuner each second; a change of a channel's D goes into every frame
        the hub signs for it from now on (the schedule starts a second later, so every site has it in time)."""
        with self.db.session() as s:
            load_delay_auto(s, self.delay_tuner)
        while True:
            await asyncio.sleep(1.0)
            try:
                self._tune_delay_once(time.time_ns())  # the hub's clock is the broadcast clock
            except Exception:
                log.exception("the delay tuner failed this second; it goes on")

    def _tune_delay_once(self, now: int) -> None:
        for name in self.fleet.names():
            report = self.fleet.telemetry(name)
            if report is not None:
                self.delay_tuner.on_telemetry(report, now)
        for channel, schedule in self.delay_tuner.decide(now).items():
            assert self.signer is not None
            self.signer.delays[channel] = schedule
            log.info(
                "channel %d: D %.0f -> %.0f ms over %.1f s of stream from %d",
                channel,
                schedule.old_delay_ns / 1e6,
                schedule.new_delay_ns / 1e6,
                schedule.ramp_ns / 1e9,
                schedule.from_ts_ns,
            )
            self.events.publish({"type": "delay", "channel": channel, "delay_ms": schedule.new_delay_ns / 1e6})

    def _apply_retention(self) -> None:
        with self.db.session() as s:
            setting = s.get(Setting, "retention_days")
            days = int(setting.value) if setting is not None and setting.value.isdigit() else 0
            if days:
                apply_retention(s, self.recordings_dir, days, utcnow())

    # -- run / stop ---------------------------------------------------------------------------------------
    async def serve_forever(self, duration: float | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        if self.telephone is not None:
            with contextlib.suppress(Exception):
                await self.telephone.stop()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._uvicorn_tls is not None:
            self._uvicorn_tls.should_exit = True
        if self.cap is not None:
            with contextlib.suppress(Exception):
                await self.cap.close()
        if self.golive is not None:
            with contextlib.suppress(Exception):
                await self.golive.close()
        if self.talkback is not None:
            with contextlib.suppress(Exception):
                await self.talkback.close()
        if self.addresses is not None:
            with contextlib.suppress(Exception):
                await self.addresses.close()
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                await self.monitor.stop()
        if self.receipts is not None:
            with contextlib.suppress(Exception):
                await self.receipts.stop()
        # uvicorn was told to exit and shuts its connections down itself; the others are cancelled.
        http_tasks = [t for t in self._tasks if t.get_name() == "uvicorn"]
        await cancel_and_wait(*(t for t in self._tasks if t.get_name() != "uvicorn"))
        for t in http_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5):
                    await t
            await cancel_and_wait(t)  # still serving after 5 s: cancelled
        self._tasks.clear()
        if self.icecast is not None:
            with contextlib.suppress(Exception):
                await self.icecast.close()
        if self.time_service is not None:
            with contextlib.suppress(Exception):
                stopping = self.time_service.stop()
                await (self.media.run(stopping) if self.media is not None else stopping)
        if self.media is not None:
            with contextlib.suppress(Exception):
                await self.media.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.nc.drain()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        self.db.dispose()


def copy_media(media_dir: Path, files: list[Path]) -> None:
    media_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = media_dir / f.name
        if not dest.exists():
            shutil.copyfile(f, dest)
