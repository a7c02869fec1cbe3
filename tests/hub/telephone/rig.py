"""What the telephone's tests against real SIP peers share: the `rig` fixture's hub, site agent and telephone
(the fixture itself is in this folder's conftest.py), the PIN it knows, and a sipp call against it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from citycast.bus.server import free_port
from citycast.hub.db.models import Address
from citycast.hub.runtime import Hub
from citycast.hub.telephone.service import Telephone
from citycast.site.agent import SiteAgent

SCENARIOS = Path(__file__).parent / "scenarios"
PIN = "2468"


@dataclass
class Rig:
    hub: Hub
    phone: Telephone
    zone_id: int
    other_zone_id: int
    agent: SiteAgent
    tmp: Path

    def addresses(self) -> list[Address]:
        with self.hub.db.session() as s:
            rows = list(s.scalars(select(Address).order_by(Address.id)))
            s.expunge_all()
            return rows


def free_rtp_range() -> tuple[int, int]:
    base = free_port()
    base = max(10_000, min(base, 60_000)) & ~1
    return base, base + 40


async def run_sipp(
    tmp: Path,
    sip_port: int,
    scenario: str,
    transport: str,
    *,
    media_port: int,
    timeout_s: int,
    grace_s: int,
    keys: tuple[str, ...] = (),
) -> tuple[int, str, str]:
    """One sipp call of `scenario` against the telephone on `sip_port`, its RTP from `media_port`; (exit code,
    output with sipp's error file, the message trace). sipp gets `timeout_s`, the wait for it `grace_s` more."""
    trace = tmp / f"{scenario}-{transport}-messages.log"
    err = tmp / f"{scenario}.err"
    for _attempt in range(3):
        # A port free when chosen can be taken before sipp binds it (the hub's RTP range, other tests): sipp then
        # exits at once, having sent nothing, and is started again on another port.
        err.unlink(missing_ok=True)
        proc = await asyncio.create_subprocess_exec(
            "sipp", f"127.0.0.1:{sip_port}", "-sf", str(SCENARIOS / scenario), "-s", "citycast", *keys,
            "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(media_port), "-t", transport,
            "-m", "1", "-l", "1", "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin",
            "-trace_msg", "-message_file", str(trace), "-trace_err", "-error_file", str(err),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s + grace_s)
        text = out.decode(errors="replace")
        if err.exists():
            text += err.read_text(errors="replace")
        if "Unable to bind main socket" not in text:
            break
    return proc.returncode or 0, text, trace.read_text(errors="replace") if trace.exists() else ""


async def sipp(rig: Rig, scenario: str, transport: str, *, timeout_s: int = 45) -> tuple[int, str, str]:
    """Run one sipp call of `scenario` against the telephone; (exit code, output, the message trace)."""
    return await run_sipp(rig.tmp, rig.phone.port, scenario, transport, media_port=free_rtp_range()[0],
                          timeout_s=timeout_s, grace_s=15)  # fmt: skip
