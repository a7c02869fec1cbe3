"""The site side of credential renewal: ask the hub for a fresh JWT at half the current one's life, check it,
write it (atomically, 0600) and let the agent move to a connection made with it (see citycast.hub.credentials).

The answer is taken only if it is a user JWT for this site's own key, signed by the account that signed the
current one (the signature is checked), expiring later than the current one: a hub impostor on the path cannot
hand the site someone else's identity or an account of its own, nor shorten its life. The hub CA the current creds
file carries is kept as it is: trust in the hub never changes over the bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from citycast.bus import jwt
from citycast.bus.jwt import JwtError
from citycast.bus.tls import ca_in_creds, creds_with_ca
from citycast.protocol.credentials import RenewalAnswerError, decode_renewal
from citycast.protocol.subjects import Subjects

log = logging.getLogger(__name__)

RETRY_S = 60.0
REQUEST_TIMEOUT_S = 5.0


class RenewalError(ValueError):
    pass


def renew_at(iat: int, exp: int) -> float:
    """When to ask (unix seconds): at half the JWT's life, so a site off the bus for up to half of it (15 days of
    the default 30) still renews in time."""
    return iat + (exp - iat) / 2


def check_renewal(answer: bytes, current: jwt.Credentials) -> str:
    """The new JWT from the hub's answer, or RenewalError saying why it is not taken."""
    try:
        decoded = decode_renewal(answer)
    except RenewalAnswerError as e:
        raise RenewalError(str(e)) from e
    if decoded.error is not None:
        raise RenewalError(f"the hub refused: {decoded.error}")
    token = decoded.jwt
    if token is None:  # unreachable by RenewalAnswer's invariant; said plainly rather than asserted
        raise RenewalError("the answer carries no JWT")
    try:
        new = jwt.decode(token)  # signature checked against its issuer
        old = jwt.decode(current.jwt, verify=False)
    except JwtError as e:
        raise RenewalError(f"the JWT does not verify: {e}") from e
    if new["nats"].get("type") != "user" or new.get("sub") != jwt.public_key(current.seed):
        raise RenewalError("the JWT is not for this site's own key")
    if new.get("iss") != old.get("iss"):
        raise RenewalError("the JWT is signed by another account than the current one")
    exp, old_exp = new.get("exp"), old.get("exp")
    if not isinstance(exp, int) or (isinstance(old_exp, int) and exp < old_exp):
        raise RenewalError("the JWT expires before the current one: not taken")
    return token


def write_renewed(path: Path, token: str) -> None:
    """Replace the creds file atomically (0600 from the start), keeping its seed and hub CA.

    The enrolment record beside it (`site.json` for `site.creds`, from which `citycast site` rebuilds the creds
    file at each start) gets the new JWT first: a restart after the enrolment JWT expired must not bring it back.
    """
    text = path.read_text()
    current = jwt.parse_creds(text)
    record = path.with_suffix(".json")
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OSError(f"cannot update the enrolment record {record}: {e}") from e
    if isinstance(data, dict) and data.get("user_jwt") == current.jwt:
        data["user_jwt"] = token
        jwt.write_private(record, json.dumps(data, indent=1) + "\n")
    jwt.write_private(path, creds_with_ca(jwt.creds_text(token, current.seed), ca_in_creds(text)))


class CredentialsRenewer:
    """Keeps `creds` fresh for months. `nc()` is the agent's current connection; `on_renewed` is awaited after
    each new file is written (the agent opens a connection with it and retires the old one)."""

    def __init__(
        self,
        nc: Callable[[], Client | None],
        subjects: Subjects,
        site: str,
        creds: Path,
        on_renewed: Callable[[], Awaitable[None]],
        *,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.site = site
        self.creds = creds
        self.on_renewed = on_renewed
        self.retry_s = retry_s
        self.clock = clock
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None
        self.expires_s: int | None = None  # the current JWT's `exp`, once read

    def _times(self) -> tuple[float, float]:
        """(when to renew, when the current creds expire), unix seconds. Creds that never expire (enrolled before
        JWTs expired) are renewed at once, so an upgraded fleet moves onto expiring credentials by itself."""
        claims = jwt.decode(jwt.load_creds(self.creds).jwt, verify=False)
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            self.expires_s = None
            return 0.0, math.inf
        self.expires_s = exp
        return renew_at(iat, exp), exp

    async def run(self) -> None:
        while True:
            try:
                times = self._times()
            except (JwtError, OSError) as e:
                self._failed(f"cannot read {self.creds}: {e}")
                await asyncio.sleep(self.retry_s)
                continue
            due, exp = times
            wait = due - self.clock()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600.0))  # re-read now and then: the file may have been replaced
                continue
            if await self.renew_once():
                continue
            # retry sooner as the expiry nears, but never in a tight loop
            await asyncio.sleep(max(0.5, min(self.retry_s, (exp - self.clock()) / 4)))

    async def renew_once(self) -> bool:
        nc = self.nc()
        if nc is None or not nc.is_connected:
            self._failed("not connected")
            return False
        try:
            reply = await nc.request(self.subjects.creds_renew(self.site), b"", timeout=REQUEST_TIMEOUT_S)
            token = check_renewal(reply.data, jwt.load_creds(self.creds))
            await asyncio.to_thread(write_renewed, self.creds, token)
        except asyncio.CancelledError:
            raise
        except (nats.errors.Error, TimeoutError, OSError, JwtError, RenewalError) as e:
            self._failed(str(e) or type(e).__name__)
            return False
        self.renewals += 1
        self.last_error = None
        log.info("%s: credentials renewed", self.site)
        await self.on_renewed()
        return True

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why[:200]
        log.warning("%s: credentials not renewed: %s", self.site, self.last_error)
