"""A site's options once the command line (or a test) has parsed them: a plain dataclass.

Kept apart from `citycast.site.run` so that `citycast site`, which builds these and then re-executes itself
(`citycast.site.main`), never imports the agent, numpy or the bus before the exec: that would be paid twice at
every start of a box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from citycast.media.audio import FRAME_NS, MIN_LEAD_NS

if TYPE_CHECKING:
    from citycast.site.enrol import SiteCredentials


DEFAULT_PERIOD_MS = 10.0
# What the bus, the verify and the event loop take on a busy loopback box, on top of the arithmetic below.
BUS_MARGIN_MS = 30.0


def least_delay_ms(period_ms: float = DEFAULT_PERIOD_MS, packets_per_message: int = 1) -> float:
    """The least D at which a site with this sink period plays every frame on loopback: a message is complete
    `packets_per_message` frames after its first sample; the block holding that sample is asked for a block (at
    least `MIN_LEAD_NS`) before it plays, and holds `period_ms` of audio. Measured (docs/benchmarks.md): 10 ms and
    one packet a message, 80 ms; 50 ms and two, 170 ms (120 ms underran)."""
    frames_ms = packets_per_message * FRAME_NS / 1e6
    return frames_ms + max(MIN_LEAD_NS / 1e6, period_ms) + period_ms + BUS_MARGIN_MS


@dataclass
class SiteOptions:
    name: str
    nats_url: str
    trust: Path
    channel: int = 1
    prefix: str = "citycast"
    delay_ms: float = 80.0
    sink: str = "auto"
    period_ms: float = DEFAULT_PERIOD_MS  # audio the sink takes per wake-up (its block)
    clock: str = "sync"
    time_zone: str | None = None
    fallback: Path | None = None
    fallback_after_s: float = 2.0
    duration: float | None = None
    wav: Path | None = None
    sim_clock_offset_ms: float = 0.0
    sim_clock_ppm: float = 0.0
    credentials: SiteCredentials | None = None  # from enrolment: name, bus, NATS user, trusted keys, D
    credentials_path: Path | None = None
    talkback_source: str = "line-in"
    # More than one: one connection per city server (dual-path delivery, citycast.site.uplinks); `nats_url` may be a
    # comma list too. `uplink_binds[i]` is the i-th connection's local address or interface.
    nats_urls: list[str] = field(default_factory=list)
    uplink_binds: list[str] = field(default_factory=list)
    clock_memory: Path | None = None  # where the clock's drift is kept across restarts (citycast.clock.memory)
    # Amplifier power around each address (citycast.site.amp): commands as typed (split like a shell, run without one)
    amp_on: str | None = None
    amp_off: str | None = None
    amp_lead_s: float = 1.0
    amp_hold_s: float = 2.0
