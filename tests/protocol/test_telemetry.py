from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citycast.media.sinks import TimedSink
from citycast.protocol import frame as frame_module
from citycast.protocol.frame import (
    MAX_FRAME_SIZE,
    BadSignature,
    FrameError,
    FrameSigner,
    MalformedFrame,
    UntrustedKey,
)
from citycast.protocol.telemetry import FORGED, Rejection, Telemetry, frame_rejection
from citycast.site.agent import SiteAgent, SiteConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_documented_example_is_what_the_code_reads() -> None:
    text = DOC.read_text()
    section = text[text.index("## Telemetry") :]
    example = re.search(r"```json\n(.*?)```", section, re.S)
    assert example is not None
    t = Telemetry.from_json(example.group(1).encode())
    assert t.site == "site-0003" and t.state == "playing"
    documented = set(re.findall(r"^\| `([a-z_]+)`", section, re.M))
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        documented.update(re.findall(r"`([a-z_]+)`", row))
    assert set(Telemetry.__dataclass_fields__) <= documented


def test_round_trip_and_rejects_foreign_json() -> None:
    doc = DOC.read_text()
    example = re.search(r"```json\n(.*?)```", doc[doc.index("## Telemetry") :], re.S)
    assert example is not None
    t = Telemetry.from_json(example.group(1).encode())
    assert Telemetry.from_json(t.to_json()) == t
    with pytest.raises(ValueError):
        Telemetry.from_json(json.dumps({"v": 99}).encode())
    with pytest.raises(ValueError):
        Telemetry.from_json(b"[1, 2]")


def test_the_documented_rejection_reasons_are_the_code_s() -> None:
    section = DOC.read_text().split("## Telemetry", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| `rejected` |"))
    documented = set(re.findall(r"`([a-z_]+)`", row.split("):", 1)[1]))
    assert documented == {r.value for r in Rejection}
    assert {r.value for r in FORGED} <= documented
    forged_line = section.split("as forged audio", 1)[0].rsplit("The hub counts", 1)[1]
    assert set(re.findall(r"`([a-z_]+)`", forged_line)) == {r.value for r in FORGED}


def test_a_refused_frame_is_counted_under_its_spelled_key_whatever_its_class_is_named() -> None:
    assert frame_rejection(MalformedFrame("x")) == "malformedframe"
    assert frame_rejection(UntrustedKey("x")) == "untrustedkey"
    assert frame_rejection(BadSignature("x")) == "badsignature"

    class SignatureMismatch(BadSignature):  # a rename or a refinement must not change the wire key
        pass

    assert frame_rejection(SignatureMismatch("x")) == "badsignature"
    kinds = [k for k in vars(frame_module).values() if isinstance(k, type) and issubclass(k, FrameError)]
    assert {frame_rejection(k("x")) for k in kinds if k is not FrameError} == {
        Rejection.MALFORMED,
        Rejection.UNTRUSTED_KEY,
        Rejection.BAD_SIGNATURE,
    }


def test_the_site_reports_its_refusals_under_the_spelled_keys() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    cfg = SiteConfig(name="s1", nats_url="nats://127.0.0.1:1", trusted_keys=[key.public_key()], clock_mode="system")
    agent = SiteAgent(cfg, TimedSink())
    good = FrameSigner(key).sign(channel=1, stream=1, seq=1, ts_ns=time.time_ns(), packets=[b"\xf8\xff\xfe"])
    agent.on_frame_bytes(FrameSigner(stranger).sign(channel=1, stream=1, seq=1, ts_ns=1, packets=[b"\xf8\xff\xfe"]))
    agent.on_frame_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    agent.on_frame_bytes(good[:50])
    agent.on_frame_bytes(b"\x00" * (MAX_FRAME_SIZE + 1))
    agent.on_frame_bytes(good)
    agent.on_frame_bytes(good)
    sent = json.loads(agent.telemetry().to_json())["rejected"]
    assert sent == {"untrustedkey": 1, "badsignature": 1, "malformedframe": 1, "oversized": 1, "replayed": 1}
    assert all(type(k) is str for k in Telemetry.from_json(agent.telemetry().to_json()).rejected)
