"""The benchmarks a user runs against their own machine and network: the media path (`bench`), the hub and
its console (`bench-hub`), the telephone (`bench-sip`) and its parsers under random input (`bench-fuzz`), the
deployed shape through faults (`bench-city`) and the self-tuning playout delay (`bench-delay`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from citycast import runtime
from citycast.cli.common import console, fail

SOAK_CLOCKS = ("city", "city-plain", "hub")  # --soak-clock: what the simulated sites sync to

app = typer.Typer()

# bench and bench-city: both emulate the long haul and can set TCP's retransmission floor on it
TcpRtoMin = Annotated[
    float | None,
    typer.Option(
        min=1,
        help="With --wan (bench-city always has it): TCP's lowest retransmission timeout (ms) on the long-haul "
        "routes at both ends, as `ip route ... rto_min` sets it on a hub or city server (the kernel's is 200 ms).",
    ),
]


@app.command()
def bench(
    sites: Annotated[int, typer.Option(min=0, help="Full site agents.")] = 20,
    seconds: Annotated[float, typer.Option(min=5, help="Seconds of marker signal.")] = 60.0,
    delay_ms: Annotated[
        float | None, typer.Option("--delay", help="Playout delay D in ms (default per profile).")
    ] = None,
    wan: Annotated[str, typer.Option(help="none, london-karachi or cellular-bad (needs root).")] = "none",
    topology: Annotated[
        str,
        typer.Option(
            help="With --wan: 'city' (sites behind a city server: leafnode + city time responder) or 'direct' "
            "(sites dial the hub's NATS and time service across the WAN)."
        ),
    ] = "city",
    paths: Annotated[
        int,
        typer.Option(
            min=1,
            max=2,
            help="With --wan: long-haul paths, each to its own city server; with 2 every site connects to both "
            "and plays the first copy of each frame.",
        ),
    ] = 1,
    shared_loss: Annotated[
        float,
        typer.Option(help="With --paths 2: the share of each path's loss taken in one relay stage both cross."),
    ] = 0.0,
    tcp_rto_min: TcpRtoMin = None,
    probe_sites: Annotated[int, typer.Option(help="Light fan-out probes (bus delivery only).")] = 0,
    packets_per_message: Annotated[int, typer.Option(min=1, max=4, help="Opus packets per bus message.")] = 1,
    fast_site_ppm: Annotated[float | None, typer.Option(help="Site 0's DAC runs this many ppm fast.")] = 100.0,
    processes: Annotated[int | None, typer.Option(help="Processes to spread the sites over.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as one JSON object.")] = None,
    out: Annotated[Path, typer.Option(help="Working folder (WAVs, logs).")] = Path("citycast-out/bench"),
    keep_wav: Annotated[bool, typer.Option(help="Keep the sites' WAV files.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sites' clock errors.")] = 1,
    warmup: Annotated[float, typer.Option(help="Seconds the sites' clock estimates settle before markers.")] = 60.0,
    dac_block: Annotated[
        int,
        typer.Option(
            min=120,
            max=4800,
            help="Samples per simulated DAC block; with --sink, what each site's sink takes per wake-up (its "
            "--period). 2400 (50 ms) is what a snapclient's file player takes.",
        ),
    ] = 480,
    soak_hours: Annotated[
        float | None,
        typer.Option(
            help="Instead: a long address in simulated time (sans-IO clock and playout); with --wan, the deployed "
            "shape: --paths long-haul paths merged, path cuts and a lost time responder scripted."
        ),
    ] = None,
    soak_plot: Annotated[Path | None, typer.Option(help="With --soak-hours and --wan: write an SVG plot here.")] = None,
    soak_clock: Annotated[
        str,
        typer.Option(
            help="With --soak-hours and --wan: what the sites sync to: 'city' (city responder A syncing to the hub "
            "over path A, giving its correction), 'city-plain' (the same, no correction: a site fits A's served "
            "clock) or 'hub' (a responder serving the hub's clock exactly)."
        ),
    ] = "city",
    sink: Annotated[
        str | None,
        typer.Option(
            help="Instead: through a real sound server (a private PulseAudio, each site a channel of one null "
            "sink, up to 32, its monitor recorded with the server's timing): 'pulse' (PulseSink), 'alsa' "
            "(AlsaSink through the server's ALSA plugin: pulse, or pipewire-alsa), 'device' "
            "(PortAudio via ALSA's pulse plugin), 'device-raw' (the same, DAC times unfiltered), 'snapclient' (the "
            "yardstick: a real snapserver and one snapclient per sink through its pulse player, buffer = --delay), "
            "or a comma list side by side. Loopback; "
            "uses --sites, --seconds, --delay, --warmup, --out, --json, --keep-wav."
        ),
    ] = None,
    sound_server: Annotated[
        str,
        typer.Option(
            help="With --sink: the sound server the sites play through, 'pulseaudio' or 'pipewire' (PipeWire with "
            "WirePlumber and pipewire-pulse, as on Raspberry Pi OS and desktop images since 2023)."
        ),
    ] = "pulseaudio",
    snapclients: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Real snapclients beside the sites, fed the same signal (Opus, 48 kHz) by a real snapserver: CPU, "
            "RSS and underruns of both, and the CPU ratio. Default: as many as --sites when snapserver and "
            "snapclient are installed (loopback only); given explicitly, they are installed (apt-get, root) if "
            "missing.",
        ),
    ] = None,
    capacity: Annotated[
        str | None,
        typer.Option(
            help="Instead: N1,N2,... — each size --runs times in a row with N sites, then with N snapclients; "
            "reports the highest N clean in every run (no underrun, late block or hard re-sync, or missing marker), "
            "for each (--sites 0 or --snapclients 0: not that kind)."
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="With --capacity: runs in a row per size.")] = 3,
    cpu_quota: Annotated[
        str | None,
        typer.Option(
            help="Q or Q1,Q2,...: each site process (and snapclient) in a cgroup allowed Q % of one core (root); "
            "with several, one run per quota and the floor: the smallest quota that still plays cleanly."
        ),
    ] = None,
    site_cost: Annotated[
        bool,
        typer.Option(
            "--site-cost",
            help="Instead: --seconds of signed speech through one site agent in simulated time (no bus, no waits); "
            "CPU seconds per minute of audio per stage (signature, receive, decode, render), --dac-block blocks.",
        ),
    ] = False,
    cold_start: Annotated[
        bool,
        typer.Option(
            "--cold-start",
            help="Instead: --sites site processes on an address; --restarts of them are killed (a power cut) and "
            "started again mid-address: time to sound in step (≤ 1 ms) and the sync error over the first minute.",
        ),
    ] = False,
    restarts: Annotated[int, typer.Option(min=1, help="With --cold-start: sites killed and restarted.")] = 6,
    forget_clock: Annotated[
        bool, typer.Option(help="With --cold-start: restart without the clock memory (a first boot).")
    ] = False,
) -> None:
    """Drive markers through the real path to N sites; print latency, skew, underruns, CPU and RSS."""
    from citycast.tooling.bench.runner import BenchError, BenchOptions, run_bench

    if sink is not None:
        from citycast.tooling.bench.pulse_rig import PulseBenchOptions, PulseRigError, parse_kinds, run_pulse_bench

        try:
            popts = PulseBenchOptions(
                parse_kinds(sink),
                sites=sites,
                seconds=seconds,
                delay_ms=delay_ms or 80.0,
                warmup=warmup,
                out=out / "pulse",
                json_out=json_out,
                keep_audio=keep_wav,
                block=dac_block,
                sound_server=sound_server,
            )
            run_pulse_bench(popts, console)
        except PulseRigError as e:
            fail(str(e))
        return

    if cold_start:
        from citycast.tooling.bench.cold_start import ColdStartError, ColdStartOptions, run_cold_start

        try:
            run_cold_start(ColdStartOptions(sites=sites, restarts=restarts, delay_ms=delay_ms or 80.0, seed=seed,
                                            memory=not forget_clock, out=out, json_out=json_out), console)  # fmt: skip
        except ColdStartError as e:
            fail(str(e))
        return

    if site_cost:
        from citycast.tooling.bench.site_cost import site_cost_command

        site_cost_command(seconds=seconds, block=dac_block, packets_per_message=packets_per_message,
                          delay_ms=delay_ms or 80.0, seed=seed, json_out=json_out)  # fmt: skip
        return

    if soak_hours is not None and wan != "none":
        from citycast.tooling.bench.soak_report import city_soak_command

        if soak_clock not in SOAK_CLOCKS:
            raise typer.BadParameter(f"one of {', '.join(SOAK_CLOCKS)}", param_hint="--soak-clock")
        city_soak_command(hours=soak_hours, sites=min(sites, 4) or 2, wan=wan, paths=paths, shared_loss=shared_loss,
                          delay_ms=delay_ms or 340.0, seed=seed, json_out=json_out, plot_out=soak_plot,
                          clock=soak_clock, console=console)  # fmt: skip
        return
    if soak_hours is not None:
        from citycast.tooling.bench.soak_report import soak_command

        soak_command(hours=soak_hours, sites=min(sites, 4) or 2, delay_ms=delay_ms or 80.0, json_out=json_out,
                     console=console)  # fmt: skip
        return

    opts = BenchOptions(
        sites=sites,
        seconds=seconds,
        delay_ms=delay_ms,
        wan=wan,
        probe_sites=probe_sites,
        packets_per_message=packets_per_message,
        fast_site_ppm=fast_site_ppm,
        processes=processes,
        json_out=json_out,
        out=out,
        keep_wav=keep_wav,
        seed=seed,
        warmup=warmup,
        dac_block=dac_block,
        topology=topology,
        paths=paths,
        shared_loss=shared_loss,
        tcp_rto_min_ms=tcp_rto_min,
    )
    from citycast.tooling.bench.snapcast import snapcast_installed

    if snapclients is None:  # the yardstick comes along wherever it can run
        snapclients = sites if wan == "none" and snapcast_installed() else 0
    opts.snapclients = snapclients
    try:
        if capacity is not None or (cpu_quota is not None and "," in cpu_quota):
            _sweep(opts, capacity, runs, cpu_quota, json_out)
            return
        if cpu_quota is not None:
            opts.cpu_quota = _numbers(cpu_quota, "--cpu-quota")[0]
        run_bench(opts, console)
    except BenchError as e:
        fail(str(e))


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        fail(f"{option} takes positive numbers separated by commas, e.g. 50,25,10,5")
    return values


def _sweep(opts: object, capacity: str | None, runs: int, cpu_quota: str | None, json_out: Path | None) -> None:
    from citycast.tooling.bench.runner import BenchOptions, run_bench
    from citycast.tooling.bench.sweeps import run_capacity, run_quota_sweep

    assert isinstance(opts, BenchOptions)
    if capacity is not None:
        sizes = [int(n) for n in _numbers(capacity, "--capacity")]
        result = run_capacity(opts, sizes, runs, console, run_bench)
    else:
        assert cpu_quota is not None
        result = run_quota_sweep(opts, _numbers(cpu_quota, "--cpu-quota"), console, run_bench)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1, default=str))


@app.command("bench-hub")
def bench_hub(
    sites: Annotated[int, typer.Option(min=1, max=20_000, help="LIGHT simulated sites (telemetry only).")] = 500,
    seconds: Annotated[float, typer.Option(min=5, help="Seconds of the CPU/memory window.")] = 30.0,
    changes: Annotated[int, typer.Option(min=1, help="Forced state changes to time.")] = 20,
    browser: Annotated[bool, typer.Option(help="Also measure the console in headless Chromium.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
    abuse: Annotated[
        bool,
        typer.Option(
            help="Instead: an address plays to --sites FULL sites, quietly and then while strangers hammer login, "
            "PIN page, big bodies and heavy lists (--seconds each); underruns and publish lateness per phase."
        ),
    ] = False,
) -> None:
    """Measure the hub and its console under N sites' telemetry: page load, marker update delay, hub CPU and RSS.

    The sites are LIGHT simulated sites (telemetry every second, no audio); the hub, API, console and browser
    are real."""
    from citycast.tooling.bench.hub_bench import run_hub_bench

    if abuse:
        from citycast.tooling.bench.hub_abuse import run_abuse_bench

        with console.status(f"abuse bench: {sites} sites, {seconds:g} s quiet then {seconds:g} s under abuse"):
            abused = runtime.run(run_abuse_bench(sites=sites, seconds=seconds))
        assert abused is not None
        out = json.dumps(abused.as_dict(), indent=1)
        if json_out:
            json_out.write_text(out)
        sys.stdout.write(out + "\n")
        return
    with console.status(f"hub bench: {sites} light sites, {seconds:g} s window"):
        result = runtime.run(run_hub_bench(sites=sites, seconds=seconds, changes=changes, browser=browser))
    assert result is not None
    text = json.dumps(result.as_dict(), indent=1)
    if json_out:
        json_out.write_text(text)
    sys.stdout.write(text + "\n")


@app.command("bench-fuzz")
def bench_fuzz(
    inputs: Annotated[int, typer.Option(min=1, help="Inputs per parser family (SIP/SDP, RTP/RTCP/DTMF).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed (a run is reproducible).")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
) -> None:
    """Throw random and mutated SIP, SDP, RTP, RTCP and DTMF input at the telephone's parsers; count crashes.

    A healthy run reports crashes = 0 and unstable = 0 (a message that parses must print back to itself)."""
    from citycast.tooling.bench.fuzz import fuzz_sip
    from citycast.tooling.rtp_fuzz import fuzz_rtp

    results: dict[str, object] = {}
    with console.status(f"fuzzing SIP/SDP with {inputs:,} inputs"):
        results["sip"] = fuzz_sip(inputs, seed)
    with console.status(f"fuzzing RTP/RTCP/DTMF with {inputs:,} inputs"):
        try:
            results["rtp"] = fuzz_rtp(inputs, seed)
        except Exception as e:  # an escaped exception is the finding: report it, fail the run
            results["rtp"] = {"crash": repr(e)}
    text = json.dumps(results, indent=1, default=str)
    if json_out:
        json_out.write_text(text)
    sys.stdout.write(text + "\n")
    sip = results["sip"]
    crashed = (isinstance(sip, dict) and (sip.get("crashes") or sip.get("unstable"))) or "crash" in str(results["rtp"])
    raise typer.Exit(1 if crashed else 0)


@app.command("bench-sip")
def bench_sip(
    sites: Annotated[int, typer.Option(min=1, help="Enrolled site agents in the PIN's zone.")] = 20,
    markers: Annotated[int, typer.Option(min=1, help="Marker chirps sent in the call.")] = 20,
    wan: Annotated[str, typer.Option(help="none, london-karachi or cellular-bad (caller ↔ hub; needs root).")] = "none",
    rates: Annotated[str, typer.Option(help="Calls-per-second steps, comma-separated.")] = "10,20,40,80",
    step_seconds: Annotated[float, typer.Option(help="Length of each load step.")] = 6.0,
    pause_ms: Annotated[int, typer.Option(help="How long each load call stays up after the ACK.")] = 500,
    delay: Annotated[float | None, typer.Option(help="Playout delay D (ms).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
) -> None:
    """The telephone's figures: SIP-call-to-loudspeaker latency and skew, and calls per second accepted."""
    from citycast.tooling.bench.sip_bench import SipBenchError, SipBenchOptions, run_sip_bench

    result: dict[str, object] = {}
    try:
        opts = SipBenchOptions(
            sites=sites,
            markers=markers,
            wan=wan,
            step_s=step_seconds,
            pause_ms=pause_ms,
            delay_ms=delay,
            rates=tuple(float(r) for r in rates.split(",") if r.strip()),
        )
        with console.status(f"telephone bench: {sites} sites, {markers} markers, wan {wan}"):
            result = run_sip_bench(opts).as_dict()
    except (SipBenchError, ValueError) as e:
        fail(str(e))
    text = json.dumps(result, indent=1)
    if json_out is not None:
        json_out.write_text(text)
    sys.stdout.write(text + "\n")


@app.command("bench-city")
def bench_city(
    sites: Annotated[int, typer.Option(min=2, max=60, help="Full site agents (each its own process).")] = 6,
    cut_seconds: Annotated[float, typer.Option(min=2, help="How long each fault lasts.")] = 30.0,
    drills: Annotated[
        str,
        typer.Option(help="Drills, in order: city-kill, path-cut-one, path-cut-both, hub-restart, site-restart."),
    ] = "city-kill,path-cut-one,path-cut-both,hub-restart,site-restart",
    wan: Annotated[str, typer.Option(help="Profile of each long-haul path (london-karachi, cellular-bad).")] = (
        "london-karachi"
    ),
    delay_ms: Annotated[float, typer.Option("--delay", help="Playout delay D (ms).")] = 490.0,
    resync_limit: Annotated[
        float, typer.Option(min=5, max=600, help="How long a drill waits for every site to play in sync again.")
    ] = 60.0,
    uplinks: Annotated[
        int | None, typer.Option(help="City servers each site dials (default: 2 if `citycast site` can, else 1).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
    out: Annotated[Path, typer.Option(help="Working folder (logs, WAVs, the hub's data).")] = Path(
        "citycast-out/bench-city"
    ),
    keep_wav: Annotated[bool, typer.Option(help="Keep what each site played.")] = False,
    tcp_rto_min: TcpRtoMin = None,
    time_peer: Annotated[
        bool,
        typer.Option(
            help="City server B's time responder follows A's over the city's LAN (`citycast city --time-peer`); "
            "--no-time-peer: each follows the hub on its own, as before."
        ),
    ] = True,
    clock_split: Annotated[
        bool,
        typer.Option(
            help="Odd sites list city server B first, so half the sites take their clock from each time responder "
            "(measures how well the two agree; needs two uplinks)."
        ),
    ] = False,
    soak_minutes: Annotated[
        float | None,
        typer.Option(
            min=1,
            max=1440,
            help="Instead of drills: the address runs this long with no fault (speech with a marker each second); "
            "every minute the RSS of every process and the sites' counters; at the end skew and the recording.",
        ),
    ] = None,
    soak_plot: Annotated[
        Path | None, typer.Option(help="With --soak-minutes: also draw memory, losses and sync error as SVG here.")
    ] = None,
) -> None:
    """Fault drills on the deployed shape (needs root): a hub in "london", two city servers behind two emulated
    long-haul paths, N enrolled sites, an address of real speech; kill a city server, cut one path, cut both, restart
    the hub, restart a site. Per drill: underruns, concealed frames, resync time, recording lost, alerts."""
    if soak_minutes is not None:
        from citycast.tooling.bench.city_soak import SoakError, SoakOptions, run_city_soak

        try:
            result = run_city_soak(SoakOptions(minutes=soak_minutes, sites=sites, wan=wan, delay_ms=delay_ms,
                                               uplinks=uplinks, json_out=json_out, out=out, keep_wav=keep_wav,
                                               tcp_rto_min_ms=tcp_rto_min, time_peer=time_peer,
                                               clock_split=clock_split),
                                   console)  # fmt: skip
        except SoakError as e:
            fail(str(e))
        if soak_plot is not None:
            from citycast.tooling.bench.city_soak_plot import soak_svg

            soak_plot.write_text(soak_svg(result["samples"], str(result["command"])))
            console.print(f"plot: {soak_plot}")
        return
    from citycast.tooling.bench.city_drills import DrillError, DrillOptions, run_drills

    try:
        chosen = tuple(d.strip() for d in drills.split(",") if d.strip())
        opts = DrillOptions(sites=sites, cut_s=cut_seconds, drills=chosen, wan=wan, delay_ms=delay_ms,
                            uplinks=uplinks, json_out=json_out, out=out, keep_wav=keep_wav,
                            resync_limit_s=resync_limit, tcp_rto_min_ms=tcp_rto_min, time_peer=time_peer,
                            clock_split=clock_split)  # fmt: skip
        run_drills(opts, console)
    except DrillError as e:
        fail(str(e))


@app.command("bench-delay")
def bench_delay(
    seconds: Annotated[
        int, typer.Option(min=600, help="Simulated seconds (the path worsens at 120 s, recovers by 460 s).")
    ] = 900,
    sites: Annotated[int, typer.Option(min=1, max=1000, help="Sites on the channel.")] = 5,
    start_delay_ms: Annotated[float, typer.Option("--delay", min=80, max=2000, help="D at the start (ms).")] = 200.0,
    seed: Annotated[int, typer.Option(help="Random seed (a run is reproducible).")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
) -> None:
    """The self-tuning playout delay on a long-haul path that worsens and recovers, in simulated time.

    The hub's real delay tuner reads the sites' per-second margins and signs new delay schedules; the same path
    with D fixed runs beside it. Prints D, the smallest margin and the frames that came too late, per 30 s."""
    from rich.console import Console
    from rich.table import Table

    from citycast.tooling.bench.delay_trace import run_delay_trace

    out = Console()  # the figures go to standard output (the shared console is for errors)

    result = run_delay_trace(seconds=seconds, sites=sites, seed=seed, start_delay_ms=start_delay_ms)
    table = Table(title=f"self-tuning D: {sites} sites, {seconds} s simulated, D starts at {start_delay_ms:g} ms")
    for name in ("t (s)", "path (ms)", "D auto (ms)", "margin min (ms)", "too late, auto", "too late, fixed D"):
        table.add_column(name, justify="right")
    rows = result["rows"]
    assert isinstance(rows, list)
    for row in rows:
        table.add_row(*(f"{row[k]:g}" for k in row))
    out.print(table)
    out.print(
        f"frames too late: {result['too_late_auto']} with the tuner, {result['too_late_fixed']} with D fixed "
        f"(of {result['frames']}); D rose to {result['delay_max_ms']:g} ms and ended at {result['delay_end_ms']:g} ms"
    )
    text = json.dumps(result, indent=1)
    if json_out is not None:
        json_out.write_text(text)


@app.command("bench-icecast")
def bench_icecast(
    seconds: Annotated[float, typer.Option(min=5, help="Seconds of marker signal on every mount.")] = 30.0,
    zones: Annotated[int, typer.Option(min=0, max=30, help="Zone groups beside 'all' (one Ogg mount each).")] = 3,
    delay_ms: Annotated[float, typer.Option("--delay", help="The loudspeakers' playout delay D (ms).")] = 80.0,
    burst_bytes: Annotated[
        int, typer.Option(help="Icecast's burst-on-connect size (0: off; Icecast's own default is 65535).")
    ] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here as JSON.")] = None,
    out: Annotated[Path, typer.Option(help="Working folder (Icecast and NATS files).")] = Path(
        "citycast-out/bench-icecast"
    ),
) -> None:
    """Icecast listeners: how far behind the loudspeakers they hear an address, and the CPU per mount.

    Starts a private icecast2 (Debian package) and nats-server on loopback, the hub's Icecast service, marker
    audio on every group's channel and one decoding listener per mount: first Ogg mounts only, then with an MP3
    mount per group too (the difference is the MP3 encoders' CPU)."""
    import shutil
    from typing import Any

    from rich.console import Console
    from rich.table import Table

    from citycast.tooling.bench.icecast import bench_icecast as run

    if shutil.which("icecast2") is None:
        fail("bench-icecast needs icecast2 (Debian package icecast2; scripts/setup.sh installs it)")
    stdout = Console()
    results: dict[str, Any] = {}
    for mp3 in (False, True):
        stdout.print(f"{'Ogg and MP3' if mp3 else 'Ogg'} mounts, {seconds:g} s of markers …")
        result = runtime.run(
            run(
                out / ("mp3" if mp3 else "ogg"),
                seconds=seconds,
                zones=zones,
                delay_ms=delay_ms,
                burst_bytes=burst_bytes,
                mp3=mp3,
            )
        )
        if result is None:  # interrupted
            raise typer.Exit(1)
        results["ogg+mp3" if mp3 else "ogg"] = result
    table = Table(title=f"Icecast listeners behind the loudspeakers (D = {delay_ms:g} ms, burst {burst_bytes} B)")
    for name in ("run", "mount", "markers", "arrival p50/p99 (ms)", "playback p50/p99 (ms)"):
        table.add_column(name, justify="right")
    for run_name, result in results.items():
        for mount, m in result["per_mount"].items():
            arr, play = m["arrival_ms"] or {}, m["playback_ms"] or {}
            table.add_row(
                run_name,
                mount,
                str(m["markers"]),
                f"{arr.get('p50', float('nan')):.0f} / {arr.get('p99', float('nan')):.0f}",
                f"{play.get('p50', float('nan')):.0f} / {play.get('p99', float('nan')):.0f}",
            )
    stdout.print(table)
    ogg, both = results["ogg"], results["ogg+mp3"]
    groups = zones + 1
    ogg_cpu = ogg["service_cpu_pct"] / groups
    mp3_cpu = (both["service_cpu_pct"] - ogg["service_cpu_pct"]) / groups
    stdout.print(
        f"CPU of the hub's Icecast thread: {ogg['service_cpu_pct']:.2f} % of a core for {groups} Ogg mounts "
        f"({ogg_cpu:.2f} % each); {both['service_cpu_pct']:.2f} % with {groups} MP3 mounts more "
        f"({mp3_cpu:.2f} % per MP3 mount); icecast2 itself {both['icecast_cpu_pct']:.2f} % "
        f"for {2 * groups} mounts and 2 listeners"
    )
    results["cpu_per_ogg_mount_pct"] = ogg_cpu
    results["cpu_per_mp3_mount_pct"] = mp3_cpu
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=1))
