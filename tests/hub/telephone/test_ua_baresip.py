"""A real softphone (baresip) calls the telephone with a speech clip as its microphone, types the PIN as DTMF, and
the site's timed sink plays that clip: the site's WAV correlates with the source (not just "something played")."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import av
import numpy as np
import pytest
from tests.helpers import wait_until
from tests.hub.telephone.rig import PIN, Rig

from citycast.bus.server import free_port
from citycast.hub.telephone.call import CallState
from citycast.media.sources import read_audio
from citycast.tooling.markers import correlate_lag

CLIP = Path(__file__).resolve().parents[3] / "src" / "citycast" / "assets" / "speech.opus"
LEAD_S = 4.0  # silence before the speech: the PIN is typed and the address on air by then

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip not installed")]


# baresip's codec list, its module, and the microphone file's rate and layout: the codec's own, as baresip 1.0's
# aufile source neither resamples nor remixes.
CODECS = {
    "g711": ("PCMA,PCMU", "g711.so", 8000, "mono"),
    "g722": ("G722", "g722.so", 16000, "mono"),
    "opus": ("opus/48000/2", "opus.so", 48000, "stereo"),
}


def write_wav(path: Path, rate: int, layout: str) -> None:
    """The clip as the phone's microphone: 16-bit at `rate`, after LEAD_S of silence."""
    pcm48 = read_audio(CLIP)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
        audio = np.concatenate([np.zeros(int(LEAD_S * 48_000), np.float32), pcm48, np.zeros(48_000, np.float32)])
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = 48_000
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def baresip_config(d: Path, wav: Path, sip_port: int, cons_port: int, codec: str, *, srtp: bool = False) -> None:
    names, module, _, _ = CODECS[codec]
    d.mkdir()
    (d / "config").write_text(
        "\n".join(
            [
                "poll_method epoll",
                f"sip_listen 127.0.0.1:{sip_port}",
                "module_path /usr/lib/baresip/modules",
                "module cons.so",
                f"cons_listen 127.0.0.1:{cons_port}",
                f"module {module}",
                "module aufile.so",
                *(["module srtp.so"] if srtp else []),
                "module_app account.so",
                "module_app menu.so",
                f"audio_source aufile,{wav}",
                "",
            ]
        )
    )
    mediaenc = ";mediaenc=srtp-mand" if srtp else ""  # RTP/SAVP with SDES keys, nothing in the clear
    (d / "accounts").write_text(f"<sip:speaker@127.0.0.1>;regint=0;audio_codecs={names}{mediaenc}\n")
    (d / "contacts").write_text("")


@pytest.mark.parametrize("codec, srtp", [*((c, False) for c in CODECS), ("g711", True)])
async def test_baresip_call_is_heard_at_the_site(rig: Rig, tmp_path: Path, codec: str, srtp: bool) -> None:
    wav = tmp_path / "mic.wav"
    write_wav(wav, *CODECS[codec][2:])
    sip_port, cons_port = free_port(span=2), free_port()  # baresip listens for SIP/TLS on sip_port + 1
    conf = tmp_path / "baresip"
    baresip_config(conf, wav, sip_port, cons_port, codec, srtp=srtp)
    proc = await asyncio.create_subprocess_exec(
        "baresip", "-f", str(conf), "-t", "40", "-e", f"/dial sip:citycast@127.0.0.1:{rig.phone.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until(
            lambda: any(c.state is CallState.answered for c in rig.phone.calls.values()),
            "baresip's call to be answered",
            timeout=15,
        )
        call = next(c for c in rig.phone.calls.values() if c.state is CallState.answered)
        assert call.media is not None
        offered = [name.split("/")[0].lower() for name in CODECS[codec][0].split(",")]
        assert call.media.neg.codec.name.lower() in offered, call.media.neg.codec
        # With srtp-mand baresip offers RTP/SAVP and a=crypto: the call runs SRTP both ways.
        assert (call.media.srtp is not None) == srtp and (call.media.neg.crypto is not None) == srtp
        # Type only once baresip's stream runs (the latch has taken its packets): under load its audio (SRTP
        # above all) can take seconds to start (6 s seen in CI), and digits typed before then are never sent.
        media = call.media
        await wait_until(
            lambda: media.latch.latched is not None and media.latch.accepted >= 25,
            "25 RTP packets from baresip",
            timeout=20,
        )
        # Keys on baresip's UDP console: in a call, menu sends a typed digit as DTMF (RFC 4733 by our SDP).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for key in f"{PIN}#":
                s.sendto(key.encode(), ("127.0.0.1", cons_port))
                await asyncio.sleep(0.3)
        await wait_until(
            lambda: rig.hub.addresses is not None and rig.hub.addresses.live(), "the call to go on air", timeout=10
        )
        await asyncio.sleep(LEAD_S + 8.4 + 1.0)  # the clip plays out
    finally:
        if proc.returncode is None:
            proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        print(out.decode(errors="replace")[-4000:])  # shown by pytest when the test fails
    await wait_until(lambda: not rig.phone.calls, "the call to end when baresip quits", timeout=10)
    await wait_until(lambda: rig.addresses()[-1].ended_at is not None, "the address to end", timeout=10)
    await asyncio.sleep(0.6)  # the sink rewrites its WAV header every half second
    heard = read_audio(rig.tmp / "saddar-1.wav")
    sent = read_audio(wav)[int(LEAD_S * 48_000) :]
    sent = sent[: int(8.0 * 48_000)]
    _, peak = correlate_lag(sent, heard)
    assert peak > 0.5, (peak, out.decode(errors="replace")[-3000:])
    if srtp:  # every packet of the call authenticated; none failed; baresip's SRTCP reports decoding ours
        assert call.media.latch.accepted > 400 and call.media.latch.dropped["srtp_auth"] == 0, call.media.latch.dropped
        # baresip's RTCP BYE at hang-up may go out as its SRTP context is torn down: that one fails and is dropped.
        assert call.media.latch.dropped["srtcp_auth"] <= 1, call.media.latch.dropped
        assert call.media.latch.rtcp_accepted > 0 and call.heard_report is not None
        behind = (call.media.back.seq - call.heard_report.highest_seq) & 0xFFFF  # ours it decoded, of ours sent
        assert behind < 500 and call.heard_report.cumulative_lost < 20, (behind, call.heard_report)
