"""Enrolment, the site's side: trade a one-time token for NATS credentials, once, and keep them.

The site makes its own nkey pair here and sends only the public key; the hub signs a user JWT for it (with this
site's permissions) and answers with what the agent needs to run. The seed never leaves the box: it is stored
with the answer in a JSON file readable by its owner only, next to a NATS creds file built from the two.

The token is `SECRET.FINGERPRINT`: the fingerprint of the hub's TLS CA (citycast.bus.tls). Over HTTPS the site
first fetches the hub's CA, checks it against the fingerprint and only then sends the secret over a connection
that trusts that CA alone; a server with any other certificate gets nothing. The CA is kept with the
credentials and is the only one the site trusts for NATS. Plain HTTP is refused unless the hub is this very
machine (loopback: no wire to tap) or the operator says `--insecure`.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from citycast.bus import jwt
from citycast.bus.jwt import KeyKind
from citycast.bus.tls import TlsError, client_context, creds_with_ca, fingerprint, is_loopback

if TYPE_CHECKING:  # httpx is imported by enrolment only: a running site never needs it (≈ 7 MB resident)
    import httpx

MAX_CA_BYTES = 64 * 1024


class EnrolError(RuntimeError):
    pass


class CredentialsFileError(ValueError):
    pass


def default_path() -> Path:
    """Where a site keeps its credentials: system-wide when run as root (a service), else per user."""
    if os.geteuid() == 0:
        return Path("/etc/citycast/site.json")
    return Path.home() / ".config" / "citycast" / "site.json"


@dataclass(frozen=True)
class SiteCredentials:
    site: str
    prefix: str
    nats_urls: list[str]
    user_jwt: str
    seed: str
    trusted_keys: list[str]  # hex ed25519 keys whose frames this site plays
    delay_ms: float
    time_subject: str
    inbox_prefix: str
    hub_ca: str = ""  # PEM of the hub's TLS CA, the only one trusted for NATS; empty: a plaintext (--insecure) hub
    # Every city server of the site's zone (NATS URLs): the site connects to each and plays the first copy of every
    # frame (citycast.site.uplinks). Empty: the zone has none listed; the site uses `nats_urls`.
    city_servers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "hub_ca":
                if not isinstance(value, str):
                    raise ValueError("hub_ca must be a PEM certificate or empty")
                if value:
                    try:
                        client_context(value)
                    except (TlsError, ssl.SSLError) as e:
                        raise ValueError(f"hub_ca: {e}") from None
            elif f.name in ("nats_urls", "trusted_keys", "city_servers"):
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ValueError(f"{f.name} must be a list of strings")
            elif f.name == "delay_ms":
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60_000:
                    raise ValueError("delay_ms must be a number of milliseconds (0..60000)")
            elif not isinstance(value, str) or not value:
                raise ValueError(f"{f.name} must be a non-empty string")
        if not self.nats_urls:
            raise ValueError("nats_urls is empty")
        for key in self.trusted_keys:
            try:
                if len(bytes.fromhex(key)) != 32:
                    raise ValueError
            except ValueError:
                raise ValueError(f"trusted key {key[:70]!r} is not 64 hex digits") from None
        if jwt.seed_kind(self.seed) is not KeyKind.USER:
            raise ValueError("seed is not a NATS user seed")
        claims = jwt.decode(self.user_jwt, verify=False)
        if claims.get("sub") != jwt.public_key(self.seed):
            raise ValueError("user_jwt was not issued for this site's key")

    @property
    def nkey_public(self) -> str:
        return jwt.public_key(self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: object) -> SiteCredentials:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys() - {"hub_ca", "city_servers"})
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return cls(**{k: data[k] for k in names if k in data})

    def save(self, path: Path) -> None:
        """Owner-only file (0600); its directory is made 0700 if this creates it."""
        jwt.write_private(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> SiteCredentials:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise CredentialsFileError(
                f"{path} does not exist: enrol this site first (citycast site --enrol HUB_URL TOKEN)"
            ) from None
        except OSError as e:
            raise CredentialsFileError(f"cannot read {path}: {e.strerror or e}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialsFileError(
                f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): it holds this site's "
                f"secret key; run chmod 600 {path}"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CredentialsFileError(f"{path} is not readable JSON ({e}): enrol again") from e
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise CredentialsFileError(f"{path} is not a site credentials file: {e}") from e

    def creds_file(self, next_to: Path) -> Path:
        """Write the NATS creds file (user JWT + seed, 0600) beside the JSON file `next_to`; return its path."""
        path = next_to.with_suffix(".creds")
        text = creds_with_ca(jwt.creds_text(self.user_jwt, self.seed), self.hub_ca or None)
        # Written at enrolment; a service that runs with its config directory read-only must still start.
        try:
            if path.read_text() == text and not path.stat().st_mode & 0o077:
                return path
        except OSError:
            pass
        jwt.write_private(path, text)
        return path


def _detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:300]


def split_token(token: str) -> tuple[str, str | None]:
    """`SECRET.FINGERPRINT` → (secret, fingerprint); without a fingerprint (a plaintext hub) → (secret, None)."""
    secret, _, fp = token.strip().partition(".")
    return secret, fp or None


async def _fetch_ca(base: str, fp: str, timeout: float) -> str:
    """The hub's CA, fetched without trusting anyone yet and accepted only if it has the token's fingerprint.
    Nothing secret is sent on this connection."""
    import httpx

    url = base + "/api/enrol/ca"
    body = bytearray()
    try:
        # Not verified here: the fingerprint check below is the verification.
        async with httpx.AsyncClient(timeout=timeout, verify=False) as client, client.stream("GET", url) as response:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_CA_BYTES:  # whoever answers may be anyone: read a bounded amount
                    raise EnrolError(f"{url} answered more than {MAX_CA_BYTES} bytes: not a citycast hub")
    except httpx.HTTPError as e:
        raise EnrolError(f"cannot reach the hub at {url}: {e or type(e).__name__}") from e
    if response.status_code != 200:
        raise EnrolError(f"{url} answered {response.status_code}: is this a citycast hub?")
    ca = body.decode(errors="replace")
    try:
        seen = fingerprint(ca)
    except TlsError as e:
        raise EnrolError(f"{url} did not answer a certificate: {e}") from None
    if seen != fp:
        raise EnrolError(
            f"the server at {base} is not the hub this token is for: its CA has fingerprint {seen}, the token "
            f"names {fp}. Nothing was sent; check the address (or a machine in between)"
        )
    return ca


async def enrol(
    hub_url: str, token: str, path: Path, *, timeout: float = 15.0, insecure: bool = False
) -> SiteCredentials:
    """Enrol with the hub at `hub_url` (e.g. https://hub.example:8443) and save the result at `path`.

    Raises EnrolError with the hub's reason (bad or used token, unreachable hub, bad answer, a hub that is not
    the token's). Nothing is written unless the hub accepted the token; the token is sent only to the hub whose
    CA has the token's fingerprint (over HTTPS), or over plain HTTP to this machine or with `insecure`."""
    secret, fp = split_token(token)
    if not secret:
        raise EnrolError("the enrolment token is empty")
    base = hub_url.rstrip("/")
    parsed = urlparse(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise EnrolError(f"the hub URL must be https://HOST:PORT, got {hub_url!r}")
    if parsed.scheme == "http" and not insecure and not is_loopback(parsed.hostname):
        raise EnrolError(
            f"refusing to send the enrolment token in plaintext to {base}: use the hub's https:// address, or "
            "--insecure on a network you trust entirely"
        )
    if fp is None and not insecure:
        raise EnrolError(
            "the token carries no fingerprint of the hub's certificate (TOKEN.FINGERPRINT), so this site could not "
            "tell the hub from an impostor: ask for a new token, or --insecure for a hub that runs without TLS"
        )
    verify: ssl.SSLContext | bool = True
    if parsed.scheme == "https":
        if fp is None:
            raise EnrolError("https enrolment needs the token's fingerprint (TOKEN.FINGERPRINT)")
        verify = client_context(await _fetch_ca(base, fp, timeout))
    import httpx

    seed = jwt.new_seed(KeyKind.USER)
    url = base + "/api/enrol"
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify) as client:
            response = await client.post(url, json={"token": secret, "nkey_public": jwt.public_key(seed)})
    except httpx.HTTPError as e:
        raise EnrolError(f"cannot reach the hub at {url}: {e or type(e).__name__}") from e
    if response.status_code != 200:
        raise EnrolError(f"the hub refused enrolment ({response.status_code}): {_detail(response)}")
    try:
        answer = response.json()
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        creds = SiteCredentials.from_dict({**answer, "seed": seed, "hub_ca": answer.get("hub_ca") or ""})
    except (ValueError, TypeError) as e:
        raise EnrolError(f"the hub's answer is not usable: {e}") from e
    if fp is not None and (not creds.hub_ca or fingerprint(creds.hub_ca) != fp):
        raise EnrolError("the hub answered with a CA that is not the token's: nothing was written")
    creds.save(path)
    creds.creds_file(path)
    return creds
