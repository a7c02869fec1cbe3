"""Opus for the data path: one 20 ms float frame in, one packet out (PyAV), and back (libopus itself).

Delay. libopus looks ahead: the first sample fed to the encoder comes out of the decoder `lookahead_samples`
later (312 at 48 kHz with the "audio" application, read from the OpusHead pre-skip, never assumed). The
encoder is otherwise strictly 1:1 (one packet per 20 ms frame, no buffering), so a sample encoded into the
packet stamped T is heard at T + lookahead. Whoever stamps frames decides whether to compensate; the codec
only reports it.

Loss. `OpusDecoder.conceal()` runs Opus packet-loss concealment: libopus given no packet continues the last
decoded audio for the duration asked, in the last packet's mode. A packet shorter than 2 bytes is taken as lost;
a packet that fails to decode never raises: it is concealed and counted in `decode_errors`.

The decoder calls libopus directly (citycast.media.libopus), so a site never imports PyAV; the encoder (ingest,
talkback, recordings) goes through PyAV, imported when the first encoder is made.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any

import numpy as np

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.libopus import LibOpusDecoder
from citycast.media.render import Samples

APPLICATIONS = ("audio", "voip", "lowdelay")
VBR_MODES = ("constrained", "on", "off")

# The longest concealment asked of libopus at once (120 ms, its longest frame); longer ones are made of these.
_PLC_MAX = 5760


def toc_frame_samples(toc: int) -> int:
    """Samples (at 48 kHz) in one frame of a packet whose TOC byte is `toc` (RFC 6716 §3.1)."""
    config = toc >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT-only: 2.5, 5, 10, 20 ms


def parse_opus_head(extradata: bytes) -> tuple[int, int, int]:
    """(channels, pre_skip, input_sample_rate) from an OpusHead (RFC 7845 §5.1)."""
    if len(extradata) < 19 or extradata[:8] != b"OpusHead":
        raise ValueError("not an OpusHead")
    channels = extradata[9]
    pre_skip, rate = struct.unpack_from("<HI", extradata, 10)
    return channels, pre_skip, rate


class OpusEncoder:
    """48 kHz mono Opus, 20 ms per packet; `encode` turns exactly one frame into exactly one packet.

    `vbr` is "constrained" by default: unconstrained VBR ("on") was measured here spending ≈ 96 kbps on
    synthetic speech for a 64 kbps target, which a fleet on cellular links should not be surprised by; "off"
    gives constant-size packets. `packet_loss_pct` > 0 turns on in-band FEC tuned for that expected loss.
    """

    def __init__(
        self,
        bitrate: int = 64_000,
        *,
        application: str = "audio",
        vbr: str = "constrained",
        packet_loss_pct: int = 0,
    ) -> None:
        if application not in APPLICATIONS:
            raise ValueError(f"application must be one of {APPLICATIONS}, not {application!r}")
        if vbr not in VBR_MODES:
            raise ValueError(f"vbr must be one of {VBR_MODES}, not {vbr!r}")
        import av  # only encoders need FFmpeg: a site (decode only) never maps it

        self._av = av
        ctx: Any = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono"
        ctx.format = "flt"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, SAMPLE_RATE)
        options = {"application": application, "frame_duration": "20", "vbr": vbr}
        if packet_loss_pct > 0:
            options |= {"fec": "1", "packet_loss": str(packet_loss_pct)}
        ctx.options = options
        ctx.open()
        self._ctx = ctx
        self._pts = 0
        self.bitrate = bitrate
        self.application = application
        self.extradata: bytes = bytes(ctx.extradata or b"")
        """The OpusHead, for writing these packets into Ogg (or a recording) without re-encoding."""
        _, self.lookahead_samples = parse_opus_head(self.extradata)[:2]
        """Encoder lookahead (OpusHead pre-skip): an encode→decode round trip delays audio by this much."""

    def encode(self, pcm: Samples) -> bytes:
        """Encode exactly FRAME_SAMPLES float32 samples into one Opus packet."""
        data = np.ascontiguousarray(pcm, dtype=np.float32)
        if data.shape != (FRAME_SAMPLES,):
            raise ValueError(f"expected {FRAME_SAMPLES} mono samples, got shape {data.shape}")
        frame = self._av.AudioFrame.from_ndarray(data.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        packets = self._ctx.encode(frame)
        if len(packets) != 1:  # libopus is 1:1 in FFmpeg; anything else would break frame stamping
            raise RuntimeError(f"libopus returned {len(packets)} packets for one frame")
        return bytes(packets[0])


class OpusDecoder:
    """Opus packets to 48 kHz mono float32, with packet-loss concealment; never raises on bad input."""

    def __init__(self) -> None:
        self._dec = LibOpusDecoder(SAMPLE_RATE)
        self._decoded_any = False
        self.decode_errors = 0
        self.concealed_samples = 0

    def decode(self, packet: bytes) -> Samples:
        """Decode one packet into its samples (FRAME_SAMPLES for our 20 ms packets).

        An empty or undecodable packet is concealed for one frame and counted in `decode_errors`.
        """
        if len(packet) < 2:
            if len(packet) == 0:
                self.decode_errors += 1
            return self.conceal()
        out = self._dec.decode(packet)
        if out is None:
            self.decode_errors += 1
            return self.conceal()
        self._decoded_any = True
        return out

    def conceal(self, samples: int = FRAME_SAMPLES) -> Samples:
        """`samples` of Opus packet-loss concealment continuing the last decoded audio.

        `samples` must be a positive multiple of 120 (2.5 ms). Before any packet was decoded this is silence.
        """
        if samples <= 0 or samples % 120:
            raise ValueError(f"conceal() needs a positive multiple of 120 samples, not {samples}")
        self.concealed_samples += samples
        if not self._decoded_any:
            return np.zeros(samples, dtype=np.float32)
        parts: list[Samples] = []
        remaining = samples
        while remaining > 0:
            size = min(remaining, _PLC_MAX)
            out = self._dec.decode(None, size)
            if out is None or out.size != size:  # never expected; keep the length contract whatever libopus did
                out = np.resize(out, size) if out is not None and out.size else np.zeros(size, dtype=np.float32)
            parts.append(out)
            remaining -= size
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def reset(self) -> None:
        """Forget all decoder state (e.g. on a stream change): the next packet decodes from scratch."""
        self._dec.reset()
        self._decoded_any = False
