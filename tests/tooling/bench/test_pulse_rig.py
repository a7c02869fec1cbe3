"""The pulse bench's ear: what counts as a glitch in a recorded tone, and the address it plays.

Real signals, made here: the bench's own tone-with-markers file, read back and cut, stretched or gapped as a
sound server would; each glitch must be counted once, and a slewed playout (the engine's rate corrections) must
count as none.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from tests.helpers import need_binary
from tests.tooling.bench.card_tone import play_tone_to_one_sink

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.pulse_stream import PlaybackStream
from citycast.media.resampler import read_ramp
from citycast.tooling.bench.analysis import SiteTrace, analyse
from citycast.tooling.bench.pulse_rig import (
    CARD,
    LOOP_S,
    MonitorRecorder,
    MonitorRecording,
    PulseBenchOptions,
    PulseRigError,
    PulseServer,
    parse_kinds,
    run_pulse_bench,
    sink_name,
    site_offsets,
    tone_glitches,
    write_tone_with_markers,
)
from citycast.tooling.bench.snapcast import SnapcastError, looped
from citycast.tooling.markers import detect_markers


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = tmp_path_factory.mktemp("tone") / "tone.wav"
    write_tone_with_markers(path)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels()) == (SAMPLE_RATE, 1)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = pcm.astype(np.float64) / 32767
    return np.concatenate([x, x])  # looped, as ingest --loop sends it


def _count(x: np.ndarray) -> tuple[int, int]:
    markers = detect_markers(x)
    g = tone_glitches(x, markers, 0, len(x))
    return g.gaps, g.jumps


def test_the_address_has_a_marker_every_second_and_a_clean_tone(address: np.ndarray) -> None:
    markers = detect_markers(address)
    assert np.allclose(np.diff(markers), SAMPLE_RATE, atol=0.01)
    assert len(markers) == 2 * LOOP_S
    assert _count(address) == (0, 0)


def test_a_slewed_playout_is_no_glitch(address: np.ndarray) -> None:
    # The engine reads the stream up to 1000 ppm fast or slow: smooth, inaudible, and not a discontinuity.
    n = len(address) - 1000
    stretched = read_ramp(address.astype(np.float32), 1.0, 1.0008, n, np.arange(n, dtype=np.float64))
    assert _count(np.asarray(stretched, dtype=np.float64)) == (0, 0)


def test_one_skipped_sample_is_one_jump(address: np.ndarray) -> None:
    cut = np.delete(address, 300_000)
    assert _count(cut) == (0, 1)
    repeated = np.insert(address, 500_000, address[500_000])
    assert _count(repeated) == (0, 1)


def test_an_underrun_is_one_gap(address: np.ndarray) -> None:
    gapped = address.copy()
    gapped[400_000 : 400_000 + 480] = 0.0  # 10 ms of silence where the tone should be
    gaps, jumps = _count(gapped)
    assert gaps == 1
    assert jumps <= 1  # the tone comes back where the timeline says: no jump, or one at the gap's edge


def test_dates_give_the_capture_line_whatever_a_few_late_reads(tmp_path: Path) -> None:
    rec = MonitorRecording("cc_site00", tmp_path / "x.f32")
    t0 = 1_764_000_000_000_000_000
    rng = np.random.default_rng(3)
    for k in range(1, 2000):
        late = int(rng.exponential(2e6)) if k % 7 == 0 else int(rng.uniform(0, 50e3))
        rec.dates.append((k * 480, t0 + round(k * 480 * 1e9 / SAMPLE_RATE) + late))
    start, ns_per_sample = rec.line()
    assert abs(start - t0) < 60_000
    assert ns_per_sample == pytest.approx(1e9 / SAMPLE_RATE)


def test_a_card_running_fast_is_measured_not_taken_for_latency(tmp_path: Path) -> None:
    """A null sink under load renders +400..615 ppm fast on the system clock (seen with ten sites): the line must
    carry that rate, or every marker late in the recording reads as more latency (0.5 ms a second)."""
    rec = MonitorRecording("cc_site00", tmp_path / "x.f32")
    t0 = 1_764_000_000_000_000_000
    rng = np.random.default_rng(4)
    ns = 1e9 / SAMPLE_RATE / (1 + 500e-6)  # the card: 500 ppm fast
    for k in range(1, 6000):  # 60 s of 10 ms reads; a busy second now and then makes every date of it late
        late = int(rng.exponential(2e6)) if k % 7 == 0 or 2000 <= k < 2100 else int(rng.uniform(0, 50e3))
        rec.dates.append((k * 480, t0 + round(k * 480 * ns) + late))
    start, ns_per_sample = rec.line()
    assert ns_per_sample == pytest.approx(ns, rel=5e-6)
    assert rec.rate_ppm() == pytest.approx(500, abs=5)
    assert abs(start - t0) < 100_000
    # Nonsense dates keep the nominal rate rather than a card no one makes.
    broken = MonitorRecording("cc_site01", tmp_path / "y.f32", [(k * 480, t0 + k * 30_000_000) for k in range(1, 600)])
    assert broken.line()[1] == 1e9 / SAMPLE_RATE


def test_sink_kinds_are_checked() -> None:
    assert parse_kinds("pulse,alsa,device") == ["pulse", "alsa", "device"]
    with pytest.raises(PulseRigError, match="--sink takes"):
        parse_kinds("jack")


def test_the_server_starts_in_a_relative_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`citycast bench --sink pulse` with its default `--out` (a relative folder): PulseAudio refuses a relative
    home directory, so the rig hands it an absolute one."""
    need_binary("pulseaudio")
    monkeypatch.chdir(tmp_path)
    with PulseServer(Path("citycast-out") / "pulse", 1) as server:
        assert server.socket.is_absolute() and server.socket.exists()
        PlaybackStream(server=server.server, device=sink_name(0), rate=SAMPLE_RATE, tlength_frames=1920,
                       minreq_frames=480).close()  # fmt: skip


def test_every_site_is_its_own_channel_of_one_recording(tmp_path: Path) -> None:
    """Eight sites' sinks on one card (more channels than PulseAudio has a default map for): a tone played to site
    6 only is recorded on channel 6 only (no remixing between channels), and the eight recordings share one file
    and one set of dates."""
    need_binary("pulseaudio")
    sinks = [sink_name(i) for i in range(8)]
    with PulseServer(tmp_path / "pulse", len(sinks)) as server:
        errors, recordings = play_tone_to_one_sink(server.server, sinks, 6, tmp_path, settle_s=0.2)
    assert not errors
    audio = [rec.audio() for rec in recordings]
    assert len({len(x) for x in audio}) == 1 and len(audio[0]) >= SAMPLE_RATE
    rms = [float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) for x in audio]
    assert rms[6] > 0.1 and max(rms[:6] + rms[7:]) < 1e-4, rms
    assert all(rec.dates is recordings[0].dates for rec in recordings)
    assert len(recordings[0].dates) > 10


def test_recording_without_a_server_is_a_clear_error(tmp_path: Path) -> None:
    recorder = MonitorRecorder(f"unix:{tmp_path / 'no-such-socket'}", ["cc_site00", "cc_site01"], tmp_path, card=CARD)
    with pytest.raises(PulseRigError, match=f"cannot record {CARD}.monitor"):
        recorder.start()


def test_site_offsets_tell_a_constant_bias_from_jitter() -> None:
    ts0, period = 1_764_000_000_000_000_000, 1_000_000_000
    rng = np.random.default_rng(5)
    steady = SiteTrace("a", [ts0 + k * period + 80e6 for k in range(30)])
    biased = SiteTrace("b", [ts0 + k * period + 80.4e6 for k in range(30)])
    jittery = SiteTrace("c", [ts0 + k * period + 80.2e6 + rng.uniform(-1e6, 1e6) for k in range(30)])
    sync = analyse([steady, biased, jittery], ts0_ns=ts0, period_ns=period, markers_sent=30)
    offsets = site_offsets(sync.offsets_by_site_ms)
    assert offsets["b"]["median"] > 0.15 and offsets["a"]["median"] < -0.15
    assert offsets["a"]["spread"] < offsets["c"]["spread"] and offsets["c"]["spread"] > 1.0


def test_snapclients_through_the_same_card_are_measured_as_sites_are(tmp_path: Path) -> None:
    """The yardstick kind for real: snapserver reads the bench's tone from its FIFO, two snapclients play it
    through their PulseAudio players onto two channels of the card, and the markers found there give latency and
    skew as they do for sites (snapserver's buffer is the sites' D)."""
    need_binary("pulseaudio")
    need_binary("snapserver")
    need_binary("snapclient")
    opts = PulseBenchOptions(["snapclient"], sites=2, seconds=6, delay_ms=300, warmup=4, out=tmp_path / "out",
                             json_out=tmp_path / "r.json")  # fmt: skip
    result = run_pulse_bench(opts, Console(file=io.StringIO()))
    run = result["runs"][0]
    assert run["sink"] == "snapclient" and run["markers"] >= 5, run
    assert not run["missing_markers"], run
    assert 150 < run["latency_ms"]["p50"] < 450, run  # its buffer, to within snapserver's read of the FIFO
    assert run["skew_ms"]["max"] < 5, run
    assert 0 < run["cpu_percent_per_site"] < 50, run
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["sink"] == "snapclient"


def test_the_snapserver_feeder_loops_a_mono_wav_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    write_tone_with_markers(path)
    blocks = looped(path)
    x = np.concatenate([next(blocks) for _ in range(LOOP_S * SAMPLE_RATE // FRAME_SAMPLES + 50)])
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    n = pcm.size
    assert np.array_equal(x[:n], pcm) and np.array_equal(x[n : n + 1000], pcm[:1000])  # seamless loop
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(b"\0" * 4 * SAMPLE_RATE)
    with pytest.raises(SnapcastError, match="mono 16-bit"):
        next(looped(stereo))
