"""The Icecast tap's NATS user: a listener that hears every channel's audio and may publish nothing.

Least privilege inside the hub's own process: a bug in muxing or in the Icecast connection (which talks to a
server the hub does not control) cannot put a frame, a command or a desired state on the bus through this
connection. Minted under the hub's account key (`citycast.bus.authority`), written beside the other creds.
"""

from __future__ import annotations

from pathlib import Path

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority
from citycast.bus.jwt import KeyKind, Permissions
from citycast.bus.tls import creds_with_ca
from citycast.protocol.subjects import Subjects

__all__ = ["LISTENER_INBOX_PREFIX", "listener_creds", "listener_permissions"]

LISTENER_INBOX_PREFIX = "_INBOX_listener"


def listener_permissions(subjects: Subjects) -> Permissions:
    return Permissions(pub=(), sub=(f"{subjects.prefix}.audio.*", f"{LISTENER_INBOX_PREFIX}.>"))


def listener_creds(authority: NatsAuthority, subjects: Subjects) -> Path:
    """The listener's creds file (its key kept across restarts; the JWT re-minted so it follows the code)."""
    seed_path = authority.dir / "listener.nk"
    if seed_path.exists():
        seed = seed_path.read_text().strip()
        if jwt.seed_kind(seed) is not KeyKind.USER:
            raise ValueError(f"{seed_path} does not hold a user nkey seed")
    else:
        seed = jwt.new_seed(KeyKind.USER)
        jwt.write_private(seed_path, seed + "\n")
    token = jwt.user_jwt(authority.account_seed, jwt.public_key(seed), "listener", listener_permissions(subjects))
    path = authority.dir / "listener.creds"
    jwt.write_private(path, creds_with_ca(jwt.creds_text(token, seed), authority.hub_ca))
    return path
