"""Commands on `<prefix>.cmd.<site>`: the document's examples, the bytes hubs send, and clear refusals."""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.protocol.protocol_doc import blocks, first_cells, section

from citycast.media.keys import generate_private_key
from citycast.media.sinks import TimedSink
from citycast.media.sources import Source
from citycast.protocol.commands import MAX_COMMAND_BYTES, CommandError, TalkbackCommand, decode_command
from citycast.protocol.subjects import Subjects
from citycast.site.agent import SiteAgent, SiteConfig
from citycast.site.talkback import TalkbackSender


def test_every_documented_example_decodes_and_is_what_the_hub_writes() -> None:
    examples = [e.strip().encode() for e in blocks(section("Commands"), "json command")]
    assert examples == [TalkbackCommand(on=True).encode(), TalkbackCommand(on=False).encode()]
    assert [decode_command(e) for e in examples] == [TalkbackCommand(on=True), TalkbackCommand(on=False)]


def test_the_bytes_on_the_wire_are_the_ones_hubs_always_sent() -> None:
    assert TalkbackCommand(on=True).encode() == b'{"talkback": "on"}'
    assert TalkbackCommand(on=False).encode() == b'{"talkback": "off"}'


def test_the_command_table_lists_every_command_the_site_understands() -> None:
    text = section("Commands")
    table = text.split("| command | meaning |", 1)[1].split("\n\n", 1)[0]
    assert first_cells(table) == [f"`{TalkbackCommand.KEY}`"]
    assert f"at most {MAX_COMMAND_BYTES} bytes" in text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "JSON object"),
        (b"\xff\xfe", "JSON object"),
        (b"talkback on", "JSON object"),
        (b'["talkback", "on"]', "JSON object, got list"),
        (b"{}", "exactly one key"),
        (b'{"talkback": "on", "site": "x"}', "exactly one key"),
        (b'{"reboot": "now"}', "unknown command 'reboot'"),
        (b'{"talkback": true}', 'talkback must be "on" or "off", got True'),
        (b'{"talkback": "ON"}', 'talkback must be "on" or "off"'),
        (json.dumps({"talkback": "on" + " " * MAX_COMMAND_BYTES}).encode(), f"at most {MAX_COMMAND_BYTES} bytes"),
    ],
)
def test_anything_else_is_refused_saying_why(data: bytes, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        decode_command(data)


async def test_the_site_counts_a_bad_command_and_keeps_obeying_good_ones() -> None:
    key = generate_private_key()
    cfg = SiteConfig(name="s1", nats_url="nats://127.0.0.1:1", trusted_keys=[key.public_key()])
    agent = SiteAgent(cfg, TimedSink())
    opened: list[int] = []

    def microphone() -> Source:  # a box without a line-in: opening it fails, as a missing sound card does
        opened.append(1)
        raise OSError("no input device")

    agent.talkback = TalkbackSender(None, Subjects(), "s1", key, microphone)  # type: ignore[arg-type]
    agent.on_command_bytes(b'{"talkback": "maybe"}')
    agent.on_command_bytes(b"\x00garbage")
    assert agent.bad_commands == 2 and not opened and not agent.talkback.active
    agent.on_command_bytes(TalkbackCommand(on=True).encode())
    async with asyncio.timeout(5):
        while agent.talkback.errors == 0:
            await asyncio.sleep(0.01)
    assert opened == [1] and agent.bad_commands == 2
    assert agent.talkback.expires > 0
    agent.on_command_bytes(TalkbackCommand(on=False).encode())
    assert agent.talkback.expires == 0.0
