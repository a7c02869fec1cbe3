"""Commands the hub sends a site on `<prefix>.cmd.<site>` (docs/protocol.md "Subjects" and "Commands").

A command is an order for now, not a state: what must survive a site being away is desired state
(`citycast.protocol.desired`). Today there is one, talkback: the hub asks a site to send its microphone up, and
renews the request while it listens (the site stops by itself when the renewals stop).

    {"talkback": "on"}     send the microphone up (again) for the site's lease
    {"talkback": "off"}    stop now

One JSON object of at most `MAX_COMMAND_BYTES`, exactly one known key. The hub writes them with `encode`; a site
reads them with `decode_command`, which raises `CommandError` saying what is wrong with anything else (the site
counts and logs it and goes on serving).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["MAX_COMMAND_BYTES", "Command", "CommandError", "TalkbackCommand", "decode_command"]

MAX_COMMAND_BYTES = 1024  # far above any command; a bigger message is refused before it is parsed


class CommandError(ValueError):
    """Bytes on a command subject that are not a command. ``str(e)`` says why."""


@dataclass(frozen=True, slots=True)
class TalkbackCommand:
    """Open (`on`) or close the site's microphone towards the hub."""

    on: bool

    KEY: ClassVar[str] = "talkback"

    def __post_init__(self) -> None:
        if not isinstance(self.on, bool):
            raise CommandError(f"talkback wants true or false, got {self.on!r}")

    def encode(self) -> bytes:
        # The spacing is json.dumps's default: the bytes hubs have always sent.
        return json.dumps({self.KEY: "on" if self.on else "off"}).encode()

    @classmethod
    def from_value(cls, value: Any) -> TalkbackCommand:
        if value == "on":
            return cls(True)
        if value == "off":
            return cls(False)
        raise CommandError(f'talkback must be "on" or "off", got {value!r:.40}')


# Every command a site understands; a new one is a class with KEY, encode and from_value, added here.
Command = TalkbackCommand
_BY_KEY: dict[str, type[TalkbackCommand]] = {TalkbackCommand.KEY: TalkbackCommand}


def decode_command(data: bytes) -> Command:
    """The command in `data`, or `CommandError` saying why it is none."""
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"a command is at most {MAX_COMMAND_BYTES} bytes, got {len(data)}")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandError(f"a command is a JSON object: {e}") from None
    if not isinstance(obj, dict):
        raise CommandError(f"a command is a JSON object, got {type(obj).__name__}")
    if len(obj) != 1:
        raise CommandError(f"a command has exactly one key, got {sorted(obj)!r:.80}")
    ((key, value),) = obj.items()
    kind = _BY_KEY.get(key)
    if kind is None:
        raise CommandError(f"unknown command {key!r:.40}; known: {sorted(_BY_KEY)}")
    return kind.from_value(value)
