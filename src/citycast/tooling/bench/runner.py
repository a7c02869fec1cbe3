"""`citycast bench`: markers through the real path (ingest → NATS → site agents → timed sinks), then figures.

Loopback: one embedded nats-server. With `--wan PROFILE`: the hub side (nats-server, time service, ingest) in
one network namespace, the city side (a leafnode nats-server, the city's time responder, the sites and probes)
in another, joined by the emulated long-haul link of `citycast.tooling.bench.wan`; every process is real and separate.
With `--topology direct` the city side has no city server: every site dials the hub's NATS and syncs to the hub's
time service across the long haul itself (the cheapest deployment: sites on cellular, a hub abroad).
With `--paths 2` the city has two city servers, each behind its own emulated long-haul path (two `WanLink`s into
one "london"), and every site connects to both and plays the first copy of each frame (`citycast.site.uplinks`);
`--shared-loss F` puts the share F of each path's loss in one relay stage both paths cross (see `TwoPaths`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citycast.bus.server import EmbeddedNats, LeafRemote, NatsServerError, free_port
from citycast.media.audio import SAMPLE_RATE
from citycast.media.keys import generate_private_key, public_key_text, save_private_key
from citycast.site.options import least_delay_ms
from citycast.tooling.bench.analysis import SiteTrace, analyse, load_trace
from citycast.tooling.bench.cpu_quota import CpuQuota, CpuQuotaError, confine, throttling
from citycast.tooling.bench.fleet import Fleet, citycast_argv
from citycast.tooling.bench.snapcast import SnapcastError, SnapcastRig, add_rows, comparison, ensure_snapcast
from citycast.tooling.bench.wan import (
    PROFILES,
    WanError,
    WanLink,
    WanProfile,
    get_profile,
    ns_command,
    require_root,
)

MAX_DELAY_MS = 1900.0


def marker_period_s(delay_ms: float) -> float:
    """A marker every second, or every two when D is so long that a marker would be heard after the next one
    was sent (each heard marker is paired with the last one sent before it)."""
    return 1.0 if delay_ms < 900 else 2.0


SITES_PER_PROCESS = 10  # more per process and one burst of late frames (20× verify) starves their DACs
CITY = "karachi"
TOPOLOGIES = ("city", "direct")


class BenchError(RuntimeError):
    pass


@dataclass
class BenchOptions:
    sites: int = 20
    seconds: float = 60.0
    delay_ms: float | None = None
    wan: str = "none"
    probe_sites: int = 0
    packets_per_message: int = 1
    fast_site_ppm: float | None = 100.0
    processes: int | None = None
    json_out: Path | None = None
    out: Path = Path("citycast-out/bench")
    keep_wav: bool = False
    seed: int = 1
    probes_per_process: int = 500
    warmup: float = 60.0
    dac_block: int = 480
    topology: str = "city"  # with --wan: "city" (leafnode + city time responder) or "direct" (sites on the hub)
    paths: int = 1  # with --wan and the city topology: 2 = two city servers on two long-haul paths, sites on both
    shared_loss: float = 0.0  # with 2 paths: the share of each path's loss in one stage both paths cross
    tcp_rto_min_ms: float | None = None  # with --wan: TCP's lowest retransmission timeout on the long-haul routes
    snapclients: int = 0  # real snapclients beside the sites, fed the same signal by a real snapserver (loopback)
    cpu_quota: float | None = None  # each site process (and snapclient) held to this % of one core (cgroup)

    @property
    def dac_period_ms(self) -> float:
        return self.dac_block * 1000 / SAMPLE_RATE


CITY_LAN = ("10.80.0.1", "10.80.0.2")  # the city's LAN between the two city servers' namespaces


class TwoPaths:
    """Two long-haul paths from one "london" to a city with two city servers (`--paths 2`).

        london ──[shared stage]── exchange ─┬─ path A ── karachia: city server A, its time responder, the sites
                                            └─ path B ── karachib: city server B, its time responder
        karachia ── veth (the city's LAN) ── karachib

    Without `shared_loss` there is no exchange: both paths start in london and their losses are independent.
    With it, the share `shared_loss` of the profile's loss moves from each path to one relay stage (no delay)
    that both cross, so each path still loses the profile's total. The stage drops packets independently of one
    another (the relay's loss is per packet), so what it shares between the paths is the place, not the instant:
    a burst that silences both at once is a cut, which `citycast bench-city` drills.
    Duck-types the parts of `WanLink` the benchmark uses (`west_ns`, `east_ns`, `west_ip`, `emulator`)."""

    def __init__(
        self,
        profile: WanProfile,
        *,
        seed: int,
        shared_loss: float,
        stack: contextlib.ExitStack,
        rto_min_ms: float | None = None,
    ) -> None:
        own = WanProfile(profile.name, profile.delay_ms, profile.jitter_ms, profile.loss * (1 - shared_loss))
        self.links: list[WanLink] = []
        west: str | None = None
        self.exchange: WanLink | None = None
        if shared_loss > 0:
            stage = WanProfile("shared", 0.0, 0.0, profile.loss * shared_loss)
            self.exchange = stack.enter_context(
                WanLink(stage, seed=seed + 7, east_name="exchange", subnet="10.76.0", dev="wanS", rto_min_ms=rto_min_ms)
            )
            west = self.exchange.east_ns
        for i, name in enumerate(("a", "b")):
            link = WanLink(own, seed=seed + i, join_west=west, east_name=f"karachi{name}", subnet=f"10.77.{i + 1}",
                           dev=f"wan{name.upper()}", rto_min_ms=rto_min_ms)  # fmt: skip
            self.links.append(stack.enter_context(link))
            west = west or link.west_ns
        a, b = self.links
        lan = f"cl{os.getpid() % 100000}"
        _ip_run("-n", a.east_ns, "link", "add", "name", lan, "type", "veth", "peer", "name", lan, "netns", b.east_ns)
        for ns, ip in ((a.east_ns, CITY_LAN[0]), (b.east_ns, CITY_LAN[1])):
            _ip_run("-n", ns, "addr", "add", f"{ip}/30", "dev", lan)
            _ip_run("-n", ns, "link", "set", "dev", lan, "up")
        if self.exchange is not None:
            x = self.exchange
            subprocess.run(ns_command(x.east_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]), check=True, timeout=10)
            for link in self.links:
                _ip_run("-n", x.west_ns, "route", "add", f"{link.east_ip.rsplit('.', 1)[0]}.0/24", "via", x.east_ip)
                _ip_run("-n", link.east_ns, "route", "add", f"{x.west_ip.rsplit('.', 1)[0]}.0/24", "via", link.west_ip)
        hub_side = self.exchange or a
        self.west_ns = hub_side.west_ns
        # the hub's address as each city server dials it: over its own path, or routed through the exchange
        self.leaf_ips = [hub_side.west_ip] * 2 if self.exchange is not None else [a.west_ip, b.west_ip]
        self.west_ip = self.leaf_ips[0]
        self.east_ns = a.east_ns
        self.east_b_ns = b.east_ns
        self.emulator = a.emulator


def _ip_run(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def default_delay_ms(wan: str) -> float:
    """D per profile; docs/benchmarks.md explains each from measurements."""
    return {"none": 80.0, "london-karachi": 490.0, "cellular-bad": 900.0}.get(wan, 500.0)


def run_bench(opts: BenchOptions, console: Console) -> dict[str, object]:
    try:
        profile = get_profile(opts.wan)
    except (WanError, KeyError) as e:
        raise BenchError(f"unknown --wan {opts.wan!r}: choose from {', '.join(PROFILES)}") from e
    if opts.topology not in TOPOLOGIES:
        raise BenchError(f"unknown --topology {opts.topology!r}: choose from {', '.join(TOPOLOGIES)}")
    if opts.paths not in (1, 2):
        raise BenchError("--paths is 1 or 2")
    if opts.paths == 2 and (not profile.emulated or opts.topology != "city"):
        raise BenchError("--paths 2 needs --wan PROFILE and the city topology (two city servers)")
    if not 0 <= opts.shared_loss < 1 or (opts.shared_loss and opts.paths != 2):
        raise BenchError("--shared-loss is a share in [0, 1) of each path's loss, with --paths 2")
    delay_ms = opts.delay_ms if opts.delay_ms is not None else default_delay_ms(opts.wan)
    if not 0 < delay_ms < MAX_DELAY_MS:
        raise BenchError(f"--delay must be between 0 and {MAX_DELAY_MS:.0f} ms")
    if opts.snapclients and profile.emulated:
        raise BenchError("--snapclients runs on loopback only (no --wan)")
    least = least_delay_ms(opts.dac_period_ms, opts.packets_per_message)
    if delay_ms < least:
        console.print(
            f"[yellow]--delay {delay_ms:g} is below the ~{least:.0f} ms that {opts.dac_block}-sample blocks and "
            f"{opts.packets_per_message} packet(s) a message need: expect underruns (docs/operations.md, "
            "The sink's period)[/]"
        )
    try:
        if opts.snapclients:
            ensure_snapcast(console)
    except SnapcastError as e:
        raise BenchError(str(e)) from e
    if opts.out.exists():
        shutil.rmtree(opts.out)
    opts.out.mkdir(parents=True)
    key = generate_private_key()
    save_private_key(key, opts.out / "ingest.key")
    (opts.out / "trusted.keys").write_text(public_key_text(key.public_key()) + "\n")
    with contextlib.ExitStack() as stack:
        link: WanLink | TwoPaths | None = None
        if profile.emulated:
            try:
                require_root()
            except WanError as e:
                raise BenchError(str(e)) from e
            if opts.paths == 2:
                link = TwoPaths(profile, seed=opts.seed, shared_loss=opts.shared_loss, stack=stack,
                                rto_min_ms=opts.tcp_rto_min_ms)  # fmt: skip
            else:
                link = stack.enter_context(WanLink(profile, seed=opts.seed, rto_min_ms=opts.tcp_rto_min_ms))
        fleet = stack.enter_context(Fleet(opts.out / "logs"))
        return _run(opts, profile.name, delay_ms, link, fleet, stack, console)
    raise AssertionError("unreachable")


def _start_bus(
    link: WanLink | TwoPaths | None, fleet: Fleet, stack: contextlib.ExitStack, out: Path, topology: str = "city"
) -> tuple[str, str, list[str], list[str], str | None]:
    """Returns (hub url, site-side url, hub-side command prefix, site-side prefix, city time zone).

    `direct`: no city server; the sites (in the city namespace) dial the hub across the link, no time zone.
    Two paths: the site-side url is both city servers' (a comma list); city server B's time responder runs here,
    A's as with one path."""
    try:
        if link is None:
            server = EmbeddedNats(port=free_port(), workdir=out / "nats")
            server.start()
            stack.callback(server.stop)
            assert server.pid is not None
            fleet.adopt("nats", "nats", server.pid)
            return server.url, server.url, [], [], None
        west, east = ns_command(link.west_ns, []), ns_command(link.east_ns, [])
        hub = EmbeddedNats(
            host="0.0.0.0" if isinstance(link, TwoPaths) else link.west_ip,  # two paths arrive on two addresses
            port=4222, leaf_listen_port=7422, command_prefix=west, workdir=out / "nats-hub",
        )  # fmt: skip
        hub.start()
        stack.callback(hub.stop)
        assert hub.pid is not None
        if topology == "direct":
            fleet.adopt("nats", "nats-hub", hub.pid)
            return hub.url, hub.url, west, east, None
        city = EmbeddedNats(
            host="127.0.0.1",
            port=4222,
            leaf_remotes=[LeafRemote(f"nats://{link.west_ip}:7422")],
            command_prefix=east,
            workdir=out / "nats-city",
            jetstream=False,
        )
        city.start()
        stack.callback(city.stop)
        cities = [city]
        site_url = city.url
        if isinstance(link, TwoPaths):
            east_b = ns_command(link.east_b_ns, [])
            city_b = EmbeddedNats(
                host="0.0.0.0",
                port=4222,
                leaf_remotes=[LeafRemote(f"nats://{link.leaf_ips[1]}:7422")],
                command_prefix=east_b,
                workdir=out / "nats-city-b",
                jetstream=False,
            )
            city_b.start()
            stack.callback(city_b.stop)
            cities.append(city_b)
            url_b = f"nats://{CITY_LAN[1]}:4222"
            site_url = f"{city.url},{url_b}"
            # B's responder serves A's clock (over the city's LAN) while A answers, as a deployed city's second
            # server does (`city --time-peer`).
            responder_b = citycast_argv("city", "--nats", city_b.url, "--zone", CITY, "--time-upstream",
                                        "--time-peer", f"nats://{CITY_LAN[0]}:4222")  # fmt: skip
            fleet.spawn("time-city", "time-city-b", responder_b, east_b)
        deadline = time.monotonic() + 20
        for c in cities:
            while "Leafnode connection created" not in c.log_text():
                if time.monotonic() > deadline:
                    raise BenchError(f"a city leafnode did not connect over the WAN: {c.log_tail()}")
                time.sleep(0.1)
        assert hub.pid is not None and city.pid is not None
        fleet.adopt("nats", "nats-hub", hub.pid)
        for i, c in enumerate(cities):
            assert c.pid is not None
            fleet.adopt("nats-city", "nats-city" + ("-b" if i else ""), c.pid)
        return hub.url, site_url, west, east, CITY
    except NatsServerError as e:
        raise BenchError(str(e)) from e


def _run(
    opts: BenchOptions,
    wan: str,
    delay_ms: float,
    link: WanLink | TwoPaths | None,
    fleet: Fleet,
    stack: contextlib.ExitStack,
    console: Console,
) -> dict[str, object]:
    out = opts.out
    hub_url, site_url, west, east, zone = _start_bus(link, fleet, stack, out, opts.topology)
    # its own HTTP(S) ports: another benchmark's hub on this box may hold the default ones
    ports = ["--http", f"127.0.0.1:{free_port()}", "--https", f"127.0.0.1:{free_port()}"]
    fleet.spawn("hub", "hub", citycast_argv("serve", "--nats", hub_url, *ports), west)
    if zone is not None:
        fleet.spawn(
            "time-city",
            "time-city",
            citycast_argv("city", "--nats", site_url.split(",")[0], "--zone", zone, "--time-upstream"),
            east,
        )
    total_s = opts.warmup + 30 + opts.seconds + delay_ms / 1000 + 3
    wav_dir = out / "wav"
    procs = opts.processes or max(1, math.ceil(opts.sites / SITES_PER_PROCESS)) if opts.sites else 0
    ready_files = []
    first = 0
    for p in range(procs):
        n = opts.sites // procs + (1 if p < opts.sites % procs else 0)
        if n == 0:
            continue
        ready = out / f"sites-{p}.ready"
        ready_files.append(ready)
        argv = citycast_argv(
            "simulate", "--sites", str(n), "--first", str(first), "--seed", str(opts.seed),
            "--nats", site_url, "--trust", str(out / "trusted.keys"), "--delay-ms", str(delay_ms),
            "--seconds", f"{total_s:.1f}", "--out", str(wav_dir), "--ready-file", str(ready),
            "--block", str(opts.dac_block),
        )  # fmt: skip
        if zone:
            argv += ["--time-zone", zone]
        if opts.fast_site_ppm is not None:
            argv += ["--fast-site-ppm", str(opts.fast_site_ppm)]
        fleet.spawn("sites", f"sites-{p}", argv, east)
        first += n
    snap = SnapcastRig(out / "snapcast", opts.snapclients, marker_period_s(delay_ms)) if opts.snapclients else None
    if snap is not None:
        snap.start(fleet)
    quotas: dict[str, CpuQuota] = {}
    if opts.cpu_quota is not None:
        try:
            quotas = confine(fleet, ("sites", "snapclients"), opts.cpu_quota, stack)
        except CpuQuotaError as e:
            raise BenchError(f"--cpu-quota: {e}") from e
    probe_files = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("site processes synced", total=len(ready_files))
        # Over an emulated WAN the city responders sync to the hub first, and stay silent until they have: on a
        # loaded box that alone has taken more than 30 s.
        deadline = time.monotonic() + (90 if link is not None else 30)
        while sum(f.exists() for f in ready_files) < len(ready_files):
            _check_alive(fleet)
            if time.monotonic() > deadline:
                raise BenchError("sites did not sync their clocks in time; see " + str(fleet.workdir))
            progress.update(task, completed=sum(f.exists() for f in ready_files))
            time.sleep(0.2)
        progress.update(task, completed=len(ready_files))
        # Sites run for months; what we measure is a site whose clock estimate has settled (the first
        # minute's convergence is in docs/benchmarks.md separately).
        task = progress.add_task("clock estimates settling (s)", total=opts.warmup)
        t0 = time.monotonic()
        while time.monotonic() - t0 < opts.warmup:
            _check_alive(fleet)
            progress.update(task, completed=time.monotonic() - t0)
            time.sleep(0.2)
        progress.update(task, completed=opts.warmup)
        if opts.probe_sites:
            pprocs = math.ceil(opts.probe_sites / opts.probes_per_process)
            for p in range(pprocs):
                n = opts.probe_sites // pprocs + (1 if p < opts.probe_sites % pprocs else 0)
                f = out / f"probes-{p}.json"
                probe_files.append(f)
                argv = citycast_argv(
                    "probe", "--count", str(n), "--nats", site_url.split(",")[0],
                    "--seconds", f"{opts.seconds + 8:.0f}", "--json", str(f),
                )  # fmt: skip
                fleet.spawn("probes", f"probes-{p}", argv, east)
            time.sleep(3 + opts.probe_sites / 500)  # connections up before the first frame
        report = out / "ingest.json"
        ingest = fleet.spawn(
            "ingest", "ingest",
            citycast_argv(
                "ingest", f"marker:{marker_period_s(delay_ms)}", "--key", str(out / "ingest.key"), "--nats", hub_url,
                "--seconds", str(opts.seconds), "--report", str(report),
                "--packets-per-message", str(opts.packets_per_message),
            ),
            west,
        )  # fmt: skip
        fleet.start_window()
        if snap is not None:
            snap.start_window()
        task = progress.add_task("markers sent (s)", total=opts.seconds)
        popen = ingest.popen
        finished = fleet.watch_until(
            lambda: popen is None or popen.poll() is not None,
            lambda: _check_alive(fleet),
            opts.seconds,
            lambda elapsed: progress.update(task, completed=min(opts.seconds, elapsed)),
        )
        if not finished:
            raise BenchError("ingest did not finish in time")
        fleet.end_window()
        if snap is not None:
            snap.end_window()
        progress.update(task, completed=opts.seconds)
        if ingest.popen is None or ingest.popen.returncode != 0:
            raise BenchError("ingest failed:\n" + fleet.log_tail(ingest))
        task = progress.add_task("sites finishing", total=1)
        time.sleep(delay_ms / 1000 + 1.5)  # the last marker reaches every DAC, then the sites may go
        fleet.stop("sites", timeout=60)
        if any(m.popen is not None and m.popen.returncode not in (0, None) for m in fleet.members if m.role == "sites"):
            raise BenchError("a site process failed; see " + str(fleet.workdir))
        fleet.wait("probes", timeout=30)
        progress.update(task, completed=1)
    ingest_report = json.loads(report.read_text())
    emulator = link.emulator if link is not None else "none"
    return _figures(opts, wan, emulator, delay_ms, fleet, ingest_report, wav_dir, probe_files, console, snap, quotas)


def _check_alive(fleet: Fleet) -> None:
    bad = fleet.failed()
    if bad:
        m = bad[0]
        raise BenchError(f"{m.name} exited with an error:\n{fleet.log_tail(m)}")


def _figures(
    opts: BenchOptions,
    wan: str,
    emulator: str,
    delay_ms: float,
    fleet: Fleet,
    ingest: dict[str, object],
    wav_dir: Path,
    probe_files: list[Path],
    console: Console,
    snap: SnapcastRig | None = None,
    quotas: dict[str, CpuQuota] | None = None,
) -> dict[str, object]:
    # the window in Unix time, for what snapclients log
    window_wall = (
        time.time() - (time.monotonic() - fleet.window[0]),
        time.time() - (time.monotonic() - fleet.window[1]),
    )
    if snap is not None:
        snap.stop(fleet)
    traces: list[SiteTrace] = []
    site_results: list[dict[str, object]] = []
    if opts.sites:
        with Progress(TextColumn("{task.description}"), BarColumn(), console=console) as progress:
            wavs = sorted(wav_dir.glob("*.wav"))
            task = progress.add_task("finding markers in what each site played", total=len(wavs))
            for w in wavs:
                traces.append(load_trace(w))
                progress.advance(task)
        for f in sorted(wav_dir.glob("*.results.json")):
            site_results.extend(json.loads(f.read_text()))
    period = marker_period_s(delay_ms)
    markers = int(opts.seconds / period)
    sync = analyse(traces, ts0_ns=int(str(ingest["ts0_ns"])), period_ns=int(period * 1e9), markers_sent=markers)
    tele: list[dict[str, Any]] = [r["telemetry"] for r in site_results if isinstance(r.get("telemetry"), dict)]  # type: ignore[misc]

    def total(key: str) -> int:
        return sum(int(t.get(key, 0)) for t in tele)

    rejected = sum(sum(dict(t.get("rejected", {})).values()) for t in tele)
    xruns = total("sink_xruns")
    cpu, rss, counts = fleet.figures()
    stage: dict[str, float] = {}
    for t in tele:
        for k, v in dict(t.get("cpu", {})).items():
            stage[k] = stage.get(k, 0.0) + float(v)
    fast = next((r for r in site_results if r.get("name") == "site-0000"), None)
    figures: dict[str, object] = {
        "command": "citycast bench " + _argline(opts),
        "wan": wan,
        # city: sites behind a city server (leafnode + time responder); direct: sites on the hub across the WAN
        "topology": opts.topology if wan not in ("none", "loopback") else "loopback",
        "emulator": emulator,  # netem, relay (userspace, where the kernel has no netem), or none (loopback)
        # long-haul paths, each to its own city server; with 2 every site hears each frame twice and plays the first
        "paths": opts.paths,
        "shared_loss": opts.shared_loss,
        "tcp_rto_min_ms": opts.tcp_rto_min_ms,
        "delay_ms": delay_ms,
        "sites": opts.sites,
        "seconds": opts.seconds,
        "packets_per_message": opts.packets_per_message,
        # how often a site's simulated DAC takes a block: on a box where a wake-up costs more than the work done in
        # it, the CPU per site follows this period (docs/benchmarks.md, "Wake-ups")
        "site_dac_period_ms": opts.dac_period_ms,
        "markers": sync.markers_sent,
        "latency_ms": sync.latency_ms,
        "skew_ms": sync.skew_ms,
        "deviation_from_median_ms": sync.per_site_deviation_ms,
        "missing_markers": sync.missing,
        # later detections in a marker's period (Opus concealment repeating a chirp after lost frames), not timing
        "marker_echoes": sync.echoes,
        "underruns": total("underruns"),
        "concealed": total("concealed"),
        "late": total("late"),
        "duplicates": total("duplicates"),  # second copies over the other path (expected with 2 paths)
        "rejected": rejected,
        "resyncs": total("resyncs"),
        "sink_xruns": xruns,
        "cpu_percent": cpu,
        "rss_mb": rss,
        "processes": counts,
        "site_cpu_percent_per_site": (cpu.get("sites", 0.0) / opts.sites) if opts.sites else None,
        "site_stage_seconds_per_site": {k: v / max(1, len(tele)) for k, v in stage.items()},
        "ingest": ingest,
    }
    if fast is not None and opts.fast_site_ppm is not None:
        figures["fast_site"] = {
            "dac_ppm": fast.get("dac_ppm"),
            "max_deviation_from_median_ms": sync.max_abs_deviation_by_site_ms.get("site-0000"),
        }
    if probe_files:
        probes = [json.loads(f.read_text()) for f in probe_files if f.exists()]
        delays = _pool_probe(probes)
        figures["probe_sites"] = opts.probe_sites
        figures["probe_delivery_ms"] = delays
        figures["probe_gaps"] = sum(int(p["gaps"]) for p in probes)
        figures["probe_received"] = sum(int(p["received"]) for p in probes)
        n = opts.probe_sites + opts.sites
        figures["nats_cpu_percent_per_1000_sites"] = cpu.get("nats-city", cpu.get("nats", 0.0)) / n * 1000
    if snap is not None:
        figures.update(snap.figures(fleet, *window_wall, keep=opts.keep_wav))
        figures.update(comparison(figures))
    if opts.cpu_quota is not None:
        figures["cpu_quota_percent"] = opts.cpu_quota
        figures["cpu_quota_throttled"] = throttling(quotas or {})
    _print(figures, console)
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(figures, indent=1, default=str))
    if not opts.keep_wav:
        shutil.rmtree(wav_dir, ignore_errors=True)
    return figures


def _pool_probe(probes: list[dict[str, object]]) -> dict[str, float]:
    # Each probe process reports its own percentiles over similar counts; pool conservatively.
    if not probes:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    d = [dict(p["delivery_ms"]) for p in probes]  # type: ignore[call-overload]
    return {
        "p50": max(float(x["p50"]) for x in d),
        "p99": max(float(x["p99"]) for x in d),
        "max": max(float(x["max"]) for x in d),
    }


def _argline(opts: BenchOptions) -> str:
    parts = [f"--sites {opts.sites}", f"--seconds {opts.seconds:g}", f"--wan {opts.wan}"]
    if opts.topology != "city":
        parts.append(f"--topology {opts.topology}")
    if opts.paths != 1:
        parts.append(f"--paths {opts.paths}")
    if opts.shared_loss:
        parts.append(f"--shared-loss {opts.shared_loss:g}")
    if opts.warmup != 60.0:
        parts.append(f"--warmup {opts.warmup:g}")
    if opts.dac_block != 480:
        parts.append(f"--dac-block {opts.dac_block}")
    if opts.delay_ms is not None:
        parts.append(f"--delay {opts.delay_ms:g}")
    if opts.probe_sites:
        parts.append(f"--probe-sites {opts.probe_sites}")
    if opts.packets_per_message != 1:
        parts.append(f"--packets-per-message {opts.packets_per_message}")
    if opts.fast_site_ppm is not None and opts.fast_site_ppm != 100.0:
        parts.append(f"--fast-site-ppm {opts.fast_site_ppm:g}")
    if opts.snapclients:
        parts.append(f"--snapclients {opts.snapclients}")
    if opts.cpu_quota is not None:
        parts.append(f"--cpu-quota {opts.cpu_quota:g}")
    return " ".join(parts)


def _print(f: dict[str, object], console: Console) -> None:
    def ms3(d: object) -> str:
        dd = dict(d) if isinstance(d, dict) else {}
        return " / ".join(f"{float(dd.get(k, float('nan'))):.3f}" for k in ("p50", "p99", "max"))

    t = Table(title=f"citycast bench — {f['command']}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("WAN / emulator / topology", f"{f['wan']} / {f['emulator']} / {f['topology']}")
    t.add_row("long-haul paths (shared loss)", f"{f['paths']} ({f['shared_loss']:g})")
    t.add_row("duplicates (second copies)", str(f["duplicates"]))
    t.add_row("playout delay D", f"{f['delay_ms']} ms")
    t.add_row("full sites / markers", f"{f['sites']} / {f['markers']}")
    t.add_row("latency p50 / p99 / max (ms)", ms3(f["latency_ms"]))
    t.add_row("inter-site skew p50 / p99 / max (ms)", ms3(f["skew_ms"]))
    t.add_row(
        "underruns / concealed / late / rejected",
        f"{f['underruns']} / {f['concealed']} / {f['late']} / {f['rejected']}",
    )
    t.add_row("resyncs / sink xruns", f"{f['resyncs']} / {f['sink_xruns']}")
    if f.get("missing_markers"):
        t.add_row("sites with missing markers", str(len(dict(f["missing_markers"]))))  # type: ignore[call-overload]
    if f.get("marker_echoes"):
        echoes = sum(dict(f["marker_echoes"]).values())  # type: ignore[call-overload]
        t.add_row("chirp echoes from concealment (not counted as markers)", str(echoes))
    if "fast_site" in f:
        fs = dict(f["fast_site"])  # type: ignore[call-overload]
        t.add_row(f"site-0000 (DAC {fs['dac_ppm']} ppm) max off median", f"{fs['max_deviation_from_median_ms']} ms")
    cpu = dict(f["cpu_percent"])  # type: ignore[call-overload]
    rss = dict(f["rss_mb"])  # type: ignore[call-overload]
    for role in cpu:
        t.add_row(f"CPU % / peak RSS MB: {role}", f"{cpu[role]:.1f} % / {rss[role]:.0f} MB")
    if f.get("site_cpu_percent_per_site") is not None:
        t.add_row("CPU per full site", f"{float(f['site_cpu_percent_per_site']):.3f} % of a core")  # type: ignore[arg-type]
        stages = dict(f["site_stage_seconds_per_site"])  # type: ignore[call-overload]
        t.add_row("  per-site stage time (s)", ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    if "probe_delivery_ms" in f:
        t.add_row(
            f"[probes] {f['probe_sites']} light receivers: delivery p50 / p99 / max (ms)",
            ms3(f["probe_delivery_ms"]),
        )
        t.add_row("[probes] frames received / gaps", f"{f['probe_received']} / {f['probe_gaps']}")
        t.add_row("NATS CPU per 1,000 sites", f"{float(f['nats_cpu_percent_per_1000_sites']):.1f} % of a core")  # type: ignore[arg-type]
    add_rows(t, f)
    if "cpu_quota_percent" in f:
        t.add_row("CPU quota per site process", f"{f['cpu_quota_percent']:g} % of a core")
    console.print(t)
