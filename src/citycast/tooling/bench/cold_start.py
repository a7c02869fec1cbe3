"""`citycast bench --cold-start`: sites killed mid-address (a power cut) and started again; how soon they play in step.

One embedded nats-server, the hub's time service (on a thread of the benchmark), an ingest sending a marker
chirp every `period_s` for the whole run, and N `citycast site` processes (each its own process, as on a
loudspeaker box: the Python start-up counts), each with its own wrong clock (`--sim-clock-offset-ms/-ppm`) and
drifting DAC into a timed sink that writes a WAV with the true time of every sample. After `warmup_s` (the sites
settle and write their clock memory), each round SIGKILLs `per_round` sites and starts them again at once, with
a new clock offset (a box without a battery-backed clock) and the same crystal (ppm), and follows them for
`watch_s`.

For every restarted life: each marker it played is compared with the median of the same marker at the sites
that were not restarted that round (the reference, settled for minutes). Figures:

- `cold_start_s`: from the process start to the first marker heard within 1 ms of the reference after which
  every marker of the watch stays within 1 ms (resolution: the marker period);
- `cold_start_sync_ms`: |deviation| of the first marker heard 2 s after the start and of the one nearest 60 s
  (the worst over restarts), and per second of the first minute the worst over restarts;
- `first_sound_s`: from the process start to the first non-silent sample it played.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.bus.server import EmbeddedNats, NatsServerError, free_port
from citycast.hub.timeserver import TimeService
from citycast.media.keys import generate_private_key, public_key_text, save_private_key
from citycast.media.sources import read_audio
from citycast.protocol.subjects import Subjects
from citycast.tooling.bench.analysis import load_trace, true_time_of_sample
from citycast.tooling.bench.fleet import Fleet, Member, citycast_argv

IN_STEP_MS = 1.0
LOOKAHEAD_NS = 6_500_000  # the codec's look-ahead, roughly: only used to pair a heard marker with its number


class ColdStartError(RuntimeError):
    pass


@dataclass
class ColdStartOptions:
    sites: int = 10
    restarts: int = 6
    per_round: int = 2
    watch_s: float = 62.0
    warmup_s: float = 80.0  # the sites write their clock memory once its drift is known, ~70 s after the start
    delay_ms: float = 80.0
    period_s: float = 0.1
    seed: int = 1
    memory: bool = True  # False: every restart is a first boot (no clock memory)
    out: Path = Path("citycast-out/bench-cold-start")
    json_out: Path | None = None


@dataclass
class Life:
    """One run of one site process."""

    site: int
    number: int
    started_ns: int  # true (system) time just before the process was started
    wav: Path
    member: Member | None = None
    restarted: bool = False
    references: list[int] = field(default_factory=list)


def run_cold_start(opts: ColdStartOptions, console: Console) -> dict[str, object]:
    if opts.sites < 2 or not 1 <= opts.per_round < opts.sites:
        raise ColdStartError("--cold-start needs at least 2 sites and fewer sites per round than sites")
    if opts.restarts < 1:
        raise ColdStartError("--restarts must be at least 1")
    if opts.out.exists():
        shutil.rmtree(opts.out)
    (opts.out / "wav").mkdir(parents=True)
    (opts.out / "memory").mkdir()
    key = generate_private_key()
    save_private_key(key, opts.out / "ingest.key")
    (opts.out / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
    load_before = os.getloadavg()
    with Fleet(opts.out / "logs") as fleet, contextlib.ExitStack() as stack:
        try:
            server = EmbeddedNats(port=free_port(), workdir=opts.out / "nats")
            server.start()
        except NatsServerError as e:
            raise ColdStartError(str(e)) from e
        stack.callback(server.stop)
        stack.enter_context(_time_service(server.url))
        lives, ts0_ns = _drive(opts, server.url, fleet, console)
    figures = _figures(opts, lives, ts0_ns, console)
    figures["load_average"] = {"start": list(load_before), "end": list(os.getloadavg())}
    _print(figures, console)
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(figures, indent=1))
    return figures


@contextlib.contextmanager
def _time_service(url: str) -> Iterator[None]:
    """The hub's time service (the broadcast clock: this machine's) on a thread of this process, which otherwise
    only waits: no hub, database or console is needed to measure a site's start."""
    loop = asyncio.new_event_loop()
    service = TimeService(url, Subjects())
    thread = threading.Thread(target=loop.run_forever, name="time-service", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(service.start(), loop).result(timeout=30)
        yield
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(service.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def _drive(opts: ColdStartOptions, url: str, fleet: Fleet, console: Console) -> tuple[list[Life], int]:
    rng = random.Random(opts.seed)
    ppm = [rng.uniform(-100, 100) for _ in range(opts.sites)]  # each box's crystal, the same across restarts
    dac = [rng.uniform(-60, 60) for _ in range(opts.sites)]
    rounds = -(-opts.restarts // opts.per_round)
    total_s = opts.warmup_s + rounds * opts.watch_s + 5
    report = opts.out / "ingest.json"
    lives: list[Life] = []

    def start(site: int, number: int) -> Life:
        name = f"site-{site:02d}"
        life = Life(site, number, time.time_ns(), opts.out / "wav" / f"{name}.life{number}.wav")
        argv = citycast_argv(
            "site", "--name", name, "--nats", url, "--trust", str(opts.out / "trusted.keys"),
            "--delay-ms", str(opts.delay_ms), "--sink", f"timed:{dac[site]:.3f}", "--wav", str(life.wav),
            "--sim-clock-offset-ms", f"{rng.uniform(-2000, 2000):.3f}", "--sim-clock-ppm", f"{ppm[site]:.3f}",
        )  # fmt: skip
        memory = opts.out / "memory" / f"{name}.clock.json"
        if not opts.memory:
            memory = opts.out / "memory" / f"{name}.life{number}.clock.json"  # a new file each life: nothing known
        argv += ["--clock-memory", str(memory)]
        life.started_ns = time.time_ns()
        life.member = fleet.spawn("sites", f"{name}.life{number}", argv)
        lives.append(life)
        return life

    current = {s: start(s, 0) for s in range(opts.sites)}
    time.sleep(2)  # the first sites are up before the address starts
    ingest = fleet.spawn(
        "ingest", "ingest",
        citycast_argv("ingest", f"marker:{opts.period_s:g}", "--key", str(opts.out / "ingest.key"), "--nats", url,
                      "--seconds", f"{total_s:.0f}", "--report", str(report)),
    )  # fmt: skip
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("sites settling, clock memory written (s)", total=opts.warmup_s)
        _wait(opts.warmup_s, fleet, lambda t: progress.update(task, completed=t))
        order = list(range(opts.sites))
        rng.shuffle(order)
        done = 0
        task = progress.add_task("restarts followed", total=opts.restarts)
        while done < opts.restarts:
            chosen = [order[(done + i) % opts.sites] for i in range(min(opts.per_round, opts.restarts - done))]
            for s in chosen:
                old = current[s].member
                assert old is not None and old.popen is not None
                old.popen.send_signal(signal.SIGKILL)  # a power cut: nothing is flushed, nothing said
                old.popen.wait(timeout=10)
            for s in chosen:
                life = start(s, current[s].number + 1)
                life.restarted = True
                life.references = [r for r in range(opts.sites) if r not in chosen]
                current[s] = life
            _wait(opts.watch_s, fleet, lambda _t: None)
            done += len(chosen)
            progress.update(task, completed=done)
        fleet.stop("sites", timeout=30)
        if ingest.popen is not None:
            ingest.popen.terminate()
            with contextlib.suppress(Exception):
                ingest.popen.wait(timeout=10)
    if not report.exists():
        raise ColdStartError("ingest wrote no report; see " + str(fleet.workdir))
    return lives, int(json.loads(report.read_text())["ts0_ns"])


def _wait(seconds: float, fleet: Fleet, tick: object) -> None:
    t0 = time.monotonic()
    while (t := time.monotonic() - t0) < seconds:
        bad = [m for m in fleet.failed() if m.role != "sites"]
        if bad:
            raise ColdStartError(f"{bad[0].name} exited with an error:\n{fleet.log_tail(bad[0])}")
        if callable(tick):
            tick(t)
        time.sleep(0.2)


def _marker_times(lives: list[Life], ts0_ns: int, opts: ColdStartOptions) -> dict[int, dict[int, float]]:
    """Per site: marker number → true time it was heard (all lives of the site together).

    Of two detections near one marker the one nearer its nominal time is kept: Opus's concealment of a lost frame
    can repeat a chirp it just played, and a detection of that echo is a loss, not the site's timing."""
    period = opts.period_s * 1e9
    delay = opts.delay_ms * 1e6
    heard: dict[int, dict[int, float]] = {}
    for life in lives:
        if not life.wav.exists() or not life.wav.with_name(life.wav.name + ".json").exists():
            continue
        site = heard.setdefault(life.site, {})
        for t in load_trace(life.wav).heard_ns:
            nominal = (t - ts0_ns - delay - LOOKAHEAD_NS) / period
            k = round(nominal)
            if k not in site or abs(nominal - k) < abs((site[k] - ts0_ns - delay - LOOKAHEAD_NS) / period - k):
                site[k] = t
    return heard


def _first_sound_ns(wav: Path) -> float | None:
    meta = json.loads(wav.with_name(wav.name + ".json").read_text())
    samples = read_audio(wav)
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    return true_time_of_sample(meta, float(loud[0])) if loud.size else None


def _figures(opts: ColdStartOptions, lives: list[Life], ts0_ns: int, console: Console) -> dict[str, object]:
    with console.status("finding markers in what every site played"):
        heard = _marker_times(lives, ts0_ns, opts)
    per_life: list[dict[str, object]] = []
    series: list[list[float]] = []
    for life in (x for x in lives if x.restarted):
        own = heard.get(life.site, {})
        end = life.started_ns + opts.watch_s * 1e9
        points: list[tuple[float, float]] = []  # (seconds since start, deviation ms)
        for k, t in sorted(own.items(), key=lambda kv: kv[1]):
            if not life.started_ns < t <= end:
                continue
            refs = [heard[r][k] for r in life.references if k in heard.get(r, {})]
            if len(refs) < max(1, len(life.references) // 2):
                continue
            points.append(((t - life.started_ns) / 1e9, (t - statistics.median(refs)) / 1e6))
        in_step = None
        for i, (at, _) in enumerate(points):
            if all(abs(d) <= IN_STEP_MS for _, d in points[i:]):
                in_step = at
                break
        at_2s = next((abs(d) for at, d in points if at >= 2.0), None)
        at_60s = min(points, key=lambda p: abs(p[0] - 60.0), default=None)
        first = _first_sound_ns(life.wav) if life.wav.exists() else None
        per_second = [max((abs(d) for at, d in points if s <= at < s + 1), default=float("nan")) for s in range(60)]
        series.append(per_second)
        per_life.append({
            "site": f"site-{life.site:02d}", "life": life.number, "started_ns": life.started_ns,
            "cold_start_s": in_step,
            "first_sound_s": (first - life.started_ns) / 1e9 if first is not None else None,
            "sync_ms_at_2s": at_2s, "sync_ms_at_60s": abs(at_60s[1]) if at_60s else None,
            "markers": len(points),
        })  # fmt: skip
    starts = [float(str(p["cold_start_s"])) for p in per_life if p["cold_start_s"] is not None]
    never = sum(1 for p in per_life if p["cold_start_s"] is None)
    sounds = [float(str(p["first_sound_s"])) for p in per_life if p["first_sound_s"] is not None]

    def worst(key: str) -> float | None:
        values = [float(str(p[key])) for p in per_life if p[key] is not None]
        return max(values) if values and len(values) == len(per_life) else None

    worst_by_second = [float(np.nanmax(col)) if not np.all(np.isnan(col)) else None for col in np.array(series).T]
    return {
        "command": "citycast bench --cold-start " + _argline(opts),
        "sites": opts.sites,
        "restarts": len(per_life),
        "memory": opts.memory,
        "marker_period_s": opts.period_s,
        "delay_ms": opts.delay_ms,
        "cold_start_s": {
            "p50": statistics.median(starts) if starts else None,
            "max": max(starts) if starts and not never else None,
            "never_in_step": never,
        },
        "cold_start_sync_ms": {"at_2s": worst("sync_ms_at_2s"), "at_60s": worst("sync_ms_at_60s")},
        "first_sound_s": {"p50": statistics.median(sounds) if sounds else None},
        "sync_ms_worst_by_second": worst_by_second,
        "lives": per_life,
    }


def _argline(opts: ColdStartOptions) -> str:
    parts = [f"--sites {opts.sites}", f"--restarts {opts.restarts}"]
    if opts.per_round != 2:
        parts.append(f"--per-round {opts.per_round}")
    if not opts.memory:
        parts.append("--forget-clock")
    return " ".join(parts)


def _print(f: dict[str, object], console: Console) -> None:
    def num(v: object, fmt: str) -> str:
        return format(float(str(v)), fmt) if v is not None else "—"

    t = Table(title=f"citycast bench — {f['command']}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    cs = dict(f["cold_start_s"])  # type: ignore[call-overload]
    sync = dict(f["cold_start_sync_ms"])  # type: ignore[call-overload]
    t.add_row("sites / restarts / clock memory", f"{f['sites']} / {f['restarts']} / {f['memory']}")
    t.add_row("start → in step (≤ 1 ms) p50 / max (s)", f"{num(cs['p50'], '.2f')} / {num(cs['max'], '.2f')}")
    t.add_row("restarts never in step within the watch", str(cs["never_in_step"]))
    t.add_row("start → first sound p50 (s)", num(dict(f["first_sound_s"])["p50"], ".2f"))  # type: ignore[call-overload]
    t.add_row("sync error at 2 s / at 60 s, worst (ms)", f"{num(sync['at_2s'], '.3f')} / {num(sync['at_60s'], '.3f')}")
    load = dict(f["load_average"])  # type: ignore[call-overload]
    t.add_row("load average at start / end", f"{load['start'][0]:.1f} / {load['end'][0]:.1f}")
    console.print(t)
