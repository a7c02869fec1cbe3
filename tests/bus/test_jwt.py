"""NATS JWT and nkey encoding, checked against the nkeys package and by tampering (the server check is in
test_authority.py: a server in operator mode accepts exactly what these functions sign)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nkeys
import pytest

from citycast.bus import jwt
from citycast.bus.jwt import JwtError, KeyKind, Permissions


def _parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    head, body, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(head))), json.loads(base64.urlsafe_b64decode(pad(body)))


def test_new_seeds_have_the_right_role_and_public_key() -> None:
    for kind, letter in ((KeyKind.OPERATOR, "O"), (KeyKind.ACCOUNT, "A"), (KeyKind.USER, "U")):
        seed = jwt.new_seed(kind)
        assert seed.startswith("S" + letter)
        pub = jwt.public_key(seed)
        assert pub.startswith(letter) and len(pub) == 56
        assert pub == nkeys.from_seed(seed.encode()).public_key.decode()
        assert jwt.seed_kind(seed) is kind
        assert jwt.is_public_key(pub, kind)
    assert jwt.new_seed(KeyKind.USER) != jwt.new_seed(KeyKind.USER)


def test_public_key_checks_role_and_checksum() -> None:
    user = jwt.public_key(jwt.new_seed(KeyKind.USER))
    assert not jwt.is_public_key(user, KeyKind.ACCOUNT)
    flipped = user[:-3] + ("A" if user[-3] != "A" else "B") + user[-2:]
    with pytest.raises(JwtError, match="checksum"):
        jwt.decode_public_key(flipped, KeyKind.USER)
    for bad in ("", "U" * 10, "u" * 56, user + "A"):
        assert not jwt.is_public_key(bad, KeyKind.USER)
    with pytest.raises(JwtError, match="seed"):
        jwt.public_key("SUnot-a-seed")


def test_user_jwt_round_trips_and_is_signed_by_the_account() -> None:
    account = jwt.new_seed(KeyKind.ACCOUNT)
    user = jwt.public_key(jwt.new_seed(KeyKind.USER))
    token = jwt.user_jwt(account, user, "site:a", Permissions(pub=("x.a",), sub=("y.>",)))
    header, claims = _parts(token)
    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert "=" not in token
    decoded = jwt.decode(token)
    assert decoded == claims
    assert decoded["iss"] == jwt.public_key(account) and decoded["sub"] == user and decoded["name"] == "site:a"
    nats = decoded["nats"]
    assert nats["type"] == "user" and nats["version"] == 2
    assert nats["pub"] == {"allow": ["x.a"]} and nats["sub"] == {"allow": ["y.>"]}
    assert isinstance(decoded["jti"], str) and len(decoded["jti"]) == 52


def test_empty_allow_list_denies_everything() -> None:
    token = jwt.user_jwt(
        jwt.new_seed(KeyKind.ACCOUNT), jwt.public_key(jwt.new_seed(KeyKind.USER)), "x", Permissions((), ())
    )
    nats = jwt.decode(token)["nats"]
    assert nats["pub"] == {"deny": [">"]} and nats["sub"] == {"deny": [">"]}


def test_tampered_or_foreign_jwt_is_rejected() -> None:
    account = jwt.new_seed(KeyKind.ACCOUNT)
    user = jwt.public_key(jwt.new_seed(KeyKind.USER))
    token = jwt.user_jwt(account, user, "site:a", Permissions(pub=("x.a",), sub=()))
    head, body, sig = token.split(".")
    claims = jwt.decode(token)
    claims["nats"]["pub"] = {"allow": [">"]}
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(JwtError, match="signature"):
        jwt.decode(f"{head}.{forged_body}.{sig}")
    # Signed by another account key but claiming to be ours.
    other = jwt.user_jwt(jwt.new_seed(KeyKind.ACCOUNT), user, "site:a")
    osig = other.split(".")[2]
    with pytest.raises(JwtError, match="signature"):
        jwt.decode(f"{head}.{body}.{osig}")
    assert jwt.decode(f"{head}.{forged_body}.{sig}", verify=False)["nats"]["pub"] == {"allow": [">"]}
    for bad in ("", "a.b", "a.b.c", f"{head}.{head}.{sig}"):
        with pytest.raises(JwtError):
            jwt.decode(bad)


def test_account_and_operator_claims() -> None:
    operator = jwt.new_seed(KeyKind.OPERATOR)
    account = jwt.public_key(jwt.new_seed(KeyKind.ACCOUNT))
    system = jwt.public_key(jwt.new_seed(KeyKind.ACCOUNT))
    op = jwt.decode(jwt.operator_jwt(operator, "city", system))
    assert op["iss"] == op["sub"] == jwt.public_key(operator)
    assert op["nats"] == {"type": "operator", "version": 2, "system_account": system}
    user = jwt.public_key(jwt.new_seed(KeyKind.USER))
    acc = jwt.decode(jwt.account_jwt(operator, account, "CITYCAST", jetstream=True, revocations={user: 1_700_000_000}))
    assert acc["iss"] == jwt.public_key(operator) and acc["sub"] == account
    assert acc["nats"]["revocations"] == {user: 1_700_000_000}
    assert acc["nats"]["limits"]["disk_storage"] == -1  # JetStream on
    plain = jwt.decode(jwt.account_jwt(operator, account, "SYS"))
    assert "disk_storage" not in plain["nats"]["limits"] and "revocations" not in plain["nats"]


def test_creds_file_round_trips_and_nats_py_reads_it(tmp_path: Path) -> None:
    seed = jwt.new_seed(KeyKind.USER)
    token = jwt.user_jwt(jwt.new_seed(KeyKind.ACCOUNT), jwt.public_key(seed), "u")
    path = tmp_path / "private" / "u.creds"
    jwt.write_private(path, jwt.creds_text(token, seed))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    creds = jwt.load_creds(path)
    assert creds == jwt.Credentials(token, seed)
    # The nonce signature verifies with the user's public key (what the server checks).
    sig = base64.urlsafe_b64decode(creds.sign_nonce("abc") + "==")
    assert nkeys.from_seed(seed.encode()).verify(b"abc", sig)
    # nats-py's own reader (used for user_credentials=path) finds the same JWT and seed.
    from nats.aio.client import Client

    client = Client()
    assert bytes(client._read_creds_user_jwt(str(path))).decode() == token
    assert bytes(client._read_creds_user_nkey(str(path))).decode() == seed


def test_broken_creds_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(JwtError, match="cannot read"):
        jwt.load_creds(tmp_path / "missing.creds")
    with pytest.raises(JwtError, match="no user JWT"):
        jwt.parse_creds("nothing here")
    account_seed = jwt.new_seed(KeyKind.ACCOUNT)
    with pytest.raises(JwtError, match="not a user seed"):
        jwt.parse_creds(jwt.creds_text("a.b.c", account_seed))


def test_user_jwt_carries_limits_and_expiry() -> None:
    account = jwt.new_seed(KeyKind.ACCOUNT)
    user = jwt.public_key(jwt.new_seed(KeyKind.USER))
    claims = jwt.decode(jwt.user_jwt(account, user, "u", limits=jwt.UserLimits(subs=3, payload=100), expires=2000,
                                     iat=1000))  # fmt: skip
    assert (claims["iat"], claims["exp"]) == (1000, 2000)
    assert (claims["nats"]["subs"], claims["nats"]["payload"], claims["nats"]["data"]) == (3, 100, -1)
    unlimited = jwt.decode(jwt.user_jwt(account, user, "u"))
    assert "exp" not in unlimited and unlimited["nats"]["payload"] == -1
