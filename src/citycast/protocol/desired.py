"""Desired site state: what the hub wants each site to do (channel, volume, mute, fallback).

On the bus: JSON on `<prefix>.desired.<site>` (each change) and in answer to `<prefix>.desired-get.<site>`, with
the KV revision in the `Citycast-Revision` header (docs/protocol.md "Desired state", subjects in "Subjects").
A state rather than commands because a site that was offline must converge when it returns: it asks for the
latest value, not for a queue of orders it missed. The hub keeps it in a KV bucket and hands it to sites over
plain NATS (citycast.hub.desired, citycast.site.desired).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from citycast.protocol.channel import CHANNEL_MAX, CHANNEL_MIN, is_channel
from citycast.protocol.subjects import Subjects

DESIRED_VERSION = 1
MAX_VOLUME = 2.0
FALLBACK_CHOICES = ("default", "silence")


class DesiredStateError(ValueError):
    pass


_OPTIONAL = ("start_ns", "end_ns")

# The KV revision of the value a message carries: a site keeps the newest it has seen.
REVISION_HEADER = "Citycast-Revision"


def desired_bucket(subjects: Subjects) -> str:
    """The hub's own KV bucket (sites never read it: see citycast.hub.desired)."""
    return f"{subjects.prefix}-desired"


@dataclass(frozen=True)
class DesiredState:
    channel: int
    volume: float = 1.0  # linear gain, 0..2
    muted: bool = False
    fallback: str = "default"  # "default": the site's own fallback audio; "silence": none
    # The address this channel carries, on the broadcast clock (frame timestamps, before D): the instant of its
    # first sample, told ahead so a site can switch its amplifier on in time (citycast.site.amp), and once it is
    # known, the instant its last sample ends. Absent (None) on a zone's idle channel.
    start_ns: int | None = None
    end_ns: int | None = None
    v: int = DESIRED_VERSION

    def __post_init__(self) -> None:
        if not is_channel(self.channel):
            raise DesiredStateError(f"channel must be an integer {CHANNEL_MIN}..{CHANNEL_MAX}, got {self.channel!r}")
        vol = self.volume
        if (
            not isinstance(vol, (int, float))
            or isinstance(vol, bool)
            or not math.isfinite(vol)
            or not 0 <= vol <= MAX_VOLUME
        ):
            raise DesiredStateError(f"volume must be a number 0..{MAX_VOLUME}, got {vol!r}")
        if not isinstance(self.muted, bool):
            raise DesiredStateError(f"muted must be true or false, got {self.muted!r}")
        if self.fallback not in FALLBACK_CHOICES:
            raise DesiredStateError(f"fallback must be one of {FALLBACK_CHOICES}, got {self.fallback!r}")
        for name in ("start_ns", "end_ns"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63):
                raise DesiredStateError(f"{name} must be an integer 0..2^63-1 (ns) or absent, got {value!r}")
        if self.end_ns is not None and (self.start_ns is None or self.end_ns < self.start_ns):
            raise DesiredStateError("end_ns goes with a start_ns, and not before it")

    @property
    def gain(self) -> float:
        return 0.0 if self.muted else float(self.volume)

    def to_json(self) -> bytes:
        # Absent rather than null: a state without an address reads exactly as before these fields existed.
        obj = {k: v for k, v in asdict(self).items() if v is not None or k not in _OPTIONAL}
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DesiredState:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise DesiredStateError(f"desired state is not JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("v") != DESIRED_VERSION:
            raise DesiredStateError("not a citycast desired state v1")
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise DesiredStateError(f"unknown desired-state fields: {sorted(unknown)}")
        if "channel" not in obj:
            raise DesiredStateError("desired state has no channel")
        return cls(**obj)
