"""PIN limits behind a SIP trunk, against sipp: every PSTN caller arrives from the trunk's address, so behind a
trusted trunk the guard counts the caller's identity (P-Asserted-Identity, else From) and one prankster's wrong
PINs do not lock out the other callers; from an untrusted peer a P-Asserted-Identity is ignored and the source
stays the signalling IP. sipp plays each caller from 127.0.0.1 with its own From user (the scenarios of
test_ua_sipp, with the From user and an optional P-Asserted-Identity filled in)."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from tests.helpers import wait_until
from tests.hub.telephone.rig import SCENARIOS, Rig, free_rtp_range, run_sipp

from citycast.hub.db.models import AuditEntry
from citycast.hub.telephone.pins import PinGuard
from citycast.sip.identity import parse_trunks

PAI_LINE = "      P-Asserted-Identity: <sip:[pai]@trunk.example;user=phone>\n"


def scenario_as(tmp: Path, name: str, *, pai: bool = False) -> str:
    """`name` from the shared scenarios with the caller's user as the `caller` key (and, with `pai`, an INVITE
    carrying P-Asserted-Identity with the `pai` key)."""
    text = (SCENARIOS / name).read_text().replace("sip:speaker@", "sip:[caller]@")
    if pai:
        head, sep, rest = text.partition("      Call-ID: [call_id]\n")
        text = head + PAI_LINE + sep + rest  # the first Call-ID line is the INVITE's
    out = tmp / f"{name.removesuffix('.xml')}-as{'-pai' if pai else ''}.xml"
    out.write_text(text)
    return str(out)


async def call_as(rig: Rig, name: str, caller: str, *, pai: str | None = None) -> tuple[int, str, str]:
    keys: tuple[str, ...] = ("-key", "caller", caller, "-key", "media_host", "127.0.0.1", "-key", "rtp_port", "9")
    if pai is not None:
        keys += ("-key", "pai", pai)
    return await run_sipp(rig.tmp, rig.phone.port, scenario_as(rig.tmp, name, pai=pai is not None), "u1",
                          media_port=free_rtp_range()[0], timeout_s=45, grace_s=15, keys=keys)  # fmt: skip


def failures(rig: Rig) -> list[AuditEntry]:
    with rig.hub.db.session() as s:
        rows = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "pin.failure").order_by(AuditEntry.id)))
        s.expunge_all()
        return rows


async def test_behind_a_trusted_trunk_one_callers_wrong_pins_do_not_block_another(rig: Rig) -> None:
    rig.phone.trusted_trunks = parse_trunks(["127.0.0.0/8"])  # as `serve --sip-trusted-trunk 127.0.0.0/8`
    guard = rig.phone.guard = PinGuard(failures=3)  # one call's three wrong PINs block its source
    code, out, _ = await call_as(rig, "wrong_pin.xml", "mallory")
    assert code == 0, out  # three wrong PINs, then our BYE
    assert not guard.allowed("sip:mallory@127.0.0.1", rig.phone.transport.clock())
    assert guard.allowed("127.0.0.1", rig.phone.transport.clock())  # the trunk itself is not blocked
    assert {f.target for f in failures(rig)} == {"source:sip:mallory@127.0.0.1"}

    # mallory calling again is refused before any answer ...
    code, out, trace = await call_as(rig, "blocked.xml", "mallory")
    assert code == 0, out
    assert re.search(r"^SIP/2\.0 403", trace, re.M)
    # ... while alice, through the same trunk address, types the right PIN and goes on air.
    code, out, trace = await call_as(rig, "pin_call.xml", "alice")
    assert code == 0, out
    assert not re.search(r"^SIP/2\.0 403", trace, re.M)
    rows = rig.addresses()
    assert len(rows) == 1 and rows[0].zone_ids == [rig.zone_id]
    await wait_until(lambda: not rig.phone.calls, "the calls to be cleaned up", timeout=10)


async def test_p_asserted_identity_counts_only_from_a_trusted_trunk(rig: Rig) -> None:
    # An untrusted peer names someone else in P-Asserted-Identity: ignored, its own address is the source.
    code, out, _ = await call_as(rig, "wrong_pin.xml", "mallory", pai="+923001234567")
    assert code == 0, out
    assert {(f.target, f.remote) for f in failures(rig)} == {("source:127.0.0.1", "127.0.0.1")}

    # From a trusted trunk, the asserted identity is the source (over the From user).
    rig.phone.trusted_trunks = parse_trunks(["127.0.0.1"])
    rig.phone.guard = PinGuard()  # a fresh count: the first call's failures do not matter here
    code, out, _ = await call_as(rig, "wrong_pin.xml", "mallory", pai="+923001234567")
    assert code == 0, out
    later = failures(rig)[3:]
    assert [f.target for f in later] == ["source:sip:+923001234567@trunk.example"] * 3
