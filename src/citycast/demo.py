"""`citycast demo`: the whole media path on one machine, in a minute, with figures a person can check.

A private NATS, the hub's time service, N site agents (each its own process, each with a wrong clock and a
drifting DAC, playing into a timed sink that writes a WAV), and an ingest playing a speech clip. At the end the
clip is found in every site's WAV by cross-correlation: when it was heard (latency) and how far apart the sites
heard it (sync error), both on the true system clock.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from importlib import resources
from pathlib import Path

import nats
import numpy as np
from nats.aio.msg import Msg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.bench.fleet import Fleet, citycast_argv
from citycast.bus.server import EmbeddedNats, NatsServerError, free_port
from citycast.bus.subjects import Subjects
from citycast.clock.local import SkewedClock
from citycast.media.keys import generate_private_key, public_key_text, save_private_key
from citycast.media.markers import correlate_lag
from citycast.media.sources import SourceError, read_audio
from citycast.site.telemetry import Telemetry


def speech_asset() -> Path:
    return Path(str(resources.files("citycast") / "assets" / "speech.opus"))


async def _wait_synced(url: str, names: set[str], progress: Progress, timeout: float) -> set[str]:
    nc = await nats.connect(url)
    synced: set[str] = set()
    task = progress.add_task("sites synced to the broadcast clock", total=len(names))

    async def on_msg(msg: Msg) -> None:
        try:
            t = Telemetry.from_json(msg.data)
        except (ValueError, TypeError):
            return
        if t.site in names and t.state != "syncing" and t.site not in synced:
            synced.add(t.site)
            progress.update(task, completed=len(synced))

    await nc.subscribe(Subjects().telemetry_all(), cb=on_msg)
    deadline = time.monotonic() + timeout
    while synced != names and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await nc.close()
    return synced


def run_demo(*, sites: int, out: Path, delay_ms: float, source: str | None, console: Console) -> int:
    clip = source or str(speech_asset())
    try:
        reference = read_audio(clip)
    except SourceError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    clip_s = len(reference) / 48_000
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    key = generate_private_key()
    save_private_key(key, out / "ingest.key")
    (out / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
    rng = random.Random()
    plan = []
    for i in range(sites):
        clock = SkewedClock.random(rng)
        plan.append((f"site-{i + 1}", clock, rng.uniform(-100, 100)))
    port = free_port()
    try:
        server = EmbeddedNats(port=port, workdir=out / "nats")
        server.start()
    except NatsServerError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    url = server.url
    console.print(f"[bold]citycast demo[/]: NATS at {url}, {sites} sites, D = {delay_ms:g} ms, clip {clip_s:.1f} s")
    try:
        with Fleet(out / "logs") as fleet:
            fleet.spawn("hub", "hub", citycast_argv("serve", "--nats", url))
            for name, clock, dac_ppm in plan:
                fleet.spawn(
                    "site",
                    name,
                    citycast_argv(
                        "site",
                        "--name",
                        name,
                        "--nats",
                        url,
                        "--trust",
                        str(out / "trusted.keys"),
                        "--delay-ms",
                        str(delay_ms),
                        "--sink",
                        f"timed:{dac_ppm:.3f}",
                        "--wav",
                        str(out / f"{name}.wav"),
                        "--sim-clock-offset-ms",
                        f"{clock.offset_ns / 1e6:.3f}",
                        "--sim-clock-ppm",
                        f"{clock.ppm:.3f}",
                    ),
                )
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                synced = asyncio.run(_wait_synced(url, {p[0] for p in plan}, progress, timeout=60))
                if len(synced) < sites:
                    for m in fleet.failed():
                        console.print(f"[red]{m.name} failed:[/]\n{fleet.log_tail(m)}")
                    console.print(f"[red]only {len(synced)} of {sites} sites synced in 60 s[/]")
                    return 1
                time.sleep(8.0)  # let the clock and drift estimates settle before the first word
                report = out / "ingest.json"
                ingest = fleet.spawn(
                    "ingest",
                    "ingest",
                    citycast_argv(
                        "ingest",
                        clip,
                        "--key",
                        str(out / "ingest.key"),
                        "--nats",
                        url,
                        "--report",
                        str(report),
                    ),
                )
                task = progress.add_task("speaking", total=clip_s)
                t0 = time.monotonic()
                while ingest.popen is not None and ingest.popen.poll() is None:
                    progress.update(task, completed=min(clip_s, time.monotonic() - t0))
                    time.sleep(0.1)
                progress.update(task, completed=clip_s)
            if ingest.popen is None or ingest.popen.returncode != 0:
                console.print(f"[red]ingest failed:[/]\n{fleet.log_tail(ingest)}")
                return 1
            time.sleep(delay_ms / 1000 + 0.5)
            fleet.stop("site")
    finally:
        server.stop()
    return _report(out, plan, reference, json.loads((out / "ingest.json").read_text()), console)


def on_true_time(played: np.ndarray, dac_ppm: float) -> np.ndarray:
    """What a DAC running `dac_ppm` fast played, resampled onto the true clock's 48 kHz grid.

    Its WAV is indexed by DAC samples, so an 8 s clip on a +100 ppm DAC is 40 samples "longer" than the original:
    correlating without this would find the clip's middle, not its start, off by ~0.4 ms.
    """
    pos = np.arange(int(len(played) / (1 + dac_ppm * 1e-6)), dtype=np.float64) * (1 + dac_ppm * 1e-6)
    out: np.ndarray = np.interp(pos, np.arange(len(played)), played).astype(np.float32)
    return out


def _report(
    out: Path,
    plan: list[tuple[str, SkewedClock, float]],
    reference: object,
    ingest: dict[str, object],
    console: Console,
) -> int:
    ts0 = int(str(ingest["ts0_ns"]))
    heard: dict[str, float] = {}
    quality: dict[str, float] = {}
    for name, _, _ in plan:
        wav = out / f"{name}.wav"
        meta = json.loads(wav.with_name(wav.name + ".json").read_text())
        lag, peak = correlate_lag(reference, on_true_time(read_audio(wav), float(meta["dac_ppm"])))  # type: ignore[arg-type]
        heard[name] = float(meta["start_true_ns"]) + lag * 1e9 / 48_000
        quality[name] = peak
    median = sorted(heard.values())[len(heard) // 2]
    table = Table(title="what each loudspeaker played (measured on the true clock)")
    for col in ("site", "clock offset", "clock rate", "DAC rate", "latency", "sync error", "match"):
        table.add_column(col, justify="right" if col != "site" else "left", no_wrap=True)
    worst = 0.0
    for name, clock, dac in plan:
        err = (heard[name] - median) / 1e6
        worst = max(worst, abs(err))
        table.add_row(
            name,
            f"{clock.offset_ns / 1e6:+.0f} ms",
            f"{clock.ppm:+.1f} ppm",
            f"{dac:+.1f} ppm",
            f"{(heard[name] - ts0) / 1e6:.1f} ms",
            f"{err * 1000:+.1f} µs",
            f"{quality[name]:.3f}",
            str(out / f"{name}.wav"),
        )
    console.print(table)
    console.print(
        f"latency = from the speaker's first sample to the loudspeaker's (includes Opus's 6.5 ms look-ahead); "
        f"largest sync error {worst * 1000:.1f} µs. What each site played: {out}/site-N.wav "
        "(a .json beside each gives the true time of its first sample and its DAC's rate)."
    )
    return 0 if all(q > 0.5 for q in quality.values()) else 1
