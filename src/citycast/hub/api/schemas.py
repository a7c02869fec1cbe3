"""Request and response bodies of the hub's API: the OpenAPI document is generated from these."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from citycast.hub.api.headers import TILE_URL_MAX, checked_tile_url
from citycast.hub.db.models import Priority, Role, Site, Zone
from citycast.protocol.channel import CHANNEL_MAX, CHANNEL_MIN

SITE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # also a NATS subject token: no dots, spaces or wildcards
COLOR_PATTERN = r"^#[0-9a-fA-F]{6}$"
# A zone's chime: the bundled one, or a file of the media library by name (never a path); "" in a change: none.
CHIME_PATTERN = r"^(builtin|file:[^/\\.][^/\\]{0,200})?$"
StartLeadMs = Annotated[int, Field(ge=0, le=10_000)]

MAX_ID = 2**31 - 1  # row ids are 32-bit integers in PostgreSQL (and SQLite refuses anything past 64 bits)
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
Volume = Annotated[float, Field(ge=0.0, le=2.0, description="Linear gain, 0..2")]
Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]
Title = Annotated[str, Field(min_length=1, max_length=200)]
Source = Annotated[str, Field(min_length=1, max_length=500)]
MAX_CITY_SERVERS = 8


def _city_server_url(value: str) -> str:
    """A city server's NATS URL as a site dials it: nats:// or tls://, a host, a port."""
    try:
        parsed = urlparse(value)
        port = parsed.port
    except ValueError as e:
        raise ValueError(f"{value!r} is not a NATS URL: {e}") from None
    if parsed.scheme not in ("nats", "tls") or not parsed.hostname or port is None:
        raise ValueError(f"{value!r} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ValueError(f"{value!r}: a city server URL is scheme, host and port only")
    return value


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("a city server is listed twice")
    return values


CityServerUrl = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_city_server_url)]
CityServers = Annotated[
    list[CityServerUrl],
    Field(
        max_length=MAX_CITY_SERVERS,
        description="The zone's city servers (NATS URLs); an enrolling site connects to every one",
    ),
    AfterValidator(_distinct),
]


class Strict(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str


# OpenAPI `responses` of routes that need a login: 401 without one, 403 with too small a role.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}}


class ValidationErrorOut(BaseModel):
    detail: str
    errors: list[dict[str, Any]] = []


class OkOut(BaseModel):
    ok: bool = True


# -- auth and users


class LoginIn(Strict):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class UserOut(BaseModel):
    id: int
    username: str
    role: Role
    disabled: bool = False
    language: str = "en"  # the console's language for this user (citycast.hub.i18n.LANGUAGES)


class LoginOut(BaseModel):
    token: str
    user: UserOut


class UserIn(Strict):
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=1024)]
    role: Role


class UserPatch(Strict):
    password: Annotated[str | None, Field(min_length=8, max_length=1024)] = None
    role: Role | None = None
    disabled: bool | None = None


# -- zones and sites


class ZoneIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    channel: Annotated[int, Field(ge=CHANNEL_MIN, le=CHANNEL_MAX)]
    color: Annotated[str, Field(pattern=COLOR_PATTERN)] = "#3b82f6"
    city_servers: CityServers = []
    chime: Annotated[str | None, Field(pattern=CHIME_PATTERN)] = None
    start_lead_ms: StartLeadMs = 0


class ZonePatch(Strict):
    name: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    channel: Annotated[int | None, Field(ge=CHANNEL_MIN, le=CHANNEL_MAX)] = None
    color: Annotated[str | None, Field(pattern=COLOR_PATTERN)] = None
    city_servers: CityServers | None = None
    chime: Annotated[str | None, Field(pattern=CHIME_PATTERN)] = None  # "": no chime any more
    start_lead_ms: StartLeadMs | None = None


class ZoneOut(BaseModel):
    id: int
    name: str
    channel: int
    color: str
    volume: float
    muted: bool
    city_servers: list[str] = []
    chime: str | None = None
    start_lead_ms: int = 0


class ControlIn(Strict):
    volume: Volume | None = None
    muted: bool | None = None
    # What a site plays when its stream is lost: its own fallback audio ("default") or nothing ("silence").
    fallback: Literal["default", "silence"] | None = None

    @property
    def empty(self) -> bool:
        return self.volume is None and self.muted is None and self.fallback is None

    def apply_to(self, site: Site | Zone) -> None:
        """Change what was given on one site's (or zone's) row; the rest stays."""
        if self.volume is not None:
            site.volume = self.volume
        if self.muted is not None:
            site.muted = self.muted
        if self.fallback is not None and isinstance(site, Site):
            site.fallback = self.fallback


class ZoneControlOut(BaseModel):
    zone_id: int
    sites: list[str]
    volume: float | None
    muted: bool | None


class SiteOut(BaseModel):
    id: int
    name: str
    label: str
    lat: float
    lon: float
    zone_id: int | None
    zone: str | None
    volume: float
    muted: bool
    fallback: str = "default"
    enrolled: bool
    revoked: bool
    state: str
    channel: int | None = None
    level_rms_dbfs: float | None = None
    level_peak_dbfs: float | None = None
    buffer_ms: float | None = None
    sync_error_ms: float | None = None
    underruns: int | None = None
    concealed: int | None = None
    rejected: int | None = None
    last_seen_s: float | None = None
    sink_error: str | None = None  # the site's audio output failed (it retries): why its loudspeaker is silent
    paths: dict[str, bool] | None = None  # each city server the site is connected through, up or not


class SiteIn(Strict):
    name: Annotated[str, Field(pattern=SITE_NAME_PATTERN)]
    label: Annotated[str, Field(max_length=128)] = ""
    lat: Latitude
    lon: Longitude
    zone_id: DbId | None = None


class SitePatch(Strict):
    label: Annotated[str | None, Field(max_length=128)] = None
    lat: Latitude | None = None
    lon: Longitude | None = None
    zone_id: DbId | None = None


class EnrolTokenOut(BaseModel):
    site: SiteOut
    enrol_token: str
    enrol_command: str
    expires_at: dt.datetime


class RevokeOut(BaseModel):
    site: SiteOut
    nkey_public: str | None


class EnrolIn(Strict):
    token: Annotated[str, Field(min_length=1, max_length=256)]
    nkey_public: Annotated[str, Field(min_length=1, max_length=128)]


class EnrolOut(BaseModel):
    site: str
    prefix: str
    nats_urls: list[str]
    user_jwt: str
    trusted_keys: list[str]
    delay_ms: float
    time_subject: str
    inbox_prefix: str
    hub_ca: str | None = None  # PEM of the hub's TLS CA: the site trusts it alone for NATS (None: plaintext hub)
    # Every city server of the site's zone: the site connects to each (dual-path delivery); empty: it dials nats_urls
    city_servers: list[str] = []


# -- addresses and sources


class SourceOut(BaseModel):
    id: str
    label: str


class AddressIn(Strict):
    title: Title
    source: Source
    zone_ids: list[DbId] = Field(default_factory=list, description="Empty: every zone")
    priority: Priority = Priority.live
    duration_s: Annotated[float | None, Field(gt=0, le=86400.0)] = None


class AddressOut(BaseModel):
    id: int
    title: str
    source: str
    speaker: str
    priority: Priority
    channel: int
    zone_ids: list[int]
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    end_reason: str
    sites_reached: int
    recording_id: int | None
    schedule_id: int | None = None


# -- schedules


class ScheduleIn(Strict):
    title: Title
    rrule: Annotated[str, Field(min_length=1, max_length=500, examples=["FREQ=WEEKLY;BYDAY=FR;BYHOUR=20"])]
    dtstart: dt.datetime = Field(description="Local time in `timezone` (an offset, if given, is converted)")
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = "Asia/Karachi"
    duration_s: Annotated[float, Field(gt=0, le=86400.0)]
    source: Source
    zone_ids: list[DbId] = Field(default_factory=list)
    priority: Priority = Priority.scheduled
    enabled: bool = True


class SchedulePatch(Strict):
    title: Title | None = None
    rrule: Annotated[str | None, Field(min_length=1, max_length=500)] = None
    dtstart: dt.datetime | None = None
    timezone: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    duration_s: Annotated[float | None, Field(gt=0, le=86400.0)] = None
    source: Source | None = None
    zone_ids: list[DbId] | None = None
    priority: Priority | None = None
    enabled: bool | None = None


class ScheduleOut(BaseModel):
    id: int
    title: str
    rrule: str
    dtstart: dt.datetime
    timezone: str
    duration_s: float
    source: str
    zone_ids: list[int]
    priority: Priority
    enabled: bool
    last_run_at: dt.datetime | None
    next_runs: list[dt.datetime]


# -- recordings, settings, alerts, audit, fleet


class RecordingOut(BaseModel):
    id: int
    address_id: int | None
    title: str
    channel: int
    started_at: dt.datetime
    ended_at: dt.datetime | None
    duration_s: float
    bytes: int
    # broadcast time of the file's first sample (second s of the file played at first_sample_at + s); null while
    # recording, and for a recording a hub's crash left open
    first_sample_at: dt.datetime | None = None


class SettingsOut(BaseModel):
    retention_days: int
    tile_url: str = ""  # the console map's tile server (a Leaflet URL template); empty: the offline base map


class SettingsIn(Strict):
    retention_days: Annotated[int, Field(ge=0, le=36500, description="0 keeps recordings for ever")]
    tile_url: Annotated[
        str | None,
        Field(max_length=TILE_URL_MAX, description="https://host/{z}/{x}/{y}.png; empty: none; absent: unchanged"),
        AfterValidator(checked_tile_url),
    ] = None


class AlertOut(BaseModel):
    id: int
    site: str | None
    kind: str
    severity: str
    message: str
    raised_at: dt.datetime
    cleared_at: dt.datetime | None


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    user_id: int | None
    username: str
    action: str
    target: str
    detail: dict[str, Any]
    remote: str


class RegistrationOut(BaseModel):
    aor: str
    status: str  # idle, registering, registered, failed, stopped
    error: str | None
    granted_s: int | None
    expires_in_s: float | None
    next_attempt_in_s: float | None
    requests_sent: int


class TelephoneOut(BaseModel):
    enabled: bool  # False when the hub runs without --sip
    sip: str | None = None  # HOST:PORT it listens on (UDP and TCP)
    calls: int = 0
    live: int = 0  # calls on air (PIN accepted)
    registration: RegistrationOut | None = None  # with --sip-register
    signalling: dict[str, int] = {}  # the counters /metrics shows as citycast_sip_*


class FleetOut(BaseModel):
    by_state: dict[str, int]
    sites_total: int
    on_air: list[dict[str, Any]]
    sites_reached: int


class OnAirOut(BaseModel):
    """An address on air now, as the address manager sees it."""

    id: int
    title: str
    source: str
    speaker: str
    priority: str
    channel: int
    zone_ids: list[int]
    status: str
    started_at: str
    sites_reached: int
    ts0_ns: int | None = None
