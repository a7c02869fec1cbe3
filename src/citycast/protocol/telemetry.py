"""What a site tells the hub every second. JSON on the bus: small, readable in `nats sub`, versioned."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

TELEMETRY_VERSION = 1


@dataclass
class Telemetry:
    site: str
    ts_ns: int  # broadcast clock when sent (0 while not synced)
    state: str
    channel: int
    buffer_ms: float
    clock_offset_ms: float
    clock_drift_ppm: float
    clock_error_ms: float  # the estimator's own uncertainty
    sync_error_ms: float  # estimated distance from the true broadcast instant: clock error + tracking error
    tracking_error_ms: float
    resample_ppm: float
    underruns: int
    concealed: int
    late: int
    rejected: dict[str, int]
    level_rms_dbfs: float
    level_peak_dbfs: float
    link_rtt_ms: float
    sink_xruns: int
    resyncs: int
    frames: int
    cpu: dict[str, float] = field(default_factory=dict)  # seconds spent per stage since start
    volume: float = 1.0  # linear gain applied at the site (desired state)
    muted: bool = False
    # Why the loudspeaker is silent though the agent runs: the audio output failed and is being retried.
    sink_error: str | None = None
    # A clock step the site refuses (estimate minus its own monotonic idea of broadcast time, ms), while it lasts:
    # its time responder or the path to it answers a time far from what the site has been keeping.
    clock_step_refused_ms: float | None = None
    clock_steps_refused: int = 0  # refusal episodes since start
    # When the site's NATS credentials expire (unix seconds; null: none, or they never do). The site renews them at
    # half their life: one still close to expiry is failing to (the hub says why not, the site's log too).
    creds_expire_s: int | None = None
    v: int = TELEMETRY_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Telemetry:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("v") != TELEMETRY_VERSION:
            raise ValueError("not citycast telemetry v1")
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
