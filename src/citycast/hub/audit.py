"""The audit log: who changed what, when, from where. Every write through the API leaves a row."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session as DbSession

from citycast.hub.db.models import AuditEntry, User

# Who acted when no user did: the hub itself (a schedule firing) or a caller with a token rather than a login
# (a site enrolling).
SYSTEM = "system"
_MAX_ACTION, _MAX_TARGET, _MAX_REMOTE, _MAX_USERNAME = 64, 200, 64, 64


def _json_safe(detail: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON-serialisable copy: an audit row must never fail to be written because a value (a datetime, a
    Path, an enum) is not JSON. Such values are kept as their text."""
    if not detail:
        return {}
    safe = json.loads(json.dumps(detail, default=str))
    if not isinstance(safe, dict):  # pragma: no cover - json of a dict is a dict
        raise TypeError("audit detail must be a dict")
    return safe


def audit(
    s: DbSession,
    user: User | None,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    remote: str = "",
) -> AuditEntry:
    """Record one action (e.g. "site.create", target "site:saddar-1") in the caller's session: it commits or
    rolls back with the change it describes."""
    if not action:
        raise ValueError("an audit entry needs an action")
    entry = AuditEntry(
        user_id=user.id if user is not None else None,
        username=(user.username if user is not None else SYSTEM)[:_MAX_USERNAME],
        action=action[:_MAX_ACTION],
        target=target[:_MAX_TARGET],
        detail=_json_safe(detail),
        remote=remote[:_MAX_REMOTE],
    )
    s.add(entry)
    s.flush()
    return entry
