"""The recorder: real libopus packets in, Ogg Opus out, read back with FFmpeg (PyAV) and compared with what was
sent: same packets byte for byte, same duration, audio that matches the source, holes kept, a SIGKILL losing
at most 1 s, retention, and nothing foreign recorded from the bus."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import av
import nats
import numpy as np
import pytest
from nats.aio.client import Client
from sqlalchemy import select
from tests.helpers import wait_until

import citycast
from citycast.bus.connection import settle
from citycast.bus.server import EmbeddedNats
from citycast.clock.local import SystemClock
from citycast.hub.db import Database
from citycast.hub.db.models import Recording
from citycast.hub.recorder import ChannelRecorder, Recorder, apply_retention
from citycast.ingest.broadcaster import Broadcaster
from citycast.media.audio import FRAME_NS, FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.sources import read_audio
from citycast.protocol.frame import FrameSigner, FrameVerifier
from citycast.protocol.subjects import Subjects

SPEECH = Path(citycast.__file__).parent / "assets" / "speech.opus"
TS0 = 1_700_000_000_000_000_000


def _speech(seconds: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    audio = read_audio(SPEECH)
    n = int(seconds * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
    assert audio.size >= n
    return audio[:n]


def _encode(audio: np.ndarray[Any, np.dtype[np.float32]]) -> tuple[OpusEncoder, list[bytes]]:
    enc = OpusEncoder()
    return enc, [enc.encode(audio[i : i + FRAME_SAMPLES]) for i in range(0, audio.size, FRAME_SAMPLES)]


def _frames(signer: FrameSigner, packets: list[bytes], per_frame: int = 1, channel: int = 3) -> list[bytes]:
    return [
        signer.sign(channel=channel, stream=7, seq=i, ts_ns=TS0 + i * FRAME_NS, packets=packets[i : i + per_frame])
        for i in range(0, len(packets), per_frame)
    ]


def _demux(path: Path) -> tuple[list[bytes], bytes]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        return [bytes(p) for p in c.demux(stream) if p.size], extradata


def _decode(path: Path) -> tuple[np.ndarray[Any, np.dtype[np.float32]], int, int]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        parts = [np.asarray(f.to_ndarray(), dtype=np.float32).reshape(-1) for f in c.decode(stream)]
    return np.concatenate(parts), rate, channels


def _best_correlation(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], max_lag: int = 960) -> tuple[float, int]:
    """Highest normalised correlation of a against b over lags -max_lag..max_lag, and that lag."""
    n = min(a.size, b.size) - 2 * max_lag
    ref = b[max_lag : max_lag + n]
    best = (-1.0, 0)
    for lag in range(-max_lag, max_lag + 1, 1):
        seg = a[max_lag + lag : max_lag + lag + n]
        c = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))
        if c > best[0]:
            best = (c, lag)
    return best


def test_recording_decodes_to_the_source(tmp_path: Path) -> None:
    audio = _speech(4.0)
    enc, packets = _encode(audio)
    signer = FrameSigner(generate_private_key())
    writer = Recorder(tmp_path).open("2025/address-1.ogg", channel=3, opus_head=enc.extradata)
    for data in _frames(signer, packets):
        assert writer.write_frame(data)
    writer.close()
    assert writer.frames == len(packets) and writer.packets == len(packets)
    assert writer.duration_s == pytest.approx(len(packets) * 0.02)
    assert writer.bytes == (tmp_path / "2025" / "address-1.ogg").stat().st_size > 0

    decoded, rate, channels = _decode(tmp_path / "2025" / "address-1.ogg")
    assert rate == SAMPLE_RATE and channels == 1
    # The file ends at the last packet's end; the decoder drops the encoder's pre-skip at the start.
    assert decoded.size == len(packets) * FRAME_SAMPLES - enc.lookahead_samples
    corr, lag = _best_correlation(decoded, audio)
    assert corr > 0.9, corr
    assert abs(lag) <= 2, lag  # the OpusHead's pre-skip lines the recording up with the source


def test_packets_in_the_file_are_the_packets_sent(tmp_path: Path) -> None:
    audio = _speech(2.0)
    enc, packets = _encode(audio)
    signer = FrameSigner(generate_private_key())
    writer = Recorder(tmp_path).open("a.ogg", channel=3, opus_head=enc.extradata)
    for data in _frames(signer, packets, per_frame=3):  # three packets a message, like a WAN ingest
        writer.write_frame(data)
    writer.close()
    got, extradata = _demux(tmp_path / "a.ogg")
    assert extradata == enc.extradata
    assert got == packets
    assert writer.frames == (len(packets) + 2) // 3


def test_holes_duplicates_and_stragglers_keep_the_timeline(tmp_path: Path) -> None:
    audio = _speech(4.0)
    enc, packets = _encode(audio)
    signer = FrameSigner(generate_private_key())
    frames = _frames(signer, packets)
    lost = set(range(60, 85))  # half a second lost on the bus
    writer = Recorder(tmp_path).open("gap.ogg", channel=3, opus_head=enc.extradata)
    assert writer.first_ts_ns is None
    for i, data in enumerate(frames):
        if i in lost:
            continue
        writer.write_frame(data)
        if i % 10 == 0:
            assert not writer.write_frame(data)  # duplicate
        if i == 120:
            assert not writer.write_frame(frames[100])  # a straggler older than what is written
    writer.close()
    # second 0 of the file is the first frame's broadcast time, whatever came after
    assert writer.first_ts_ns == TS0
    assert writer.skipped_packets == len([i for i in range(len(frames)) if i % 10 == 0 and i not in lost]) + 1
    assert writer.filled_packets == len(lost)
    assert writer.duration_s == pytest.approx(len(packets) * 0.02)

    got, _ = _demux(tmp_path / "gap.ogg")
    assert len(got) == len(packets)
    for i, p in enumerate(got):
        if i in lost:
            assert len(p) == 1  # TOC only: a frame with no data, which decoders render as silence / PLC
        else:
            assert p == packets[i]

    decoded, _, _ = _decode(tmp_path / "gap.ogg")
    assert decoded.size == len(packets) * FRAME_SAMPLES - enc.lookahead_samples
    # Audio after the hole sits where it was spoken, not half a second early.
    after = slice(90 * FRAME_SAMPLES, 190 * FRAME_SAMPLES)
    corr, lag = _best_correlation(decoded[after], audio[after], max_lag=480)
    assert corr > 0.9 and abs(lag) <= 2, (corr, lag)
    hole = decoded[62 * FRAME_SAMPLES : 83 * FRAME_SAMPLES]
    assert float(np.sqrt(np.mean(hole**2))) < 0.01 < float(np.sqrt(np.mean(audio[after] ** 2)))


def test_bad_input_is_counted_not_raised(tmp_path: Path) -> None:
    enc, packets = _encode(_speech(0.2))
    signer = FrameSigner(generate_private_key())
    writer = Recorder(tmp_path).open("bad.ogg", channel=3, opus_head=enc.extradata)
    assert not writer.write_frame(b"not a frame")
    assert not writer.write_frame(_frames(signer, packets, channel=4)[0])  # another channel's frame
    assert writer.rejected == 2
    assert writer.write_frame(_frames(signer, packets)[0])
    writer.close()
    writer.close()  # idempotent
    assert not writer.write_frame(_frames(signer, packets)[1])  # closed: ignored
    assert _demux(tmp_path / "bad.ogg")[0] == packets[:1]


def test_recording_names_are_checked(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "rec")
    for bad in ("../escape.ogg", "/etc/x.ogg", "a/../../b.ogg", "x.wav", ""):
        with pytest.raises(ValueError, match="recording name"):
            recorder.open(bad, channel=1)
    recorder.open("x.ogg", channel=1).close()
    with pytest.raises(FileExistsError):
        recorder.open("x.ogg", channel=1)
    with pytest.raises(ValueError, match="OpusHead"):
        recorder.open("y.ogg", channel=1, opus_head=b"garbage")


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from citycast.hub.recorder import Recorder
    from citycast.media.codec import OpusEncoder
    from citycast.protocol.frame import FrameSigner
    from citycast.media.keys import generate_private_key

    enc = OpusEncoder()
    signer = FrameSigner(generate_private_key())
    writer = Recorder(Path(sys.argv[1])).open("killed.ogg", channel=1, opus_head=enc.extradata)
    t0 = time.monotonic()
    for i in range(3000):
        t = (np.arange(960) + i * 960) / 48000
        pcm = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
        data = signer.sign(channel=1, stream=1, seq=i, ts_ns=i * 20_000_000, packets=[enc.encode(pcm)])
        writer.write_frame(data)
        print(i + 1, flush=True)
        delay = t0 + (i + 1) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    """
)


def test_sigkill_loses_at_most_one_second(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert proc.stdout is not None
    written = 0
    deadline = time.monotonic() + 60
    try:
        while written < 170:  # 3.4 s of audio: mid-page, not on a round number of pages
            line = proc.stdout.readline()
            assert line, "the writer process died"
            written = int(line)
            assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # anything it reported before it died
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    written = max([written, *(int(x) for x in rest.split())])
    decoded, rate, _ = _decode(tmp_path / "killed.ogg")
    lost_s = written * 0.02 - decoded.size / rate
    assert 0 <= lost_s <= 1.0, (written, decoded.size, lost_s)
    assert float(np.sqrt(np.mean(decoded[4800:] ** 2))) > 0.2  # the tone is there, not silence


def test_retention_deletes_old_recordings(tmp_path: Path, database: Database) -> None:
    directory = tmp_path / "rec"
    now = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
    outside = tmp_path / "outside.ogg"
    outside.write_bytes(b"keep me")
    spec = {
        "old.ogg": (now - dt.timedelta(days=40), now - dt.timedelta(days=40) + dt.timedelta(minutes=5)),
        "unfinished.ogg": (now - dt.timedelta(days=31), None),  # the hub died while writing it
        "recent.ogg": (now - dt.timedelta(days=3), now - dt.timedelta(days=3)),
        "../outside.ogg": (now - dt.timedelta(days=90), now - dt.timedelta(days=90)),
    }
    with database.session() as s:
        for name, (started, ended) in spec.items():
            if not name.startswith(".."):
                Recorder(directory).open(name, channel=1).close()
            s.add(Recording(channel=1, path=name, started_at=started, ended_at=ended))
    with database.session() as s:
        assert apply_retention(s, directory, 0, now) == 0  # 0 keeps forever
    with database.session() as s:
        assert apply_retention(s, directory, 30, now) == 3
    with database.session() as s:
        assert s.scalars(select(Recording.path)).all() == ["recent.ogg"]
    assert sorted(p.name for p in directory.iterdir()) == ["recent.ogg"]
    assert outside.read_bytes() == b"keep me"  # a path leaving the directory is never followed
    with database.session() as s, pytest.raises(ValueError):
        apply_retention(s, directory, -1, now)


async def test_channel_recorder_records_only_trusted_frames(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    key = generate_private_key()
    foreign = FrameSigner(generate_private_key())
    subjects = Subjects()
    hub_nc = await nats.connect(nats_server.url)
    ingest_nc = await nats.connect(nats_server.url)
    spy_nc = await nats.connect(nats_server.url)
    sent: list[bytes] = []

    async def spy(msg: Any) -> None:
        sent.append(msg.data)

    try:
        await spy_nc.subscribe(subjects.audio(2), cb=spy)
        clock = SystemClock().now_ns
        caster = Broadcaster(ingest_nc, channel=2, signer=FrameSigner(key), clock=clock, packets_per_message=2)
        writer = Recorder(tmp_path).open("bus.ogg", channel=2, opus_head=caster.encoder.extradata)
        recorder = ChannelRecorder(hub_nc, writer, FrameVerifier([key.public_key()]), subjects=subjects, clock=clock)
        await recorder.start()
        await settle(hub_nc)
        await settle(spy_nc)

        async def forge() -> int:
            enc = OpusEncoder()
            n = 0
            for i in range(10):
                await asyncio.sleep(0.05)
                pcm = np.full(FRAME_SAMPLES, 0.5, np.float32)
                ts = clock()
                await ingest_nc.publish(
                    subjects.audio(2), foreign.sign(channel=2, stream=9, seq=i, ts_ns=ts, packets=[enc.encode(pcm)])
                )
                await ingest_nc.publish(subjects.audio(2), b"CC\x01garbage" * 12)
                n += 1
            return n

        audio = _speech(1.2)
        blocks = iter([audio[i : i + FRAME_SAMPLES] for i in range(0, audio.size, FRAME_SAMPLES)])
        forged_task = asyncio.create_task(forge())
        report = await caster.run(blocks)
        forged = await forged_task
        await settle(ingest_nc)
        await wait_until(
            lambda: writer.frames == report.messages and recorder.rejected["untrustedkey"] == forged,
            "the recorder to take every message sent",
            timeout=10,
            detail=lambda: (writer.frames, report.messages, dict(recorder.rejected)),
        )
        await recorder.stop()
    finally:
        for nc in (hub_nc, ingest_nc, spy_nc):
            await nc.close()

    assert report.packets == 60
    assert recorder.rejected["untrustedkey"] == forged
    assert recorder.rejected["malformedframe"] == forged
    assert writer.frames == report.messages
    verifier = FrameVerifier([key.public_key()])
    genuine = [p for data in sent if data[:3] == b"CC\x01" for p in _try_packets(verifier, data)]
    assert len(genuine) == 60
    got, _ = _demux(tmp_path / "bus.ogg")
    assert got == genuine  # only the trusted ingest's packets, byte for byte, in order
    decoded, _, _ = _decode(tmp_path / "bus.ogg")
    assert _best_correlation(decoded, audio)[0] > 0.9


def _try_packets(verifier: FrameVerifier, data: bytes) -> tuple[bytes, ...]:
    try:
        return verifier.verify(data).packets
    except ValueError:
        return ()


def test_channel_recorder_refuses_stale_other_channel_and_oversized(tmp_path: Path) -> None:
    enc, packets = _encode(_speech(0.2))
    key = generate_private_key()
    signer = FrameSigner(key)
    writer = Recorder(tmp_path).open("direct.ogg", channel=3, opus_head=enc.extradata)
    now = TS0 + 5 * FRAME_NS
    recorder = ChannelRecorder(Client(), writer, FrameVerifier([key.public_key()]), clock=lambda: now)
    frames = _frames(signer, packets)
    assert recorder.on_frame_bytes(frames[5])
    assert not recorder.on_frame_bytes(_frames(signer, packets, channel=4)[6])
    assert not recorder.on_frame_bytes(b"\0" * 6000)
    now += 60 * 1_000_000_000
    assert not recorder.on_frame_bytes(frames[6])  # a minute old: a replay, not the address
    assert recorder.rejected == {"wrong_channel": 1, "oversized": 1, "stale": 1}
    writer.close()
    assert _demux(tmp_path / "direct.ogg")[0] == [packets[5]]
