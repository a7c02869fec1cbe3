"""Password hashing with Argon2id (argon2-cffi's defaults, RFC 9106's recommended low-memory profile).

Each call costs ~50 ms of CPU: from an event loop, call them through `hashing.default_pool()` (or use
`hash_password_off_loop`), never directly."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# Verified against when the user does not exist, so a login for an unknown name costs as long as a real one and
# does not tell which usernames exist.
_DUMMY_HASH = _hasher.hash("citycast: no such user")


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("a password must not be empty")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True if `password` matches; False for a wrong password or a hash that is not a valid Argon2 hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_dummy(password: str) -> None:
    """Spend the time of one verification, for a username that does not exist."""
    verify_password(_DUMMY_HASH, password)


def needs_rehash(password_hash: str) -> bool:
    """True if the hash was made with weaker parameters than today's (or is not an Argon2 hash at all)."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True


async def hash_password_off_loop(password: str) -> str:
    """`hash_password` in the process's bounded hash pool (raises `HashPoolBusy` when it is full)."""
    from citycast.hub.auth.hashing import default_pool

    if not password:
        raise ValueError("a password must not be empty")
    return await default_pool().run(hash_password, password)
