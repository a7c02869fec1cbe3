"""Reading docs/protocol.md: one section, its fenced examples, its table rows. Shared by the doc tests."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def section(title: str) -> str:
    """The text of `## title` up to the next `## ` heading."""
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/protocol.md has no section '## {title}'"
    return match.group(1)


def blocks(text: str, info: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is exactly `info` (e.g. "json command")."""
    return re.findall(rf"^```{re.escape(info)}\n(.*?)^```", text, re.M | re.S)


def first_cells(text: str) -> list[str]:
    """The first cell of every table row (header and separator rows left out), backticks kept."""
    cells = re.findall(r"^\| ([^|]+?) \|", text, re.M)
    return [c for c in cells if not set(c) <= {"-", ":"}]
