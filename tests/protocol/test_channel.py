"""One channel range everywhere: 0..CHANNEL_MAX in the frame, desired state, the hub's API and the command line."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from typer.testing import CliRunner

from citycast.cli import app
from citycast.hub.api.schemas import ZoneIn, ZonePatch
from citycast.media.audio import FRAME_NS
from citycast.protocol.channel import CHANNEL_MAX, CHANNEL_MIN, is_channel
from citycast.protocol.desired import DesiredState, DesiredStateError
from citycast.protocol.frame import FrameSigner, FrameVerifier, MalformedFrame, parse_frame

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = FrameSigner(KEY)
SILENCE = b"\xf8\xff\xfe"
OUTSIDE = [CHANNEL_MIN - 1, CHANNEL_MAX + 1, 2**32 - 1]


def test_the_range() -> None:
    assert (CHANNEL_MIN, CHANNEL_MAX) == (0, 65_535)
    assert is_channel(0) and is_channel(CHANNEL_MAX)
    assert not any(is_channel(c) for c in [*OUTSIDE, True, 1.0, "1", None])


def hand_signed(channel: int) -> bytes:
    """A frame built by hand (the signer would refuse the channel) and signed properly: only the channel is wrong."""
    body = struct.pack(">2sBBIIQqI8s", b"CC", 1, 1, channel, 1, 1, 1, FRAME_NS, SIGNER.key_id)
    body += struct.pack(">H", len(SILENCE)) + SILENCE
    return body + KEY.sign(body)


def test_frames_carry_channels_up_to_the_max_and_no_further() -> None:
    verifier = FrameVerifier([KEY.public_key()])
    for channel in (CHANNEL_MIN, CHANNEL_MAX):
        data = SIGNER.sign(channel=channel, stream=1, seq=1, ts_ns=1, packets=[SILENCE])
        assert data == hand_signed(channel)
        assert verifier.verify(data).channel == channel
    for channel in OUTSIDE:
        with pytest.raises(ValueError, match=f"channel {channel} outside 0..65535"):
            SIGNER.sign(channel=channel, stream=1, seq=1, ts_ns=1, packets=[SILENCE])
    for channel in (CHANNEL_MAX + 1, 2**32 - 1):  # the u32 field can say more: the frame is malformed
        with pytest.raises(MalformedFrame, match=f"channel {channel} outside"):
            parse_frame(hand_signed(channel))


def test_desired_state_takes_the_same_range() -> None:
    assert DesiredState(channel=CHANNEL_MAX).channel == CHANNEL_MAX
    assert DesiredState(channel=CHANNEL_MIN).channel == CHANNEL_MIN
    for channel in OUTSIDE:
        with pytest.raises(DesiredStateError, match=f"0..{CHANNEL_MAX}"):
            DesiredState(channel=channel)


def test_the_api_takes_the_same_range() -> None:
    assert ZoneIn(name="z", channel=CHANNEL_MAX).channel == CHANNEL_MAX
    assert ZonePatch(channel=CHANNEL_MIN).channel == CHANNEL_MIN
    for channel in OUTSIDE:
        with pytest.raises(ValidationError, match="channel"):
            ZoneIn(name="z", channel=channel)
        with pytest.raises(ValidationError, match="channel"):
            ZonePatch(channel=channel)


@pytest.mark.parametrize("command", [["site", "--name", "s"], ["ingest", "nothing.wav"]])
def test_the_command_line_takes_the_same_range(command: list[str]) -> None:
    runner = CliRunner()
    for channel, bound in [
        (CHANNEL_MAX + 1, f"less than or equal to {CHANNEL_MAX}"),
        (CHANNEL_MIN - 1, f"greater than or equal to {CHANNEL_MIN}"),
    ]:
        result = runner.invoke(app, [*command, "--channel", str(channel)])
        said = " ".join(result.output.replace("│", " ").split())  # the error panel wraps its lines
        assert result.exit_code == 2, result.output
        assert "--channel" in said and bound in said, said
