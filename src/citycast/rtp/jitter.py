"""The receive side of one RTP stream: sequence bookkeeping, statistics and a jitter buffer (sans-IO).

`RtpReceiver.push(pkt, now)` as packets arrive; the caller pops once per ptime on its playout clock:

- `pop(now) -> bytes | None`: the next packet's payload, or None for a lost one (the caller conceals). One call
  plays one *sender* packet, so this mode fits a sender whose ptime equals ours.
- `pop_audio(now) -> Samples`: exactly `ptime_ms` of decoded 48 kHz audio, using the `decoder` given to the
  constructor (`codecs.decoder_for(spec)`). This mode works on decoded PCM, so a sender packetising at 10, 30, 40
  or 60 ms still yields our 20 ms frames; gaps are filled with the decoder's `conceal()`.

How playout works. The buffer is keyed by *extended* RTP timestamp (the 32-bit timestamp unwrapped), so
reordering, timestamp wrap and any sender ptime fall out naturally; sequence numbers (unwrapped per RFC 3550
A.1) serve loss statistics and duplicate detection. Playout starts `target_delay_ms` after the first packet of a
stream arrived, at the earliest buffered timestamp; from then on a playout pointer walks the timestamp line one
sender packet at a time. A packet arriving behind the pointer is late and dropped. If the buffer grows deeper than
the target by more than `max(3 packets, 60 ms)` (a burst after a network stall, or a sender clock running fast)
the oldest packets are skipped so that latency comes back to the target instead of staying high for the rest of
the call. A new SSRC, a sequence jump confirmed by a second packet (RFC 3550 A.1), a timestamp jump of more than
`RESYNC_S`, or a run of late packets (a sender that paused without advancing its timestamps, or a slow sender
clock) restarts playout with a fresh target delay.

Memory is bounded: at most `max_packets` buffered packets and a bounded window of sequence numbers for duplicate
detection, whatever arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from citycast.media.audio import SAMPLE_RATE
from citycast.media.render import Samples
from citycast.rtp.packet import RtpPacket

MAX_DROPOUT = 3000  # RFC 3550 A.1
MAX_MISORDER = 100
RESYNC_S = 1.0
LATE_RUN_RESYNC = 8
SEEN_WINDOW = 1024


class FrameDecoder(Protocol):
    def decode(self, payload: bytes) -> Samples: ...

    def conceal(self, n_samples: int = 960) -> Samples: ...


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    ssrc: int | None
    received: int
    """Distinct packets of the current source (late ones included, duplicates not)."""
    expected: int
    """Extended highest sequence number − base + 1 (RFC 3550 A.3)."""
    ext_highest_seq: int
    duplicates: int
    late: int
    skipped: int
    """Packets dropped unplayed to bring latency back to the target (bursts, fast sender, full buffer)."""
    concealed: int
    """Playout steps with nothing to play (each is one `None` from `pop` or one `conceal()` in `pop_audio`)."""
    played: int
    restarts: int
    jitter: float
    """Interarrival jitter in timestamp units (RFC 3550 A.8)."""
    clock_rate: int
    buffered: int

    @property
    def lost(self) -> int:
        """Cumulative packets lost (RFC 3550 §6.4.1: may go negative with duplicates; we exclude those)."""
        return self.expected - self.received

    @property
    def jitter_ms(self) -> float:
        return 1000.0 * self.jitter / self.clock_rate


class RtpReceiver:
    def __init__(
        self,
        clock_rate: int,
        ptime_ms: int = 20,
        target_delay_ms: int = 60,
        *,
        decoder: FrameDecoder | None = None,
        max_packets: int = 256,
    ) -> None:
        if clock_rate <= 0 or clock_rate % 400:  # 2.5 ms (one PLC step) must be whole timestamp units
            raise ValueError(f"unsupported RTP clock rate {clock_rate}")
        if ptime_ms <= 0 or target_delay_ms < 0 or max_packets < 4:
            raise ValueError("ptime_ms must be > 0, target_delay_ms ≥ 0 and max_packets ≥ 4")
        self.clock_rate = clock_rate
        self.ptime_ms = ptime_ms
        self.target_delay_ms = target_delay_ms
        self.decoder = decoder
        self.max_packets = max_packets
        self.frame_samples = SAMPLE_RATE * ptime_ms // 1000
        self._target_ts = clock_rate * target_delay_ms // 1000
        self._default_unit = max(1, clock_rate * ptime_ms // 1000)
        self.restarts = 0
        self._fifo = np.zeros(0, dtype=np.float32)
        self._reset_source(None)

    # --- state -------------------------------------------------------------------------------------------------

    def _reset_source(self, ssrc: int | None) -> None:
        self._ssrc = ssrc
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._bad_seq: int | None = None
        self._seen: set[int] = set()
        self._received = 0
        self._duplicates = 0
        self._late = 0
        self._skipped = 0
        self._concealed = 0
        self._played = 0
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._last_media: tuple[int, int, float] | None = None  # (ext seq, ext ts, arrival) of the newest
        self._ts_ref: int | None = None  # unwrapped sender timestamp of the newest media packet
        self._ts_offset = 0  # added to sender timestamps after a timestamp jump
        self._unit = self._default_unit
        self._restart_playout()

    def _restart_playout(self) -> None:
        self._buf: dict[int, bytes] = {}
        self._started = False
        self._first_arrival: float | None = None
        self._pointer = 0
        self._late_run = 0

    @property
    def ssrc(self) -> int | None:
        return self._ssrc

    @property
    def playing(self) -> bool:
        return self._started

    @property
    def state_size(self) -> int:
        """Entries held (buffered packets + remembered sequence numbers): bounded whatever arrives."""
        return len(self._buf) + len(self._seen)

    @property
    def stats(self) -> ReceiverStats:
        ext_max = self._cycles + self._max_seq
        return ReceiverStats(
            ssrc=self._ssrc,
            received=self._received,
            expected=ext_max - self._base_seq + 1 if self._received else 0,
            ext_highest_seq=ext_max,
            duplicates=self._duplicates,
            late=self._late,
            skipped=self._skipped,
            concealed=self._concealed,
            played=self._played,
            restarts=self.restarts,
            jitter=self._jitter,
            clock_rate=self.clock_rate,
            buffered=len(self._buf),
        )

    # --- arrival -----------------------------------------------------------------------------------------------

    def _sequence(self, seq: int) -> int | None:
        """RFC 3550 A.1: the extended sequence number of `seq`, or None to drop it (unconfirmed jump)."""
        udelta = (seq - self._max_seq) & 0xFFFF
        if udelta < MAX_DROPOUT:
            if seq < self._max_seq:
                self._cycles += 0x10000
            self._max_seq = seq
            self._bad_seq = None
            return self._cycles + seq
        if udelta <= 0x10000 - MAX_MISORDER:
            if seq == self._bad_seq:  # two sequential packets after a jump: the sender restarted
                return None  # the caller restarts the source
            self._bad_seq = (seq + 1) & 0xFFFF
            return -1
        # duplicate or reordered within MAX_MISORDER: unwrap relative to the highest
        return self._cycles + self._max_seq - ((self._max_seq - seq) & 0xFFFF)

    def push(self, pkt: RtpPacket, now: float, *, media: bool = True) -> None:
        """Take one arriving packet. `media=False` counts a packet of the same stream that carries no audio
        (a telephone-event) so that loss statistics stay right, without buffering it."""
        if pkt.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.restarts += 1
            self._start_source(pkt)
        ext_seq = self._sequence(pkt.seq)
        if ext_seq is None:
            self.restarts += 1
            self._start_source(pkt)
            ext_seq = self._base_seq
        elif ext_seq < 0:
            return  # a lone jump: wait for the next packet to confirm it (RFC 3550 A.1)
        if ext_seq in self._seen:
            self._duplicates += 1
            return
        self._seen.add(ext_seq)
        if len(self._seen) > 2 * SEEN_WINDOW:
            floor = self._cycles + self._max_seq - SEEN_WINDOW
            self._seen = {s for s in self._seen if s >= floor}
        self._received += 1
        if media:
            self._media(pkt, ext_seq, now)

    def _start_source(self, pkt: RtpPacket) -> None:
        self._reset_source(pkt.ssrc)
        self._base_seq = self._max_seq = pkt.seq

    def _media(self, pkt: RtpPacket, ext_seq: int, now: float) -> None:
        if self._ts_ref is None:
            raw = pkt.timestamp
        else:
            delta = (pkt.timestamp - self._ts_ref) & 0xFFFFFFFF
            raw = self._ts_ref + (delta - 0x100000000 if delta & 0x80000000 else delta)
        ext_ts = raw + self._ts_offset
        resync = RESYNC_S * self.clock_rate
        last = self._last_media
        newest = last is None or ext_seq > last[0]
        if last is not None and newest:
            # Where this packet should sit on the timeline judging by arrival time. A sender that reset or
            # jumped its timestamps is mapped back onto our timeline (counted as a restart), so playout goes on
            # without a gap; silence suppression advances timestamps with time and is left alone.
            expected = last[1] + max(self._unit, round((now - last[2]) * self.clock_rate))
            if abs(ext_ts - expected) > resync:
                self._ts_offset += expected - ext_ts
                ext_ts = expected
                self.restarts += 1
                self._last_transit = None
            elif ext_seq == last[0] + 1 and 0 < ext_ts - last[1] <= self.clock_rate // 5:
                self._unit = ext_ts - last[1]  # ≤ 200 ms: a plausible packet duration
        elif last is not None and abs(ext_ts - last[1]) > resync:
            self._skipped += 1  # an old sequence number with a wild timestamp: nothing to play
            return
        if newest:
            self._last_media = (ext_seq, ext_ts, now)
            self._ts_ref = raw
        # interarrival jitter, RFC 3550 A.8, in timestamp units
        transit = now * self.clock_rate - ext_ts
        if self._last_transit is not None:
            self._jitter += (abs(transit - self._last_transit) - self._jitter) / 16.0
        self._last_transit = transit
        if self._started:
            if ext_ts < self._pointer:
                self._late += 1
                self._late_run += 1 if newest else 0
                if self._late_run < LATE_RUN_RESYNC:
                    return
                self.restarts += 1  # the sender's timeline slid behind ours (paused, slow clock): start again
                self._restart_playout()
            else:
                self._late_run = 0
        if ext_ts in self._buf:
            self._duplicates += 1  # same media time under another sequence number
            return
        if self._first_arrival is None:
            self._first_arrival = now
        self._buf[ext_ts] = pkt.payload
        if len(self._buf) > self.max_packets:
            del self._buf[min(self._buf)]
            self._skipped += 1

    # --- playout -----------------------------------------------------------------------------------------------

    def _ready(self, now: float) -> bool:
        if self._started:
            return True
        if not self._buf or self._first_arrival is None:
            return False
        if now - self._first_arrival + 1e-9 < self.target_delay_ms / 1000.0:
            return False
        self._started = True
        self._pointer = min(self._buf)
        return True

    def _trim(self) -> None:
        """Skip the oldest packets when the buffer is well deeper than the target, back down to the target."""
        if len(self._buf) < 2:
            return
        newest = max(self._buf) + self._unit
        if newest - self._pointer <= self._target_ts + max(3 * self._unit, self.clock_rate * 60 // 1000):
            return
        while len(self._buf) > 1 and newest - min(self._buf) > max(self._target_ts, self._unit):
            del self._buf[min(self._buf)]
            self._skipped += 1
        self._pointer = min(self._buf)

    def _take(self) -> tuple[int, bytes] | None:
        """The earliest buffered packet if it is due at the pointer."""
        if not self._buf:
            return None
        head = min(self._buf)
        if head > self._pointer:
            return None
        return head, self._buf.pop(head)

    def pop(self, now: float) -> bytes | None:
        """The payload of the next sender packet, or None (not started yet, or lost: conceal one packet)."""
        if not self._ready(now):
            return None
        self._trim()
        taken = self._take()
        if taken is None:
            self._concealed += 1
            self._pointer += self._unit
            return None
        head, payload = taken
        self._played += 1
        self._pointer = max(self._pointer, head + self._unit)
        return payload

    def pop_audio(self, now: float) -> Samples:
        """Exactly one ptime of 48 kHz mono audio: decoded, concealed, or silence before playout starts."""
        if self.decoder is None:
            raise ValueError("pop_audio() needs a decoder: RtpReceiver(..., decoder=decoder_for(spec))")
        need = self.frame_samples
        parts = [self._fifo]
        have = self._fifo.size
        while have < need:
            if not self._ready(now):
                parts.append(np.zeros(need - have, dtype=np.float32))
                have = need
                break
            self._trim()
            taken = self._take()
            if taken is not None:
                head, payload = taken
                pcm = self.decoder.decode(payload)
                self._played += 1
                dur = pcm.size * self.clock_rate // SAMPLE_RATE
                if dur <= 0:
                    pcm, dur = self._conceal(self._unit)
                self._pointer = max(self._pointer, head + dur)
            else:
                gap = min(self._buf) - self._pointer if self._buf else self._unit
                pcm, dur = self._conceal(min(gap, self._unit))
                self._concealed += 1
                self._pointer += dur
            parts.append(pcm)
            have += pcm.size
        audio = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._fifo = audio[need:].copy()
        return audio[:need]

    def _conceal(self, ts_units: int) -> tuple[Samples, int]:
        assert self.decoder is not None
        n = -(-max(1, ts_units) * SAMPLE_RATE // self.clock_rate)
        n = -(-n // 120) * 120  # Opus PLC works in 2.5 ms steps
        pcm = self.decoder.conceal(n)
        return pcm, n * self.clock_rate // SAMPLE_RATE
