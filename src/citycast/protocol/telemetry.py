"""What a site tells the hub every second on `<prefix>.telemetry.<site>` (docs/protocol.md "Telemetry").

JSON on the bus: small, readable in `nats sub`, versioned. The keys of `rejected` are `Rejection` values, spelled
here once (never derived from an exception's class name), so renaming a class cannot change what the hub reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from citycast.protocol.frame import BadSignature, FrameError, MalformedFrame, UntrustedKey

TELEMETRY_VERSION = 1


class Rejection(StrEnum):
    """Why a site (or the hub's recorder) refused a frame: the keys of `Telemetry.rejected`."""

    MALFORMED = "malformedframe"  # not a well-formed frame (`MalformedFrame`)
    UNTRUSTED_KEY = "untrustedkey"  # signed by a key the site does not trust (`UntrustedKey`)
    BAD_SIGNATURE = "badsignature"  # the signature does not match (`BadSignature`)
    STALE = "stale"  # too old or too far in the future for the site's clock
    REPLAYED = "replayed"  # already played, or older than the replay window
    WRONG_CHANNEL = "wrong_channel"  # a frame for another channel
    OVERSIZED = "oversized"  # bigger than any frame, dropped before parsing
    UNSYNCED = "unsynced"  # the site has no broadcast clock yet


# Rejections that mean someone put foreign or tampered audio on the bus (not a late or early frame).
FORGED = frozenset(
    {Rejection.MALFORMED, Rejection.UNTRUSTED_KEY, Rejection.BAD_SIGNATURE, Rejection.REPLAYED, Rejection.OVERSIZED}
)

_FRAME_ERRORS: tuple[tuple[type[FrameError], Rejection], ...] = (
    (MalformedFrame, Rejection.MALFORMED),
    (UntrustedKey, Rejection.UNTRUSTED_KEY),
    (BadSignature, Rejection.BAD_SIGNATURE),
)


def frame_rejection(error: FrameError) -> Rejection:
    """The telemetry key for a frame the verifier refused. A `FrameError` of no listed kind counts as malformed."""
    for kind, reason in _FRAME_ERRORS:
        if isinstance(error, kind):
            return reason
    return Rejection.MALFORMED


MARGIN_QUANTILES = (("min", 0.0), ("p5", 0.05), ("p50", 0.5), ("max", 1.0))


def margin_summary(margins_ms: list[float]) -> dict[str, float] | None:
    """The `margin_ms` of a report: `n` frames, and the `min`, `p5`, `p50`, `max` of their margins (ms; the
    nearest-rank quantiles, so every figure is one a frame really had), or None for no frame."""
    if not margins_ms:
        return None
    ordered = sorted(margins_ms)
    last = len(ordered) - 1
    summary = {name: round(ordered[round(q * last)], 2) for name, q in MARGIN_QUANTILES}
    summary["n"] = float(len(ordered))
    return summary


@dataclass
class Telemetry:
    site: str
    ts_ns: int  # broadcast clock when sent (0 while not synced)
    state: str
    channel: int
    buffer_ms: float
    clock_offset_ms: float
    clock_drift_ppm: float
    clock_error_ms: float  # the estimate's own error, beyond the path's constant asymmetry (below)
    sync_error_ms: float  # how far this site may play from its time source's instant: clock error + tracking error
    tracking_error_ms: float
    resample_ppm: float
    underruns: int
    concealed: int
    late: int
    rejected: dict[str, int]  # by `Rejection` value; reasons with no refusal are left out
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
    # Half the minimum round trip to the site's time source: the most the path's asymmetry (invisible to any time
    # exchange) can shift its clock estimate. Constant for a path; ~60 ms straight across a long haul.
    clock_asymmetry_ms: float = 0.0
    # Dual-path delivery (a site on every city server of its zone): second copies of frames already played, heard
    # on another path (expected, never an alert), and each path (city server host:port) with whether it is up.
    duplicates: int = 0
    paths: dict[str, bool] = field(default_factory=dict)
    # The playout delay D the site plays with now (ms; the channel's signed delay schedule, else its own setting).
    delay_ms: float | None = None
    # How early the frames accepted over the last report came before their play time (`margin_summary`): null when
    # none came. What the hub's delay tuner reads: a minimum near 0 means frames are about to come too late.
    margin_ms: dict[str, float] | None = None
    # Amplifier power (`citycast site --amp-on/--amp-off`): whether the site has it switched on (null: the site
    # does not switch it), and its commands that failed, timed out or could not start since start.
    amp_on: bool | None = None
    amp_failures: int = 0
    v: int = TELEMETRY_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Telemetry:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("v") != TELEMETRY_VERSION:
            raise ValueError("not citycast telemetry v1")
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
