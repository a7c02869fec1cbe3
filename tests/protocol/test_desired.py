"""Desired state: the document's example and field table against `DesiredState`, and what it refuses."""

from __future__ import annotations

import json
import re

import pytest
from tests.protocol.protocol_doc import blocks, first_cells, section

from citycast.protocol.channel import CHANNEL_MAX
from citycast.protocol.desired import (
    FALLBACK_CHOICES,
    MAX_VOLUME,
    REVISION_HEADER,
    DesiredState,
    DesiredStateError,
)


def test_the_documented_example_is_what_the_code_writes_and_reads() -> None:
    (example,) = blocks(section("Desired state"), "json desired-state")
    state = DesiredState.from_json(example.strip().encode())
    assert state == DesiredState(channel=3, volume=0.8)
    assert state.to_json() == example.strip().encode()  # "as the hub writes it", byte for byte


def test_the_field_table_is_the_dataclass_and_states_its_ranges() -> None:
    text = section("Desired state")
    table = text.split("| field | type | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {re.fullmatch(r"`(\w+)`", c).group(1): c for c in first_cells(table)}  # type: ignore[union-attr]
    assert set(rows) == set(DesiredState.__dataclass_fields__)
    assert f"| `channel` | integer 0..{CHANNEL_MAX} |" in table
    assert f"| `volume` | number 0..{MAX_VOLUME:g} |" in table
    assert "| `fallback` | " + " or ".join(f'`"{c}"`' for c in FALLBACK_CHOICES) + " |" in table
    assert f"`{REVISION_HEADER}`" in text


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"v": 1}, "no channel"),
        ({"v": 2, "channel": 1}, "v1"),
        ({"v": 1, "channel": 1, "color": "red"}, "unknown"),
        ({"v": 1, "channel": CHANNEL_MAX + 1}, "channel"),
        ({"v": 1, "channel": -1}, "channel"),
        ({"v": 1, "channel": True}, "channel"),
        ({"v": 1, "channel": 1, "volume": MAX_VOLUME + 0.01}, "volume"),
        ({"v": 1, "channel": 1, "muted": "yes"}, "muted"),
        ({"v": 1, "channel": 1, "fallback": "music"}, "fallback"),
        ({"v": 1, "channel": 1, "start_ns": -1}, "start_ns"),
        ({"v": 1, "channel": 1, "start_ns": 1.5}, "start_ns"),
        ({"v": 1, "channel": 1, "start_ns": True}, "start_ns"),
        ({"v": 1, "channel": 1, "start_ns": 2**63}, "start_ns"),
        ({"v": 1, "channel": 1, "end_ns": 5}, "end_ns goes with a start_ns"),
        ({"v": 1, "channel": 1, "start_ns": 10, "end_ns": 9}, "not before it"),
    ],
)
def test_a_state_that_breaks_a_documented_rule_is_refused_whole(obj: dict[str, object], reason: str) -> None:
    with pytest.raises(DesiredStateError, match=reason):
        DesiredState.from_json(json.dumps(obj).encode())


def test_an_address_s_start_and_end_travel_and_are_left_out_when_absent() -> None:
    state = DesiredState(channel=1000, start_ns=1_796_000_000_100_000_000, end_ns=1_796_000_004_100_000_000)
    assert DesiredState.from_json(state.to_json()) == state
    assert b"start_ns" not in DesiredState(channel=3).to_json()  # an idle channel reads as before the fields
