"""`citycast demo`: the whole system on one machine, with figures a person can check and a console to look at.

The hub (`citycast serve`: its own NATS with JWT accounts, API, console), a city of zones and sites in Karachi
created through the API, N site agents that enrol with one-time tokens (each its own process, each with a wrong
clock and a drifting DAC, playing into a timed sink that writes a WAV), and an address of a speech clip to every
zone, started through the API. The clip is then found in every site's WAV by cross-correlation: when it was heard
(latency) and how far apart the sites heard it (sync error), both on the true system clock. The console stays up.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.bus.server import free_port, port_is_free
from citycast.clock.local import SkewedClock
from citycast.hub.runtime import ADMIN_PASSWORD_FILE
from citycast.media.sources import SourceError, read_audio
from citycast.tooling.bench.fleet import Fleet, Member, citycast_argv, wait_http_ok
from citycast.tooling.demo_city import ZONES, PlannedSite, plan_city
from citycast.tooling.markers import correlate_lag


def speech_asset() -> Path:
    return Path(str(resources.files("citycast") / "assets" / "speech.opus"))


class DemoError(RuntimeError):
    pass


def _wait_http(base: str, hub: Member, fleet: Fleet, timeout: float) -> None:
    def alive() -> bool:
        return hub.popen is None or hub.popen.poll() is None

    if wait_http_ok(f"{base}/api/health", alive, timeout):
        return
    if not alive():
        raise DemoError(f"the hub exited at start:\n{fleet.log_tail(hub)}")
    raise DemoError(f"the hub did not answer in {timeout:.0f} s:\n{fleet.log_tail(hub)}")


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise DemoError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r.json()


def _seed_city(api: httpx.Client, sites: list[PlannedSite]) -> dict[str, str]:
    """Zones and sites through the API, as an administrator would; returns each site's enrolment token."""
    zone_ids: dict[str, int] = {}
    for name, (channel, color) in ZONES.items():
        z = _check(api.post("/api/zones", json={"name": name, "channel": channel, "color": color}))
        zone_ids[name] = int(z["id"])
    tokens = {}
    for p in sites:
        body = {"name": p.name, "label": p.label, "lat": p.lat, "lon": p.lon, "zone_id": zone_ids[p.zone]}
        tokens[p.name] = str(_check(api.post("/api/sites", json=body))["enrol_token"])
    return tokens


def _wait_sites(api: httpx.Client, names: set[str], progress: Progress, timeout: float) -> set[str]:
    task = progress.add_task("sites enrolled and synced to the broadcast clock", total=len(names))
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while time.monotonic() < deadline:
        ready = {s["name"] for s in _check(api.get("/api/sites")) if s["name"] in names and s["state"] == "idle"}
        progress.update(task, completed=len(ready))
        if ready == names:
            break
        time.sleep(0.5)
    return ready


def _site_argv(base: str, out: Path, p: PlannedSite, token: str | None, clock: SkewedClock, dac_ppm: float,
               wav: bool) -> list[str]:  # fmt: skip
    args = ["site", "--config", str(out / "sites" / f"{p.name}.json"), "--sink", f"timed:{dac_ppm:.3f}",
            "--sim-clock-offset-ms", f"{clock.offset_ns / 1e6:.3f}", "--sim-clock-ppm", f"{clock.ppm:.3f}"]  # fmt: skip
    if token is not None:
        args += ["--enrol", base, token]
    if wav:
        args += ["--wav", str(out / f"{p.name}.wav")]
    return citycast_argv(*args)


def run_demo(
    *,
    sites: int,
    out: Path,
    delay_ms: float,
    source: str | None,
    console: Console,
    http: str = "127.0.0.1:8000",
    linger: float | None = None,
) -> int:
    """Returns the exit code. `linger`: seconds to keep the console up after the measured address
    (None: until Ctrl-C)."""
    clip = Path(source) if source else speech_asset()
    try:
        reference = read_audio(clip)
    except SourceError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    clip_s = len(reference) / 48_000
    if out.exists():
        shutil.rmtree(out)
    (out / "sites").mkdir(parents=True)
    media = out / "hub" / "media"
    media.mkdir(parents=True)
    shutil.copyfile(clip, media / clip.name)
    http_host, _, http_port = http.rpartition(":")
    if not port_is_free(http_host, int(http_port)):
        console.print(f"[yellow]{http} is taken; the console gets a free port instead[/]")
        http_port = str(free_port(http_host))
    base = f"http://{http_host}:{http_port}"
    rng = random.Random()
    city = plan_city(sites, rng)
    plan = [(p, SkewedClock.random(rng), rng.uniform(-100, 100)) for p in city]
    nats_port = free_port()
    # The telephone answers on 5060 when it is free (any SIP phone can call the demo), else on a free port.
    sip_port = 5060
    if not (port_is_free("127.0.0.1", 5060) and port_is_free("127.0.0.1", 5060, socket.SOCK_DGRAM)):
        sip_port = free_port()
    try:
        with Fleet(out / "logs") as fleet:
            hub = fleet.spawn(
                "hub",
                "hub",
                citycast_argv(
                    "serve",
                    "--data-dir",
                    str(out / "hub"),
                    "--listen",
                    f"127.0.0.1:{nats_port}",
                    "--http",
                    f"{http_host}:{http_port}",
                    "--delay-ms",
                    str(delay_ms),
                    "--sip",
                    f"127.0.0.1:{sip_port}",
                ),
            )
            _wait_http(base, hub, fleet, 60)
            password = (out / "hub" / ADMIN_PASSWORD_FILE).read_text().strip()
            console.print(f"[bold]citycast demo[/]: console at [bold]{base}[/]  user [bold]admin[/]  password "
                          f"[bold]{password}[/]  ({sites} sites in Karachi, D = {delay_ms:g} ms)")  # fmt: skip
            with httpx.Client(base_url=base, timeout=30) as api:
                token = _check(api.post("/api/login", json={"username": "admin", "password": password}))["token"]
                api.headers["Authorization"] = f"Bearer {token}"
                tokens = _seed_city(api, city)
                for p, clock, dac_ppm in plan:
                    fleet.spawn("site", p.name, _site_argv(base, out, p, tokens[p.name], clock, dac_ppm, wav=True))
                with Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                    TimeElapsedColumn(),
                    console=console,
                ) as progress:
                    ready = _wait_sites(api, {p.name for p in city}, progress, timeout=90)
                    if len(ready) < sites:
                        for m in fleet.failed():
                            console.print(f"[red]{m.name} failed:[/]\n{fleet.log_tail(m)}")
                        console.print(f"[red]only {len(ready)} of {sites} sites enrolled and synced in 90 s[/]")
                        return 1
                    time.sleep(8.0)  # let the clock and drift estimates settle before the first word
                    body = {"title": "Demo address", "source": f"file:{clip.name}", "zone_ids": [], "priority": "live"}
                    address = _check(api.post("/api/addresses", json=body))
                    task = progress.add_task("speaking to every zone", total=clip_s)
                    t0 = time.monotonic()
                    ts0: int | None = None
                    while True:
                        live = {a["id"]: a for a in _check(api.get("/api/addresses/live"))}
                        mine = live.get(address["id"])
                        if mine is None:
                            break
                        ts0 = mine.get("ts0_ns") or ts0
                        progress.update(task, completed=min(clip_s, time.monotonic() - t0))
                        time.sleep(0.2)
                    progress.update(task, completed=clip_s)
                if ts0 is None:
                    console.print("[red]the address never went on air[/]")
                    return 1
                time.sleep(delay_ms / 1000 + 0.5)
                fleet.stop("site")
                code = _report(out, plan, reference, ts0, console)
                if linger is not None and linger <= 0:
                    return code
                # The measured part is over: the sites go on (without recording WAVs) so the console has a city
                # to show; they start from their stored credentials, with no enrolment.
                for p, clock, dac_ppm in plan:
                    fleet.spawn("site", p.name, _site_argv(base, out, p, None, clock, dac_ppm, wav=False))
                pin = _check(api.post("/api/pins", json={"label": "Demo speaker", "zone_ids": [], "priority": "live"}))
                console.print(f"\nThe console stays up at [bold]{base}[/] (admin / {password}). "
                              + ("Ctrl-C to stop." if linger is None else f"Stopping in {linger:g} s."))  # fmt: skip
                console.print(f"Call [bold]sip:citycast@127.0.0.1:{sip_port}[/] from a SIP phone (e.g. baresip), "
                              f"type PIN [bold]{pin['pin']}[/] then # to be live to every zone; or open "
                              f"{base}/golive.html in a browser with that PIN.")  # fmt: skip
                try:
                    end = time.monotonic() + (linger if linger is not None else float("inf"))
                    while time.monotonic() < end and hub.popen is not None and hub.popen.poll() is None:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
                return code
    except DemoError as e:
        console.print(f"[red]error:[/] {e}")
        return 1


def on_true_time(played: np.ndarray, dac_ppm: float) -> np.ndarray:
    """What a DAC running `dac_ppm` fast played, resampled onto the true clock's 48 kHz grid.

    Its WAV is indexed by DAC samples, so an 8 s clip on a +100 ppm DAC is 40 samples "longer" than the original:
    correlating without this would find the clip's middle, not its start, off by ~0.4 ms.
    """
    pos = np.arange(int(len(played) / (1 + dac_ppm * 1e-6)), dtype=np.float64) * (1 + dac_ppm * 1e-6)
    out: np.ndarray = np.interp(pos, np.arange(len(played)), played).astype(np.float32)
    return out


def print_whole(console: Console, table: Table) -> None:
    """Print a table uncut. Rich fits a table to the console's width, and a console that is not a terminal (a
    pipe, a log file, CI) is 80 columns wide, so the figures and paths would end in "…" there; such output gets
    the width the table needs. A terminal keeps its own width: that is what its user sees."""
    needed = console.measure(table, options=console.options.update_width(10_000)).maximum  # unclamped
    if console.is_terminal or needed <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=needed,
        color_system=console.color_system,  # type: ignore[arg-type]  # the same names the constructor takes
        no_color=console.no_color,
        highlight=False,
    )
    wide.print(table)


def _report(
    out: Path,
    plan: list[tuple[PlannedSite, SkewedClock, float]],
    reference: object,
    ts0: int,
    console: Console,
) -> int:
    heard: dict[str, float] = {}
    quality: dict[str, float] = {}
    for p, _, _ in plan:
        name = p.name
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
    for p, clock, dac in plan:
        name = p.name
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
    print_whole(console, table)
    console.print(
        f"latency = from the speaker's first sample to the loudspeaker's (includes Opus's 6.5 ms look-ahead); "
        f"largest sync error {worst * 1000:.1f} µs. What each site played: {out}/<site>.wav "
        "(a .json beside each gives the true time of its first sample and its DAC's rate)."
    )
    return 0 if all(q > 0.5 for q in quality.values()) else 1
