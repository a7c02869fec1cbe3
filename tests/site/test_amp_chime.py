"""Chime and amplifier power end to end: a hub AddressManager and a site agent on a real nats-server. The zone has
the builtin chime and a 1.5 s start lead; the site's amplifier commands append `date +%s.%N` to a file. The times
they ran are checked against the broadcast time the address's first sample played (its frame timestamp + D), and
the chime is found first in what the site's TimedSink played.

Broadcast clock = this machine's clock (the hub's clock is time.time_ns, the site runs `--clock system`), so the
times `date` wrote compare directly. Tolerance: a command runs no earlier than it is due (5 ms for the clock
read), and at most LATE_S later (forking sh and date on a loaded 2-core box)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import numpy as np
from tests.helpers import wait_until

from citycast.bus.server import EmbeddedNats
from citycast.hub.addresses import AddressManager
from citycast.hub.chime import builtin_chime
from citycast.hub.db.engine import Database, default_sqlite_url
from citycast.hub.db.models import Priority, Site, Zone
from citycast.hub.desired import DesiredStore
from citycast.media.audio import SAMPLE_RATE
from citycast.media.codec import OpusEncoder
from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.protocol.frame import FrameSigner
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.amp import AmpConfig

D_NS = 120_000_000
LEAD_NS, HOLD_NS = 1_000_000_000, 500_000_000
EARLY_S, LATE_S = 0.005, 0.2
CODEC_DELAY = OpusEncoder().lookahead_samples


def _recorder(path: Path) -> list[str]:
    return ["sh", "-c", f"date +%s.%N >> '{path}'"]


def _times(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


async def _scenario(url: str, db: Database, tmp: Path) -> None:
    with db.session() as s:
        zone = Zone(name="saddar", channel=1, chime="builtin", start_lead_ms=1500)
        s.add(zone)
        s.flush()
        zone_id = zone.id
        s.add(Site(name="s1", lat=24.86, lon=67.03, zone_id=zone_id))
    key = generate_private_key()
    nc = await nats.connect(url)
    store = DesiredStore(nc, Subjects())
    await store.open()
    mgr = AddressManager(
        db=db, nc=nc, subjects=Subjects(), desired=store, signer=FrameSigner(key), media_dir=tmp, delay_ms=D_NS / 1e6
    )
    await mgr.refresh_sites()
    on_file, off_file = tmp / "amp-on.txt", tmp / "amp-off.txt"
    played: list[tuple[int, np.ndarray]] = []
    cfg = SiteConfig(
        name="s1",
        nats_url=url,
        trusted_keys=[key.public_key()],
        delay_ns=D_NS,
        clock_mode="system",
        amp=AmpConfig(on=_recorder(on_file), off=_recorder(off_file), lead_ns=LEAD_NS, hold_ns=HOLD_NS),
    )
    agent = SiteAgent(cfg, TimedSink(block=480, on_block=lambda t, x: played.append((t, x.copy()))))
    await agent.start()
    try:
        await wait_until(lambda: agent.config.channel == 1, "the site on its zone's idle channel", timeout=10)
        asked = time.time_ns()
        aid = await mgr.start(
            title="t", source="tone", zone_ids=[zone_id], priority=Priority.live, speaker="", user_id=None, duration_s=1
        )
        on_air = mgr.get(aid)
        assert on_air is not None and on_air.start_ns is not None
        ts0 = on_air.start_ns
        assert ts0 - asked >= 1_500_000_000  # the zone's lead: announced ahead, the amplifier has time
        await wait_until(lambda: _times(off_file), "the amplifier switched off", timeout=15)
        end = on_air.end_ns
        assert end is not None
    finally:
        await agent.stop()
        await mgr.close()
        await nc.close()

    first_plays = (ts0 + D_NS) / 1e9
    (on,) = _times(on_file)
    (off,) = _times(off_file)
    assert first_plays - LEAD_NS / 1e9 - EARLY_S <= on <= first_plays - LEAD_NS / 1e9 + LATE_S
    assert on < first_plays  # the first sample never plays into a dead amplifier
    last_played = (end + D_NS) / 1e9
    assert last_played + HOLD_NS / 1e9 - EARLY_S <= off <= last_played + HOLD_NS / 1e9 + LATE_S
    assert agent.amp is not None and agent.amp.failures == 0 and not agent.amp.scheduler.is_on

    # What the loudspeaker played: silence, then the chime from the first sample's instant on, then the tone.
    times = np.concatenate([t + np.arange(x.size) * 1e9 / SAMPLE_RATE for t, x in played])
    audio = np.concatenate([x for _, x in played])
    first = int(np.searchsorted(times, ts0 + D_NS))
    assert not np.any(np.abs(audio[:first]) > 1e-3)  # nothing before the address's first sample
    chime = builtin_chime()
    score = {
        lag: _correlation(audio[first + lag : first + lag + chime.size], chime) for lag in range(0, 2 * CODEC_DELAY)
    }
    lag = max(score, key=score.__getitem__)
    assert score[lag] > 0.9, score[lag]  # the chime, through Opus and the playout engine
    # Where it starts: at the first sample's instant, behind only the codec's own delay (its lookahead).
    assert abs(lag - CODEC_DELAY) <= 48, lag
    onset = first + lag
    after = audio[onset + chime.size : onset + chime.size + SAMPLE_RATE // 2]
    spectrum = np.abs(np.fft.rfft(after))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / after.size - 440) < 5  # then the address itself


def test_the_amplifier_is_on_before_the_chime_and_off_after_the_address(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    db = Database(default_sqlite_url(tmp_path))
    db.upgrade()
    try:
        asyncio.run(_scenario(nats_server.url, db, tmp_path))
    finally:
        db.dispose()
