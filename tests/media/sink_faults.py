"""A sound server frozen under a playing sink, for the sinks' fault tests (PulseSink, AlsaSink): the renderer they
play, the private PulseAudio's process, and the freeze itself."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import wait_until

from citycast.media.render import Samples
from citycast.media.sinks import Sink, SinkError


class Silence:
    def render(self, n: int, dac_local_ns: int) -> Samples:
        return np.zeros(n, np.float32)


def pulse_server_pid(env: dict[str, str]) -> int:
    """The process of the private PulseAudio whose client environment is `env` (tests/helpers.py)."""
    return int((Path(env["PULSE_RUNTIME_PATH"]) / "pid").read_text().split()[0])


def seconds_until_a_frozen_server_fails(
    sink: Sink, pid: int, ready: Callable[[], bool], what: str, within_s: float
) -> float:
    """Plays silence into `sink` until `ready()` (`what`, for the failure message), then freezes the server `pid`
    for real (SIGSTOP, let go afterwards): the sink must end with `SinkError` "took no audio" within `within_s`.
    Returns how long after the freeze it did."""

    async def main() -> float:
        playing = asyncio.create_task(sink.run(Silence()))
        await wait_until(ready, what, timeout=10, every=0.05)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(SinkError, match="took no audio"):
                await asyncio.wait_for(asyncio.shield(playing), within_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.monotonic() - t0

    return asyncio.run(main())
