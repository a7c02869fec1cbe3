"""What is on air, where. Each address gets its own channel; each zone plays the highest-priority address that
targets it (emergency > live > scheduled > fill; the newer of equals), or its own idle channel. The result is
written as desired state, which the sites follow: pre-emption and restoring are just channel changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.client import Client
from sqlalchemy import select

from citycast.hub.chime import chime_blocks, load_chime
from citycast.hub.db.engine import Database
from citycast.hub.db.models import PRIORITY_RANK, Address, AddressStatus, Priority, Site, Zone, utcnow
from citycast.hub.desired import DesiredStore
from citycast.ingest.broadcaster import Broadcaster
from citycast.ingest.pacing import FramePacer, packets_for_delay
from citycast.media.audio import FRAME_NS
from citycast.media.render import Samples
from citycast.media.sources import (
    FileSource,
    LineInSource,
    MarkerSource,
    Source,
    SourceError,
    ToneSource,
    open_source,
)
from citycast.protocol.desired import DesiredState
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.tasks import cancel_and_wait

if TYPE_CHECKING:
    from citycast.hub.media_plane import MediaPlane

log = logging.getLogger(__name__)

BUILTIN_SOURCES = {
    "marker": "Marker chirps (every second)",
    "tone": "Test tone 440 Hz",
    "line-in": "Line-in (the hub's audio input)",
}
MEDIA_SUFFIXES = {".wav", ".mp3", ".ogg", ".opus", ".flac", ".m4a", ".aac", ".webm"}
NO_CHANNEL = 0  # sites outside every zone listen here, where nothing is ever sent


class RecordingHandle(Protocol):
    async def close(self) -> None: ...


RecordFactory = Callable[[int, int, str], Awaitable[RecordingHandle]]
FleetSnapshot = Callable[[], Iterable[dict[str, Any]]]
Publish = Callable[[dict[str, Any]], None]


class PublishLateness:
    """How late each message of an address left against its schedule: a histogram in 0.1 ms bins up to
    `LIMIT_MS` (and one bin beyond), plus the exact maximum. Recording is a few integer operations, so the
    broadcaster can afford it on every frame of a day-long address; memory does not grow with its length."""

    BIN_MS = 0.1
    LIMIT_MS = 500.0

    def __init__(self) -> None:
        self.bins = [0] * (int(self.LIMIT_MS / self.BIN_MS) + 1)
        self.count = 0
        self.max_ns = 0

    def record(self, lag_ns: int) -> None:
        lag_ns = max(0, lag_ns)
        self.bins[min(len(self.bins) - 1, lag_ns // 100_000)] += 1
        self.count += 1
        self.max_ns = max(self.max_ns, lag_ns)

    def percentile(self, q: float) -> float:
        """The `q`-th percentile in ms (the upper edge of its bin; the maximum for the last bin)."""
        if self.count == 0:
            return 0.0
        rank = max(1, round(q / 100 * self.count))
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= rank:
                return self.max_ns / 1e6 if i == len(self.bins) - 1 else min((i + 1) * self.BIN_MS, self.max_ns / 1e6)
        return self.max_ns / 1e6

    def summary(self) -> dict[str, float]:
        return {
            "n": self.count,
            "p50": round(self.percentile(50), 2),
            "p99": round(self.percentile(99), 2),
            "max": round(self.max_ns / 1e6, 2),
        }


_END = object()


class PrefetchedBlocks:
    """A source's blocks read and decoded ahead in a thread of its own, so neither event loop waits on the disk
    or on FFmpeg: the media loop takes ready blocks from a bounded queue (`ahead` blocks, 1 s by default)."""

    def __init__(self, blocks: Iterator[Samples], *, ahead: int = 50, stall_s: float = 5.0) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=ahead)
        self._closed = threading.Event()
        self._stall_s = stall_s
        self._thread = threading.Thread(target=self._fill, args=(blocks,), name="address-decode", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, blocks: Iterator[Samples]) -> None:
        end: object = _END
        try:
            for block in blocks:
                if not self._put(block):
                    return
        except Exception as e:  # handed to the reader, who ends the address with the reason
            end = e
        self._put(end)

    def __iter__(self) -> Iterator[Samples]:
        return self

    def __next__(self) -> Samples:
        try:
            item = self._queue.get(timeout=self._stall_s)
        except queue.Empty:
            raise SourceError(f"the source gave no audio for {self._stall_s:.0f} s") from None
        if item is _END:
            raise StopIteration
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._closed.set()


@dataclass
class OnAir:
    id: int
    title: str
    source: str
    speaker: str
    priority: Priority
    zone_ids: frozenset[int]
    channel: int
    order: int  # start order: the newer of two equal priorities wins
    started_at: dt.datetime
    external: bool = False  # the audio comes from elsewhere (a phone call, `citycast ingest`), not from the hub
    status: AddressStatus = AddressStatus.live
    reached: int = 0
    task: asyncio.Task[None] | None = None
    recording: RecordingHandle | None = None
    stopping: bool = False
    ts0_ns: int | None = None  # broadcast time of the first sample, once the hub's own broadcast has begun
    # What the sites are told (desired state `start_ns`, `end_ns`): the first sample's timestamp, chosen ahead when
    # the hub paces the audio (the zone's lead), else the instant it went on air; where its last sample ends.
    start_ns: int | None = None
    end_ns: int | None = None
    lateness: PublishLateness = field(default_factory=PublishLateness)
    # Only these sites of its zones play it (a CAP alert's area); None: every site of its zones.
    sites: frozenset[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "source": self.source,
            "speaker": self.speaker,
            "priority": self.priority.value,
            "channel": self.channel,
            "zone_ids": sorted(self.zone_ids),
            "status": self.status.value,
            "started_at": self.started_at.isoformat(),
            "sites_reached": self.reached,
            "ts0_ns": self.ts0_ns,
        }


def zone_owners(on_air: Iterable[OnAir], zone_ids: Iterable[int]) -> dict[int, OnAir | None]:
    """Which address each zone plays. Pure: the whole pre-emption policy is here."""
    best: dict[int, OnAir | None] = dict.fromkeys(zone_ids)
    for a in on_air:
        if a.stopping or a.sites is not None:  # an address for some sites only never owns a whole zone
            continue
        for z in a.zone_ids:
            if z not in best:
                continue
            cur = best[z]
            if cur is None or (PRIORITY_RANK[a.priority], a.order) > (PRIORITY_RANK[cur.priority], cur.order):
                best[z] = a
    return best


def site_owner(on_air: Iterable[OnAir], zone_owner: OnAir | None, zone_id: int, site: str) -> OnAir | None:
    """Which address a site plays: its zone's owner, unless an address for some sites only (see `OnAir.sites`)
    names this site and outranks it. Pure, like `zone_owners`."""
    best = zone_owner
    for a in on_air:
        if a.stopping or a.sites is None or site not in a.sites or zone_id not in a.zone_ids:
            continue
        if best is None or (PRIORITY_RANK[a.priority], a.order) > (PRIORITY_RANK[best.priority], best.order):
            best = a
    return best


def _limit(blocks: Iterator[Samples], seconds: float | None) -> Iterator[Samples]:
    if seconds is None:
        return blocks
    return itertools.islice(blocks, max(1, round(seconds * 1e9 / FRAME_NS)))


class AddressManager:
    def __init__(
        self,
        *,
        db: Database,
        nc: Client,
        subjects: Subjects,
        desired: DesiredStore,
        signer: FrameSigner,
        media_dir: Path,
        record: RecordFactory | None = None,
        fleet_snapshot: FleetSnapshot | None = None,
        publish: Publish | None = None,
        channel_pool: range = range(1000, 2000),
        delay_ms: float = 80.0,
        clock: Callable[[], int] = time.time_ns,
        packets_per_message: int | None = None,
        media: MediaPlane | None = None,
    ) -> None:
        """With `media`, every broadcast runs on the media plane's loop with its NATS connection; `nc` (the
        control loop's) then carries only desired state."""
        self.db = db
        self.nc = nc
        self.subjects = subjects
        self.desired = desired
        self.signer = signer
        self.media_dir = media_dir
        self.record = record
        self.fleet_snapshot = fleet_snapshot
        self.publish = publish
        self.channel_pool = channel_pool
        self.delay_ms = delay_ms
        self.clock = clock
        self.packets_per_message = packets_per_message
        self.media = media
        self._on_air: dict[int, OnAir] = {}
        self._order = itertools.count()
        self._lock = asyncio.Lock()  # starts, stops and refreshes change the same assignment: one at a time
        self._reach_task: asyncio.Task[None] | None = None
        self._states: dict[str, DesiredState] = {}  # what each site was last told

    # -- sources ------------------------------------------------------------------------------------------
    def sources(self) -> list[dict[str, str]]:
        out = [{"id": k, "label": v} for k, v in BUILTIN_SOURCES.items()]
        if self.media_dir.is_dir():
            for p in sorted(self.media_dir.iterdir()):
                if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES:
                    out.append({"id": f"file:{p.name}", "label": p.name})
        return out

    def open_source(self, spec: str) -> Source:
        """A source from a console spec. Only the media library's own files: never a path the client chose."""
        if spec == "marker":
            return MarkerSource(1.0)
        if spec == "tone":
            return ToneSource(440.0)
        if spec == "line-in":
            # Stamped from the card's capture times on the hub's broadcast clock (see _broadcast)
            return LineInSource(clock=self.clock)
        if spec.startswith("file:"):
            name = spec[5:]
            if not name or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"bad media file name {name!r}")
            path = self.media_dir / name
            if not path.is_file():
                raise ValueError(f"no media file {name!r} in the library")
            try:
                return open_source(str(path))
            except SourceError as e:
                raise ValueError(str(e)) from None
        raise ValueError(f"unknown source {spec!r}: use marker, tone, line-in or file:<name>")

    # -- reading ------------------------------------------------------------------------------------------
    def live(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in sorted(self._on_air.values(), key=lambda a: a.order) if not a.stopping]

    def get(self, address_id: int) -> OnAir | None:
        return self._on_air.get(address_id)

    def sites_reached(self) -> int:
        return sum(a.reached for a in self._on_air.values())

    # -- starting and stopping ----------------------------------------------------------------------------
    async def start(
        self,
        *,
        title: str,
        source: str,
        zone_ids: list[int],
        priority: Priority,
        speaker: str,
        user_id: int | None,
        duration_s: float | None = None,
        schedule_id: int | None = None,
        blocks: Iterator[Samples] | None = None,
        external: bool = False,
        site_names: list[str] | None = None,
    ) -> int:
        """Put an address on air. Raises ValueError with a message for the user on a bad source or zones.

        `blocks` lets a caller (a phone call) supply the audio; `external` means someone else publishes on the
        address's channel (use `channel_of`)."""
        if duration_s is not None and not 0 < duration_s <= 24 * 3600:
            raise ValueError("duration must be between 0 and 24 hours")
        priority = Priority(priority)
        src: Source | None = None
        if blocks is None and not external:
            # A media file is opened and probed (decoded a little) here: disk and FFmpeg, not for an event loop.
            src = await asyncio.to_thread(self.open_source, source)
        async with self._lock:
            zones = await asyncio.to_thread(self._zone_ids)
            wanted = set(zone_ids) if zone_ids else set(zones)
            unknown = wanted - set(zones)
            if unknown:
                raise ValueError(f"no such zone: {sorted(unknown)}")
            if not wanted:
                raise ValueError("there are no zones to address: create a zone first")
            channel = self._free_channel()
            chime, lead_ms = await asyncio.to_thread(self._zone_intro, sorted(wanted))
            started = utcnow()
            row_id = await asyncio.to_thread(
                self._insert, title, source, speaker, priority, channel, sorted(wanted), user_id, schedule_id, started
            )
            a = OnAir(
                id=row_id,
                title=title,
                source=source,
                speaker=speaker,
                priority=priority,
                zone_ids=frozenset(wanted),
                sites=frozenset(site_names) if site_names is not None else None,
                channel=channel,
                order=next(self._order),
                started_at=started,
                external=external,
            )
            self._on_air[a.id] = a
            if self.record is not None:
                try:
                    a.recording = await self.record(a.id, channel, title)
                except Exception as e:  # an address must go out even if its recording cannot be written
                    log.error("address %d: recording failed to start: %s", a.id, e)
            live = external or isinstance(src, LineInSource)
            if live or lead_ms == 0:
                # Stamped as captured, or no lead wanted: it starts as soon as its first block is read (the
                # broadcaster chooses its first timestamp then, no earlier than this), and is announced as now.
                a.start_ns = self.clock()
                ts0: int | None = None
            else:
                # Starts the zone's lead from now, so the sites hear of it (and power up) before it plays.
                a.start_ns = ts0 = FramePacer.aligned_start(self.clock(), margin_ns=50_000_000 + lead_ms * 1_000_000)
            if not external:
                audio = blocks if blocks is not None else _limit(src.blocks(), duration_s) if src else None
                assert audio is not None
                if chime is not None and not live:
                    audio = itertools.chain(chime_blocks(chime), audio)
                if isinstance(src, FileSource):
                    audio = PrefetchedBlocks(audio)
                captured = src.capture_ns if isinstance(src, LineInSource) else None
                a.task = asyncio.create_task(self._broadcast(a, audio, captured, ts0))
            elif duration_s is not None:
                a.task = asyncio.create_task(self._stop_after(a, duration_s))
            await self._apply()
        self._ensure_reach_task()
        self._announce()
        log.info("address %d %r on air: channel %d, zones %s, %s", a.id, title, channel, sorted(wanted), priority)
        return a.id

    def channel_of(self, address_id: int) -> int:
        return self._on_air[address_id].channel

    async def stop(self, address_id: int, reason: str = "stopped") -> None:
        a = self._on_air.get(address_id)
        if a is None or a.stopping:
            if await asyncio.to_thread(self._is_known, address_id):
                return  # already ended: stopping twice is not an error
            raise KeyError(address_id)
        await self._finish(a, reason, AddressStatus.ended)

    async def close(self) -> None:
        for a in list(self._on_air.values()):
            await self._finish(a, "hub stopped", AddressStatus.ended)
        if self._reach_task is not None:
            await cancel_and_wait(self._reach_task)

    async def _finish(self, a: OnAir, reason: str, status: AddressStatus) -> None:
        if a.stopping:
            return
        a.stopping = True
        # The address ends when it leaves the air (stop asked, source ended), not after the sites' drain below:
        # its logged length is then the length of what was said, as its recording is.
        ended = utcnow()
        task, a.task = a.task, None
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait(task)
        if a.end_ns is None and a.start_ns is not None and self.clock() >= a.start_ns:
            a.end_ns = self.clock()  # stopped: frames are sent as they fall due, so none went out past now
        await self._announce_end(a)
        # Let every site play out what was already sent (D and a margin) before moving it to another channel;
        # the end of the address is then in sync everywhere, as its start was.
        await asyncio.sleep(self.delay_ms / 1000 + 0.3)
        async with self._lock:
            self._on_air.pop(a.id, None)
            await self._apply()
        if a.recording is not None:
            try:
                await a.recording.close()
            except Exception as e:
                log.error("address %d: closing its recording failed: %s", a.id, e)
        await asyncio.to_thread(self._end_row, a.id, status, reason, a.reached, ended)
        self._announce()
        late = a.lateness.summary()
        log.info(
            "address %d ended (%s); %d sites reached; publish lateness p50 %.1f p99 %.1f max %.1f ms",
            a.id,
            reason,
            a.reached,
            late["p50"],
            late["p99"],
            late["max"],
        )

    def packing(self, channel: int) -> int:
        """Opus packets per bus message for an address starting now on `channel` (file, phone or browser): the
        operator's choice, else by the channel's D now (the tuner's signed schedule, else the configured D)."""
        if self.packets_per_message is not None:
            return self.packets_per_message
        schedule = self.signer.delays.get(channel)
        return packets_for_delay(schedule.new_delay_ns if schedule is not None else round(self.delay_ms * 1e6))

    async def _broadcast(
        self,
        a: OnAir,
        blocks: Iterator[Samples],
        captured_ns: Callable[[], int | None] | None = None,
        ts0_ns: int | None = None,
    ) -> None:
        """Pace, encode, sign and publish `blocks`; a live source's frames are stamped from `captured_ns` (the
        capture time of the block just read), so a voice costs D plus a frame, not a grid slot after start.
        `ts0_ns`: the first sample's timestamp when it was chosen ahead (a zone's lead), else the broadcaster
        chooses it on the first block."""
        caster = Broadcaster(
            self.media.nc if self.media is not None else self.nc,
            channel=a.channel,
            signer=self.signer,
            clock=self.clock,
            subjects=self.subjects,
            packets_per_message=self.packing(a.channel),
        )
        status, reason = AddressStatus.ended, "source ended"
        run = caster.run(
            blocks,
            ts0_ns=ts0_ns,
            on_start=lambda report: setattr(a, "ts0_ns", report.ts0_ns),
            on_publish=a.lateness.record,
            captured_ns=captured_ns,
        )
        try:
            # On the media plane the frames are paced, encoded, signed and published on its loop; this task only
            # waits, and cancelling it cancels the broadcast there (MediaPlane.run).
            report = await (self.media.run(run) if self.media is not None else run)
            skipped = report.extra.get("skipped_frames", 0)
            a.end_ns = report.ts0_ns + (report.packets + (skipped if isinstance(skipped, int) else 0)) * FRAME_NS
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("address %d: source failed: %s", a.id, e)
            status, reason = AddressStatus.failed, f"source failed: {e}"
        finally:
            if isinstance(blocks, PrefetchedBlocks):
                blocks.close()
        a.task = None
        asyncio.get_running_loop().create_task(self._finish(a, reason, status))

    async def _stop_after(self, a: OnAir, seconds: float) -> None:
        await asyncio.sleep(seconds)
        a.task = None
        asyncio.get_running_loop().create_task(self._finish(a, "duration reached", AddressStatus.ended))

    # -- desired state ------------------------------------------------------------------------------------
    async def refresh_sites(self, names: list[str] | None = None) -> None:
        """Recompute and publish desired state (after volume, mute or zone changes in the database)."""
        async with self._lock:
            await self._apply(names)

    async def _apply(self, names: list[str] | None = None) -> None:
        zones, sites = await asyncio.to_thread(self._load_sites, names)
        owners = zone_owners(self._on_air.values(), zones)
        for a in self._on_air.values():
            if a.stopping:
                continue
            playing = any(owner is a for owner in owners.values())
            if a.sites is not None:
                if names is not None:
                    continue  # only some sites were loaded: whether it plays anywhere is not known here
                on_air = self._on_air.values()
                playing = any(site_owner(on_air, owners.get(z), z, n) is a for n, z, *_ in sites if z is not None)
            new = AddressStatus.live if playing else AddressStatus.preempted
            if new is not a.status:
                a.status = new
                await asyncio.to_thread(self._set_status, a.id, new)
        for name, zone_id, volume, muted, fallback in sites:
            owner: OnAir | None = None
            if zone_id is None:
                channel = NO_CHANNEL
            else:
                owner = site_owner(self._on_air.values(), owners.get(zone_id), zone_id, name)
                channel = owner.channel if owner is not None else zones[zone_id]
            state = DesiredState(
                channel=channel,
                volume=max(0.0, min(2.0, volume)),
                muted=muted,
                fallback="silence" if fallback == "silence" else "default",
                start_ns=owner.start_ns if owner is not None else None,
                end_ns=owner.end_ns if owner is not None and owner.start_ns is not None else None,
            )
            await self._put(name, state)

    async def _put(self, name: str, state: DesiredState) -> None:
        self._states[name] = state
        try:
            await self.desired.put(name, state)
        except Exception as e:  # the bus is down: the next change or refresh writes it again
            log.warning("desired state for %s not written: %s", name, e)

    async def _announce_end(self, a: OnAir) -> None:
        """Tell the sites playing `a` where it ends, before they are moved off it (after D and the drain), so
        they switch their amplifiers off a hold time after its last sample rather than after the drain."""
        if a.end_ns is None or a.start_ns is None:
            return
        async with self._lock:
            for name, state in list(self._states.items()):
                if state.channel == a.channel and state.start_ns == a.start_ns and state.end_ns != a.end_ns:
                    await self._put(name, replace(state, end_ns=max(a.end_ns, a.start_ns)))

    # -- reach --------------------------------------------------------------------------------------------
    def _ensure_reach_task(self) -> None:
        if self._reach_task is None or self._reach_task.done():
            self._reach_task = asyncio.create_task(self._follow_reach())

    async def _follow_reach(self) -> None:
        """Sites reached = the most sites seen playing the address's channel at once, from telemetry."""
        while self._on_air:
            await asyncio.sleep(1.0)
            if self.fleet_snapshot is None:
                continue
            playing: dict[int, int] = {}
            for view in self.fleet_snapshot():
                if view.get("state") in ("playing", "muted"):
                    ch = int(view.get("channel", -1))
                    playing[ch] = playing.get(ch, 0) + 1
            changed = False
            for a in self._on_air.values():
                n = playing.get(a.channel, 0)
                if n > a.reached:
                    a.reached = n
                    changed = True
            if changed:
                self._announce()

    def _announce(self) -> None:
        if self.publish is not None:
            self.publish({"type": "addresses", "addresses": self.live()})

    # -- database (called in a worker thread) --------------------------------------------------------------
    def _free_channel(self) -> int:
        used = {a.channel for a in self._on_air.values()}
        for ch in self.channel_pool:
            if ch not in used:
                return ch
        raise ValueError(f"too many addresses at once (at most {len(self.channel_pool)})")

    def _zone_intro(self, zone_ids: list[int]) -> tuple[Samples | None, int]:
        """The chime of the first of these zones that has one (None: none, or it cannot be read: the address
        goes out without it), and the longest of their start leads (ms)."""
        with self.db.session() as s:
            rows = list(
                s.execute(select(Zone.chime, Zone.start_lead_ms).where(Zone.id.in_(zone_ids)).order_by(Zone.id))
            )
        lead_ms = max((int(r[1] or 0) for r in rows), default=0)
        spec = next((r[0] for r in rows if r[0]), None)
        if spec is None:
            return None, lead_ms
        try:
            return load_chime(spec, self.media_dir), lead_ms
        except ValueError as e:
            log.error("chime %r left out: %s", spec, e)
            return None, lead_ms

    def _zone_ids(self) -> dict[int, int]:
        with self.db.session() as s:
            return {z.id: z.channel for z in s.scalars(select(Zone))}

    def _load_sites(
        self, names: list[str] | None
    ) -> tuple[dict[int, int], list[tuple[str, int | None, float, bool, str | None]]]:
        with self.db.session() as s:
            zones = {z.id: z.channel for z in s.scalars(select(Zone))}
            q = select(Site.name, Site.zone_id, Site.volume, Site.muted, Site.fallback).where(Site.revoked_at.is_(None))
            if names is not None:
                q = q.where(Site.name.in_(names))
            rows = [(r[0], r[1], float(r[2]), bool(r[3]), r[4]) for r in s.execute(q)]
        return zones, rows

    def _insert(
        self,
        title: str,
        source: str,
        speaker: str,
        priority: Priority,
        channel: int,
        zone_ids: list[int],
        user_id: int | None,
        schedule_id: int | None,
        started: dt.datetime,
    ) -> int:
        with self.db.session() as s:
            row = Address(
                title=title,
                source=source,
                speaker=speaker,
                priority=priority,
                channel=channel,
                zone_ids=zone_ids,
                status=AddressStatus.live,
                started_at=started,
                created_by=user_id,
                schedule_id=schedule_id,
            )
            s.add(row)
            s.flush()
            return int(row.id)

    def _set_status(self, address_id: int, status: AddressStatus) -> None:
        with self.db.session() as s:
            row = s.get(Address, address_id)
            if row is not None:
                row.status = status

    def _end_row(self, address_id: int, status: AddressStatus, reason: str, reached: int, ended: dt.datetime) -> None:
        with self.db.session() as s:
            row = s.get(Address, address_id)
            if row is not None:
                row.status = status
                row.ended_at = ended
                row.end_reason = reason[:200]
                row.sites_reached = max(row.sites_reached, reached)

    def _is_known(self, address_id: int) -> bool:
        with self.db.session() as s:
            return s.get(Address, address_id) is not None
