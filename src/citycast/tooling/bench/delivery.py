"""`citycast bench --delivery`: what a site's process spends to receive one audio message, per way of receiving.

A site hears 50 audio messages a second per path. nats-py hands each to a subscription's callback through a `Msg`,
a header parse, an asyncio queue and a task; `citycast.bus.direct` hands the payload to a plain function from the
parser instead. Both ways are measured here in the same run, on a real nats-server: a subscriber process (one
connection, as a site has) receives `count` messages of `size` bytes published every `interval_s`, and its own
CPU time (`time.process_time_ns`, user + system, so the event loop's wake-ups are in it) from the first message
to the last, divided by the messages, is the figure. The handler does what a site's does before verifying: it
looks at the payload's length. Rounds alternate between the two ways, and each way keeps its least CPU, so a
noisy box disturbs both alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg

from citycast.bus.server import EmbeddedNats, free_port
from citycast.runtime import run

MODES = ("nats-py", "direct")
SUBJECT = "bench.delivery"


@dataclass(frozen=True)
class Round:
    mode: str
    messages: int
    cpu_ns: int
    wall_s: float

    @property
    def us_per_message(self) -> float:
        return self.cpu_ns / 1e3 / self.messages


async def _subscribe_and_count(url: str, mode: str, count: int, timeout_s: float) -> dict[str, object]:
    from citycast.bus.connection import connect

    nc = await connect(url, name=f"bench-delivery-{mode}", forever=False)
    done = asyncio.Event()
    seen = [0, 0]  # messages, bytes
    marks: list[tuple[int, float]] = []

    def on_data(data: bytes) -> None:
        seen[0] += 1
        seen[1] += len(data)
        if seen[0] == 1 or seen[0] == count:
            marks.append((time.process_time_ns(), time.monotonic()))
            if seen[0] == count:
                done.set()

    if mode == "direct":
        await nc.subscribe_direct(SUBJECT, on_data)
    else:

        async def on_msg(msg: Msg) -> None:
            on_data(msg.data)

        await nc.subscribe(SUBJECT, cb=on_msg, pending_msgs_limit=4096)
    await nc.flush()
    print("ready", flush=True)
    try:
        async with asyncio.timeout(timeout_s):
            await done.wait()
    finally:
        await nc.close()
    (cpu0, wall0), (cpu1, wall1) = marks
    return {"mode": mode, "messages": seen[0] - 1, "cpu_ns": cpu1 - cpu0, "wall_s": wall1 - wall0}


def subscriber_main(argv: list[str]) -> None:
    """The subscriber process: `python -m citycast.tooling.bench.delivery URL MODE COUNT TIMEOUT`."""
    url, mode, count, timeout_s = argv[0], argv[1], int(argv[2]), float(argv[3])
    logging.basicConfig(level=logging.ERROR)  # its connection's closing is no news
    result = run(_subscribe_and_count(url, mode, count, timeout_s))  # on uvloop, as a site runs
    print(json.dumps(result), flush=True)


async def _publish(url: str, count: int, size: int, interval_s: float) -> None:
    nc = await nats.connect(url)
    payload = bytes(size)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        # paced on the loop's clock, not by sleeping a fixed time after each publish (which would drift)
        await asyncio.sleep(max(0.0, start + i * interval_s - loop.time()))
        await nc.publish(SUBJECT, payload)
    await nc.flush()
    await nc.close()


def run_round(url: str, mode: str, count: int, size: int, interval_s: float) -> Round:
    timeout_s = 30.0 + count * interval_s * 2
    child = subprocess.Popen(
        [sys.executable, "-m", __name__, url, mode, str(count), str(timeout_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} subscriber did not start")
        asyncio.run(_publish(url, count, size, interval_s))
        out, _ = child.communicate(timeout=timeout_s)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"the {mode} subscriber failed (exit {child.returncode})")
    r = json.loads(out.strip().splitlines()[-1])
    return Round(mode, int(r["messages"]), int(r["cpu_ns"]), float(r["wall_s"]))


def run_delivery(count: int, size: int, interval_s: float, rounds: int) -> list[Round]:
    """Alternate the two ways `rounds` times each against one real nats-server."""
    with tempfile.TemporaryDirectory(prefix="citycast-delivery-") as tmp:
        server = EmbeddedNats(port=free_port(), workdir=Path(tmp) / "nats", jetstream=False)
        server.start()
        try:
            return [run_round(server.url, mode, count, size, interval_s) for _ in range(rounds) for mode in MODES]
        finally:
            server.stop()


def best(results: list[Round]) -> dict[str, float]:
    """Each way's least CPU per message (µs) over its rounds."""
    return {mode: min(r.us_per_message for r in results if r.mode == mode) for mode in MODES}


def delivery_command(*, count: int, size: int, interval_ms: float, rounds: int, json_out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    with out.status(f"delivery: {rounds} rounds of each way, {count} messages every {interval_ms:g} ms"):
        results = run_delivery(count, size, interval_ms / 1e3, rounds)
    least = best(results)
    table = Table(title=f"one subscriber, {count} messages of {size} bytes every {interval_ms:g} ms, best of {rounds}")
    for name in ("way", "CPU µs / message", "rounds (µs / message)", "% of a core at 50 messages/s"):
        table.add_column(name, justify="right")
    for mode in MODES:
        each = ", ".join(f"{r.us_per_message:.1f}" for r in results if r.mode == mode)
        table.add_row(mode, f"{least[mode]:.1f}", each, f"{least[mode] * 50 / 1e4:.3f}")
    out.print(table)
    ratio = least["direct"] / least["nats-py"]
    out.print(f"direct ÷ nats-py: {ratio:.2f}")
    if json_out is not None:
        figures = {
            "count": count,
            "size": size,
            "interval_ms": interval_ms,
            "us_per_message": least,
            "direct_vs_nats_py": ratio,
            "rounds": [r.__dict__ for r in results],
        }
        json_out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    subscriber_main(sys.argv[1:])
