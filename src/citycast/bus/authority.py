"""The hub's NATS trust chain: one operator, the system account, the CITYCAST account and its users.

nats-server runs in operator mode: it trusts the operator's JWT and learns the accounts from a `full` resolver
(preloaded from here), so a new site user is only a JWT signed by the account key, with no server restart.
Revoking a site adds its public key to the account JWT's revocations and pushes the re-signed JWT to the
running server through the system account; the server drops the live connection and refuses new ones. The
revocations are also kept in our directory, so the next `server_config()` carries them across a restart.

Roles and what they may do (least privilege; `site_permissions` is the one that matters):
- hub: anything within the account (it runs the API, the time responder, the KV bucket, the monitor);
- ingest: publish audio and time requests, receive on its own inbox;
- site: see `site_permissions`.

A city server's leafnode users and the bundle that carries them are in `citycast.bus.city_bundle`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from citycast.bus import jwt
from citycast.bus.jwt import KeyKind, Permissions, UserLimits
from citycast.bus.tls import creds_context, creds_with_ca
from citycast.protocol.subjects import Subjects, time_request

ACCOUNT_NAME = "CITYCAST"
SYSTEM_ACCOUNT_NAME = "SYS"
INGEST_INBOX_PREFIX = "_INBOX_ingest"
# Every site's inbox sits under one root, so a city's leaf connection can be allowed all its sites' replies
# with one subject (`_INBOX_site.>`) and nothing of the hub's own (`_INBOX.>`) or ingest's.
SITE_INBOX_ROOT = "_INBOX_site"
CITY_TIME_INBOX_PREFIX = "_INBOX_citytime"  # a city time responder's own requests to the hub
HUB_CA_FILE = "hub-ca.pem"  # the hub's TLS CA, when its NATS runs TLS: carried in every creds file we write
SITE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A site's user JWT expires (a lost box's creds stop working by themselves) and is renewed over the bus
# (citycast.hub.credentials) at half its life, so a site off the bus for up to half of it still renews in time.
SITE_JWT_LIFETIME_S = 30 * 24 * 3600
# What a site needs, with room: its biggest message is a talkback frame (≤ 5236 bytes) or telemetry (≈ 1 KB);
# its subscriptions are audio, commands, desired state and nats-py's reply inbox (two of audio while a channel
# changes). `data` stays -1: nats-server does not meter bytes per user (see jwt.UserLimits).
SITE_LIMITS = UserLimits(subs=16, data=-1, payload=8192)


class AuthorityError(RuntimeError):
    pass


def site_inbox_prefix(site: str) -> str:
    return f"{SITE_INBOX_ROOT}.{site}"


def check_site_name(site: str) -> str:
    if not isinstance(site, str) or not SITE_NAME_RE.fullmatch(site):
        raise ValueError(f"site name {str(site)[:70]!r} must be 1-64 letters, digits, '-' or '_'")
    return site


def site_permissions(site: str, subjects: Subjects) -> Permissions:
    """A site may hear every channel's audio, its own commands, its own desired state and its own inbox, and
    may publish its own telemetry, its own talkback (microphone), its own proof-of-play receipts, its own time
    requests and requests for its own desired state. No JetStream: a JetStream call lets the caller pick where the
    server sends the answer, so the hub hands desired state out itself (citycast.hub.desired), answering only to
    the asking site's inbox.

    Replies arrive on the site's own inbox prefix (nats-py `inbox_prefix=`), so it cannot read other clients'.
    """
    check_site_name(site)
    return Permissions(
        pub=(
            subjects.telemetry(site),
            subjects.talkback(site),
            # Its own time-request subjects only (the hub's and any city's), so a responder knows who asks and
            # answers on that site's inbox alone; the bare `time` subjects are for trusted users.
            time_request(subjects.time(), site),
            time_request(f"{subjects.time()}.*", site),
            subjects.desired_get(site),
            subjects.creds_renew(site),
            subjects.receipts(site),  # its own proof of play only: another site's receipts it cannot even send
        ),
        sub=(
            f"{subjects.prefix}.audio.*",
            subjects.commands(site),
            subjects.desired(site),
            f"{site_inbox_prefix(site)}.>",
        ),
    )


def ingest_permissions(subjects: Subjects) -> Permissions:
    return Permissions(
        pub=(f"{subjects.prefix}.audio.*", subjects.time(), f"{subjects.time()}.*"),
        sub=(f"{INGEST_INBOX_PREFIX}.>",),
    )


def nats_conf_string(value: str) -> str:
    """A nats.conf string: double-quoted with JSON-like escapes."""
    return json.dumps(value)


@dataclass
class NatsAuthority:
    """Keys and JWTs kept in one private directory. Build with `load_or_create`."""

    dir: Path
    subjects: Subjects
    operator_seed: str
    system_seed: str
    account_seed: str
    revocations: dict[str, int]
    site_jwt_lifetime_s: int = SITE_JWT_LIFETIME_S

    # -- persistence ------------------------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, dir: Path, subjects: Subjects | None = None) -> NatsAuthority:
        """Load the keys in `dir`, creating any that are missing (a first start). Hub, ingest and the system
        user's creds files are (re)written each time, so their permissions follow the code and the prefix."""
        subjects = subjects or Subjects()
        dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(dir, 0o700)
        auth = cls(
            dir=dir,
            subjects=subjects,
            operator_seed=cls._seed(dir / "operator.nk", KeyKind.OPERATOR),
            system_seed=cls._seed(dir / "sys-account.nk", KeyKind.ACCOUNT),
            account_seed=cls._seed(dir / "account.nk", KeyKind.ACCOUNT),
            revocations=cls._load_revocations(dir / "revocations.json"),
        )
        ca = auth.hub_ca
        sys_user = cls._seed(dir / "sys-user.nk", KeyKind.USER)
        sys_jwt = jwt.user_jwt(auth.system_seed, jwt.public_key(sys_user), "sys")
        jwt.write_private(auth.sys_creds_path, creds_with_ca(jwt.creds_text(sys_jwt, sys_user), ca))
        hub = cls._seed(dir / "hub.nk", KeyKind.USER)
        hub_jwt = jwt.user_jwt(auth.account_seed, _pub(hub), "hub")
        jwt.write_private(auth.hub_creds_path, creds_with_ca(jwt.creds_text(hub_jwt, hub), ca))
        ingest = cls._seed(dir / "ingest.nk", KeyKind.USER)
        ingest_jwt = jwt.user_jwt(auth.account_seed, _pub(ingest), "ingest", ingest_permissions(subjects))
        jwt.write_private(auth.ingest_creds_path, creds_with_ca(jwt.creds_text(ingest_jwt, ingest), ca))
        return auth

    @staticmethod
    def trust_hub_ca(dir: Path, ca_pem: str | None) -> None:
        """Record the hub's TLS CA (None: the hub's NATS is plaintext, `--insecure`) before `load_or_create`,
        which puts it into every creds file it writes (citycast.bus.tls)."""
        dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if ca_pem is None:
            (dir / HUB_CA_FILE).unlink(missing_ok=True)
        else:
            jwt.write_private(dir / HUB_CA_FILE, ca_pem)

    @property
    def hub_ca(self) -> str | None:
        try:
            return (self.dir / HUB_CA_FILE).read_text() or None
        except FileNotFoundError:
            return None

    @staticmethod
    def _seed(path: Path, kind: KeyKind) -> str:
        if path.exists():
            seed = path.read_text().strip()
            try:
                ok = jwt.seed_kind(seed) is kind
            except jwt.JwtError:
                ok = False
            if not ok:
                raise AuthorityError(f"{path} does not hold a {kind.name.lower()} nkey seed")
            return seed
        seed = jwt.new_seed(kind)
        jwt.write_private(path, seed + "\n")
        return seed

    @staticmethod
    def _load_revocations(path: Path) -> dict[str, int]:
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AuthorityError(f"{path} is not readable JSON: {e}") from e
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
        ):
            raise AuthorityError(f"{path} must map user public keys to revocation times (seconds)")
        return dict(data)

    def _save_revocations(self) -> None:
        jwt.write_private(self.dir / "revocations.json", json.dumps(self.revocations, indent=1, sort_keys=True))

    # -- identities -------------------------------------------------------------------------------------------
    @property
    def operator_public(self) -> str:
        return _pub(self.operator_seed)

    @property
    def system_public(self) -> str:
        return _pub(self.system_seed)

    @property
    def account_public(self) -> str:
        return _pub(self.account_seed)

    @property
    def hub_creds_path(self) -> Path:
        return self.dir / "hub.creds"

    @property
    def ingest_creds_path(self) -> Path:
        return self.dir / "ingest.creds"

    @property
    def sys_creds_path(self) -> Path:
        """A system-account user: only for pushing account updates to the server."""
        return self.dir / "sys.creds"

    @property
    def resolver_dir(self) -> Path:
        return self.dir / "resolver"

    def operator_jwt(self) -> str:
        return jwt.operator_jwt(self.operator_seed, "citycast", self.system_public)

    def account_jwt(self) -> str:
        return jwt.account_jwt(
            self.operator_seed, self.account_public, ACCOUNT_NAME, jetstream=True, revocations=self.revocations
        )

    def system_account_jwt(self) -> str:
        return jwt.account_jwt(self.operator_seed, self.system_public, SYSTEM_ACCOUNT_NAME)

    def server_config(self) -> str:
        """The nats.conf fragment for operator mode (append to the server's config)."""
        return (
            f"operator: {nats_conf_string(self.operator_jwt())}\n"
            f"system_account: {self.system_public}\n"
            f"resolver: {{ type: full, dir: {nats_conf_string(str(self.resolver_dir))}, allow_delete: false }}\n"
            "resolver_preload: {\n"
            f"  {self.system_public}: {nats_conf_string(self.system_account_jwt())}\n"
            f"  {self.account_public}: {nats_conf_string(self.account_jwt())}\n"
            "}\n"
        )

    # -- users --------------------------------------------------------------------------------------------------
    def mint_site_jwt(
        self, site: str, nkey_public: str, subjects: Subjects | None = None, *, now: int | None = None
    ) -> str:
        """A user JWT for the site's own key (the site keeps its seed), with the site's limits, expiring
        `site_jwt_lifetime_s` after `now` (seconds). Raises ValueError on a bad name or key, or a revoked key."""
        subjects = subjects or self.subjects
        check_site_name(site)
        jwt.decode_public_key(nkey_public, KeyKind.USER)
        if nkey_public in self.revocations:
            raise ValueError(f"nkey {nkey_public[:8]}… was revoked: the site must enrol with a new key")
        iat = int(time.time()) if now is None else now
        return jwt.user_jwt(
            self.account_seed,
            nkey_public,
            f"site:{site}",
            site_permissions(site, subjects),
            limits=SITE_LIMITS,
            expires=iat + self.site_jwt_lifetime_s,
            iat=iat,
        )

    async def revoke(self, nkey_public: str, nats_url: str, *, timeout: float = 5.0) -> None:
        """Revoke a user key now and for good: persisted first, then pushed to the running server."""
        jwt.decode_public_key(nkey_public, KeyKind.USER)
        # A JWT issued in this very second is revoked too (the server compares iat <= revocation time).
        self.revocations[nkey_public] = max(int(time.time()), self.revocations.get(nkey_public, 0))
        self._save_revocations()
        await self.push_account(nats_url, timeout=timeout)

    async def push_account(self, nats_url: str, *, timeout: float = 5.0) -> None:
        """Send the current account JWT to the server's full resolver; raise unless it says it took it."""
        try:
            tls = creds_context(self.sys_creds_path)
            nc = await nats.connect(
                nats_url,
                user_credentials=str(self.sys_creds_path),
                **({"tls": tls, "tls_handshake_first": True} if tls is not None else {}),
                connect_timeout=timeout,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # 0 would mean "forever" to nats-py
                reconnect_time_wait=0.2,
            )
        except Exception as e:  # nats-py raises several unrelated types for "cannot connect"
            raise AuthorityError(f"cannot push the account to the NATS server at {nats_url}: {e!r}") from e
        try:
            reply = await nc.request("$SYS.REQ.CLAIMS.UPDATE", self.account_jwt().encode(), timeout=timeout)
        except Exception as e:
            raise AuthorityError(f"the NATS server at {nats_url} did not take the account update: {e!r}") from e
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        try:
            answer = json.loads(reply.data)
        except json.JSONDecodeError as e:
            raise AuthorityError(f"account update: unreadable reply {reply.data[:200]!r}") from e
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict) or data.get("code") != 200:
            raise AuthorityError(f"account update refused by the server: {answer!r}"[:500])


def _pub(seed: str) -> str:
    return jwt.public_key(seed)
