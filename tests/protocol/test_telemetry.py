from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from citycast.protocol.telemetry import Telemetry

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
