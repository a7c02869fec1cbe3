"""The city bundle: what a city server needs to join the hub as a leafnode, exported by the hub's authority.

A city server runs nats-server in operator mode under the hub's operator, with the hub's account JWTs preloaded,
so the very site JWTs the hub minted work there. It dials the hub's leafnode port twice (the CITYCAST account and
the system account, which carries revocations down) and runs a time responder for its zone. The bundle carries
the trust chain as it is at export (revocations included), fresh creds for those three users, and with TLS the
hub's CA and a certificate of it for the city server. `export_city_bundle` writes it at the hub; `CityBundle.load`
checks it at the city before anything starts.

What crosses the leaf is `leaf_permissions`: the city may send up only telemetry, talkback and requests; the hub
sends down audio, commands, desired state and replies for the city's sites and time responder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from citycast.bus import jwt
from citycast.bus.authority import (
    CITY_TIME_INBOX_PREFIX,
    SITE_INBOX_ROOT,
    AuthorityError,
    NatsAuthority,
    check_site_name,
    nats_conf_string,
)
from citycast.bus.jwt import KeyKind, Permissions
from citycast.bus.server import EmbeddedNats, LeafRemote, ServerTls
from citycast.bus.tls import HubTls, TlsError, client_context, creds_with_ca
from citycast.protocol.subjects import Subjects

CITY_BUNDLE_VERSION = 1


def city_time_permissions(zone: str, subjects: Subjects) -> Permissions:
    """A city's time responder: answers `time.<zone>` and its sites' `time.<zone>.site.<site>` (one reply per
    request, to the inbox that asked) and syncs itself to the hub's `time`, or to a zone peer's `time.<zone>` on
    that peer's server (the leaf never carries it up), with replies on its own inbox prefix."""
    check_site_name(zone)
    return Permissions(
        pub=(subjects.time(), subjects.time(zone)),
        sub=(subjects.time(zone), subjects.time_site_all(zone), f"{CITY_TIME_INBOX_PREFIX}.>"),
        responses=True,
    )


def leaf_permissions(subjects: Subjects) -> Permissions:
    """The city's leaf connection in the CITYCAST account, as the hub sees it: `pub` is what the city may send
    up, `sub` what the hub sends down. Down: audio, commands, and replies to the city's sites and time
    responder, and the sites' desired state. Up: telemetry, talkback, time requests and desired-state
    requests. Never audio, commands or desired state up, and never the hub's or ingest's own inboxes down."""
    return Permissions(
        pub=(
            subjects.telemetry_all(),
            subjects.talkback_all(),
            subjects.time(),
            subjects.time_site_all(),
            subjects.desired_get_all(),
            subjects.creds_renew_all(),
            subjects.receipts_all(),
        ),
        sub=(
            f"{subjects.prefix}.audio.*",
            f"{subjects.prefix}.cmd.*",
            subjects.desired_all(),
            f"{SITE_INBOX_ROOT}.>",
            f"{CITY_TIME_INBOX_PREFIX}.>",
        ),
    )


def system_leaf_permissions(subjects: Subjects) -> Permissions:
    """The city's leaf connection in the system account: account JWT updates down (so a revocation pushed at
    the hub reaches the city's resolver too), nothing up. Sites use no JetStream, so none crosses the link."""
    return Permissions(pub=(), sub=("$SYS.REQ.CLAIMS.UPDATE", "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE"))


def export_city_bundle(
    authority: NatsAuthority, path: Path, zone: str, tls: HubTls | None = None, names: list[str] | None = None
) -> CityBundle:
    """Write (0600) what a city server for `zone` needs to join this hub as a leafnode: the trust chain as it
    is now (revocations included) and fresh creds for its two leaf connections and its time responder. Each
    call mints new users, so one city's identities can be revoked without touching another's. With the hub's
    `tls`, the city server gets a certificate of the hub's CA for `names` (and loopback): the sites there
    verify it with the CA they pinned at enrolment."""
    check_site_name(zone)

    def creds(account_seed: str, name: str, permissions: Permissions) -> str:
        seed = jwt.new_seed(KeyKind.USER)
        return jwt.creds_text(jwt.user_jwt(account_seed, jwt.public_key(seed), name, permissions), seed)

    bundle = CityBundle(
        zone=zone,
        prefix=authority.subjects.prefix,
        operator_jwt=authority.operator_jwt(),
        system_account=authority.system_public,
        system_account_jwt=authority.system_account_jwt(),
        account=authority.account_public,
        account_jwt=authority.account_jwt(),
        leaf_creds=creds(authority.account_seed, f"leaf:{zone}", leaf_permissions(authority.subjects)),
        system_leaf_creds=creds(authority.system_seed, f"sys-leaf:{zone}", system_leaf_permissions(authority.subjects)),
        time_creds=creds(authority.account_seed, f"time:{zone}", city_time_permissions(zone, authority.subjects)),
        hub_ca=authority.hub_ca or "",
    )
    if tls is not None and authority.hub_ca:
        cert, key = tls.issue_server_cert(names or [], f"citycast city {zone}")
        bundle = dataclasses.replace(bundle, city_cert=cert, city_key=key)
    jwt.write_private(path, bundle.to_json())
    return bundle


class CityBundleError(AuthorityError):
    pass


@dataclass(frozen=True)
class CityFiles:
    """A bundle's secrets as the files nats-server and nats-py read (all 0600)."""

    leaf_creds: Path
    system_leaf_creds: Path
    time_creds: Path
    resolver_dir: Path
    hub_ca: Path | None = None  # the hub's TLS CA: the leaf connections verify the hub against it alone
    server_tls: ServerTls | None = None  # the city server's own certificate (of the hub's CA) for its sites


@dataclass(frozen=True)
class CityBundle:
    """What `NatsAuthority.city_bundle` exports: a city server runs in operator mode under the hub's operator,
    so the very site JWTs the hub minted work there, and its leaf connections log in to the hub as users."""

    zone: str
    prefix: str
    operator_jwt: str
    system_account: str
    system_account_jwt: str
    account: str
    account_jwt: str
    leaf_creds: str
    system_leaf_creds: str
    time_creds: str
    hub_ca: str = ""  # PEM of the hub's TLS CA; empty only for a hub that runs its NATS plaintext (--insecure)
    city_cert: str = ""  # the city server's certificate and key (PEM), signed by the hub's CA
    city_key: str = ""

    def to_json(self) -> str:
        return json.dumps({"version": CITY_BUNDLE_VERSION, **self.__dict__}, indent=1) + "\n"

    @classmethod
    def load(cls, path: Path) -> CityBundle:
        try:
            text = path.read_text()
        except OSError as e:
            raise CityBundleError(f"cannot read the city bundle {path}: {e.strerror or e}") from e
        try:
            return cls.parse(text)
        except CityBundleError as e:
            raise CityBundleError(f"{path}: {e}") from None

    @classmethod
    def parse(cls, text: str) -> CityBundle:
        """Check everything a city server would otherwise fail on later, obscurely: shape, signatures, chain."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CityBundleError(f"not a city bundle (not JSON: {e})") from None
        if not isinstance(data, dict) or data.get("version") != CITY_BUNDLE_VERSION:
            raise CityBundleError(f"not a city bundle of version {CITY_BUNDLE_VERSION} (export it again at the hub)")
        names = [f for f in cls.__dataclass_fields__]
        optional = {"hub_ca", "city_cert", "city_key"}
        missing = [
            n for n in names if not isinstance(data.get(n, "" if n in optional else None), str)
            or (n not in optional and not data[n])
        ]  # fmt: skip
        if missing:
            raise CityBundleError(f"city bundle lacks {', '.join(missing)}")
        bundle = cls(**{n: data.get(n, "") for n in names})
        try:
            bundle._check()
        except (jwt.JwtError, ValueError, TlsError) as e:
            raise CityBundleError(f"city bundle is not valid: {e}") from None
        return bundle

    def _check(self) -> None:
        check_site_name(self.zone)
        if self.hub_ca:
            client_context(self.hub_ca)  # a PEM certificate, or TlsError
        operator = jwt.decode(self.operator_jwt)
        if operator["nats"].get("type") != "operator" or operator["iss"] != operator["sub"]:
            raise ValueError("operator_jwt is not a self-signed operator JWT")
        if operator["nats"].get("system_account") != self.system_account:
            raise ValueError("system_account is not the operator's system account")
        for key, token in ((self.system_account, self.system_account_jwt), (self.account, self.account_jwt)):
            claims = jwt.decode(token)
            if claims["nats"].get("type") != "account" or claims["iss"] != operator["sub"] or claims["sub"] != key:
                raise ValueError(f"the JWT of account {key[:8]}… is not that account's, signed by the operator")
        for what, text, issuer in (
            ("leaf_creds", self.leaf_creds, self.account),
            ("system_leaf_creds", self.system_leaf_creds, self.system_account),
            ("time_creds", self.time_creds, self.account),
        ):
            creds = jwt.parse_creds(text)
            claims = jwt.decode(creds.jwt)
            if claims["iss"] != issuer or claims["sub"] != jwt.public_key(creds.seed):
                raise ValueError(f"{what} is not a user of account {issuer[:8]}… holding its own seed")

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    def install(self, dir: Path) -> CityFiles:
        """Write the creds files into `dir` (0700) for nats-server and the time responder."""
        hub_ca = dir / "hub-ca.pem" if self.hub_ca else None
        server_tls = ServerTls(dir / "city.pem", dir / "city.key") if self.city_cert and self.city_key else None
        files = CityFiles(
            dir / "leaf.creds", dir / "sys-leaf.creds", dir / "time.creds", dir / "resolver", hub_ca, server_tls
        )
        if hub_ca is not None:
            jwt.write_private(hub_ca, self.hub_ca)
        if server_tls is not None:
            jwt.write_private(server_tls.cert_file, self.city_cert)
            jwt.write_private(server_tls.key_file, self.city_key)
        jwt.write_private(files.leaf_creds, self.leaf_creds)
        jwt.write_private(files.system_leaf_creds, self.system_leaf_creds)
        # The time responder dials the city server, which is TLS with a certificate of the hub's CA when it has one.
        jwt.write_private(files.time_creds, creds_with_ca(self.time_creds, self.hub_ca if server_tls else None))
        return files

    def server_config(self, resolver_dir: Path) -> str:
        """The city server's nats.conf fragment: operator mode with the hub's JWTs preloaded, and JetStream off
        but marked to extend the hub's (so KV calls from sites here reach the hub's bucket over the system
        account's leaf; nats-server otherwise denies `$JS.API.>` across a leaf)."""
        return (
            f"operator: {nats_conf_string(self.operator_jwt)}\n"
            f"system_account: {self.system_account}\n"
            f"resolver: {{ type: full, dir: {nats_conf_string(str(resolver_dir))}, allow_delete: false }}\n"
            "resolver_preload: {\n"
            f"  {self.system_account}: {nats_conf_string(self.system_account_jwt)}\n"
            f"  {self.account}: {nats_conf_string(self.account_jwt)}\n"
            "}\n"
            "jetstream: { enabled: false, extension_hint: will_extend }\n"
        )

    def leaf_remotes(self, hub_leaf_url: str, files: CityFiles) -> list[LeafRemote]:
        """Two connections to the hub's leafnode port: the application account and the system account."""
        return [
            LeafRemote(hub_leaf_url, credentials=files.leaf_creds, account=self.account, tls_ca=files.hub_ca),
            LeafRemote(
                hub_leaf_url, credentials=files.system_leaf_creds, account=self.system_account, tls_ca=files.hub_ca
            ),
        ]

    def embedded_nats(
        self,
        hub_leaf_url: str,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        binary: str | None = None,
        leaf_listen_port: int | None = None,
    ) -> tuple[EmbeddedNats, CityFiles]:
        """The city server (not started) and the files it uses; `files.time_creds` is for the time responder."""
        files = self.install(workdir / "auth")
        server = EmbeddedNats(
            host=host,
            port=port,
            binary=binary,
            jetstream=False,
            leaf_listen_port=leaf_listen_port,
            leaf_remotes=self.leaf_remotes(hub_leaf_url, files),
            workdir=workdir / "nats",
            auth_config=self.server_config(files.resolver_dir),
            tls=files.server_tls,
        )
        return server, files
