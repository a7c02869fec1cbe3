"""The telephone against sipp (Debian `sip-tester`), a real SIP peer: a whole call with a PIN typed as RFC 4733
events and G.711 audio from a pcap heard at a real site agent; wrong PINs; CANCEL; a hang-up from the console;
our 200 retransmitted until the ACK. Each scenario runs over UDP and over TCP."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from sqlalchemy import select
from tests.helpers import wait_until
from tests.hub.telephone.rig import Rig, sipp

from citycast.hub.db.models import AuditEntry

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")]


TRANSPORTS = ["u1", "t1"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pin_call_goes_on_air_and_ends_with_the_callers_bye(rig: Rig, transport: str) -> None:
    frames_before = rig.agent.frames
    run = asyncio.create_task(sipp(rig, "pin_call.xml", transport))
    # The right PIN puts an address on air to the PIN's zone only, from the caller's audio.
    await wait_until(
        lambda: rig.hub.addresses is not None and rig.hub.addresses.live(), "the call to go on air", timeout=20
    )
    assert rig.hub.addresses is not None
    live = rig.hub.addresses.live()[0]
    assert live["zone_ids"] == [rig.zone_id]
    assert live["source"] == "sip:speaker@127.0.0.1" or live["source"].startswith("sip:speaker@127.0.0.1")
    assert live["speaker"] == "Imam Saddar" and live["priority"] == "live"
    # The site follows the address's channel and plays its frames.
    await wait_until(
        lambda: any(v["channel"] == live["channel"] and v["state"] == "playing" for v in rig.hub.fleet.snapshot()),
        "the site to play the call",
        timeout=15,
    )
    code, out, _ = await run
    assert code == 0, out
    assert rig.agent.frames > frames_before + 100  # > 2 s of the call's frames reached the site
    # sipp's stock g711a.pcap carries another SSRC than the DTMF captures that latched the call, with no re-INVITE:
    # its 236 packets are dropped as a foreign stream, not mixed in (test_ua_bleed.py plays one stream and hears it).
    # Read once the media plane has taken the last of them (it runs on its own loop; sipp may exit first).
    await wait_until(
        lambda: rig.phone.rtp_dropped["foreign_ssrc"] >= 200,
        "the pcap's packets to be dropped as a foreign stream",
        timeout=5,
        detail=lambda: rig.phone.rtp_dropped,
    )
    # The caller's BYE ended the address.
    await wait_until(lambda: rig.addresses()[-1].ended_at is not None, "the address to end", timeout=10)
    row = rig.addresses()[-1]
    assert row.end_reason == "call ended" and row.title.startswith("Call from")
    # The address ends when its audio leaves the air; the call's own teardown (its dialog, its media tasks on the
    # media plane) finishes a moment later, on another loop: it must finish, not necessarily first.
    await wait_until(lambda: not rig.phone.calls, "the call to be gone", timeout=5, detail=lambda: rig.phone.calls)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_three_wrong_pins_get_our_bye_and_are_audited(rig: Rig, transport: str) -> None:
    code, out, _ = await sipp(rig, "wrong_pin.xml", transport)
    assert code == 0, out  # the scenario ends by receiving our BYE and answering it
    assert rig.addresses() == []
    with rig.hub.db.session() as s:
        failures = [e for e in s.scalars(select(AuditEntry)) if "pin" in e.action]
    assert len(failures) == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_before_the_answer_gets_487(rig: Rig, transport: str) -> None:
    rig.phone.ring_s = 5.0
    code, out, trace = await sipp(rig, "cancel.xml", transport)
    assert code == 0, out
    assert re.search(r"SIP/2\.0 487", trace), trace[-2000:]
    assert rig.addresses() == []
    await wait_until(lambda: not rig.phone.calls, "the cancelled call to be cleaned up", timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stopping_the_address_in_the_hub_hangs_up(rig: Rig, transport: str) -> None:
    run = asyncio.create_task(sipp(rig, "hub_hangup.xml", transport))
    await wait_until(
        lambda: rig.hub.addresses is not None and rig.hub.addresses.live(), "the call to go on air", timeout=20
    )
    assert rig.hub.addresses is not None
    await asyncio.sleep(1.0)
    await rig.hub.addresses.stop(rig.hub.addresses.live()[0]["id"], "stopped by the operator")
    code, out, trace = await run
    assert code == 0, out  # sipp received our BYE
    assert re.search(r"^BYE sip:", trace, re.M), trace[-2000:]
    assert rig.addresses()[-1].end_reason == "stopped by the operator"


async def test_our_200_is_retransmitted_until_the_ack(rig: Rig) -> None:
    code, out, trace = await sipp(rig, "no_ack.xml", "u1")
    assert code == 0, out
    received = [m for m in re.split(r"^-{20,}.*$", trace, flags=re.M) if "message received" in m]
    oks = [m for m in received if "SIP/2.0 200" in m and re.search(r"^CSeq:\s*1 INVITE", m, re.M | re.I)]
    assert len(oks) >= 3, trace[-3000:]  # 2.2 s without ACK: the first 200 and retransmissions at 0.5 s, 1.5 s
