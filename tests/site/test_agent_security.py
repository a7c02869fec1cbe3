"""Forged, replayed, stale, malformed and oversized frames never reach the loudspeaker."""

from __future__ import annotations

import os
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import SetClock

from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.protocol.frame import FrameSigner
from citycast.protocol.telemetry import Rejection
from citycast.site.agent import SiteAgent, SiteConfig

TRUSTED = generate_private_key()
STRANGER = generate_private_key()


def make_agent() -> SiteAgent:
    cfg = SiteConfig(
        name="test-site",
        nats_url="nats://127.0.0.1:1",  # never connected: frames are fed straight in
        trusted_keys=[TRUSTED.public_key()],
        clock_mode="system",
        delay_ns=100_000_000,
    )
    return SiteAgent(cfg, TimedSink())


def packet() -> bytes:
    enc = OpusEncoder()
    return enc.encode(np.zeros(960, np.float32))


PACKET = packet()


def frame(key: object = TRUSTED, seq: int = 0, ts: int | None = None, channel: int = 1, stream: int = 9) -> bytes:
    signer = FrameSigner(key)  # type: ignore[arg-type]
    return signer.sign(
        channel=channel,
        stream=stream,
        seq=seq,
        ts_ns=ts if ts is not None else time.time_ns(),
        packets=[PACKET],
    )


def test_a_good_frame_is_queued() -> None:
    agent = make_agent()
    agent.on_frame_bytes(frame())
    assert agent.frames == 1
    assert agent.engine.stats.packets == 1
    assert not agent.rejected


def test_forged_frame_is_rejected() -> None:
    agent = make_agent()
    agent.on_frame_bytes(frame(key=STRANGER))
    assert agent.engine.stats.packets == 0
    assert agent.rejected["untrustedkey"] == 1


def test_tampered_payload_is_rejected() -> None:
    agent = make_agent()
    data = bytearray(frame())
    data[45] ^= 0x01  # inside the Opus packet
    agent.on_frame_bytes(bytes(data))
    assert agent.engine.stats.packets == 0
    assert agent.rejected["badsignature"] == 1


def test_replayed_frame_is_rejected() -> None:
    agent = make_agent()
    data = frame(seq=5)
    agent.on_frame_bytes(data)
    agent.on_frame_bytes(data)
    assert agent.engine.stats.packets == 1
    assert agent.rejected["replayed"] == 1


def test_recorded_frame_sent_later_is_stale() -> None:
    agent = make_agent()
    agent.on_frame_bytes(frame(ts=time.time_ns() - 10_000_000_000))
    agent.on_frame_bytes(frame(ts=time.time_ns() + 60_000_000_000, seq=1))
    assert agent.engine.stats.packets == 0
    assert agent.rejected["stale"] == 2


def test_other_channel_and_oversized_are_rejected() -> None:
    agent = make_agent()
    agent.on_frame_bytes(frame(channel=2))
    agent.on_frame_bytes(os.urandom(100_000))
    assert agent.engine.stats.packets == 0
    assert agent.rejected["wrong_channel"] == 1
    assert agent.rejected["oversized"] == 1


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_garbage_never_raises_and_is_never_played(data: bytes) -> None:
    agent = make_agent()
    agent.on_frame_bytes(data)
    assert agent.engine.stats.packets == 0
    assert sum(agent.rejected.values()) == 1


def test_a_system_clock_set_back_an_hour_replays_nothing() -> None:
    """A site on `--clock system` whose time daemon is lied to: its clock steps back an hour, and a genuine frame
    signed an hour ago would look fresh. The raw monotonic clock, which no time daemon bends, says otherwise."""
    clock = SetClock()
    cfg = SiteConfig(name="test-site", nats_url="nats://127.0.0.1:1", trusted_keys=[TRUSTED.public_key()],
                     clock_mode="system", delay_ns=100_000_000)  # fmt: skip
    agent = SiteAgent(cfg, TimedSink(), clock=clock)
    agent.on_frame_bytes(frame(seq=0))
    assert agent.frames == 1
    hour_ago = time.time_ns() - 3600 * 1_000_000_000
    clock.offset_ns = -3600 * 1_000_000_000
    agent.on_frame_bytes(frame(stream=10, seq=0, ts=hour_ago))
    assert agent.frames == 1 and agent.rejected["stale"] == 1
    agent.on_frame_bytes(frame(seq=1))  # the live stream plays on
    assert agent.frames == 2
    assert agent.guard.refused_steps == 1 and agent.guard.refused_step_ns < -3599 * 1_000_000_000


class CountingVerifier:
    """The agent's own verifier, counting the signatures it checks."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.checked = 0

    def verify(self, data: bytes) -> object:
        self.checked += 1
        return self.inner.verify(data)  # type: ignore[attr-defined]


def test_the_other_paths_copy_is_not_verified_twice_and_nothing_else_skips_a_check() -> None:
    """Two paths deliver every frame twice. The second copy, byte for byte a frame already verified and played,
    costs no second signature check; the same frame again on the same path is still a replay, and a different
    message under the same sequence number is still checked (and refused)."""
    agent = make_agent()
    counting = CountingVerifier(agent.verifier)
    agent.verifier = counting  # type: ignore[assignment]
    data = frame(seq=7)
    agent.on_frame_bytes(data, uplink=0)
    agent.on_frame_bytes(data, uplink=1)  # the other path's copy
    assert (agent.frames, agent.duplicates, counting.checked) == (1, 1, 1)
    agent.on_frame_bytes(data, uplink=1)  # again down the same path: nobody sends a frame twice on one path
    assert agent.rejected[Rejection.REPLAYED] == 1 and counting.checked == 2
    forged = bytearray(frame(seq=7))
    forged[45] ^= 0x01
    agent.on_frame_bytes(bytes(forged), uplink=1)
    assert agent.rejected[Rejection.BAD_SIGNATURE] == 1 and counting.checked == 3
    assert agent.engine.stats.packets == 1
