"""A listener in a process of its own: how late each message of a channel reaches it, and which packets never
did. Being another process, nothing a test does to the hub's (or its own) loop can delay the measurement."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

LISTENER = """
import asyncio, json, sys, time
from pathlib import Path
from citycast.bus.connection import connect
from citycast.protocol.frame import parse_frame

async def main(url, creds, channel, seconds):
    nc = await connect(url, name="test-listener", creds=Path(creds), forever=False)
    heard = []

    async def on_msg(msg):
        now = time.time_ns()
        frame, _ = parse_frame(msg.data)
        heard.append((frame.stream, frame.seq, len(frame.packets), (now - frame.end_ns) / 1e6))

    await nc.subscribe(f"citycast.audio.{channel}", cb=on_msg)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await nc.close()
    print(json.dumps(heard), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


class Heard:
    """What the listener heard on a channel: each message's lateness (ms after the end of its audio) and the
    packets missing between the first and the last it heard."""

    def __init__(self, rows: list[list[Any]]) -> None:
        assert rows, "the listener heard nothing"
        assert len({r[0] for r in rows}) == 1, "more than one stream on the channel"
        self.late = [float(r[3]) for r in rows]
        first, last = min(r[1] for r in rows), max(r[1] + r[2] for r in rows)
        self.missing = (last - first) - sum(int(r[2]) for r in rows)

    def __str__(self) -> str:
        late = self.late
        return (
            f"{len(late)} messages, {self.missing} packets missing, lateness p50 {np.median(late):.1f} "
            f"p99 {np.percentile(late, 99):.1f} max {max(late):.1f} ms"
        )


async def listen(nats_url: str, creds: Path, channel: int, seconds: float, ready: asyncio.Event | None = None) -> Heard:
    """Listen to `channel` for `seconds` from a process of its own; `ready` is set once it is subscribed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LISTENER, nats_url, str(creds), str(channel), str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(seconds + 30):
        assert (await proc.stdout.readline()).strip() == b"ready"
        if ready is not None:
            ready.set()
        out, _ = await proc.communicate()
    return Heard(json.loads(out))
