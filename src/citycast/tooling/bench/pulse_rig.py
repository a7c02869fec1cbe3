"""`citycast bench --sink pulse|alsa|device|device-raw|pulse,alsa,...`: sync measured through a real sound server.

The timed-sink bench lets each site say when a sample reached its DAC. Here the sound server says it: a private
PulseAudio (no sound card needed), or with `--sound-server pipewire` a private PipeWire serving the same protocol
through `pipewire-pulse` (`citycast.tooling.bench.pipewire_server`); each site is a real `citycast site` process
that plays to its own sink, either through `PulseSink` (`--sink pulse:SINK`, the server's own latency reporting) or
through `AlsaSink` and the server's ALSA plugin (`--sink alsa:pulse:DEVICE=SINK`, or `alsa:pipewire:NODE=SINK`
through pipewire-alsa: `citycast.tooling.bench.alsa_plugins`), or through PortAudio and ALSA's pulse plugin
(`--sink device:pulse`; `device-raw` is the same without the DAC-time filter, the sink a site box used before).

Every site's sink is a channel of one sound card: a remap sink (`module-remap-sink`, mono onto channel i) over one
N-channel null sink. So all sites play on one device clock, as loudspeakers all in step with true time would, and
one record stream of that card's monitor holds every site in one sample-aligned recording: the skew between two
sites is read off one recording, with no dating between them to get wrong. (Recording N separate null sinks, as
this rig first did, dated each monitor by its own record latency; a monitor's latency is the sink's render-ahead,
negative, which libpulse-simple reports as 0, so each recording carried its own error of up to the sink's latency,
several ms, and the sinks' timers ran apart.) After each read PulseAudio's record latency dates the next unread
sample; the null sink runs on the system clock, so the median offset of those dates from the nominal rate gives the
capture time of every recorded sample. A monitor gets a sample when its null sink renders it, which is ahead of the
sink's own play clock by up to the sink's latency: the latency figure is dated there, the same for every site.

The address is a 1 kHz tone at -12 dBFS with the marker chirp mixed in at the start of every second, looped and
sent by a real `citycast ingest`. Markers found in each recording give latency and skew as `citycast bench` does;
the tone gives what a listener hears as a glitch: a *gap* (the tone's amplitude drops, the server played
silence: an underrun) or a *jump* (its phase moves by more than 0.6 of a sample within 3 ms: samples skipped or
repeated, a resync). Both are counted per site-minute over the marker window. Sites trust the
system clock (`--clock system`, as a box with chrony or PTP): the figures are the sound path's, not the clock
estimator's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.bus.server import EmbeddedNats, NatsServerError, free_port
from citycast.media.audio import SAMPLE_RATE
from citycast.media.chirp import chirp
from citycast.media.keys import generate_private_key, public_key_text, save_private_key
from citycast.tooling.bench.alsa_plugins import alsa_env, alsa_pcm
from citycast.tooling.bench.analysis import SiteTrace, analyse
from citycast.tooling.bench.fleet import Fleet, citycast_argv
from citycast.tooling.bench.pipewire_server import PipeWireError, PipeWireServer
from citycast.tooling.bench.pulse_record import PulseRecordError, RecordStream
from citycast.tooling.bench.snapcast import SnapcastError, SnapcastRig, ensure_snapcast
from citycast.tooling.markers import detect_markers

SINK_KINDS = {
    "pulse": "PulseSink (the server's timing reports)",
    "alsa": "AlsaSink via the server's ALSA plugin (status timestamps)",
    "device": "PortAudio via ALSA pulse plugin",
    "device-raw": "the same, DAC times unfiltered (as before)",
    "snapclient": "Snapcast 0.26's pulse player (yardstick)",
}
TONE_HZ = 1000.0
TONE_AMPLITUDE = 0.25
LOOP_S = 10
BLOCK = 480  # samples a monitor read returns (10 ms)
DEMOD = 48  # samples per tone-phase reading: one cycle of 1 kHz, which also nulls the 2 kHz image
JUMP_SPAN = 3  # readings (ms) over which the tone's phase is compared
JUMP_RAD = 0.08  # 0.6 of a sample (13 µs) at 1 kHz: more than a sound server's resampler or our slew moves it
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class PulseRigError(RuntimeError):
    pass


@dataclass
class PulseBenchOptions:
    kinds: list[str]
    sites: int = 10
    seconds: float = 60.0
    delay_ms: float = 80.0
    warmup: float = 30.0
    out: Path = Path("citycast-out/bench-pulse")
    json_out: Path | None = None
    keep_audio: bool = False
    block: int = 480  # samples a site's sink takes per wake-up (`citycast site --period`)
    sound_server: str = "pulseaudio"  # or "pipewire" (`citycast.tooling.bench.pipewire_server`)

    @property
    def period_ms(self) -> float:
        return self.block * 1000 / SAMPLE_RATE


def parse_kinds(spec: str) -> list[str]:
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SINK_KINDS]
    if not kinds or bad:
        raise PulseRigError(f"--sink takes {', '.join(SINK_KINDS)} or a comma list of them, not {spec!r}")
    return kinds


# -- the address --------------------------------------------------------------------------------------------


def write_tone_with_markers(path: Path) -> None:
    """`LOOP_S` seconds of the tone with a marker at the start of every second (16-bit WAV, loops seamlessly:
    the tone has a whole number of cycles per loop)."""
    n = LOOP_S * SAMPLE_RATE
    x = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / SAMPLE_RATE)
    marker = chirp().astype(np.float64)
    for k in range(LOOP_S):
        x[k * SAMPLE_RATE : k * SAMPLE_RATE + marker.size] += marker
    pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


# -- the sound server ---------------------------------------------------------------------------------------


def sink_name(i: int) -> str:
    return f"cc_site{i:02d}"


CARD = "cc_card"  # the null sink whose channels are the sites' loudspeakers
MAX_SITES = 32  # PulseAudio's most channels a sink may have (PA_CHANNELS_MAX)
MAX_CARD_PPM = 2000.0  # a fitted card rate further off than this is broken dates, not the card


def card_modules(sinks: int) -> list[str]:
    """The sound server's modules for the rig: one 48 kHz null sink `CARD` with a channel per site, and a mono remap
    sink per site (`sink_name(i)`) onto channel i of it. PulseAudio loads these lines, and so does pipewire-pulse."""
    if not 1 <= sinks <= MAX_SITES:
        raise PulseRigError(f"the pulse bench plays at most {MAX_SITES} sites (one channel each), not {sinks}")
    # The card's channels are aux0..aux(n-1), the map its record stream asks for too (`RecordStream`): so
    # recording it never remixes channels into one another. Each site's sink is a mono remap sink onto one.
    aux = [f"aux{i}" for i in range(sinks)]
    lines = [f"module-null-sink sink_name={CARD} rate=48000 channels={sinks} channel_map={','.join(aux)}"]
    lines += [f"module-remap-sink sink_name={sink_name(i)} master={CARD} channels=1 channel_map=mono "
              f"master_channel_map={ch} remix=no" for i, ch in enumerate(aux)]  # fmt: skip
    return lines


class PulseServer:
    """A private PulseAudio, its socket and state under `workdir`: one 48 kHz null sink `CARD` with a channel per
    site, and a mono remap sink per site (`sink_name(i)`) onto channel i of it."""

    def __init__(self, workdir: Path, sinks: int) -> None:
        self.workdir = workdir.resolve()  # PulseAudio refuses a relative HOME (the bench's default --out is one)
        self.sinks = sinks
        self.socket = self.workdir / "native"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    def env(self, sink: str | None = None) -> dict[str, str]:
        """What a client process needs to find this server (and, for the ALSA pulse plugin, its sink)."""
        env = {**os.environ, "PULSE_SERVER": self.server, "PULSE_RUNTIME_PATH": str(self.workdir / "runtime")}
        if sink is not None:
            env["PULSE_SINK"] = sink
        return env

    def __enter__(self) -> PulseServer:
        binary = shutil.which("pulseaudio")
        if binary is None:
            raise PulseRigError("pulseaudio is not installed (Debian: pulseaudio; scripts/setup.sh installs it)")
        runtime = self.workdir / "runtime"
        runtime.mkdir(parents=True, mode=0o700)
        env = dict(os.environ)
        # As root PulseAudio only warns, as long as its runtime and state directories are its own. Real-time
        # scheduling for its sink threads, as rtkit gives it on a site box: on a loaded machine without it the null
        # sinks render late and its latency reports wander by milliseconds (seen at load 20).
        env.update(PULSE_RUNTIME_PATH=str(runtime), XDG_RUNTIME_DIR=str(runtime), HOME=str(self.workdir))
        env.pop("PULSE_SERVER", None)
        loads = [f"--load={line}" for line in card_modules(self.sinks)]
        log = (self.workdir / "pulseaudio.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--daemonize=no", "--system=false", "--realtime=yes", "--high-priority=yes", "--exit-idle-time=-1",
             "--disallow-exit", "-n", *loads,
             f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1", "--log-target=stderr"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                tail = (self.workdir / "pulseaudio.log").read_text(errors="replace")[-1500:]
                raise PulseRigError(f"pulseaudio did not start:\n{tail}")
            time.sleep(0.05)
        return self

    def processes(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """The server's process, by name (a list, as `PipeWireServer` has several)."""
        return [("pulseaudio", self.proc)] if self.proc is not None else []

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SOUND_SERVERS = ("pulseaudio", "pipewire")
SoundServer = PulseServer | PipeWireServer


# -- recording the monitors ---------------------------------------------------------------------------------


@dataclass
class MonitorRecording:
    """One site's channel of a recorded monitor (a raw float32 file of `channels` interleaved channels) and the
    server's dates: (frame index, capture ns) after each read, one list shared by every channel of that file."""

    name: str
    path: Path
    dates: list[tuple[int, int]] = field(default_factory=list)
    samples: int = 0
    channel: int = 0
    channels: int = 1

    def line(self) -> tuple[float, float]:
        """(capture ns of sample 0, ns per sample), fitted to the server's dates. A date is only ever late (the
        server or this client ran late, by milliseconds on a loaded box), so each second of samples keeps its
        earliest date, and a Theil-Sen line through those (the median of pairwise slopes) leaves a busy second out.
        The rate is fitted, not assumed: a null sink under load renders faster or slower than its nominal rate on
        the system clock (+400 ppm seen with ten sites), and a nominal rate turned that into a latency drifting by
        0.5 ms a second."""
        d = np.array(self.dates[len(self.dates) // 20 :], dtype=np.float64)  # the stream's start settles first
        if len(d) < 10:
            raise PulseRigError(f"{self.name}: only {len(d)} dated reads")
        nominal = 1e9 / SAMPLE_RATE
        t0 = d[0, 1]
        resid = d[:, 1] - t0 - d[:, 0] * nominal
        bins = (d[:, 0] // SAMPLE_RATE).astype(np.int64)
        xs, ys = [], []
        for b in np.unique(bins):
            inside = np.flatnonzero(bins == b)
            j = inside[np.argmin(resid[inside])]
            xs.append(d[j, 0])
            ys.append(resid[j])
        if len(xs) < 5:
            return t0 + float(np.median(resid)), nominal
        x, y = np.array(xs), np.array(ys)
        i, j = np.triu_indices(len(x), k=1)
        slope = float(np.median((y[j] - y[i]) / (x[j] - x[i])))
        if abs(slope) > MAX_CARD_PPM * 1e-6 * nominal:
            slope = 0.0  # no sound card runs that far off: the dates are broken, keep the nominal rate
        return t0 + float(np.median(y - slope * x)), nominal + slope

    def rate_ppm(self) -> float:
        """How much faster than nominal the card ran against the system clock, by `line()`."""
        return (1e9 / SAMPLE_RATE / self.line()[1] - 1) * 1e6

    def audio(self) -> F32:
        if self.channels == 1:
            return np.fromfile(self.path, dtype="<f4")
        x = np.memmap(self.path, dtype="<f4", mode="r")  # every site's channel: read only this one's
        frames = x[: x.size - x.size % self.channels].reshape(-1, self.channels)
        return np.array(frames[:, self.channel], dtype=np.float32)


class MonitorRecorder:
    """Records monitors from one client process, one record stream (and thread) each: with `card`, that sink's
    monitor, channel i being `sinks[i]`; without, each of `sinks`' own monitor."""

    def __init__(self, server: str, sinks: list[str], workdir: Path, *, card: str | None = None) -> None:
        self.server = server
        self.sinks = sinks
        self.groups: list[tuple[str, list[MonitorRecording]]]
        if card is None:
            self.groups = [(s, [MonitorRecording(s, workdir / f"{s}.f32")]) for s in sinks]
        else:
            path, dates = workdir / f"{card}.f32", list[tuple[int, int]]()
            self.groups = [(card, [MonitorRecording(s, path, dates, 0, i, len(sinks)) for i, s in enumerate(sinks)])]
        self.recordings = [rec for _, group in self.groups for rec in group]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[str] = []

    def _record(self, group: list[MonitorRecording], stream: Any) -> None:
        first = group[0]
        try:
            with first.path.open("wb") as out:
                while not self._stop.is_set():
                    data = stream.read(BLOCK * 4 * first.channels)
                    # The next unread sample was captured `latency` ago, by the server's own account.
                    before = time.time_ns()
                    latency_us = int(stream.get_latency())
                    after = time.time_ns()
                    out.write(data)
                    for rec in group:
                        rec.samples += BLOCK
                    if after - before < 500_000:  # else preempted while asking: when "now" was is unknown
                        first.dates.append((first.samples, (before + after) // 2 - latency_us * 1000))
        except PulseRecordError as exc:
            self._errors.append(f"{first.name}: {exc}")
        finally:
            stream.close()

    def start(self) -> None:
        for source, group in self.groups:
            channels = group[0].channels
            try:
                stream = RecordStream(self.server, f"{source}.monitor", channels, SAMPLE_RATE,
                                      fragsize=BLOCK * 4 * channels, name=f"monitor {source}")  # fmt: skip
            except PulseRecordError as exc:
                self.stop()
                raise PulseRigError(str(exc)) from exc
            t = threading.Thread(target=self._record, args=(group, stream), name=f"rec-{source}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> list[str]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        return self._errors


# -- what was played ----------------------------------------------------------------------------------------


@dataclass
class ToneGlitches:
    gaps: int  # the tone dropped out: the server played silence (an underrun)
    jumps: int  # its phase jumped: samples skipped or repeated
    minutes: float

    @property
    def per_minute(self) -> float:
        return (self.gaps + self.jumps) / self.minutes if self.minutes > 0 else float("nan")


def tone_glitches(x: F32 | F64, markers: list[float], lo: int, hi: int) -> ToneGlitches:
    """Gaps and phase jumps of the tone in x[lo:hi], leaving out the few ms around each marker chirp."""
    seg = np.asarray(x[lo:hi], dtype=np.float64)
    k = seg.size // DEMOD
    if k < 10:
        return ToneGlitches(0, 0, 0.0)
    n = np.arange(k * DEMOD)
    z = (seg[: k * DEMOD] * np.exp(-2j * np.pi * TONE_HZ * n / SAMPLE_RATE)).reshape(k, DEMOD).mean(axis=1)
    amp = np.abs(z)
    masked = np.zeros(k, dtype=bool)
    span = chirp().size
    for p in markers:
        a, b = int((p - lo) // DEMOD) - 3, int((p - lo + span) // DEMOD) + 4
        masked[max(0, a) : max(0, min(k, b))] = True
    level = float(np.median(amp[~masked])) if np.any(~masked) else 0.0
    low = (amp < 0.5 * level) & ~masked
    # The phase over a span of JUMP_SPAN readings: a skip or repeat inside one reading shows in full across it.
    span_ok = ~masked[JUMP_SPAN:] & ~masked[:-JUMP_SPAN] & ~low[JUMP_SPAN:] & ~low[:-JUMP_SPAN]
    dphi = np.angle(z[JUMP_SPAN:] * np.conj(z[:-JUMP_SPAN]))
    # The playout slews the stream's rate by at most 1000 ppm: over 3 ms that moves the phase by 0.02 rad from its
    # median step, while one sample skipped or repeated moves it by 0.13 rad.
    med = float(np.median(dphi[span_ok])) if np.any(span_ok) else 0.0
    jump = (np.abs(np.angle(np.exp(1j * (dphi - med)))) > JUMP_RAD) & span_ok
    return ToneGlitches(_events(low), _events(jump), (hi - lo) / SAMPLE_RATE / 60)


def _events(flags: npt.NDArray[np.bool_]) -> int:
    """Runs of True, each one event (a glitch lasting several readings is one glitch)."""
    if flags.size == 0:
        return 0
    return int(flags[0]) + int(np.count_nonzero(flags[1:] & ~flags[:-1]))


# -- the run ------------------------------------------------------------------------------------------------


def _check(fleet: Fleet) -> None:
    bad = fleet.failed()
    if bad:
        raise PulseRigError(f"{bad[0].name} exited with an error:\n{fleet.log_tail(bad[0])}")


def _spawn(fleet: Fleet, role: str, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = fleet.workdir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**env, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    m = fleet.adopt(role, name, proc.pid, log)
    m.popen = proc
    return proc


def run_kind(kind: str, opts: PulseBenchOptions, console: Console) -> dict[str, Any]:
    out = opts.out / kind
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tone = out / "tone-markers.wav"
    write_tone_with_markers(tone)
    sinks = [sink_name(i) for i in range(opts.sites)]
    with contextlib.ExitStack() as stack:
        pulse: SoundServer
        if opts.sound_server == "pipewire":
            try:
                pulse = stack.enter_context(PipeWireServer(out / "pipewire", card_modules(opts.sites)))
            except PipeWireError as e:
                raise PulseRigError(str(e)) from e
        else:
            pulse = stack.enter_context(PulseServer(out / "pulse", opts.sites))
        fleet = stack.enter_context(Fleet(out / "logs"))
        for name, proc in pulse.processes():
            fleet.adopt("sound-server", name, proc.pid)
        recorder = MonitorRecorder(pulse.server, sinks, out, card=CARD)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(), console=console,
        ) as progress:  # fmt: skip
            if kind == "snapclient":
                ts0_ns = _play_snapclients(out, tone, pulse, fleet, recorder, opts, progress, stack)
            else:
                ts0_ns = _play_sites(kind, out, tone, pulse, fleet, recorder, opts, progress, stack)
        errors = recorder.stop()
        fleet.stop("sites", timeout=20)
        fleet.stop("snapclients", timeout=10)
        if errors:
            raise PulseRigError("recording failed: " + "; ".join(errors))
    figures = _figures(kind, opts, recorder.recordings, ts0_ns, fleet, console)
    if not opts.keep_audio:
        for rec in recorder.recordings:
            rec.path.unlink(missing_ok=True)  # one file holds every channel: the first unlink removes it
    return figures


def _settle(kind: str, fleet: Fleet, progress: Progress, seconds: float, what: str) -> None:
    task = progress.add_task(f"[{kind}] {what} (s)", total=seconds)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        _check(fleet)
        fleet.sample()
        progress.update(task, completed=time.monotonic() - t0)
        time.sleep(0.2)


def _play_sites(
    kind: str, out: Path, tone: Path, pulse: SoundServer, fleet: Fleet, recorder: MonitorRecorder,
    opts: PulseBenchOptions, progress: Progress, stack: contextlib.ExitStack,
) -> int:  # fmt: skip
    """Sites on an embedded NATS play the tone a real ingest sends; returns the first marker's broadcast time."""
    key = generate_private_key()
    save_private_key(key, out / "ingest.key")
    (out / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
    try:
        nats = EmbeddedNats(port=free_port(), workdir=out / "nats")
        nats.start()
    except NatsServerError as exc:
        raise PulseRigError(str(exc)) from exc
    stack.callback(nats.stop)
    assert nats.pid is not None
    fleet.adopt("nats", "nats", nats.pid)
    try:
        extra_env = alsa_env(opts.sound_server, out) if kind == "alsa" else {}
    except FileNotFoundError as exc:
        raise PulseRigError(str(exc)) from exc
    for i, sink in enumerate(recorder.sinks):
        specs = {"pulse": f"pulse:{sink}", "alsa": f"alsa:{alsa_pcm(opts.sound_server, sink)}"}
        spec = specs.get(kind, f"{kind}:pulse")
        argv = citycast_argv(
            "site", "--name", f"site-{i:02d}", "--nats", nats.url, "--trust", str(out / "trusted.keys"),
            "--delay-ms", f"{opts.delay_ms:g}", "--sink", spec, "--clock", "system",
            "--period", f"{opts.period_ms:g}",
        )  # fmt: skip
        _spawn(fleet, "sites", f"site-{i:02d}", argv, {**pulse.env(sink), **extra_env})
    recorder.start()
    stack.callback(recorder.stop)
    _settle(kind, fleet, progress, opts.warmup, "sites playing, their DAC clocks settling")
    report = out / "ingest.json"
    ingest = _spawn(
        fleet, "ingest", "ingest",
        citycast_argv("ingest", str(tone), "--loop", "--key", str(out / "ingest.key"), "--nats", nats.url,
                      "--seconds", f"{opts.seconds:g}", "--report", str(report)),
        dict(os.environ),
    )  # fmt: skip
    fleet.start_window()
    task = progress.add_task(f"[{kind}] tone and markers sent (s)", total=opts.seconds)
    finished = fleet.watch_until(
        lambda: ingest.poll() is not None,
        lambda: _check(fleet),
        opts.seconds,
        lambda elapsed: progress.update(task, completed=min(opts.seconds, elapsed)),
    )
    if not finished:
        raise PulseRigError("ingest did not finish in time")
    fleet.end_window()
    if ingest.returncode != 0:
        raise PulseRigError("ingest failed:\n" + fleet.log_tail(fleet.members[-1]))
    time.sleep(opts.delay_ms / 1000 + 1.0)  # the last marker reaches every sink
    return int(json.loads(report.read_text())["ts0_ns"])


def _play_snapclients(
    out: Path, tone: Path, pulse: SoundServer, fleet: Fleet, recorder: MonitorRecorder,
    opts: PulseBenchOptions, progress: Progress, stack: contextlib.ExitStack,
) -> int:  # fmt: skip
    """The yardstick through the same card: a real snapserver reads the tone from its FIFO (Opus, as a site gets
    it) and serves one snapclient per sink, each through its own PulseAudio player (snapclient's `--player pulse`,
    on that sink). snapserver's buffer is the sites' D. Returns the broadcast time of the first marker in the
    window; snapserver dates the audio when it reads its FIFO, so the latency figure is good to that read (tens
    of ms), unlike the skew, which is read off the one recording."""
    try:
        ensure_snapcast(Console(stderr=True))
    except SnapcastError as exc:
        raise PulseRigError(str(exc)) from exc
    rig = SnapcastRig(out / "snapcast", opts.sites, 1.0, source=tone, buffer_ms=opts.delay_ms)
    rig.start_server(fleet)
    stack.callback(rig.stop, fleet)
    for i, sink in enumerate(recorder.sinks):
        _spawn(fleet, "snapclients", f"snapclient-{i:02d}", [
            "snapclient", "-h", "127.0.0.1", "-p", str(rig.port), "--hostID", f"citycast-bench-{i:03d}",
            "--player", f"pulse:server={pulse.server}", "--soundcard", sink, "--logsink", "stdout",
        ], pulse.env(sink))  # fmt: skip
    recorder.start()
    stack.callback(recorder.stop)
    try:
        first_ns = rig.first_sample_ns(fleet)
    except SnapcastError as exc:
        raise PulseRigError(str(exc)) from exc
    _settle("snapclient", fleet, progress, opts.warmup, "snapclients playing, settling")
    fleet.start_window()
    window_ns = time.time_ns()
    _settle("snapclient", fleet, progress, opts.seconds, "tone and markers served")
    fleet.end_window()
    time.sleep(opts.delay_ms / 1000 + 1.0)
    # The tone has a marker at every whole second from its first sample: the window's first is the next one.
    return first_ns + math.ceil((window_ns - first_ns) / 1e9) * 1_000_000_000


def _figures(
    kind: str, opts: PulseBenchOptions, recordings: list[MonitorRecording], ts0_ns: int, fleet: Fleet, console: Console
) -> dict[str, Any]:
    traces: list[SiteTrace] = []
    glitches: dict[str, ToneGlitches] = {}
    period = 1_000_000_000
    markers_sent = int(opts.seconds)
    with Progress(TextColumn("{task.description}"), BarColumn(), console=console) as progress:
        task = progress.add_task(
            f"[{kind}] finding markers and glitches in what each sink played", total=len(recordings)
        )
        for rec in recordings:
            x = rec.audio()
            start_ns, ns_per_sample = rec.line()
            positions = detect_markers(x)
            heard = [start_ns + p * ns_per_sample for p in positions]
            traces.append(SiteTrace(rec.name, heard))
            # The window the address played in, by the markers: from the second to the last one heard.
            inside = [
                p
                for p, t in zip(positions, heard, strict=True)
                if ts0_ns + period <= t < ts0_ns + markers_sent * period + period
            ]
            if len(inside) >= 2:
                glitches[rec.name] = tone_glitches(x, positions, int(inside[0]), int(inside[-1]) + SAMPLE_RATE - DEMOD)
            else:
                glitches[rec.name] = ToneGlitches(0, 0, 0.0)
            progress.advance(task)
    sync = analyse(traces, ts0_ns=ts0_ns, period_ns=period, markers_sent=markers_sent)
    rates = [g.per_minute for g in glitches.values() if g.minutes > 0]
    cpu, rss, _ = fleet.figures()
    role = "snapclients" if kind == "snapclient" else "sites"
    return {
        "sink": kind,
        "sink_path": SINK_KINDS[kind],
        "sound_server": opts.sound_server,
        "sites": opts.sites,
        "seconds": opts.seconds,
        "delay_ms": opts.delay_ms,
        "site_period_ms": opts.period_ms,
        "markers": sync.markers_sent,
        "latency_ms": sync.latency_ms,
        "latency_by_marker_ms": sync.latency_by_marker_ms,
        "card_rate_ppm": round(recordings[0].rate_ppm(), 1) if recordings else None,
        "skew_ms": sync.skew_ms,
        "deviation_from_median_ms": sync.per_site_deviation_ms,
        # Per site: its median (signed) offset from the others and how far its own offset moved (p99 - p1): a
        # constant offset is a bias in that site's DAC timing, a wide one is jitter.
        "offset_by_site_ms": site_offsets(sync.offsets_by_site_ms),
        "missing_markers": sync.missing,
        # from the monitors: what the sound server played
        "gaps": sum(g.gaps for g in glitches.values()),
        "jumps": sum(g.jumps for g in glitches.values()),
        "discontinuities_per_site_minute": {
            "mean": float(np.mean(rates)) if rates else float("nan"),
            "max": float(np.max(rates)) if rates else float("nan"),
        },
        "per_site": {
            n: {"gaps": g.gaps, "jumps": g.jumps, "minutes": round(g.minutes, 3)} for n, g in glitches.items()
        },
        "cpu_percent_per_site": cpu.get(role, 0.0) / max(1, opts.sites),
        "rss_mb_per_site": rss.get(role, 0.0) / max(1, opts.sites),
    }


def site_offsets(offsets_ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each site's median offset from the others and how far it moved (p99 - p1), from `analyse`'s per-marker
    offsets: {site: {"median": ms, "spread": ms}}."""
    out: dict[str, dict[str, float]] = {}
    for name, d in offsets_ms.items():
        p1, p50, p99 = np.percentile(np.asarray(d, dtype=np.float64), [1, 50, 99])
        out[name] = {"median": round(float(p50), 4), "spread": round(float(p99 - p1), 4)}
    return out


def run_pulse_bench(opts: PulseBenchOptions, console: Console) -> dict[str, Any]:
    if opts.sites < 1:
        raise PulseRigError("--sites must be at least 1")
    if not 0 < opts.delay_ms < 900:
        raise PulseRigError("--delay must be between 0 and 900 ms (a marker every second)")
    if opts.sound_server not in SOUND_SERVERS:
        raise PulseRigError(f"--sound-server takes {' or '.join(SOUND_SERVERS)}, not {opts.sound_server!r}")
    results = [run_kind(kind, opts, console) for kind in opts.kinds]
    kinds = ",".join(opts.kinds)
    command = f"citycast bench --sink {kinds} --sites {opts.sites} --seconds {opts.seconds:g} --warmup {opts.warmup:g}"
    if opts.sound_server != "pulseaudio":
        command += f" --sound-server {opts.sound_server}"
    if opts.block != 480:
        command += f" --dac-block {opts.block}"
    if opts.delay_ms != 80.0:
        command += f" --delay {opts.delay_ms:g}"
    out: dict[str, Any] = {"command": command, "runs": results}
    print_table(out, console)
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(out, indent=1))
    return out


def print_table(result: dict[str, Any], console: Console) -> None:
    def ms3(d: dict[str, float]) -> str:
        return " / ".join(f"{float(d.get(k, math.nan)):.3f}" for k in ("p50", "p99", "max"))

    runs = result["runs"]
    t = Table(title=f"{result['command']} (loopback, figures from the sinks' monitors)")
    t.add_column("figure")
    for r in runs:
        t.add_column(f"--sink {r['sink']}\n{r['sink_path']}", justify="right")
    rows: list[tuple[str, Any]] = [
        ("sites / markers", lambda r: f"{r['sites']} / {r['markers']}"),
        ("latency p50 / p99 / max (ms)", lambda r: ms3(r["latency_ms"])),
        ("skew p50 / p99 / max (ms)", lambda r: ms3(r["skew_ms"])),
        ("underruns heard (tone gaps)", lambda r: str(r["gaps"])),
        ("phase jumps heard", lambda r: str(r["jumps"])),
        ("discontinuities / site-minute (mean, max)", lambda r: _mean_max(r["discontinuities_per_site_minute"])),
        ("sites with missing markers", lambda r: str(len(r["missing_markers"]))),
        ("CPU per site (% of a core)", lambda r: f"{r['cpu_percent_per_site']:.2f}"),
    ]  # fmt: skip
    for label, cell in rows:
        t.add_row(label, *[cell(r) for r in runs])
    console.print(t)


def _mean_max(d: dict[str, float]) -> str:
    return f"{d['mean']:.2f}, {d['max']:.2f}"
