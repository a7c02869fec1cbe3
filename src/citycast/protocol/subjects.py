"""NATS subject names. One place, so that permissions and documentation cannot drift from the code.

Every subject that crosses the bus, with who publishes and who subscribes: docs/protocol.md "Subjects" (a test
holds that table and this class to the same set, both ways).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "citycast"


@dataclass(frozen=True)
class Subjects:
    prefix: str = DEFAULT_PREFIX

    def audio(self, channel: int) -> str:
        """Signed audio frames of one channel; only ingest may publish here."""
        return f"{self.prefix}.audio.{channel}"

    def time(self, zone: str | None = None) -> str:
        """Time service: the hub's responder, or a city responder beside a leafnode."""
        return f"{self.prefix}.time" if zone is None else f"{self.prefix}.time.{zone}"

    def time_site_all(self, zone: str | None = None) -> str:
        """Every site's own request subject at one responder (see `time_request`)."""
        return f"{self.time(zone)}.{TIME_SITE_TOKEN}.*"

    def telemetry(self, site: str) -> str:
        return f"{self.prefix}.telemetry.{site}"

    def telemetry_all(self) -> str:
        return f"{self.prefix}.telemetry.*"

    def commands(self, site: str) -> str:
        return f"{self.prefix}.cmd.{site}"

    def talkback(self, site: str) -> str:
        """A site's microphone, sent up only while the hub asks (frames signed with the site's own key)."""
        return f"{self.prefix}.talkback.{site}"

    def talkback_all(self) -> str:
        return f"{self.prefix}.talkback.*"

    def desired(self, site: str) -> str:
        """The hub publishes a site's desired state here whenever it changes (the site subscribes to its own)."""
        return f"{self.prefix}.desired.{site}"

    def desired_all(self) -> str:
        return f"{self.prefix}.desired.*"

    def desired_get(self, site: str) -> str:
        """A site asks the hub for its current desired state (at start, after a reconnection, now and then)."""
        return f"{self.prefix}.desired-get.{site}"

    def desired_get_all(self) -> str:
        return f"{self.prefix}.desired-get.*"

    def creds_renew(self, site: str) -> str:
        """A site asks the hub for a fresh user JWT before its own expires (answered only on its own inbox)."""
        return f"{self.prefix}.creds-renew.{site}"

    def creds_renew_all(self) -> str:
        return f"{self.prefix}.creds-renew.*"

    def receipts(self, site: str) -> str:
        """A site's signed proof of play (citycast.protocol.receipts), a request the hub answers on its inbox."""
        return f"{self.prefix}.receipts.{site}"

    def receipts_all(self) -> str:
        return f"{self.prefix}.receipts.*"


TIME_SITE_TOKEN = "site"


def time_request(time_subject: str, site: str) -> str:
    """Where `site` asks the responder on `time_subject` (the hub's or a city's) for the time. A site may publish
    only its own, so the responder knows who asks and answers only on that site's own inbox. The extra tokens
    keep it apart from a zone's subject (`<prefix>.time.<zone>` has one token fewer)."""
    return f"{time_subject}.{TIME_SITE_TOKEN}.{site}"
