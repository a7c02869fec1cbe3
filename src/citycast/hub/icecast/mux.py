"""Opus packets from the bus into the bytes an Icecast mount carries: Ogg Opus (no re-encoding) or MP3.

Ogg: the bus's Opus packets are muxed by PyAV's ogg muxer as they are, behind the ingest encoder's OpusHead
(the same template trick as the recorder: a stream copied from a template is never opened, so no encoder
exists and the head we give is the one written). A new title starts a new logical stream (an Ogg chain, RFC
3533 §4 and RFC 7845 §3): EOS of the old stream, then OpusHead and OpusTags with ``TITLE=`` of the new one.
Icecast reads the OpusTags of each chained stream as the mount's title, and players show it.

MP3: for receivers that know nothing newer (old car radios' and hotel sets' web-radio modules). The Opus
packets are decoded and encoded by libmp3lame through PyAV; the title goes to Icecast's metadata admin call
instead (an MP3 stream carries none of its own).

Both write into memory; `take()` returns what is ready to send. Not thread-safe: one mount, one thread.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
import numpy as np

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.codec import OpusDecoder, parse_opus_head

__all__ = ["Mp3Mux", "OggOpusMux", "StreamMux"]

OGG_PAGE_DURATION_US = 100_000
"""A page every 100 ms of audio: Icecast forwards whole pages, so this is what the mount adds to latency."""

_TIME_BASE = Fraction(1, SAMPLE_RATE)


class _Sink(io.RawIOBase):
    """Where PyAV writes: a buffer drained by `take`. Not seekable, so the muxers write a pure stream."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += b
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class StreamMux:
    """What a mount's streamer needs of a muxer."""

    content_type = "application/octet-stream"
    title_in_stream = False  # True: `start(title)` puts the title into the stream itself

    def start(self, title: str) -> None:
        """Begin a stream (after a (re)connection, or for a new title where `title_in_stream`)."""
        raise NotImplementedError

    def packet(self, packet: bytes | None) -> None:
        """One 20 ms Opus packet, or None for 20 ms of silence."""
        raise NotImplementedError

    def take(self) -> bytes:
        """The bytes muxed since the last call."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class OggOpusMux(StreamMux):
    content_type = "audio/ogg"
    title_in_stream = True

    def __init__(self, opus_head: bytes, silence: bytes) -> None:
        parse_opus_head(opus_head)  # a bad head is refused here, not at the first packet
        self.opus_head = opus_head
        self.silence = silence  # one 20 ms Opus packet of digital silence, from the same encoder settings
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._pts = 0

    def start(self, title: str) -> None:
        self._end_stream()
        channels = parse_opus_head(self.opus_head)[0]
        template_box: Any = av.open(io.BytesIO(), "w", format="ogg")
        try:
            template = template_box.add_stream("libopus", rate=SAMPLE_RATE)
            container: Any = av.open(
                self._sink,
                "w",
                format="ogg",
                options={"page_duration": str(OGG_PAGE_DURATION_US), "flush_packets": "1"},
            )
            stream = container.add_stream_from_template(template)
            ctx = stream.codec_context
            ctx.extradata = self.opus_head
            ctx.sample_rate = SAMPLE_RATE
            ctx.layout = "mono" if channels == 1 else "stereo"
            stream.time_base = _TIME_BASE
            if title:
                stream.metadata["title"] = title
                container.metadata["title"] = title
            container.start_encoding()
        finally:
            template_box.close()
        self._container, self._stream, self._pts = container, stream, 0

    def packet(self, packet: bytes | None) -> None:
        if self._container is None:
            raise RuntimeError("start() first")
        p = av.Packet(packet if packet is not None else self.silence)
        p.stream = self._stream
        p.time_base = _TIME_BASE
        p.pts = p.dts = self._pts
        p.duration = FRAME_SAMPLES
        self._container.mux(p)
        self._pts += FRAME_SAMPLES

    def take(self) -> bytes:
        return self._sink.take()

    def _end_stream(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()  # the last page with its end-of-stream flag goes into the sink

    def close(self) -> None:
        self._end_stream()


class Mp3Mux(StreamMux):
    content_type = "audio/mpeg"

    def __init__(self, bitrate: int = 64_000) -> None:
        self.bitrate = bitrate
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._decoder = OpusDecoder()
        self._pts = 0

    def start(self, title: str) -> None:
        self._end_stream()
        self._decoder.reset()
        container: Any = av.open(self._sink, "w", format="mp3", options={"flush_packets": "1", "write_xing": "0"})
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE)
        stream.codec_context.layout = "mono"
        stream.codec_context.bit_rate = self.bitrate
        container.start_encoding()
        self._container, self._stream, self._pts = container, stream, 0

    def packet(self, packet: bytes | None) -> None:
        if self._container is None:
            raise RuntimeError("start() first")
        pcm = self._decoder.decode(packet) if packet is not None else np.zeros(FRAME_SAMPLES, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += pcm.size
        for p in self._stream.encode(frame):
            self._container.mux(p)

    def take(self) -> bytes:
        return self._sink.take()

    def _end_stream(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            for p in self._stream.encode(None):
                container.mux(p)
            container.close()

    def close(self) -> None:
        self._end_stream()
