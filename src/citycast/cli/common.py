"""What every command shares: the error console, the option types most roles take, and the parsing of
HOST:PORT and address-range options into clear errors instead of tracebacks."""

from __future__ import annotations

import ipaddress
import signal
from types import FrameType
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from citycast.protocol.channel import CHANNEL_MAX, CHANNEL_MIN

console = Console(stderr=True)

DEFAULT_NATS = "nats://127.0.0.1:4222"
NatsOpt = Annotated[str, typer.Option("--nats", help="URL of the NATS server (or cluster/leafnode) to use.")]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="Subject prefix shared by every part.")]
ChannelOpt = Annotated[
    int, typer.Option("--channel", min=CHANNEL_MIN, max=CHANNEL_MAX, help="Audio channel number (0-65535).")
]


def _terminated(signum: int, _frame: FrameType | None) -> None:
    # Once: a second signal during the clean-up must not cut it short (its own timeouts bound it).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def unwind_on_terminate() -> None:
    """SIGTERM and SIGHUP end a command the way Ctrl-C does, through its `with` blocks and `finally`s.

    Python's default for them ends the process where it stands: a benchmark killed by `timeout`, a closed terminal
    or a service manager left its nats-server, hub and site processes running, holding ports and CPU. Commands
    that run an event loop replace this with their own handlers (citycast.runtime)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def host_port(value: str, option: str, *, also: str = "") -> tuple[str, int]:
    """`value` as (HOST, PORT), or exit naming `option`; `also` adds to what the error says it wants."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        fail(f"{option} wants HOST:PORT{also}, got {value!r}")
    return host, int(port)


def check_networks(values: list[str] | None, option: str) -> list[str]:
    """`values` unchanged if each is an IP address or CIDR, or exit naming `option`."""
    for value in values or []:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            fail(f"{option} wants an IP address or CIDR, got {value!r}")
    return values or []
