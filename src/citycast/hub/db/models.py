"""The hub's records: SQLAlchemy 2 models. Alembic migrations in `migrations/` must match these exactly
(a test compares them). Times are UTC, timezone-aware."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware instant, read back as UTC on every backend.

    SQLite has no time zones: SQLAlchemy's plain `DateTime(timezone=True)` drops the offset on write and
    returns naive values, so comparing them with `utcnow()` would raise. This stores UTC and re-attaches it.
    A naive value is refused: it is a bug (local time or UTC?) that would otherwise surface far away."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given for a timezone-aware column; use UTC")
        value = value.astimezone(dt.UTC)
        # SQLite stores text: drop the offset so values sort and compare as text in UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# Named constraints, so later migrations (and SQLite's batch mode, which rebuilds tables) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON}


class Role(enum.StrEnum):
    """Ordered by power: each role may do what the ones after it may."""

    admin = "admin"
    operator = "operator"
    speaker = "speaker"
    viewer = "viewer"


class Priority(enum.StrEnum):
    """Who pre-empts whom on the same zones: emergency > live > scheduled > fill."""

    emergency = "emergency"
    live = "live"
    scheduled = "scheduled"
    fill = "fill"


PRIORITY_RANK = {Priority.emergency: 3, Priority.live: 2, Priority.scheduled: 1, Priority.fill: 0}


class AddressStatus(enum.StrEnum):
    live = "live"  # on air on at least one of its zones
    preempted = "preempted"  # running, but every one of its zones is taken by a higher priority
    ended = "ended"
    failed = "failed"


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # The console's language for this user ("en", "ur": citycast.hub.i18n.LANGUAGES); also their server messages.
    language: Mapped[str] = mapped_column(String(8), default="en", server_default="en")


class Session(Base):
    """A logged-in browser or API client. Only the token's hash is stored."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    user: Mapped[User] = relationship(lazy="joined")


class Zone(Base):
    __tablename__ = "zones"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The channel the zone's sites listen to when no address targets them (fill / idle).
    channel: Mapped[int] = mapped_column(Integer, unique=True)
    color: Mapped[str] = mapped_column(String(16), default="#3b82f6")
    # The last volume/mute set for the whole zone: what the console shows, and what a site joining the zone takes.
    volume: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    muted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The zone's city servers (NATS URLs, each a leafnode over its own long-haul path): an enrolling site is handed
    # all of them and connects to each, playing the first copy of every frame (citycast.site.uplinks).
    city_servers: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Played before every address to the zone, as part of it (citycast.hub.chime): "builtin", "file:<name>" of the
    # media library, or None for none.
    chime: Mapped[str | None] = mapped_column(String(255), default=None)
    # How far ahead of its first sample an address to the zone is announced (desired state `start_ns`), so its
    # sites can power their amplifiers first (citycast.site.amp): the address starts this much later.
    start_lead_ms: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # [a-z0-9-]: also its NATS subject token
    label: Mapped[str] = mapped_column(String(128), default="")  # e.g. "Saddar, Empress Market"
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    zone_id: Mapped[int | None] = mapped_column(ForeignKey("zones.id", ondelete="SET NULL"), index=True)
    nkey_public: Mapped[str | None] = mapped_column(String(64), unique=True)  # the site's NATS user, once enrolled
    enrol_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    enrol_expires_at: Mapped[dt.datetime | None]
    enrolled_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    volume: Mapped[float] = mapped_column(Float, default=1.0)  # linear gain 0..2
    muted: Mapped[bool] = mapped_column(Boolean, default=False)
    fallback: Mapped[str | None] = mapped_column(String(255))
    last_state: Mapped[str] = mapped_column(String(16), default="offline")
    last_seen_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    zone: Mapped[Zone | None] = relationship(lazy="joined")


class Channel(Base):
    """An audio channel on the bus (`<prefix>.audio.<number>`)."""

    __tablename__ = "channels"
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64))
    delay_ms: Mapped[float] = mapped_column(Float, default=80.0)  # the playout delay D of this channel


class Address(Base):
    """One address (a speech, a call to prayer, a warning): who, what, where, when, how far it reached."""

    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(500))  # "marker", "tone", "line-in", "file:<name>", "sip:<from>"
    speaker: Mapped[str] = mapped_column(String(128), default="")
    priority: Mapped[Priority] = mapped_column(Enum(Priority, native_enum=False, length=16))
    channel: Mapped[int] = mapped_column(Integer)
    zone_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    status: Mapped[AddressStatus] = mapped_column(Enum(AddressStatus, native_enum=False, length=16))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    ended_at: Mapped[dt.datetime | None]
    end_reason: Mapped[str] = mapped_column(String(200), default="")
    sites_reached: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("schedules.id", ondelete="SET NULL"))


class Schedule(Base):
    """A recurring address. `rrule` is an RFC 5545 recurrence rule, read with dateutil; `dtstart` is local
    time in `timezone` (so "every Friday 20:00" stays 20:00 across DST changes)."""

    __tablename__ = "schedules"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    rrule: Mapped[str] = mapped_column(String(500))
    dtstart: Mapped[dt.datetime] = mapped_column(DateTime(timezone=False))
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Karachi")
    duration_s: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(500))
    priority: Mapped[Priority] = mapped_column(Enum(Priority, native_enum=False, length=16))
    zone_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[dt.datetime | None]  # the occurrence last started; none before it is run again
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Recording(Base):
    __tablename__ = "recordings"
    id: Mapped[int] = mapped_column(primary_key=True)
    address_id: Mapped[int | None] = mapped_column(ForeignKey("addresses.id", ondelete="SET NULL"), index=True)
    channel: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500), unique=True)  # relative to the recordings directory
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    ended_at: Mapped[dt.datetime | None]
    frames: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    # The broadcast time of the file's first sample, written when the recording closes (None before, for one
    # without audio, and for one a dead hub left open): second s of the file was played at first_sample_at + s.
    first_sample_at: Mapped[dt.datetime | None]


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # offline, underruns, sync_error, rejected_frames, pin_abuse, ...
    severity: Mapped[str] = mapped_column(String(16), default="warning")  # info, warning, critical
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    cleared_at: Mapped[dt.datetime | None]


class SiteStateChange(Base):
    """Every change of a site's state (not every heartbeat): history without a row per second per site."""

    __tablename__ = "site_state_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(200), default="")


class FleetSample(Base):
    """A periodic aggregate of the whole fleet (once a minute by default)."""

    __tablename__ = "fleet_samples"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    by_state: Mapped[dict[str, Any]] = mapped_column(JSON)
    underruns: Mapped[int] = mapped_column(Integer, default=0)  # new underruns across the fleet since last sample
    sync_error_p99_ms: Mapped[float] = mapped_column(Float, default=0.0)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(String(64))  # kept even if the user is deleted
    action: Mapped[str] = mapped_column(String(64))  # e.g. "site.create", "address.start"
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    remote: Mapped[str] = mapped_column(String(64), default="")


class SpeakerPin(Base):
    """A PIN a speaker types on the telephone to go live: who it is for, where it reaches, how loud it may
    pre-empt, and when it is valid. Only an Argon2 hash of the PIN is kept; `pin_hint` (its last two digits) lets
    the console tell PINs apart and lets verification check only the hashes that can match."""

    __tablename__ = "speaker_pins"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(128))  # who: "Imam Saddar mosque"
    pin_hash: Mapped[str] = mapped_column(String(255))
    pin_hint: Mapped[str] = mapped_column(String(2), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    zone_ids: Mapped[list[int]] = mapped_column(JSON, default=list)  # empty: every zone
    priority: Mapped[Priority] = mapped_column(Enum(Priority, native_enum=False, length=16))
    valid_from: Mapped[dt.datetime | None]
    valid_until: Mapped[dt.datetime | None]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    # The language of the telephone prompts the speaker hears once their PIN is known ("en", "ur").
    language: Mapped[str] = mapped_column(String(8), default="en", server_default="en")


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RevokedKey(Base):
    """NATS user keys revoked in the account (carried into the account JWT at every start)."""

    __tablename__ = "revoked_keys"
    __table_args__ = (UniqueConstraint("nkey_public"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    nkey_public: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CapAlert(Base):
    """A CAP message from the authorities (hub/cap/), as received and what became of it. The key (sender,
    identifier, sent) is unique, so the same alert from a second feed is known as a duplicate; a message refused
    before it could be read has no key."""

    __tablename__ = "cap_alerts"
    __table_args__ = (UniqueConstraint("sender", "identifier", "sent", name="uq_cap_alerts_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sender: Mapped[str | None] = mapped_column(String(255))
    identifier: Mapped[str | None] = mapped_column(String(255))
    sent: Mapped[str | None] = mapped_column(String(40))  # as written in the message (the key compares text)
    msg_type: Mapped[str] = mapped_column(String(16), default="")
    status: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    origin: Mapped[str] = mapped_column(String(500), default="")  # the feed URL, or "api:<user or key name>"
    # on_air, updated, cancelled, expired, no_sites, not_actual, refused, recorded
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")  # the error, or what was repaired
    headline: Mapped[str] = mapped_column(String(500), default="")
    priority: Mapped[str | None] = mapped_column(String(16))
    address_id: Mapped[int | None] = mapped_column(ForeignKey("addresses.id", ondelete="SET NULL"), index=True)
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)  # the sites inside its area
    area: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # GeoJSON geometry (lon, lat) of all its areas
    references: Mapped[list[str]] = mapped_column(JSON, default=list)  # "sender,identifier" of earlier messages
    expires_at: Mapped[dt.datetime | None]
    signed: Mapped[bool] = mapped_column(Boolean, default=False)  # signed and verified
    xml: Mapped[str] = mapped_column(Text, default="")


class PlayReceiptRecord(Base):
    """A site's signed proof of play (citycast.protocol.receipts), as the hub took it. The signed bytes are kept
    (`signed`, base64): anyone with the site's enrolled public key can check them again, long after."""

    __tablename__ = "play_receipts"
    # A site re-sends a receipt it saw no answer for: the same one is stored once.
    __table_args__ = (UniqueConstraint("site_id", "stream", "first_ns", "seq", name="uq_play_receipts_span_seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    address_id: Mapped[int] = mapped_column(ForeignKey("addresses.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    channel: Mapped[int] = mapped_column(Integer)
    stream: Mapped[int] = mapped_column(BigInteger)  # u32: more than PostgreSQL's INTEGER holds
    seq: Mapped[int] = mapped_column(Integer)
    final: Mapped[bool] = mapped_column(Boolean)
    first_ns: Mapped[int] = mapped_column(BigInteger)  # stream time of the first sample played
    last_ns: Mapped[int] = mapped_column(BigInteger)  # stream time of the end of the last sample played
    concealed: Mapped[int] = mapped_column(Integer)
    fallback_s: Mapped[float] = mapped_column(Float)
    sync_error_ms: Mapped[float] = mapped_column(Float)
    level_rms_dbfs: Mapped[float] = mapped_column(Float)
    level_peak_dbfs: Mapped[float] = mapped_column(Float)
    sent_ns: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    signed: Mapped[str] = mapped_column(Text)
