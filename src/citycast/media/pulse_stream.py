"""A PulseAudio playback stream through libpulse's asynchronous API (ctypes), with the server's raw timing info.

libpulse-simple (`pasimple`) offers one clock reading, `pa_simple_get_latency`: libpulse's *interpolated* stream
time, which runs the server's timing reports through its own smoother and so wanders by ±0.5–1 ms over 10–30 s
(measured: `docs/benchmarks.md`, "Where the wander comes from"). The reports themselves are exact to a few tens of
µs: when the server answers a timing request, its IO thread notes the stream's read index and the sink's latency
(what is queued in the sink and its device) and its main thread stamps the answer with the system clock. So the
sample at `read_index` reaches the DAC at `timestamp + sink_usec`, and a line through those points is the DAC's
clock. `PlaybackStream` asks for such a report every `timing_interval_s` and hands the latest to its writer.

A threaded mainloop runs libpulse's callbacks on its own thread; every call into libpulse is made with its lock
held, and the writer waits on it (`pa_threaded_mainloop_wait`) until the server wants more. No PyPI package
exposes this: pasimple stops at libpulse-simple, and `libpulse` (PyPI) drives libpulse from an asyncio loop, which
would put the audio writes on the site's event loop.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Any

from citycast.media.clib import bind

PA_SAMPLE_FLOAT32LE = 5
PA_CONTEXT_READY, PA_CONTEXT_FAILED = 4, 5
PA_STREAM_READY, PA_STREAM_FAILED = 2, 3
PA_STREAM_AUTO_TIMING_UPDATE = 0x0008
PA_STREAM_ADJUST_LATENCY = 0x2000
PA_OPERATION_RUNNING = 0
_UNSET = 0xFFFFFFFF  # (uint32_t) -1 in pa_buffer_attr: the server's default
CONNECT_TIMEOUT_S = 10.0
# A server that keeps its socket open but takes no audio for this long (stopped, hung, its device stuck) fails the
# stream: the site reports a sink error and opens a new one, instead of waiting silently forever. An idle null
# sink takes up to ~2 s to start playing a new stream, so this is well beyond that (plus the queue itself).
STALL_TIMEOUT_S = 5.0
# libpulse's mainloop wait has no timeout: a waiter is only woken by a callback. The ticker wakes every waiter this
# often, so a server that never answers is noticed by each wait's own deadline (a stall within 6 s, a connect within
# 11). Each tick is two wake-ups (the ticker's and the writer's), which on a small box cost more than the writing:
# at 10 a second they were a fifth of a site's wake-ups.
TICK_S = 1.0


class PulseStreamError(RuntimeError):
    pass


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _TimingInfo(ctypes.Structure):
    _fields_ = [
        ("timestamp", _Timeval),
        ("synchronized_clocks", ctypes.c_int),
        ("sink_usec", ctypes.c_uint64),
        ("source_usec", ctypes.c_uint64),
        ("transport_usec", ctypes.c_uint64),
        ("playing", ctypes.c_int),
        ("write_index_corrupt", ctypes.c_int),
        ("write_index", ctypes.c_int64),
        ("read_index_corrupt", ctypes.c_int),
        ("read_index", ctypes.c_int64),
        ("configured_sink_usec", ctypes.c_uint64),
        ("configured_source_usec", ctypes.c_uint64),
        ("since_underrun", ctypes.c_int64),
    ]


_VP = ctypes.c_void_p
_NOTIFY = ctypes.CFUNCTYPE(None, _VP, _VP)  # pa_context_notify_cb_t, pa_stream_notify_cb_t
_REQUEST = ctypes.CFUNCTYPE(None, _VP, ctypes.c_size_t, _VP)  # pa_stream_request_cb_t
_SUCCESS = ctypes.CFUNCTYPE(None, _VP, ctypes.c_int, _VP)  # pa_stream_success_cb_t

_SIGNATURES: list[tuple[str, Any, list[Any]]] = [
    ("pa_threaded_mainloop_new", _VP, []),
    ("pa_threaded_mainloop_get_api", _VP, [_VP]),
    ("pa_threaded_mainloop_start", ctypes.c_int, [_VP]),
    ("pa_threaded_mainloop_stop", None, [_VP]),
    ("pa_threaded_mainloop_free", None, [_VP]),
    ("pa_threaded_mainloop_lock", None, [_VP]),
    ("pa_threaded_mainloop_unlock", None, [_VP]),
    ("pa_threaded_mainloop_wait", None, [_VP]),
    ("pa_threaded_mainloop_signal", None, [_VP, ctypes.c_int]),
    ("pa_context_new", _VP, [_VP, ctypes.c_char_p]),
    ("pa_context_connect", ctypes.c_int, [_VP, ctypes.c_char_p, ctypes.c_int, _VP]),
    ("pa_context_disconnect", None, [_VP]),
    ("pa_context_unref", None, [_VP]),
    ("pa_context_get_state", ctypes.c_int, [_VP]),
    ("pa_context_errno", ctypes.c_int, [_VP]),
    ("pa_context_set_state_callback", None, [_VP, _NOTIFY, _VP]),
    ("pa_strerror", ctypes.c_char_p, [ctypes.c_int]),
    ("pa_stream_new", _VP, [_VP, ctypes.c_char_p, ctypes.POINTER(_SampleSpec), _VP]),
    (
        "pa_stream_connect_playback",
        ctypes.c_int,
        [_VP, ctypes.c_char_p, ctypes.POINTER(_BufferAttr), ctypes.c_int, _VP, _VP],
    ),
    ("pa_stream_disconnect", ctypes.c_int, [_VP]),
    ("pa_stream_unref", None, [_VP]),
    ("pa_stream_get_state", ctypes.c_int, [_VP]),
    ("pa_stream_set_state_callback", None, [_VP, _NOTIFY, _VP]),
    ("pa_stream_set_write_callback", None, [_VP, _REQUEST, _VP]),
    ("pa_stream_set_underflow_callback", None, [_VP, _NOTIFY, _VP]),
    ("pa_stream_writable_size", ctypes.c_size_t, [_VP]),
    ("pa_stream_write", ctypes.c_int, [_VP, ctypes.c_char_p, ctypes.c_size_t, _VP, ctypes.c_int64, ctypes.c_int]),
    ("pa_stream_update_timing_info", _VP, [_VP, _SUCCESS, _VP]),
    ("pa_stream_get_timing_info", ctypes.POINTER(_TimingInfo), [_VP]),
    ("pa_operation_unref", None, [_VP]),
    ("pa_stream_get_buffer_attr", ctypes.POINTER(_BufferAttr), [_VP]),
]

_lib: Any = None


def _libpulse() -> Any:
    global _lib
    if _lib is None:
        try:
            _lib = bind("libpulse.so.0", _SIGNATURES)
        except OSError as exc:
            raise PulseStreamError(f"no PulseAudio client library: {exc}") from exc
    return _lib


@dataclass(frozen=True)
class TimingReport:
    """One answer of the server: the stream's frame `read_frame` reaches the DAC at `dac_ns` (system clock, ns).
    `written_frame`: the stream's write index then; `playing`: whether the server was playing the stream."""

    seq: int
    stamp_ns: int  # when the server answered
    read_frame: int
    written_frame: int
    dac_ns: int
    playing: bool


class PlaybackStream:
    """A playback stream of `channels` float32 channels at `rate` on `device` (None: the default sink) of `server`
    (None: $PULSE_SERVER or the user's). `tlength_frames` is what the server keeps queued, `minreq_frames` the least
    it asks for; prebuf is 0, so playback starts at the first write and never stops for an underrun (the read index
    runs on, and every written frame keeps its place on the DAC's timeline). Not thread-safe: one writer thread."""

    def __init__(
        self,
        *,
        server: str | None,
        device: str | None,
        rate: int,
        channels: int = 1,
        tlength_frames: int,
        minreq_frames: int,
        name: str = "citycast",
        timing_interval_s: float = 0.05,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self._pa = _libpulse()
        self.frame_bytes = 4 * channels
        self.rate = rate
        self.timing_interval_ns = round(timing_interval_s * 1e9)
        self.stall_timeout_s = stall_timeout_s + tlength_frames / rate
        self._ticking = threading.Event()
        self._ticker: threading.Thread | None = None
        self.underflows = 0
        self._report: TimingReport | None = None
        self._seq = 0
        self._timing_pending = False
        self._next_timing_ns = 0
        # The queue and request size the server granted (it adjusts what was asked), in frames.
        self.granted_tlength_frames = 0
        self.granted_minreq_frames = 0
        self._ml: int | None = None
        self._ctx: int | None = None
        self._stream: int | None = None
        self._closing = threading.Lock()  # wake() from another thread never meets a freed mainloop
        # ctypes callbacks must outlive every call libpulse may make to them: kept until close() stops the loop.
        self._cbs = (
            _NOTIFY(self._on_state),
            _REQUEST(self._on_request),
            _NOTIFY(self._on_underflow),
            _SUCCESS(self._on_timing),
        )
        try:
            self._connect(server, device, channels, tlength_frames, minreq_frames, name)
        except BaseException:
            self.close()
            raise

    # -- callbacks (on libpulse's thread, its lock held) ----------------------------------------------------
    def _on_state(self, _obj: int | None, _user: int | None) -> None:
        self._pa.pa_threaded_mainloop_signal(self._ml, 0)

    def _on_request(self, _s: int | None, _n: int, _user: int | None) -> None:
        self._pa.pa_threaded_mainloop_signal(self._ml, 0)

    def _on_underflow(self, _s: int | None, _user: int | None) -> None:
        self.underflows += 1

    def _on_timing(self, stream: int | None, success: int, _user: int | None) -> None:
        self._timing_pending = False
        info = self._pa.pa_stream_get_timing_info(stream) if success else None
        if info:
            t = info.contents
            if not (t.read_index_corrupt or t.write_index_corrupt):
                self._seq += 1
                stamp = t.timestamp.tv_sec * 1_000_000_000 + t.timestamp.tv_usec * 1000
                self._report = TimingReport(
                    seq=self._seq,
                    stamp_ns=stamp,
                    read_frame=t.read_index // self.frame_bytes,
                    written_frame=t.write_index // self.frame_bytes,
                    dac_ns=stamp + t.sink_usec * 1000,
                    playing=bool(t.playing),
                )
        self._pa.pa_threaded_mainloop_signal(self._ml, 0)

    def _tick(self) -> None:
        ml = self._ml
        while not self._ticking.wait(TICK_S):
            self._pa.pa_threaded_mainloop_lock(ml)
            self._pa.pa_threaded_mainloop_signal(ml, 0)
            self._pa.pa_threaded_mainloop_unlock(ml)

    # -- set-up --------------------------------------------------------------------------------------------
    def _error(self) -> str:
        code = self._pa.pa_context_errno(self._ctx) if self._ctx else 0
        text = self._pa.pa_strerror(code)
        return text.decode(errors="replace") if text else f"error {code}"

    def _wait_state(self, get_state: Any, obj: int, ready: int, failed: int, what: str) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while (state := get_state(obj)) != ready:
            if state >= failed:
                raise PulseStreamError(f"{what}: {self._error()}")
            if time.monotonic() > deadline:
                raise PulseStreamError(f"{what}: no answer in {CONNECT_TIMEOUT_S:.0f} s")
            self._pa.pa_threaded_mainloop_wait(self._ml)

    def _connect(
        self, server: str | None, device: str | None, channels: int, tlength: int, minreq: int, name: str
    ) -> None:
        pa = self._pa
        self._ml = pa.pa_threaded_mainloop_new()
        if not self._ml:
            raise PulseStreamError("cannot create libpulse's mainloop")
        self._ctx = pa.pa_context_new(pa.pa_threaded_mainloop_get_api(self._ml), b"citycast")
        if not self._ctx:
            raise PulseStreamError("cannot create a libpulse context")
        on_state, on_request, on_underflow, _ = self._cbs
        pa.pa_context_set_state_callback(self._ctx, on_state, None)
        pa.pa_threaded_mainloop_lock(self._ml)
        try:
            if pa.pa_threaded_mainloop_start(self._ml) < 0:
                raise PulseStreamError("cannot start libpulse's mainloop thread")
            self._ticker = threading.Thread(target=self._tick, name="pulse-ticker", daemon=True)
            self._ticker.start()
            if pa.pa_context_connect(self._ctx, server.encode() if server else None, 0, None) < 0:
                raise PulseStreamError(f"cannot connect to PulseAudio: {self._error()}")
            self._wait_state(pa.pa_context_get_state, self._ctx, PA_CONTEXT_READY, PA_CONTEXT_FAILED,
                             "cannot connect to PulseAudio")  # fmt: skip
            spec = _SampleSpec(PA_SAMPLE_FLOAT32LE, self.rate, channels)
            self._stream = pa.pa_stream_new(self._ctx, name.encode(), ctypes.byref(spec), None)
            if not self._stream:
                raise PulseStreamError(f"cannot create a stream: {self._error()}")
            pa.pa_stream_set_state_callback(self._stream, on_state, None)
            pa.pa_stream_set_write_callback(self._stream, on_request, None)
            pa.pa_stream_set_underflow_callback(self._stream, on_underflow, None)
            fb = self.frame_bytes
            attr = _BufferAttr(_UNSET, tlength * fb, 0, minreq * fb, _UNSET)
            flags = PA_STREAM_ADJUST_LATENCY | PA_STREAM_AUTO_TIMING_UPDATE
            if pa.pa_stream_connect_playback(
                self._stream, device.encode() if device else None, ctypes.byref(attr), flags, None, None
            ):
                raise PulseStreamError(f"cannot play to {device or 'the default sink'}: {self._error()}")
            self._wait_state(pa.pa_stream_get_state, self._stream, PA_STREAM_READY, PA_STREAM_FAILED,
                             f"cannot play to {device or 'the default sink'}")  # fmt: skip
            granted = pa.pa_stream_get_buffer_attr(self._stream)
            if granted:
                self.granted_tlength_frames = granted.contents.tlength // self.frame_bytes
                self.granted_minreq_frames = granted.contents.minreq // self.frame_bytes
            # One report before the first write: the sink's latency dates the first block.
            self._ask_timing(time.monotonic_ns())
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while self._report is None and self._timing_pending and time.monotonic() < deadline:
                pa.pa_threaded_mainloop_wait(self._ml)
        finally:
            pa.pa_threaded_mainloop_unlock(self._ml)

    # -- the writer's side ---------------------------------------------------------------------------------
    def _check(self) -> None:
        if self._pa.pa_stream_get_state(self._stream) != PA_STREAM_READY:
            raise PulseStreamError(f"the stream failed: {self._error()}")

    def _ask_timing(self, now_ns: int) -> None:
        if self._timing_pending or now_ns < self._next_timing_ns:
            return
        op = self._pa.pa_stream_update_timing_info(self._stream, self._cbs[3], None)
        if op:
            self._pa.pa_operation_unref(op)
            self._timing_pending = True
            self._next_timing_ns = now_ns + self.timing_interval_ns

    def wait_writable(self, frames: int, stop: threading.Event) -> TimingReport | None:
        """Block until the server takes `frames` more (or `stop` is set); return the latest timing report."""
        pa = self._pa
        need = frames * self.frame_bytes
        pa.pa_threaded_mainloop_lock(self._ml)
        try:
            self._check()
            self._ask_timing(time.monotonic_ns())
            deadline = time.monotonic() + self.stall_timeout_s
            while pa.pa_stream_writable_size(self._stream) < need and not stop.is_set():
                if time.monotonic() > deadline:
                    raise PulseStreamError(f"the sound server took no audio for {self.stall_timeout_s:.1f} s")
                pa.pa_threaded_mainloop_wait(self._ml)
                self._check()
            return self._report
        finally:
            pa.pa_threaded_mainloop_unlock(self._ml)

    def write(self, data: bytes) -> None:
        pa = self._pa
        pa.pa_threaded_mainloop_lock(self._ml)
        try:
            self._check()
            if pa.pa_stream_write(self._stream, data, len(data), None, 0, 0) < 0:
                raise PulseStreamError(f"writing failed: {self._error()}")
        finally:
            pa.pa_threaded_mainloop_unlock(self._ml)

    def wake(self) -> None:
        """Wake a writer waiting in `wait_writable` (after setting its stop event), from any thread."""
        with self._closing:
            if self._ml:
                self._pa.pa_threaded_mainloop_lock(self._ml)
                self._pa.pa_threaded_mainloop_signal(self._ml, 0)
                self._pa.pa_threaded_mainloop_unlock(self._ml)

    def close(self) -> None:
        with self._closing:
            self._close()

    def _close(self) -> None:
        pa = self._pa
        if not self._ml:
            return
        self._ticking.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        pa.pa_threaded_mainloop_lock(self._ml)
        if self._stream:
            pa.pa_stream_disconnect(self._stream)
            pa.pa_stream_unref(self._stream)
            self._stream = None
        if self._ctx:
            pa.pa_context_disconnect(self._ctx)
            pa.pa_context_unref(self._ctx)
            self._ctx = None
        pa.pa_threaded_mainloop_unlock(self._ml)
        pa.pa_threaded_mainloop_stop(self._ml)
        pa.pa_threaded_mainloop_free(self._ml)
        self._ml = None
