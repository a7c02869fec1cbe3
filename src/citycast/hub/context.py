"""What the hub's API reaches: one plain object the runtime fills and hands to `create_app`.

The API never builds these components itself, so a test can give it a real database, fleet and event hub and
leave out what it does not exercise (a hub without a NATS authority refuses enrolment with a clear error).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from citycast.hub.scheduler import AddressStarter
from citycast.protocol.subjects import Subjects

if TYPE_CHECKING:
    from citycast.bus.authority import NatsAuthority
    from citycast.hub.cap.service import CapService
    from citycast.hub.db.engine import Database
    from citycast.hub.events import EventHub
    from citycast.hub.fleet import FleetState
    from citycast.hub.metrics import TelemetryCounters
    from citycast.hub.receipts import ReceiptService
    from citycast.hub.talkback import TalkbackControl


class AddressControl(AddressStarter, Protocol):
    """What is on air, as the API drives it (the runtime's `AddressManager`). `start` (from the scheduler's
    `AddressStarter`) raises ValueError with a message for the user for a bad source or unknown zones."""

    async def stop(self, address_id: int, reason: str) -> None: ...

    def live(self) -> list[dict[str, Any]]:
        """The addresses running now, as the API shows them."""
        ...

    def sources(self) -> list[dict[str, str]]:
        """`[{id, label}]` of what can be put on air."""
        ...

    async def refresh_sites(self, names: list[str] | None = None) -> None:
        """Recompute and publish the desired state of these sites (all when None) after a DB change."""
        ...

    def sites_reached(self) -> int: ...


@dataclass
class HubContext:
    db: Database
    subjects: Subjects
    fleet: FleetState
    events: EventHub
    addresses: AddressControl
    authority: NatsAuthority | None = None
    nats_url: str = "nats://127.0.0.1:4222"  # the hub's own connection (revocations are pushed there)
    public_nats_urls: list[str] = field(default_factory=list)  # what an enrolling site is told to dial
    hub_ca_pem: str | None = None  # the hub's TLS CA, handed to an enrolling site (None: plaintext NATS)
    enrol_url: str | None = None  # the hub's HTTPS base URL, for the enrolment command shown to an admin
    insecure: bool = False  # the operator allowed plaintext (--insecure): the console and /metrics say so
    trusted_keys_hex: list[str] = field(default_factory=list)  # ingest signing keys the sites must trust
    delay_ms: float = 80.0
    recordings_dir: Path = Path("recordings")
    media_dir: Path = Path("media")
    talkback: TalkbackControl | None = None
    session_ttl: dt.timedelta = dt.timedelta(hours=12)
    telemetry_counters: TelemetryCounters | None = None  # the monitor's, for /metrics
    sip_counters: Callable[[], dict[str, int]] | None = None  # the telephone's, for /metrics (when it runs)
    telephone_status: Callable[[], dict[str, Any]] | None = None  # Telephone.status, when it runs
    # Web exposure (citycast.hub.api.headers): origins besides the hub's own that may open the console's
    # WebSocket (e.g. "https://console.example" behind a proxy that rewrites Host); who may read /metrics and
    # /openapi.json without a login (by default no one: a user's session, or the scrape token for /metrics).
    allowed_origins: list[str] = field(default_factory=list)
    public_metrics: bool = False
    metrics_token: str | None = None
    public_api_docs: bool = False
    cap: CapService | None = None  # CAP alerts from the authorities (hub/cap/), when they run
    cap_feeds_status: Callable[[], list[dict[str, Any]]] | None = None  # the CAP feed poller's, when it runs
    receipts: ReceiptService | None = None  # proof of play: what it took and refused (citycast.hub.receipts)
