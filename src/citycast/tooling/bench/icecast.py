"""Icecast listeners measured: a private Icecast server, marker audio on the bus, listeners that decode the mounts.

`LocalIcecast` runs the Debian `icecast2` binary with a config of our own in a scratch directory, on loopback
(the tests use it too). Icecast refuses to run as root unless told whom to become (`<changeowner>`): as root the
config names `nobody`/`nogroup` and the scratch directory is opened to them; as anyone else it runs as is.

`MountListener` is a listener with no player buffer: it reads the mount over HTTP and decodes it with PyAV as the
bytes arrive, noting when each decoded block was ready. `bench_icecast` puts marker chirps on the bus (signed like
the hub's), lets the hub's Icecast service stream them, finds the chirps in what each listener decoded, and
reports how far behind the loudspeakers (which play a frame stamped T at T + D) each listener hears them, and
the CPU the service's thread spends per mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import av
import httpx
import numpy as np
import psutil

from citycast.bus.server import free_port
from citycast.media.audio import FRAME_NS, SAMPLE_RATE
from citycast.media.codec import OpusEncoder
from citycast.media.sources import MarkerSource
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects

__all__ = ["LocalIcecast", "MountListener", "bench_icecast", "publish_markers"]


class LocalIcecast:
    """`icecast2 -c` on 127.0.0.1 with its own config; `start()`, `stop()`, `url`, `status()`."""

    def __init__(self, workdir: Path, *, password: str = "hackme", port: int | None = None, burst_bytes: int = 0):
        self.workdir = Path(workdir)
        self.password = password
        self.port = port or free_port()
        self.burst_bytes = burst_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.logdir = self.workdir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        share = Path("/usr/share/icecast2")
        owner = ""
        if os.geteuid() == 0:
            owner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
        on = 1 if self.burst_bytes else 0
        burst = f"<burst-on-connect>{on}</burst-on-connect><burst-size>{self.burst_bytes}</burst-size>"
        pw = escape(self.password)
        return f"""<icecast>
  <location>citycast test</location><admin>citycast@localhost</admin>
  <limits><clients>50</clients><sources>40</sources><queue-size>524288</queue-size><client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout><source-timeout>10</source-timeout>{burst}</limits>
  <authentication><source-password>{pw}</source-password><admin-user>admin</admin-user>
    <admin-password>{pw}-admin</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{self.port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>1</fileserve>
  <paths><basedir>{share}</basedir><logdir>{escape(str(self.logdir))}</logdir>
    <webroot>{share}/web</webroot><adminroot>{share}/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>
"""

    def start(self, timeout_s: float = 15.0) -> None:
        binary = shutil.which("icecast2")
        if binary is None:
            raise RuntimeError("icecast2 is not installed (Debian package icecast2; scripts/setup.sh installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and self.logdir == self.workdir:
            # Icecast writes its logs after becoming nobody, who may not reach into the caller's private
            # directories (pytest's tmp_path is 0700): the logs go to a directory of their own, open to it.
            self.logdir = Path(tempfile.mkdtemp(prefix="citycast-icecast-"))
            self.logdir.chmod(0o777)
        cfg = self.workdir / "icecast.xml"
        cfg.write_text(self.config())
        cfg.chmod(0o644)
        deadline = time.monotonic() + timeout_s
        self.proc = self._spawn(binary, cfg)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                if time.monotonic() + 0.5 >= deadline:
                    raise RuntimeError(f"icecast2 exited ({self.proc.returncode}): {err.strip()[:500]}")
                # Started again on the port it just left (a restart), it may find the port not yet free: retry.
                time.sleep(0.5)
                self.proc = self._spawn(binary, cfg)
                continue
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/status-json.xsl", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"icecast2 did not answer on {self.url} within {timeout_s:.0f} s")

    def _spawn(self, binary: str, cfg: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [binary, "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.workdir
        )

    def status(self) -> list[dict[str, Any]]:
        """The mounts Icecast serves now (its status-json), as a list."""
        return parse_status(httpx.get(f"{self.url}/status-json.xsl", timeout=5.0).text)

    def mount(self, path: str) -> dict[str, Any] | None:
        for s in self.status():
            if str(s.get("listenurl", "")).endswith(path):
                return s
        return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def cleanup(self) -> None:
        """Stop, and remove a log directory made outside `workdir`."""
        self.stop()
        if self.logdir != self.workdir:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = self.workdir


async def publish_markers(
    nc: Any,
    signer: FrameSigner,
    subjects: Subjects,
    channel: int,
    seconds: float,
    *,
    lead_ns: int = 40_000_000,
    stream: int = 7,
) -> int:
    """Marker audio (a chirp each second) as signed frames on ``audio.<channel>``, paced in real time, each
    frame published `lead_ns` before its broadcast time (as the hub's broadcaster does). Returns the broadcast
    time of marker 0 (marker k is at that + k s)."""
    source = MarkerSource(1.0)
    encoder = OpusEncoder()
    ts0 = time.time_ns() + 200_000_000
    n = round(seconds * 1e9 / FRAME_NS)
    for seq, block in enumerate(source.blocks()):
        if seq >= n:
            break
        ts = ts0 + seq * FRAME_NS
        wait = (ts - lead_ns - time.time_ns()) / 1e9
        if wait > 0:
            await asyncio.sleep(wait)
        data = signer.sign(channel=channel, stream=stream, seq=seq, ts_ns=ts, packets=[encoder.encode(block)])
        await nc.publish(subjects.audio(channel), data)
    return ts0


@dataclass
class MountListener:
    """Reads one mount as a zero-buffer player would get it; decodes as bytes arrive (threads of its own)."""

    url: str
    fmt: str  # "ogg" or "mp3"
    raw: bytearray = field(default_factory=bytearray)
    pcm: list[np.ndarray] = field(default_factory=list)
    ready_at: list[tuple[int, int]] = field(default_factory=list)  # (samples decoded so far, wall ns)
    first_byte_ns: int | None = None
    error: str | None = None
    connected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._rfd, self._wfd = os.pipe()
        self._threads = [
            threading.Thread(target=self._read, name="listener-http", daemon=True),
            threading.Thread(target=self._decode, name="listener-decode", daemon=True),
        ]

    def start(self) -> MountListener:
        for t in self._threads:
            t.start()
        return self

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(10.0, read=30.0)) as r:
                if r.status_code != 200:
                    self.error = f"HTTP {r.status_code}"
                    return
                self.connected.set()
                for chunk in r.iter_raw():  # as received: a fixed chunk size would wait for bytes (silence is small)
                    if self.first_byte_ns is None:
                        self.first_byte_ns = time.time_ns()
                    self.raw += chunk
                    os.write(self._wfd, chunk)
                    if self._stop.is_set():
                        break
        except (httpx.HTTPError, OSError) as e:
            self.error = self.error or repr(e)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._wfd)

    def _decode(self) -> None:
        samples = 0
        try:
            with os.fdopen(self._rfd, "rb", buffering=0) as pipe:
                container: Any = av.open(
                    pipe, "r", format=self.fmt, buffer_size=1024, options={"probesize": "2048", "analyzeduration": "0"}
                )
                with container:
                    for frame in container.decode(audio=0):
                        if frame.sample_rate != SAMPLE_RATE:
                            raise ValueError(f"unexpected rate {frame.sample_rate}")
                        data = frame.to_ndarray().astype(np.float32)
                        mono = data.reshape(-1) if data.shape[0] == 1 else data.mean(axis=0)
                        self.pcm.append(mono)
                        samples += mono.size
                        self.ready_at.append((samples, time.time_ns()))
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if not self._stop.is_set():
                self.error = self.error or f"decode: {e!r}"

    def audio(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, dtype=np.float32)

    def ready_time(self, sample: float) -> int | None:
        """Wall time at which `sample` (index in the decoded audio) had been decoded."""
        for count, at in self.ready_at:
            if count > sample:
                return at
        return None

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5.0)


def marker_latencies(listener: MountListener, ts0: int, delay_ns: int) -> tuple[list[float], list[float]]:
    """(arrival, playback) latencies in ms behind the loudspeakers, one per marker found: arrival = when the
    listener had decoded the marker; playback = when a player that starts at the first byte and plays at the
    nominal rate would play it (what a burst-on-connect backlog adds shows here)."""
    from citycast.tooling.markers import detect_markers

    audio = listener.audio()
    found = detect_markers(audio)
    if not found or listener.first_byte_ns is None:
        return [], []
    arrival: list[float] = []
    playback: list[float] = []
    # The listener was connected before marker 0 went out, so the first marker heard is marker 0; later ones are
    # a whole number of seconds on (the mount never drops audio it was given; silence fills, never shortens).
    first = found[0]
    for pos in found:
        k = round((pos - first) / SAMPLE_RATE)
        speaker_ns = ts0 + k * 1_000_000_000 + delay_ns
        at = listener.ready_time(pos)
        if at is not None:
            arrival.append((at - speaker_ns) / 1e6)
        playback.append((listener.first_byte_ns + pos / SAMPLE_RATE * 1e9 - speaker_ns) / 1e6)
    return arrival, playback


def thread_cpu_s(name: str) -> float:
    """CPU seconds (user + system) of this process's threads called `name`."""
    ids = {t.native_id for t in threading.enumerate() if t.name == name}
    return float(sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids))


async def bench_icecast(
    workdir: Path, *, seconds: float, zones: int, delay_ms: float, burst_bytes: int, mp3: bool
) -> dict[str, Any]:
    """One run: the "all" group and `zones` zone groups, each an Ogg mount (and with `mp3` an MP3 mount too),
    marker audio on every group's channel, a listener on each of the "all" group's mounts. Figures: latency
    behind the loudspeakers (ms) per listened mount, CPU of the service's thread and of Icecast."""
    from citycast.bus.connection import connect
    from citycast.bus.server import EmbeddedNats
    from citycast.hub.icecast.program import ALL_GROUP, Program, zone_group
    from citycast.hub.icecast.service import IcecastOptions, IcecastService
    from citycast.hub.icecast.source import parse_icecast_url
    from citycast.media.keys import generate_private_key

    subjects = Subjects()
    nats = EmbeddedNats(port=free_port(), workdir=workdir / "nats")
    ice = LocalIcecast(workdir / "icecast", burst_bytes=burst_bytes)
    await asyncio.to_thread(nats.start)
    await asyncio.to_thread(ice.start)
    signer = FrameSigner(generate_private_key())
    groups = {ALL_GROUP: Program(1000, "bench: all")}
    groups |= {zone_group(z): Program(2000 + z, f"bench: zone {z}") for z in range(1, zones + 1)}
    opts = IcecastOptions(parse_icecast_url(ice.url, ice.password), mp3_groups=frozenset(groups if mp3 else ()))
    service = IcecastService(opts, nats.url, creds=None, subjects=subjects, trusted=[signer.public_key])
    nc = await connect(nats.url, name="bench-icecast")
    listeners: dict[str, MountListener] = {}
    try:
        await service.start()
        service.set_programs(groups)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(1 for s in service.status() if s["connected"]) < len(groups) * (
            2 if mp3 else 1
        ):
            await asyncio.sleep(0.1)
        for st in service.status():
            mount = str(st["mount"])
            if not mount.startswith(f"/{ALL_GROUP}."):
                # Listeners decode in this process: one per format is the latency figure, and more of them would
                # compete with the service for the interpreter on a loaded box (the zones' mounts still stream).
                continue
            listeners[mount] = MountListener(ice.url + mount, "mp3" if mount.endswith(".mp3") else "ogg").start()
        for listener in listeners.values():
            await asyncio.to_thread(listener.connected.wait, 10.0)
        await asyncio.sleep(0.5)
        cpu0, ice_cpu0, t0 = thread_cpu_s("hub-icecast"), _proc_cpu(ice), time.monotonic()
        channels = [p.channel for p in groups.values() if p.channel is not None]
        runs = [publish_markers(nc, signer, subjects, ch, seconds, stream=ch) for ch in channels]
        ts0s = await asyncio.gather(*runs)
        wall = time.monotonic() - t0
        cpu, ice_cpu = thread_cpu_s("hub-icecast") - cpu0, _proc_cpu(ice) - ice_cpu0
        await asyncio.sleep(1.0 + opts.hold_ns / 1e9)
        ts0_of = dict(zip(channels, ts0s, strict=True))
        per_mount: dict[str, Any] = {}
        for mount, listener in listeners.items():
            group = mount.lstrip("/").rsplit(".", 1)[0]
            ch = groups[group].channel
            assert ch is not None
            arrival, playback = marker_latencies(listener, ts0_of[ch], round(delay_ms * 1e6))
            per_mount[mount] = {
                "markers": len(arrival),
                "arrival_ms": _pcts(arrival),
                "playback_ms": _pcts(playback),
                "error": listener.error,
            }
        ogg = len(groups)
        return {
            "seconds": seconds,
            "wall_s": wall,
            "mounts": {"ogg": ogg, "mp3": len(groups) if mp3 else 0},
            "service_cpu_pct": 100 * cpu / wall,
            "icecast_cpu_pct": 100 * ice_cpu / wall,
            "per_mount": per_mount,
            "burst_bytes": burst_bytes,
            "delay_ms": delay_ms,
            "hold_ms": opts.hold_ns / 1e6,
        }
    finally:
        for listener in listeners.values():
            listener.stop()
        await service.stop()
        with contextlib.suppress(Exception):
            await nc.close()
        await asyncio.to_thread(ice.cleanup)
        await asyncio.to_thread(nats.stop)


def _proc_cpu(ice: LocalIcecast) -> float:
    if ice.proc is None:
        return 0.0
    t = psutil.Process(ice.proc.pid).cpu_times()
    return float(t.user + t.system)


def _pcts(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def parse_status(text: str) -> list[dict[str, Any]]:
    """The mounts in Icecast's status-json. Icecast 2.4's XSL writes invalid JSON when it serves no mount at all
    (`{"icestats":"server_start":...}`, the object's brace missing): that text, and only it, means no mounts."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if '"source"' in text:
            raise
        return []
    sources = data.get("icestats", {}).get("source", []) if isinstance(data, dict) else []
    return [sources] if isinstance(sources, dict) else list(sources)
