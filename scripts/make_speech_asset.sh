#!/bin/sh
# Regenerate src/citycast/assets/speech.opus: the demo's ≈ 8 s city announcement, 48 kHz mono Ogg Opus.
# Needs espeak-ng and sox (Debian packages of the same names) and the project's venv (PyAV).
# Usage: scripts/make_speech_asset.sh [python]   (default: .venv/bin/python beside this repository)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-"$root/.venv/bin/python"}
out="$root/src/citycast/assets/speech.opus"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

text="Good evening, Karachi. This is a test of the citywide loudspeaker network. \
Every loudspeaker in the city should now be speaking together."

espeak-ng -v en-gb -s 170 -a 120 -w "$tmp/speech.wav" "$text"
# 48 kHz mono, 0.2 s of silence either side, peak normalised to -3 dBFS.
sox "$tmp/speech.wav" -r 48000 -c 1 -b 16 "$tmp/speech48.wav" pad 0.2 0.2 norm -3

"$python" - "$tmp/speech48.wav" "$out" <<'PY'
"""Encode with citycast's own OpusEncoder and mux the packets into Ogg with the encoder's OpusHead."""
import sys
from fractions import Fraction

import av
import numpy as np

from citycast.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from citycast.media.codec import OpusEncoder
from citycast.media.sources import read_audio

pcm = read_audio(sys.argv[1])
pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, np.float32)])
encoder = OpusEncoder(bitrate=32_000, application="voip")
with av.open(sys.argv[2], "w", format="ogg") as container:
    stream = container.add_stream("libopus", rate=SAMPLE_RATE)
    stream.codec_context.layout = "mono"
    stream.codec_context.extradata = encoder.extradata
    stream.time_base = Fraction(1, SAMPLE_RATE)
    for i in range(0, pcm.size, FRAME_SAMPLES):
        packet = av.Packet(encoder.encode(pcm[i : i + FRAME_SAMPLES]))
        packet.stream = stream
        packet.time_base = Fraction(1, SAMPLE_RATE)
        packet.pts = packet.dts = i - encoder.lookahead_samples
        packet.duration = FRAME_SAMPLES
        container.mux(packet)
print(f"{sys.argv[2]}: {pcm.size / SAMPLE_RATE:.2f} s")
PY
ls -l "$out"
