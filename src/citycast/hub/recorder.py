"""Recordings: every address written to Ogg Opus from the very packets that went out, never re-encoded.

What is in the file is what the sites were sent. Each verified frame's Opus packets are muxed by PyAV into an
Ogg stream whose OpusHead is the one the ingest encoder produced (its pre-skip is what makes the decoded
recording line up with the source). Nothing is decoded or encoded here.

Timeline. A packet's place in the file comes from its broadcast timestamp, not from arrival order: a packet
older than what is already written (a duplicate, a late straggler) is skipped, and a hole (frames lost on the
bus, ingest stalled) is filled with TOC-only Opus packets, which RFC 6716 defines as a frame with no data (DTX /
lost) and every decoder renders as silence or concealment. So a recording lasts exactly as long as the address
did and "minute 12" of the file is minute 12 of the address. Granule positions stay contiguous, which is what
Ogg Opus players expect.

Crash safety. The Ogg muxer closes a page every `PAGE_DURATION_US` of audio and `flush_packets` hands each page
to the kernel at once, so a killed hub (SIGKILL; the kernel keeps what was written) loses at most about two
pages, ≈ 0.5 s. Closing the writer also fsyncs.

Failures (a full disk, a vanished directory) are logged and counted on the writer; `write_frame` never raises
into the audio path.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import io
import logging
import os
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any

import av
import av.error
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from citycast.hub.db.models import Recording
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.codec import OpusEncoder, parse_opus_head, toc_frame_samples
from citycast.protocol.frame import MAX_FRAME_SIZE, Frame, FrameError, FrameVerifier, is_fresh, parse_frame
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import frame_rejection

__all__ = [
    "MAX_GAP_FILL_NS",
    "PAGE_DURATION_US",
    "ChannelRecorder",
    "Recorder",
    "RecordingWriter",
    "apply_retention",
    "default_opus_head",
]

log = logging.getLogger(__name__)

PAGE_DURATION_US = 250_000
"""Ogg page length in audio time. Measured with this muxer: the newest audio on disk lags the newest packet
muxed by at most two pages (0.5 s here, 0.9 s with 0.5 s pages, 1.8 s with FFmpeg's default 1 s)."""

MAX_GAP_FILL_NS = 600 * 1_000_000_000
"""A hole longer than this (ten minutes) is filled only up to it, so one absurd timestamp cannot make the
writer spin out hours of filler inside the event loop; `gap_truncated_ns` reports what was cut."""

_TIME_BASE = Fraction(1, SAMPLE_RATE)
_CELT_FB_20MS_TOC = 31 << 3  # RFC 6716 config 31: CELT fullband 20 ms, code 0 (one frame)

_default_head: bytes | None = None


def default_opus_head() -> bytes:
    """The OpusHead our ingest encoder writes (48 kHz mono, its pre-skip read from libopus, never assumed)."""
    global _default_head
    if _default_head is None:
        _default_head = OpusEncoder().extradata
    return _default_head


def _open_ogg(path: Path, opus_head: bytes) -> tuple[Any, Any]:
    """An Ogg container at ``path`` with one Opus stream carrying ``opus_head``; header pages written."""
    channels = parse_opus_head(opus_head)[0]
    # A stream made by add_stream() would have its libopus encoder opened when the file starts, and the encoder
    # replaces the extradata with its own OpusHead. A stream copied from a template is marked as initialised
    # and never opened, so the OpusHead we give is the one written, and no encoder exists at all.
    template_box: Any = av.open(io.BytesIO(), "w", format="ogg")
    try:
        template = template_box.add_stream("libopus", rate=SAMPLE_RATE)
        container: Any = av.open(
            str(path),
            "w",
            format="ogg",
            options={"page_duration": str(PAGE_DURATION_US), "flush_packets": "1"},
        )
        try:
            stream = container.add_stream_from_template(template)
            ctx = stream.codec_context
            ctx.extradata = opus_head
            ctx.sample_rate = SAMPLE_RATE
            ctx.layout = "mono" if channels == 1 else "stereo"
            stream.time_base = _TIME_BASE
            container.start_encoding()
        except BaseException:
            container.close()
            raise
    finally:
        template_box.close()
    return container, stream


class RecordingWriter:
    """One recording: verified frames of one channel in, Ogg Opus out. Not thread-safe; one writer per file.

    Counters: `frames` written, `packets` written (real ones), `filled_packets` (20 ms TOC-only packets in
    holes), `skipped_packets` (duplicates or older than what is written), `rejected` (frames that are not for
    this recording: malformed bytes, another channel), `errors` (I/O failures; the first stops the writer and
    sets `error`).
    """

    def __init__(self, path: Path, name: str, channel: int, opus_head: builtins.bytes) -> None:
        self.path = path
        self.name = name
        self.channel = channel
        self.opus_head = opus_head
        self.frames = 0
        self.packets = 0
        self.filled_packets = 0
        self.skipped_packets = 0
        self.rejected = 0
        self.errors = 0
        self.error: str | None = None
        self.gap_truncated_ns = 0
        self.closed = False
        self._samples = 0  # pts of the next packet, 48 kHz samples since the start
        self._next_ts_ns: int | None = None  # broadcast time the next packet should start at
        # Broadcast time of the file's first sample (pts 0): what ties "second s of the file" to the city's clock.
        # The recording is opened before the address's first frame exists, so its row's start is earlier.
        self.first_ts_ns: int | None = None
        self._last_toc = _CELT_FB_20MS_TOC
        self._final_bytes = 0
        self._container, self._stream = _open_ogg(path, opus_head)

    @property
    def duration_s(self) -> float:
        """Audio written so far (holes included), in seconds."""
        return self._samples / SAMPLE_RATE

    @property
    def bytes(self) -> int:
        """Size of the file on disk now."""
        if self.closed:
            return self._final_bytes
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    @property
    def failed(self) -> bool:
        return self.error is not None

    def write_frame(self, frame: Frame | builtins.bytes) -> bool:
        """Append one frame (already verified by the caller, as published). True if any packet was written.

        Never raises: malformed bytes and frames of another channel are counted in `rejected`, I/O failures in
        `errors`.
        """
        if self.closed or self.error is not None:
            return False
        if not isinstance(frame, Frame):
            try:
                frame, _signature = parse_frame(frame)
            except FrameError as e:
                self.rejected += 1
                log.debug("recording %s: malformed frame: %s", self.name, e)
                return False
        if frame.channel != self.channel:
            self.rejected += 1
            return False
        wrote = False
        try:
            for i, packet in enumerate(frame.packets):
                wrote |= self._write_packet(frame.packet_ts(i), frame.packet_ns, packet)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self._fail(e)
            return False
        if wrote:
            self.frames += 1
        return wrote

    def _write_packet(self, ts_ns: int, packet_ns: int, packet: builtins.bytes) -> bool:
        if self._next_ts_ns is not None:
            ahead = ts_ns - self._next_ts_ns
            if ahead < -packet_ns // 2:  # already have this stretch of audio
                self.skipped_packets += 1
                return False
            if ahead > FRAME_NS // 2:
                self._fill(ahead)
        samples = round(packet_ns * SAMPLE_RATE / 1_000_000_000)
        if self.first_ts_ns is None:
            self.first_ts_ns = ts_ns
        self._mux(packet, samples)
        self.packets += 1
        self._last_toc = packet[0]
        self._next_ts_ns = ts_ns + packet_ns
        return True

    def _fill(self, gap_ns: int) -> None:
        if gap_ns > MAX_GAP_FILL_NS:
            self.gap_truncated_ns += gap_ns - MAX_GAP_FILL_NS
            log.warning(
                "recording %s: a %.0f s hole in channel %d; filling only %.0f s of it",
                self.name,
                gap_ns / 1e9,
                self.channel,
                MAX_GAP_FILL_NS / 1e9,
            )
            gap_ns = MAX_GAP_FILL_NS
        # Keep the mode of the last real packet (a decoder conceals in it) when it is a 20 ms frame.
        toc = self._last_toc & 0xFC if toc_frame_samples(self._last_toc) == FRAME_SAMPLES else _CELT_FB_20MS_TOC
        filler = bytes([toc])
        for _ in range(round(gap_ns / FRAME_NS)):
            self._mux(filler, FRAME_SAMPLES)
            self.filled_packets += 1

    def _mux(self, data: builtins.bytes, samples: int) -> None:
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = _TIME_BASE
        packet.pts = packet.dts = self._samples
        packet.duration = samples
        self._container.mux(packet)
        self._samples += samples

    def _fail(self, e: Exception) -> None:
        self.errors += 1
        self.error = f"{type(e).__name__}: {e}"
        log.error("recording %s (channel %d) stopped: %s", self.name, self.channel, self.error)

    def close(self) -> None:
        """Finish the file (last page, end-of-stream flag) and fsync it. Idempotent; never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self._fail(e)
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._final_bytes = self.path.stat().st_size
        except OSError as e:
            log.warning("recording %s: cannot sync: %s", self.name, e)


def _check_name(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or any(part in ("..", "") for part in rel.parts) or "\\" in name:
        raise ValueError(f"recording name must be a relative path inside the recordings directory, not {name!r}")
    if rel.suffix != ".ogg":
        raise ValueError(f"recording name must end in .ogg, not {name!r}")
    return rel


class Recorder:
    """Makes `RecordingWriter`s under one directory (the hub's recordings directory)."""

    def __init__(self, directory: Path, *, opus_head: bytes | None = None) -> None:
        self.directory = Path(directory)
        self.opus_head = opus_head

    def open(self, name: str, channel: int, *, opus_head: bytes | None = None) -> RecordingWriter:
        """Start a recording at ``directory/name`` (``name`` relative, e.g. ``"2025/06/address-17.ogg"``).

        Raises `ValueError` for a bad name, `FileExistsError` if the file exists (a recording is never
        overwritten), `OSError` if it cannot be created.
        """
        rel = _check_name(name)
        head = opus_head or self.opus_head or default_opus_head()
        parse_opus_head(head)  # a bad head is refused here, not at the first frame
        path = self.directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise FileExistsError(f"recording {name!r} already exists")
        try:
            return RecordingWriter(path, rel.as_posix(), channel, head)
        except av.error.FFmpegError as e:
            raise OSError(f"cannot create recording {name!r}: {e}") from e


def apply_retention(db_session: Session, directory: Path, days: int, now: dt.datetime) -> int:
    """Delete recordings (file and row) that ended more than ``days`` days before ``now``; 0 keeps all.

    A recording that never ended (the hub died while writing it) counts from its start. A missing file is not
    an error (the row still goes); a path that would leave ``directory`` is never touched. Returns the number
    of rows deleted. The caller commits.
    """
    if days < 0:
        raise ValueError(f"retention days must be >= 0, got {days}")
    if days == 0:
        return 0
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cutoff = now.astimezone(dt.UTC) - dt.timedelta(days=days)
    root = Path(directory).resolve()
    old = db_session.scalars(
        select(Recording).where(func.coalesce(Recording.ended_at, Recording.started_at) < cutoff)
    ).all()
    deleted = 0
    for recording in old:
        path = (root / recording.path).resolve()
        if path.is_relative_to(root) and path != root:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("retention: cannot delete %s: %s", path, e)
                continue  # keep the row so the file is not orphaned; retried next time
        else:
            log.warning("retention: recording %d has a path outside the directory: %r", recording.id, recording.path)
        db_session.delete(recording)
        deleted += 1
    db_session.flush()
    return deleted


class ChannelRecorder:
    """Records one channel from the bus: subscribes to ``<prefix>.audio.<channel>``, verifies each message with
    the trusted keys, and writes what passes. Unsigned, foreign-signed, malformed or other-channel messages are
    counted in `rejected` by reason and never reach the file.

    With a ``clock`` (broadcast time, ns), frames that are not fresh are refused too, so a replay of an old
    address cannot open a new recording.
    """

    def __init__(
        self,
        nc: Client,
        writer: RecordingWriter,
        verifier: FrameVerifier,
        *,
        subjects: Subjects | None = None,
        clock: Callable[[], int] | None = None,
        max_age_ns: int = 5_000_000_000,
        max_future_ns: int = 5_000_000_000,
    ) -> None:
        self.nc = nc
        self.writer = writer
        self.verifier = verifier
        self.subject = (subjects or Subjects()).audio(writer.channel)
        self.clock = clock
        self.max_age_ns = max_age_ns
        self.max_future_ns = max_future_ns
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        if self._sub is not None:
            return
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_message, pending_msgs_limit=16384)

    async def _on_message(self, msg: Msg) -> None:
        self.on_frame_bytes(msg.data)

    def on_frame_bytes(self, data: bytes) -> bool:
        """Verify and write one message. Never raises. True if it reached the file."""
        self.received += 1
        if len(data) > MAX_FRAME_SIZE:
            self.rejected["oversized"] += 1
            return False
        try:
            frame = self.verifier.verify(data)
        except FrameError as e:
            self.rejected[frame_rejection(e).value] += 1
            return False
        if frame.channel != self.writer.channel:
            self.rejected["wrong_channel"] += 1
            return False
        if self.clock is not None and not is_fresh(
            frame, self.clock(), max_age_ns=self.max_age_ns, max_future_ns=self.max_future_ns
        ):
            self.rejected["stale"] += 1
            return False
        return self.writer.write_frame(frame)

    async def stop(self) -> None:
        """Unsubscribe, write what already arrived (drain), and close the file."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                async with asyncio.timeout(2.0):
                    await sub.drain()  # type: ignore[no-untyped-call]
            except Exception as e:  # a closed connection or a slow drain must not keep the file open
                log.debug("recording %s: drain failed: %r", self.writer.name, e)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        # Nothing else touches the writer now; its last page and fsync need not hold up the event loop.
        await asyncio.to_thread(self.writer.close)

    async def close(self) -> None:
        """`stop`, under the name `hub.addresses.RecordingHandle` expects."""
        await self.stop()
