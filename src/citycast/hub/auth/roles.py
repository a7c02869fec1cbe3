"""What each role may do: admin ≥ operator ≥ speaker ≥ viewer."""

from __future__ import annotations

from citycast.hub.db.models import Role

RANK: dict[Role, int] = {Role.viewer: 0, Role.speaker: 1, Role.operator: 2, Role.admin: 3}


def allows(role: Role | str, needed: Role | str) -> bool:
    """True if a user with `role` may do what needs `needed`. Raises ValueError for an unknown role."""
    return RANK[Role(role)] >= RANK[Role(needed)]
