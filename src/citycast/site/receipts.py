"""Proof of play, the site side: what this loudspeaker really played, signed with the site's own key.

`PlayLog` is sans-IO: the agent feeds it every block it hands the sound card (which stream and stream time the
playout engine read it from, or none while it played fallback or silence) and the sync error of each report; it
turns that into receipts (`citycast.protocol.receipts.PlayReceipt`). A *span* is one stream played on one channel
without a long gap; it ends when the stream changes, the site moves to another channel, or nothing of it has
played for `quiet_ns`. A receipt goes out when a span ends (final) and every `interim_ns` of stream time during a
long one, each covering the span from its first sample, so the last one received always tells the whole story.

`ReceiptSender` signs them and asks the hub to take them, keeping each until the hub acknowledges it: a site cut
off from the bus sends what it played once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import numpy as np
from nats.aio.client import Client

from citycast.media.keys import PrivateKey
from citycast.media.render import Samples
from citycast.protocol.receipts import PlayReceipt, ReceiptError, decode_ack, sign_receipt
from citycast.protocol.subjects import Subjects
from citycast.ticks import sleep_to_grid

log = logging.getLogger(__name__)

INTERIM_NS = 600 * 10**9  # a receipt every 10 minutes of a long address
QUIET_NS = 30 * 10**9  # a stream silent this long is over for this site (the hub merges a span that resumes)
MAX_PENDING = 1000  # receipts kept for a hub out of reach (a week of 10-minute receipts); the oldest go first
REQUEST_TIMEOUT_S = 5.0
RETRY_S = 10.0


def _dbfs(x: float) -> float:
    return round(20 * math.log10(x), 1) if x > 1e-9 else -180.0


@dataclass
class _Span:
    channel: int
    stream: int
    first_ns: int
    last_ns: int
    concealed0: int
    concealed: int = 0
    fallback_ns: int = 0
    trailing_fallback_ns: int = 0  # after the last sample played: counted only if the stream comes back
    quiet_ns: int = 0
    sumsq: float = 0.0
    samples: int = 0
    peak: float = 0.0
    trailing: tuple[float, int, float] = (0.0, 0, 0.0)  # level (sumsq, samples, peak) since the last sample played
    sync_error_ms: float = 0.0
    seq: int = 0
    reported_to_ns: int = 0  # stream time covered by the last interim receipt


class PlayLog:
    """Spans played, from the blocks themselves. `on_block` runs in the sound card's thread, the rest in the
    agent's loop: a lock keeps them apart (a few operations per 10 ms block)."""

    def __init__(
        self, site: str, *, interim_ns: int = INTERIM_NS, quiet_ns: int = QUIET_NS, sample_rate: int = 48_000
    ) -> None:
        self.site = site
        self.interim_ns = interim_ns
        self.quiet_ns = quiet_ns
        self.sample_rate = sample_rate
        self._span: _Span | None = None
        self._due: list[tuple[_Span, bool]] = []  # snapshots to turn into receipts, with whether final
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self._span is not None

    def on_block(
        self, channel: int, playing: tuple[int, int, int] | None, out: Samples, *, fallback: bool, concealed: int
    ) -> None:
        """One block handed to the sound card: `playing` is (stream id, stream time of its first sample, where the
        stream's last real packet ends) when it came from a stream (`PlayoutEngine.playing`), `fallback` whether
        the stream had stopped, `concealed` the engine's running count of concealed packets."""
        n = len(out)
        block_ns = n * 1_000_000_000 // self.sample_rate
        with self._lock:
            span = self._span
            if span is not None and (span.channel != channel or (playing is not None and playing[0] != span.stream)):
                self._close(span, concealed)
                span = None
            if playing is None:
                if span is None:
                    return
                span.quiet_ns += block_ns
                if fallback:
                    span.trailing_fallback_ns += block_ns
                if span.quiet_ns >= self.quiet_ns:
                    self._close(span, concealed)
                    return
            else:
                stream, at, real_until = playing
                if span is None:
                    span = self._span = _Span(channel, stream, at, at, concealed, reported_to_ns=at)
                end = min(at + block_ns, real_until)
                if end > span.last_ns:
                    span.last_ns = end
                    span.quiet_ns = 0
                    span.fallback_ns += span.trailing_fallback_ns  # a gap inside the span, now it resumed
                    span.trailing_fallback_ns = 0
                    sumsq, samples, peak = span.trailing
                    span.sumsq, span.samples, span.peak = (
                        span.sumsq + sumsq,
                        span.samples + samples,
                        max(span.peak, peak),
                    )
                    span.trailing = (0.0, 0, 0.0)
                else:  # concealing past the last packet that came: the stream may have stopped
                    span.quiet_ns += block_ns
            if n:
                sumsq, peak = float(np.dot(out, out)), float(np.max(np.abs(out)))
                if span.quiet_ns == 0:
                    span.sumsq, span.samples, span.peak = span.sumsq + sumsq, span.samples + n, max(span.peak, peak)
                else:  # what plays after the last sample of the stream counts only if the stream comes back
                    t_sumsq, t_samples, t_peak = span.trailing
                    span.trailing = (t_sumsq + sumsq, t_samples + n, max(t_peak, peak))
            span.concealed = concealed - span.concealed0
            if span.last_ns - span.reported_to_ns >= self.interim_ns:
                span.reported_to_ns = span.last_ns
                self._emit(span, final=False)

    def note_sync_error(self, ms: float) -> None:
        """The sync error the site reports now (each telemetry report): a receipt carries the worst of its span."""
        with self._lock:
            span = self._span
            if span is not None and math.isfinite(ms):
                span.sync_error_ms = max(span.sync_error_ms, abs(ms))

    def close(self) -> None:
        """End the open span now (the agent stops)."""
        with self._lock:
            if self._span is not None:
                self._close(self._span, self._span.concealed0 + self._span.concealed)

    def take_due(self, now_ns: int) -> list[PlayReceipt]:
        """The receipts due since the last call, stamped with the broadcast time `now_ns` (0: no clock)."""
        with self._lock:
            due, self._due = self._due, []
        return [self._receipt(span, final, now_ns) for span, final in due]

    def _close(self, span: _Span, concealed: int) -> None:
        span.concealed = concealed - span.concealed0
        self._emit(span, final=True)
        self._span = None

    def _emit(self, span: _Span, *, final: bool) -> None:
        snapshot = _Span(**vars(span))
        self._due.append((snapshot, final))
        span.seq += 1

    def _receipt(self, span: _Span, final: bool, now_ns: int) -> PlayReceipt:
        rms = math.sqrt(span.sumsq / span.samples) if span.samples else 0.0
        return PlayReceipt(
            site=self.site,
            channel=span.channel,
            stream=span.stream,
            seq=span.seq,
            final=final,
            first_ns=span.first_ns,
            last_ns=span.last_ns,
            concealed=max(0, span.concealed),
            fallback_s=round(span.fallback_ns / 1e9, 3),
            sync_error_ms=round(span.sync_error_ms, 3),
            level_rms_dbfs=_dbfs(rms),
            level_peak_dbfs=_dbfs(span.peak),
            sent_ns=max(0, now_ns),
        )


class ReceiptSender:
    """Signs the log's receipts and asks the hub to take each one (a request on `receipts.<site>`, answered on the
    site's own inbox), oldest first, keeping it until the hub says it has it or refuses it."""

    def __init__(
        self,
        nc: Callable[[], Client | None],
        subjects: Subjects,
        site: str,
        key: PrivateKey,
        log_: PlayLog,
        now_ns: Callable[[], int | None],
        *,
        interval_s: float = 1.0,
        retry_s: float = RETRY_S,
    ) -> None:
        self.nc = nc
        self.subject = subjects.receipts(site)
        self.key = key
        self.play_log = log_
        self.now_ns = now_ns
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.pending: deque[bytes] = deque()
        self.sent = 0
        self.refused = 0
        self.dropped = 0  # the oldest, when the hub stayed out of reach for longer than MAX_PENDING receipts
        self._sending = asyncio.Lock()  # the loop and a flush at shutdown must not send (and pop) the same one

    def collect(self) -> None:
        for receipt in self.play_log.take_due(self.now_ns() or 0):
            if len(self.pending) >= MAX_PENDING:
                self.pending.popleft()
                self.dropped += 1
            self.pending.append(sign_receipt(self.key, receipt))

    async def send_pending(self) -> bool:
        """Try each pending receipt in order; False when the hub cannot be reached now (try again later)."""
        async with self._sending:
            return await self._send_pending()

    async def _send_pending(self) -> bool:
        while self.pending:
            nc = self.nc()
            if nc is None or not nc.is_connected:
                return False
            data = self.pending[0]
            try:
                answer = decode_ack((await nc.request(self.subject, data, timeout=REQUEST_TIMEOUT_S)).data)
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, TimeoutError, ReceiptError) as e:
                log.debug("receipt not taken yet: %s", e or type(e).__name__)
                return False
            self.pending.popleft()
            if answer.ok:
                self.sent += 1
            else:  # the hub will never take it: keeping it would block every later one
                self.refused += 1
                log.warning("the hub refused a receipt: %s", answer.error)
        return True

    async def run(self) -> None:
        while True:
            self.collect()
            ok = await self.send_pending()
            await (sleep_to_grid(self.interval_s) if ok else asyncio.sleep(self.retry_s))

    async def flush(self, timeout_s: float = 2.0) -> None:
        """At shutdown: close the open span and send what can be sent within `timeout_s`."""
        self.play_log.close()
        self.collect()
        try:
            async with asyncio.timeout(timeout_s):
                await self.send_pending()
        except TimeoutError:
            pass
