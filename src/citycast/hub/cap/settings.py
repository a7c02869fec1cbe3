"""The CAP settings, kept as one JSON value in the hub's settings table: the feeds to poll and how often, how
many times an alert is said, whether a signature is required, the authorities' certificates, and the per-feed
API keys (only their SHA-256 is kept; a key is shown once, when made)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field

from sqlalchemy.orm import Session as DbSession

from citycast.hub.db.models import Setting

KEY = "cap"
MIN_POLL_S = 5.0
MAX_POLL_S = 60.0  # feeds are polled at least once a minute


@dataclass
class ApiKey:
    name: str
    sha256: str


@dataclass
class CapSettings:
    feeds: list[str] = field(default_factory=list)
    poll_s: float = 30.0
    repeats: int = 2
    require_signature: bool = False
    authority_certs: list[str] = field(default_factory=list)  # PEM
    api_keys: list[ApiKey] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CapSettings:
        raw = json.loads(text)
        keys = [ApiKey(**k) for k in raw.pop("api_keys", [])]
        return cls(**raw, api_keys=keys)

    def key_name(self, presented: str) -> str | None:
        """The name of the API key `presented` is, or None (constant-time per stored key)."""
        digest = hashlib.sha256(presented.encode()).hexdigest()
        found = None
        for k in self.api_keys:
            if hmac.compare_digest(k.sha256, digest):
                found = k.name
        return found

    def new_key(self, name: str) -> str:
        key = "cap_" + secrets.token_urlsafe(32)
        self.api_keys = [k for k in self.api_keys if k.name != name]
        self.api_keys.append(ApiKey(name, hashlib.sha256(key.encode()).hexdigest()))
        return key


def load(s: DbSession) -> CapSettings:
    row = s.get(Setting, KEY)
    return CapSettings.from_json(row.value) if row is not None else CapSettings()


def save(s: DbSession, settings: CapSettings) -> None:
    row = s.get(Setting, KEY)
    if row is None:
        s.add(Setting(key=KEY, value=settings.to_json()))
    else:
        row.value = settings.to_json()
