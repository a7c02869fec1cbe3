from __future__ import annotations

import itertools

import pytest

from citycast.hub.auth import allows
from citycast.hub.db.models import Role

ORDER = [Role.viewer, Role.speaker, Role.operator, Role.admin]  # weakest first


def test_each_role_allows_exactly_itself_and_weaker() -> None:
    for (i, role), (j, needed) in itertools.product(enumerate(ORDER), repeat=2):
        assert allows(role, needed) is (i >= j), (role, needed)


def test_named_cases() -> None:
    assert allows(Role.admin, Role.viewer)
    assert allows(Role.operator, Role.speaker)
    assert not allows(Role.speaker, Role.operator)
    assert not allows(Role.viewer, Role.speaker)
    assert allows("operator", "operator")  # the stored strings work too


def test_unknown_role_is_an_error() -> None:
    with pytest.raises(ValueError):
        allows("root", Role.viewer)
