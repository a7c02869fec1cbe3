"""The range of an audio channel number, the one field that crosses the bus in every message family.

A channel names the subject its frames travel on (`<prefix>.audio.<channel>`, docs/protocol.md "Subjects"), the
frame header's `channel` field (docs/protocol.md "Frame"), the desired state's `channel` (docs/protocol.md
"Desired state") and a site's telemetry. The frame header gives it four bytes, but every channel is 0..65535:
that is what the hub stores (an SQL INTEGER on PostgreSQL stops at 2**31 - 1), what its API and the desired
state have always accepted, and what the CLI offers. A frame whose channel lies above is malformed, so nothing
on the bus names a channel that the hub could not configure. Channel 0 is where nothing is ever sent (sites
outside every zone listen there; a site's microphone frames carry it).
"""

from __future__ import annotations

__all__ = ["CHANNEL_MAX", "CHANNEL_MIN", "is_channel"]

CHANNEL_MIN = 0
CHANNEL_MAX = 65_535


def is_channel(value: object) -> bool:
    """True for an `int` (not a `bool`) within CHANNEL_MIN..CHANNEL_MAX."""
    return isinstance(value, int) and not isinstance(value, bool) and CHANNEL_MIN <= value <= CHANNEL_MAX
