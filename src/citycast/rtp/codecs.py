"""Telephony codecs for the SIP side: RTP payloads to 48 kHz mono float32 and back, through PyAV.

Every decoder turns a payload into float32 mono at 48 kHz (the data path's rate) and every encoder takes 48 kHz
float32 of any length and returns one payload per full ptime (20 ms by default) it has gathered.

- PCMU / PCMA (G.711, RFC 3551 §4.5.14): FFmpeg's `pcm_mulaw` / `pcm_alaw` at 8 kHz.
- G.722 (RFC 3551 §4.5.2): FFmpeg's `g722`. SDP and RTP say clock rate 8000 for historical reasons, but the
  audio is sampled at 16 kHz: a 20 ms payload is 160 bytes holding 320 samples while the RTP timestamp steps 160.
- Opus (RFC 7587, always "opus/48000/2" in SDP): libopus through `citycast.media.codec`, decoded to mono.

Rate conversion uses FFmpeg's resampler (libswresample). It holds a few samples of filter delay; the wrapper below
keeps a FIFO primed with that many zeros so each payload maps to exactly `samples × 48000 / rate` output samples
and the latency is constant (≈ 2 ms).

Loss concealment: Opus runs libopus PLC. G.711 and G.722 have no PLC in FFmpeg, so `conceal()` repeats the last
decoded 20 ms with a fade: the first lost 20 ms fades from full to half level, the second from half to silence,
and longer losses are silence. Repeating a waveform fills short gaps far less audibly than silence would, and the
fade keeps a long outage from becoming a 50 Hz buzz.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

import av
import av.error
import numpy as np

from citycast.media.audio import SAMPLE_RATE
from citycast.media.codec import OpusDecoder, OpusEncoder
from citycast.media.convert import AudioConverter
from citycast.media.render import Samples


class CodecError(ValueError):
    """A codec that is not supported, or a parameter it cannot use."""


class CodecLike(Protocol):
    """What a codec choice carries (`sdp.CodecSpec` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def clock_rate(self) -> int: ...


class Decoder(Protocol):
    clock_rate: int
    """RTP timestamp units per second for this codec."""

    def decode(self, payload: bytes) -> Samples:
        """One RTP payload to 48 kHz mono float32; never raises (bad data is concealed)."""
        ...

    def conceal(self, n_samples: int = 960) -> Samples:
        """`n_samples` (a multiple of 120) of 48 kHz audio standing in for lost packets."""
        ...


class Encoder(Protocol):
    clock_rate: int
    payload_type: int | None

    def encode(self, pcm: Samples) -> list[bytes]:
        """Gather 48 kHz mono float32; return one payload per complete ptime gathered."""
        ...

    def timestamp_step(self) -> int:
        """RTP timestamp increment per payload."""
        ...


# name (lower case) -> (FFmpeg codec, audio sample rate, RTP clock rate)
_PCM_CODECS = {"pcmu": ("pcm_mulaw", 8000, 8000), "pcma": ("pcm_alaw", 8000, 8000), "g722": ("g722", 16000, 8000)}
SUPPORTED = ("PCMU", "PCMA", "G722", "opus")


def _to_float(frame: Any) -> Samples:
    data = np.asarray(frame.to_ndarray()).reshape(-1)
    out: Samples = data.astype(np.float32)
    if data.dtype == np.int16:  # G.711 and G.722 decode to s16
        out *= np.float32(1 / 32768)
    return out


class _Resampler:
    """Mono float32 at `src` Hz to float32 at `dst` Hz with constant delay and exact output lengths."""

    def __init__(self, src: int, dst: int) -> None:
        self._src, self._dst = src, dst
        self._swr = AudioConverter(format="flt", layout="mono", rate=dst)
        self._fifo = np.zeros(0, dtype=np.float32)
        self._primed = False
        self._in_total = 0
        self._out_total = 0

    def run(self, pcm: Samples) -> Samples:
        """Resample `pcm`; the result has exactly the samples due for all input so far (no drift)."""
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self._src
        got = [_to_float(f) for f in self._swr.convert(frame)]
        out = np.concatenate([self._fifo, *got]) if got else self._fifo
        self._in_total += pcm.size
        due = self._in_total * self._dst // self._src - self._out_total
        if not self._primed:
            # libswresample withholds its filter delay on the first call: pad it once, at the front
            self._primed = True
            if out.size < due:
                out = np.concatenate([np.zeros(due - out.size, dtype=np.float32), out])
        if out.size < due:  # never expected after priming; keep the length contract
            out = np.concatenate([out, np.zeros(due - out.size, dtype=np.float32)])
        self._fifo = out[due:]
        self._out_total += due
        return out[:due]


class _Fade:
    """Repeat-and-fade concealment over the last decoded 48 kHz audio."""

    FRAME = 960

    def __init__(self) -> None:
        self._last = np.zeros(self.FRAME, dtype=np.float32)
        self._lost = 0  # samples concealed since the last good payload

    def good(self, pcm: Samples) -> None:
        self._lost = 0
        if pcm.size >= self.FRAME:
            self._last = pcm[-self.FRAME :].copy()
        elif pcm.size:
            self._last = np.concatenate([self._last[pcm.size :], pcm])

    def conceal(self, n: int) -> Samples:
        if n <= 0:
            raise ValueError(f"conceal() needs a positive number of samples, not {n}")
        reps = np.resize(self._last, n)
        pos = self._lost + np.arange(n, dtype=np.float32)
        gain = np.clip(1.0 - pos / (2 * self.FRAME), 0.0, 1.0)  # full → silent over 40 ms
        self._lost += n
        out: Samples = (reps * gain).astype(np.float32)
        return out


class PcmDecoder:
    """G.711 µ-law / A-law or G.722 payloads to 48 kHz float32."""

    def __init__(self, name: str) -> None:
        try:
            self._codec, self._rate, self.clock_rate = _PCM_CODECS[name.lower()]
        except KeyError:
            raise CodecError(f"not a PCM/G.722 codec: {name!r}") from None
        self.name = name
        ctx: Any = av.CodecContext.create(self._codec, "r")
        ctx.sample_rate = self._rate
        ctx.layout = "mono"
        ctx.open()
        self._ctx = ctx
        self._resampler = _Resampler(self._rate, SAMPLE_RATE)
        self._fade = _Fade()
        self.decode_errors = 0
        self.concealed_samples = 0

    def decode(self, payload: bytes) -> Samples:
        if not payload:
            self.decode_errors += 1
            return self.conceal(960)
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except (av.error.FFmpegError, ValueError):
            self.decode_errors += 1
            return self.conceal(960)
        parts = [_to_float(f) for f in frames]
        pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        out = self._resampler.run(pcm) if pcm.size else pcm
        self._fade.good(out)
        return out

    def conceal(self, n_samples: int = 960) -> Samples:
        self.concealed_samples += n_samples
        out = self._fade.conceal(n_samples)
        # keep the resampler's timeline continuous: feed it the concealed audio at the codec rate
        self._resampler.run(np.zeros(n_samples * self._rate // SAMPLE_RATE, dtype=np.float32))
        return out


class PcmEncoder:
    """48 kHz float32 to G.711 µ-law / A-law or G.722 payloads, one per ptime."""

    def __init__(self, name: str, ptime_ms: int = 20, payload_type: int | None = None) -> None:
        try:
            self._codec, self._rate, self.clock_rate = _PCM_CODECS[name.lower()]
        except KeyError:
            raise CodecError(f"not a PCM/G.722 codec: {name!r}") from None
        if ptime_ms <= 0 or ptime_ms % 10:
            raise CodecError(f"ptime must be a positive multiple of 10 ms, not {ptime_ms}")
        self.name = name
        self.payload_type = payload_type
        self.ptime_ms = ptime_ms
        self._payload_bytes = 8 * ptime_ms  # 64 kbit/s, G.711 and G.722 alike
        ctx: Any = av.CodecContext.create(self._codec, "w")
        ctx.sample_rate = self._rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.time_base = Fraction(1, self._rate)
        ctx.open()
        self._ctx = ctx
        self._resampler = _Resampler(SAMPLE_RATE, self._rate)
        self._pending = bytearray()
        self._pts = 0

    def timestamp_step(self) -> int:
        return self.clock_rate * self.ptime_ms // 1000

    def encode(self, pcm: Samples) -> list[bytes]:
        data = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        if data.size:
            chunk = self._resampler.run(data)
            if chunk.size:
                s16 = np.clip(np.round(chunk * 32767.0), -32768, 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(s16.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = self._rate
                frame.pts = self._pts
                self._pts += s16.size
                # FFmpeg's G.722 encoder works in 20 ms frames whatever it is fed; both codecs are plain byte
                # streams (8 bytes per ms), so payloads of any ptime are cut from the concatenated output
                self._pending += b"".join(bytes(p) for p in self._ctx.encode(frame))
        size = self._payload_bytes
        count = len(self._pending) // size
        out = [bytes(self._pending[i * size : (i + 1) * size]) for i in range(count)]
        del self._pending[: count * size]
        return out


class OpusRtpDecoder:
    """Opus payloads (any frame size the peer sends) to 48 kHz mono, with libopus PLC."""

    clock_rate = 48_000
    name = "opus"

    def __init__(self) -> None:
        self._dec = OpusDecoder()

    def decode(self, payload: bytes) -> Samples:
        return self._dec.decode(payload)

    def conceal(self, n_samples: int = 960) -> Samples:
        return self._dec.conceal(n_samples)

    @property
    def decode_errors(self) -> int:
        return self._dec.decode_errors


class OpusRtpEncoder:
    """48 kHz float32 to 20 ms Opus payloads (VoIP application: speech first, as a phone call is)."""

    clock_rate = 48_000
    name = "opus"

    def __init__(self, bitrate: int = 32_000, payload_type: int | None = None) -> None:
        self._enc = OpusEncoder(bitrate, application="voip")
        self.payload_type = payload_type
        self._pending = np.zeros(0, dtype=np.float32)

    def timestamp_step(self) -> int:
        return 960

    def encode(self, pcm: Samples) -> list[bytes]:
        data = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        self._pending = np.concatenate([self._pending, data]) if self._pending.size else data.copy()
        out: list[bytes] = []
        while self._pending.size >= 960:
            out.append(self._enc.encode(self._pending[:960]))
            self._pending = self._pending[960:]
        return out


def _kind(spec: CodecLike) -> str:
    name = spec.name.lower()
    if name == "opus":
        if spec.clock_rate != 48_000:
            raise CodecError(f"opus must be clocked at 48000 in RTP (RFC 7587), not {spec.clock_rate}")
        return name
    if name in _PCM_CODECS:
        if spec.clock_rate != 8000:  # G.722 included: RFC 3551 §4.5.2
            raise CodecError(f"{spec.name} must be clocked at 8000 in RTP, not {spec.clock_rate}")
        return name
    raise CodecError(f"unsupported codec {spec.name!r}; supported: {', '.join(SUPPORTED)}")


def decoder_for(spec: CodecLike) -> Decoder:
    """A decoder for the negotiated codec; raise `CodecError` for one we do not carry."""
    kind = _kind(spec)
    return OpusRtpDecoder() if kind == "opus" else PcmDecoder(kind)


def encoder_for(spec: CodecLike, *, ptime_ms: int = 20) -> Encoder:
    """An encoder for the negotiated codec with the payload type from `spec` (when it has one)."""
    kind = _kind(spec)
    pt = getattr(spec, "payload_type", None)
    payload_type = pt if isinstance(pt, int) else None
    if kind == "opus":
        if ptime_ms != 20:
            raise CodecError("our Opus return stream is 20 ms per packet")
        return OpusRtpEncoder(payload_type=payload_type)
    return PcmEncoder(kind, ptime_ms, payload_type)


DecoderFactory = Callable[[CodecLike], Decoder]
