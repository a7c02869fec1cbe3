from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from citycast.hub.auth import hash_password, needs_rehash, verify_password


def test_hash_is_argon2id_and_verifies() -> None:
    h = hash_password("correct horse battery staple")
    assert h.startswith("$argon2id$")
    assert "correct horse" not in h
    assert verify_password(h, "correct horse battery staple")
    assert not verify_password(h, "correct horse battery stapl")
    assert not verify_password(h, "")
    assert not needs_rehash(h)


def test_same_password_gets_a_different_salt() -> None:
    a, b = hash_password("pw-1234"), hash_password("pw-1234")
    assert a != b
    assert verify_password(a, "pw-1234") and verify_password(b, "pw-1234")


def test_unicode_password() -> None:
    h = hash_password("کراچی-۲۰۲۴")
    assert verify_password(h, "کراچی-۲۰۲۴")
    assert not verify_password(h, "کراچی-2024")


def test_garbage_hash_never_verifies() -> None:
    for bad in ["", "plaintext", "$argon2id$v=19$m=1$broken", "$2b$12$abcdefghijklmnopqrstuv"]:
        assert not verify_password(bad, "plaintext")
        assert needs_rehash(bad)


def test_weaker_parameters_need_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("pw-1234")
    assert verify_password(weak, "pw-1234")
    assert needs_rehash(weak)


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")
