"""Snapcast beside citycast in one `bench` run (`--snapclients K`): the yardstick for a site's CPU and memory.

A real `snapserver` (Debian package) reads the same marker signal the ingest sends (a chirp every marker period,
48 kHz) from a FIFO, encodes it with Opus at the ingest's bit rate, and serves K real `snapclient`s on loopback.
Each client decodes, keeps its clock in step with the server's and plays through its file player into a raw PCM
file: no sound card, and as much work per block as the sites' timed sinks, which write a WAV too. Snapcast's Opus
encoder takes stereo only, so the mono signal goes on both channels (a client decodes two channels where a site
decodes one).

Measured over the same window as the sites: each snapclient's CPU (/proc/PID/stat through psutil) and peak RSS
(VmHWM); from each client's log, what snapclient itself reports as a gap (client/stream.cpp of 0.26: "No chunks
available" and "Not enough frames available", each a block played as silence) and its hard re-syncs (a jump of
its playout); and from its output file, the markers it played and any it lost.

The feeder (`python -m citycast.tooling.bench.snapcast FIFO PERIOD [WAV]`: the markers, or a mono 16-bit WAV
looped, as `bench --sink snapclient` plays) paces the signal in 20 ms blocks by the
monotonic clock, as the ingest paces its frames, 100 ms ahead: snapserver reads its FIFO by its own timer, and a
feeder late on a busy box would otherwise show as a jump in every client.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from citycast.bus.server import free_port
from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.chirp import CHIRP_DURATION_S, chirp_length
from citycast.media.sources import MarkerSource
from citycast.tooling.bench.fleet import Fleet, Member
from citycast.tooling.markers import detect_markers

PACKAGES = ("snapserver", "snapclient")
CHANNELS = 2  # snapserver's Opus encoder refuses anything but stereo
# snapclient 0.26's file player (client/player/file_player.cpp, kDefaultBuffer) takes 50 ms of audio per wake-up:
# the period to give the sites' simulated DAC for a CPU comparison of like with like.
PLAYER_PERIOD_MS = 50.0
PLAYER_BLOCK = round(PLAYER_PERIOD_MS * SAMPLE_RATE / 1000)  # as a --dac-block
# What snapclient 0.26 logs when its player finds no audio for a block (it plays silence instead)...
UNDERRUN = re.compile(r"No chunks available|Not enough frames available")
# ...and when it gives up soft correction and jumps its playout to where it should be.
HARD_SYNC = re.compile(r"pBuffer->full\(\)|pShortBuffer->full\(\)|pMiniBuffer->full\(\)|abs\(age > 500\)")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d-\d\d-\d\d\.\d{3}) ")


class SnapcastError(RuntimeError):
    pass


def snapcast_installed() -> bool:
    return all(shutil.which(p) for p in PACKAGES)


def ensure_snapcast(console: Console) -> None:
    """Install snapserver and snapclient from Debian when they are missing (root only), saying so."""
    if snapcast_installed():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SnapcastError(
            "--snapclients needs snapserver and snapclient: install the Debian packages (as root: "
            "apt-get install -y snapserver snapclient), or run with --snapclients 0"
        )
    console.print(
        "[bold]Installing the Debian packages snapserver and snapclient[/] (apt-get) to measure snapclients beside "
        "the sites; the bench starts its own on free ports. Where systemd runs, the packages also start their "
        "services: stop them (systemctl disable --now snapserver snapclient) so they do not share the CPU."
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SnapcastError(f"apt-get could not install snapserver/snapclient: {done.stderr.strip()[-500:]}")


FIRST_SAMPLE = re.compile(r"first sample written at (\d+)")
AHEAD_BLOCKS = 5  # the FIFO is kept 100 ms ahead of snapserver's reads, so a late feeder never starves it


def looped(wav: Path) -> Iterator[npt.NDArray[np.float32]]:
    """A mono 16-bit WAV as float blocks of a frame, looped for ever."""
    with wave.open(str(wav), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise SnapcastError(f"{wav}: the feeder loops mono 16-bit {SAMPLE_RATE} Hz audio only")
        x = (np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768).astype(np.float32)
    if x.size < FRAME_SAMPLES:
        raise SnapcastError(f"{wav}: shorter than a frame")
    pos = 0
    while True:
        idx = (pos + np.arange(FRAME_SAMPLES)) % x.size
        pos = (pos + FRAME_SAMPLES) % x.size
        yield x[idx]


def feed(fifo: Path, period_s: float, wav: Path | None = None) -> None:
    """Write the marker signal (or `wav`, looped) into snapserver's FIFO in real time, as 16-bit stereo, until the
    reader goes."""
    blocks: Iterable[npt.NDArray[np.float32]] = MarkerSource(period_s).blocks() if wav is None else looped(wav)
    block_s = FRAME_SAMPLES / SAMPLE_RATE
    with open(fifo, "wb", buffering=0) as f:  # waits here until snapserver opens its end
        t0 = time.monotonic()
        print(f"first sample written at {time.time_ns()}", flush=True)
        for k, block in enumerate(blocks):
            pcm = np.clip(np.round(block * 32767), -32768, 32767).astype("<i2")
            try:
                f.write(np.repeat(pcm, CHANNELS).tobytes())  # L and R interleaved, the same sample
            except BrokenPipeError:
                return
            wait = t0 + (k + 1 - AHEAD_BLOCKS) * block_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)


def log_events(log: Path, since: float, until: float) -> tuple[int, int]:
    """(underruns, hard re-syncs) a snapclient logged between two Unix times (its log stamps local time)."""
    underruns = hard_syncs = 0
    if not log.exists():
        return 0, 0
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if m is None:
            continue
        stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H-%M-%S.%f").timestamp()
        if not since <= stamp <= until:
            continue
        if UNDERRUN.search(line):
            underruns += 1
        elif HARD_SYNC.search(line):
            hard_syncs += 1
    return underruns, hard_syncs


JUMP_SAMPLES = 48  # 1 ms: soft rate correction (at most 0.05 %) moves a marker by 0.5 ms a second at most


def markers_in(samples: np.ndarray, period_s: float) -> tuple[int, int, int]:
    """(markers found, markers missing, jumps) in a stretch of played audio that should hold one every
    `period_s`: missing are the whole periods with no marker, between markers and at either end; a jump is a
    spacing between markers that is not a whole number of periods (audio skipped or repeated)."""
    period = period_s * SAMPLE_RATE
    found = detect_markers(samples)
    if not found:
        return 0, int(samples.size // period), 0
    gaps = np.diff(found)
    missing = int(found[0] // period) + int((samples.size - found[-1] - chirp_length(CHIRP_DURATION_S)) // period)
    missing += sum(max(0, round(gap / period) - 1) for gap in gaps)
    jumps = sum(abs(gap - max(1, round(gap / period)) * period) > JUMP_SAMPLES for gap in gaps)
    return len(found), missing, int(jumps)


@dataclass
class SnapcastRig:
    """snapserver, its feeder and K snapclients, as members of a benchmark's `Fleet`."""

    workdir: Path
    clients: int
    period_s: float
    bitrate: int = 64_000
    source: Path | None = None  # a mono 16-bit 48 kHz WAV, looped, instead of the marker signal
    buffer_ms: float | None = None  # snapserver's end-to-end delay (its --stream.buffer; default 1000 ms)
    port: int = field(default_factory=free_port)
    window: list[tuple[int, int]] = field(default_factory=list)  # per client: its output's size (bytes) at the
    # window's start and end, so what it played in the window is known exactly, even where it fell behind

    def output(self, i: int) -> Path:
        return self.workdir / f"snapclient-{i:03d}.raw"

    def start(self, fleet: Fleet) -> list[Member]:
        """Start everything; returns the client members (to confine them, with `--cpu-quota`)."""
        self.start_server(fleet)
        return [self._spawn_client(fleet, i) for i in range(self.clients)]

    def start_server(self, fleet: Fleet) -> None:
        """snapserver and its feeder, for clients started by the caller."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Absolute: snapserver reads `pipe://citycast-out/...` as host "citycast-out" and path "/...", opens nothing
        # and serves silence (the bench's default --out is relative).
        fifo = (self.workdir / "snapfifo").resolve()
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo)
        config = self.workdir / "snapserver.conf"
        config.write_text("# empty: every setting is on the command line\n")
        source = (
            f"pipe://{fifo}?name=citycast&mode=read&sampleformat={SAMPLE_RATE}:16:{CHANNELS}"
            f"&codec=opus:BITRATE:{self.bitrate}&chunk_ms=20"
        )
        buffer = [] if self.buffer_ms is None else ["--stream.buffer", f"{self.buffer_ms:.0f}"]
        fleet.spawn("snapserver", "snapserver", [
            "snapserver", "-c", str(config), f"--server.datadir={self.workdir}", "--stream.source", source,
            "--stream.bind_to_address", "127.0.0.1", "--stream.port", str(self.port),
            "--tcp.enabled", "false", "--http.enabled", "false", "--logging.sink", "stdout", *buffer,
        ])  # fmt: skip
        wav = [] if self.source is None else [str(self.source)]
        fleet.spawn("snapfeed", "snapfeed", [sys.executable, "-m", __name__, str(fifo), str(self.period_s), *wav])

    def first_sample_ns(self, fleet: Fleet, timeout: float = 10.0) -> int:
        """When the feeder wrote the signal's first sample (Unix ns), from its log: once snapserver reads it."""
        member = next(m for m in fleet.members if m.role == "snapfeed")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if member.log is not None and member.log.exists():
                found = FIRST_SAMPLE.search(member.log.read_text(errors="replace"))
                if found:
                    return int(found.group(1))
            time.sleep(0.05)
        raise SnapcastError("snapserver did not start reading its FIFO")

    def _spawn_client(self, fleet: Fleet, i: int) -> Member:
        return fleet.spawn("snapclients", f"snapclient-{i:03d}", [
            "snapclient", "-h", "127.0.0.1", "-p", str(self.port), "--hostID", f"citycast-bench-{i:03d}",
            "--player", f"file:filename={self.output(i)}", "--logsink", "stdout",
        ])  # fmt: skip

    def _sizes(self) -> list[int]:
        return [self.output(i).stat().st_size if self.output(i).exists() else 0 for i in range(self.clients)]

    def start_window(self) -> None:
        self.window = [(size, size) for size in self._sizes()]

    def end_window(self) -> None:
        self.window = [(lo, hi) for (lo, _), hi in zip(self.window, self._sizes(), strict=True)]

    def stop(self, fleet: Fleet) -> None:
        fleet.stop("snapclients", timeout=10)
        fleet.stop("snapfeed", timeout=5)
        fleet.stop("snapserver", timeout=5)

    def figures(self, fleet: Fleet, since: float, until: float, *, keep: bool) -> dict[str, object]:
        """The snapclients' figures over the window: [since, until] in Unix times for their logs, the output
        recorded by `start_window` and `end_window` for what they played."""
        assert len(self.window) == self.clients, "start_window() and end_window() first"
        cpu, rss, _ = fleet.figures()
        underruns = hard_syncs = missing = jumps = 0
        fewest: int | None = None
        for i, m in enumerate(m for m in fleet.members if m.role == "snapclients"):
            if m.log is not None:
                u, h = log_events(m.log, since, until)
                underruns, hard_syncs = underruns + u, hard_syncs + h
            found, lost, jumped = markers_in(self.played(i, *self.window[i]), self.period_s)
            fewest = found if fewest is None else min(fewest, found)
            missing += lost
            jumps += jumped
            if not keep:
                self.output(i).unlink(missing_ok=True)
        k = max(1, self.clients)
        return {
            "snapclients": self.clients,
            "snapclient_cpu_percent": cpu.get("snapclients", 0.0) / k,
            "snapclient_player_period_ms": PLAYER_PERIOD_MS,
            "snapclient_rss_mb": rss.get("snapclients", 0.0) / k,
            "snapserver_cpu_percent": cpu.get("snapserver", 0.0),
            "snapclient_underruns": underruns,
            "snapclient_hard_syncs": hard_syncs,
            "snapclient_markers_min": fewest or 0,  # the fewest markers one client played in the window
            "snapclient_missing_markers": missing,
            "snapclient_jumps": jumps,  # marker spacings off a whole number of periods: audio skipped or repeated
        }

    def played(self, i: int, start: int, end: int | None = None) -> np.ndarray:
        """What client i played between two sizes of its output, as float mono."""
        frame = 2 * CHANNELS
        count = -1 if end is None else (end - start) // frame * CHANNELS
        if not self.output(i).exists():
            return np.zeros(0, np.float32)
        raw = np.fromfile(self.output(i), dtype="<i2", count=count, offset=start - start % frame)
        return raw[::CHANNELS].astype(np.float32) / 32768


def comparison(figures: dict[str, object]) -> dict[str, object]:
    """A full site against a snapclient, from the figures of one run: CPU ratio and memory side by side."""
    site_cpu = figures.get("site_cpu_percent_per_site")
    snap_cpu = float(figures.get("snapclient_cpu_percent", 0.0))  # type: ignore[arg-type]
    procs = dict(figures.get("processes", {})).get("sites", 0)  # type: ignore[call-overload]
    site_rss = dict(figures.get("rss_mb", {})).get("sites")  # type: ignore[call-overload]
    # A snapclient that played nothing (no audio from its server) idles: its CPU is no yardstick.
    played = int(figures.get("snapclient_markers_min", 0)) > 0  # type: ignore[call-overload]
    return {
        "cpu_vs_snapclient": float(site_cpu) / snap_cpu if site_cpu is not None and snap_cpu > 0 and played else None,  # type: ignore[arg-type]
        # one site process's peak RSS (it holds sites / processes agents)
        "site_rss_mb_per_process": float(site_rss) / procs if site_rss is not None and procs else None,
    }


def add_rows(table: Table, f: dict[str, object]) -> None:
    if not f.get("snapclients"):
        return
    table.add_row(
        f"snapcast: {f['snapclients']} snapclients: CPU per client / peak RSS",
        f"{float(f['snapclient_cpu_percent']):.3f} % / {float(f['snapclient_rss_mb']):.1f} MB",  # type: ignore[arg-type]
    )
    ratio = f.get("cpu_vs_snapclient")
    if ratio is not None:
        shown = f"{float(ratio):.2f}"  # type: ignore[arg-type]
    else:
        silent = not int(f.get("snapclient_markers_min", 0))  # type: ignore[call-overload]
        shown = "— (the snapclients played no marker)" if silent else "—"
    table.add_row("CPU per full site ÷ per snapclient", shown)
    period = f.get("site_dac_period_ms")
    if period is not None:
        same = abs(float(period) - PLAYER_PERIOD_MS) < 1e-6  # type: ignore[arg-type]
        table.add_row(
            "audio taken per wake-up: site's DAC / snapclient's file player",
            f"{float(period):g} ms / {PLAYER_PERIOD_MS:g} ms"  # type: ignore[arg-type]
            + ("" if same else f" (--dac-block {PLAYER_BLOCK} compares like with like)"),
        )
    per_proc = f.get("site_rss_mb_per_process")
    if per_proc is not None:
        table.add_row("peak RSS per site process (its agents together)", f"{float(per_proc):.1f} MB")  # type: ignore[arg-type]
    table.add_row(
        "snapcast: underruns / hard re-syncs (its own log)",
        f"{f['snapclient_underruns']} / {f['snapclient_hard_syncs']}",
    )
    table.add_row(
        "snapcast: markers played (fewest per client) / missing / jumps",
        f"{f['snapclient_markers_min']} / {f['snapclient_missing_markers']} / {f['snapclient_jumps']}",
    )


if __name__ == "__main__":
    feed(Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
