"""The pulse bench's PipeWire: a real PipeWire, WirePlumber and pipewire-pulse started under a folder of their own,
with the rig's card and per-site sinks loaded through pipewire-pulse."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from tests.helpers import need_binary
from tests.tooling.bench.card_tone import play_tone_to_one_sink

from citycast.tooling.bench.pipewire_server import BINARIES, PipeWireError, PipeWireServer
from citycast.tooling.bench.pulse_rig import (
    CARD,
    PulseBenchOptions,
    PulseRigError,
    card_modules,
    run_pulse_bench,
    sink_name,
)


def _need_pipewire() -> None:
    for binary in (*BINARIES, "pactl"):
        need_binary(binary)


def test_every_site_is_its_own_channel_through_pipewire(tmp_path: Path) -> None:
    """Four sites' sinks on one card: a tone played to site 2 through pipewire-pulse is recorded on channel 2 only,
    and every process of the stack ends with the rig."""
    _need_pipewire()
    sinks = [sink_name(i) for i in range(4)]
    with PipeWireServer(tmp_path / "pw", card_modules(len(sinks))) as server:
        procs = [p for _, p in server.processes()]
        listed = subprocess.run([need_binary("pactl"), "list", "short", "sinks"], env=server.env(),
                                capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        assert all(name in listed for name in [CARD, *sinks]), listed
        errors, recordings = play_tone_to_one_sink(server.server, sinks, 2, tmp_path, settle_s=0.3)
    assert not errors
    assert all(p.poll() is not None for p in procs)
    audio = [rec.audio() for rec in recordings]
    rms = [float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) for x in audio]
    assert rms[2] > 0.05 and max(rms[:2] + rms[3:]) < 1e-4, rms


def test_a_missing_stack_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipeWireError, match="not installed: dbus-daemon, pipewire, wireplumber, pipewire-pulse"):
        PipeWireServer(tmp_path / "pw", card_modules(1)).__enter__()


def test_a_module_the_server_refuses_is_a_clear_error_and_stops_the_stack(tmp_path: Path) -> None:
    _need_pipewire()
    server = PipeWireServer(tmp_path / "pw", ["module-null-sink sink_name=ok", "module-no-such-thing"])
    with pytest.raises(PipeWireError, match="pactl load-module module-no-such-thing"):
        server.__enter__()
    assert server.procs == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pulse", "alsa"])
def test_sites_play_in_step_through_pipewire(tmp_path: Path, kind: str) -> None:
    """`citycast bench --sink pulse|alsa --sound-server pipewire` for real: two `citycast site` processes play the
    address through pipewire-pulse (PulseSink) or pipewire-alsa (AlsaSink) onto two channels of the card, and the
    markers found there give latency and skew. The bound is loose: the figures are the bench's to give
    (docs/benchmarks.md, "Through PipeWire"), and a CI box is busy."""
    _need_pipewire()
    opts = PulseBenchOptions([kind], sites=2, seconds=6, delay_ms=200, warmup=4, out=tmp_path / "out",
                             json_out=tmp_path / "r.json", sound_server="pipewire")  # fmt: skip
    result = run_pulse_bench(opts, Console(file=io.StringIO()))
    run = result["runs"][0]
    assert run["sound_server"] == "pipewire" and run["markers"] >= 5, run
    assert not run["missing_markers"], run
    assert 150 < run["latency_ms"]["p50"] < 300, run
    assert run["skew_ms"]["max"] < 5, run
    assert "--sound-server pipewire" in json.loads((tmp_path / "r.json").read_text())["command"]


def test_an_unknown_sound_server_is_refused(tmp_path: Path) -> None:
    opts = PulseBenchOptions(["pulse"], sites=1, out=tmp_path, sound_server="jack")
    with pytest.raises(PulseRigError, match="--sound-server takes pulseaudio or pipewire, not 'jack'"):
        run_pulse_bench(opts, Console(file=io.StringIO()))
