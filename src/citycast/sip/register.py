"""Registering with a SIP trunk (RFC 3261 §10) with digest authentication (§22), sans-IO with time passed in.

A PSTN number routed to citycast usually reaches it through a provider's trunk that only forwards calls to a
registered Contact. `Registration` is the client side of that: it builds REGISTER requests (same Call-ID, rising
CSeq, our Contact, §10.2), reads the responses, answers a 401/407 challenge with an Authorization /
Proxy-Authorization, keeps the binding alive by refreshing at half the granted expiry (not more often than every
`min_refresh_s`), backs off after failures and unbinds (Expires: 0) at stop. The owner (the `Telephone`) sends
what it returns over its transport and calls `tick(now)` at `next_deadline()`.

The digest itself (parsing challenges, computing the answer) is `sip.digest`. A second challenge right after we
answered one means the credentials are wrong (unless it says ``stale=true``: only the nonce aged): that, and a
403, stop the registration with a clear error rather than hammering the trunk; it tries again only after
`auth_retry_s` (an hour by default), in case the provider side was fixed. Other failures (timeouts, 5xx, 480…)
retry with exponential back-off, honouring Retry-After.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from citycast.sip.digest import Challenge, DigestError, authorization, best_challenge
from citycast.sip.message import SipMessage, _parse_name_addr, request
from citycast.sip.transaction import new_branch, new_tag

USER_AGENT = "citycast"
MIN_REFRESH_S = 30.0
RETRY_S = 30.0
MAX_RETRY_S = 900.0
AUTH_RETRY_S = 3600.0
MAX_CHALLENGES = 4  # challenges answered for one registration attempt (stale nonces included) before giving up

_SIP_URI_RE = re.compile(r"sips?:(?:([^@;?:]+)(?::[^@;?]*)?@)?([^;?:]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?", re.I)


@dataclass(frozen=True)
class RegisterConfig:
    """What `citycast serve --sip-register` configures. `aor` is ``sip:user@trunk.example[:port]``; `registrar`
    (``host[:port]``) overrides where REGISTERs go (default: the AOR's host and port, 5060)."""

    aor: str
    password: str = field(repr=False)
    username: str | None = None  # the digest user name when it differs from the AOR's user part
    registrar: str | None = None
    expires: int = 3600
    min_refresh_s: float = MIN_REFRESH_S
    retry_s: float = RETRY_S
    max_retry_s: float = MAX_RETRY_S
    auth_retry_s: float = AUTH_RETRY_S

    def __post_init__(self) -> None:
        m = _SIP_URI_RE.fullmatch(self.aor)
        if m is None or not m.group(1):
            raise ValueError(f"--sip-register wants sip:user@host[:port], got {self.aor!r}")
        if not 0 < self.expires <= 2**31 - 1:
            raise ValueError(f"register expiry {self.expires} must be positive")
        if self.min_refresh_s <= 0 or self.retry_s <= 0 or self.max_retry_s < self.retry_s or self.auth_retry_s <= 0:
            raise ValueError("register timers must be positive (and max_retry_s >= retry_s)")
        self.registrar_address()

    @property
    def user(self) -> str:
        m = _SIP_URI_RE.fullmatch(self.aor)
        assert m is not None
        return m.group(1)

    @property
    def auth_user(self) -> str:
        return self.username or self.user

    @property
    def domain(self) -> str:
        m = _SIP_URI_RE.fullmatch(self.aor)
        assert m is not None
        return m.group(2) + (f":{m.group(3)}" if m.group(3) else "")

    def registrar_address(self) -> tuple[str, int]:
        """Host and port to send REGISTERs to (a name is resolved by the owner)."""
        text = self.registrar or self.domain
        if text.startswith("["):
            host, _, port = text[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = text.partition(":")
        if not host or (port and (not port.isdigit() or not 0 < int(port) < 65536)):
            raise ValueError(f"bad registrar address {text!r}: want host[:port]")
        return host, int(port) if port else 5060


class Registration:
    """The registration of one Contact at one registrar.

    States (``status``): "idle" (not started), "registering" (a REGISTER is out), "registered", "retrying"
    (failed, waiting for the back-off), "failed" (credentials refused: waiting `auth_retry_s`), "unregistering",
    "stopped". ``error`` says why the last attempt failed.
    """

    def __init__(self, config: RegisterConfig, *, contact: str, sent_by: str, transport: str = "UDP") -> None:
        self.config = config
        self.contact = contact  # a URI, e.g. sip:citycast@192.0.2.1:5060
        self.sent_by = sent_by
        self.transport = transport.upper()
        self.call_id = f"{secrets.token_hex(12)}@citycast"
        self.from_tag = new_tag()
        self.request_uri = f"sip:{config.domain}"
        self.status = "idle"
        self.error: str | None = None
        self.expires_at: float | None = None  # when the registrar forgets us unless refreshed
        self.granted: int | None = None
        self.registered_since: float | None = None
        self.sent = 0  # REGISTER requests built (each one a transaction, retransmissions not counted)
        self._cseq = 0
        self._expires = config.expires
        self._due: float | None = None  # when to send the next REGISTER
        self._failures = 0
        self._challenge: Challenge | None = None
        self._nc = 0
        self._fresh = False  # the request in flight answers a challenge received just now
        self._challenges = 0
        self._inflight: int | None = None  # CSeq of the REGISTER out, its answer is the one that counts
        self._unregistering = False

    # -- building -------------------------------------------------------------------------------------------
    def _build(self, expires: int) -> SipMessage:
        self._cseq += 1
        self._inflight = self._cseq
        self.sent += 1
        cfg = self.config
        headers = [
            ("Via", f"SIP/2.0/{self.transport} {self.sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{cfg.aor}>;tag={self.from_tag}"),
            ("To", f"<{cfg.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
            ("Contact", f"<{self.contact}>"),
            ("Expires", str(expires)),
            ("User-Agent", USER_AGENT),
        ]
        if self._challenge is not None:
            self._nc += 1
            ch = self._challenge
            value = authorization(ch, username=cfg.auth_user, password=cfg.password, method="REGISTER",
                                  uri=self.request_uri, nc=self._nc, cnonce=secrets.token_hex(8))  # fmt: skip
            headers.append(("Proxy-Authorization" if ch.proxy else "Authorization", value))
        return request("REGISTER", self.request_uri, headers)

    @property
    def in_flight(self) -> bool:
        """A REGISTER of ours awaits its final response: RFC 3261 §10.2 sends no new one until it has it."""
        return self._inflight is not None

    # -- driving --------------------------------------------------------------------------------------------
    def start(self, now: float) -> SipMessage:
        self.status = "registering"
        self._unregistering = False
        self._challenges = 0
        self._fresh = False
        self._due = None
        return self._build(self._expires)

    def stop(self, now: float) -> SipMessage | None:
        """The unregistering REGISTER (Expires: 0) when we may be bound, else None; no more refreshes either way."""
        self._due = None
        bound = self.status in ("registered", "registering") or (self.expires_at is not None and now < self.expires_at)
        if not bound:
            self.status = "stopped"
            return None
        self.status = "unregistering"
        self._unregistering = True
        self._challenges = 0
        self._fresh = False
        return self._build(0)

    def next_deadline(self) -> float | None:
        return self._due

    def tick(self, now: float) -> SipMessage | None:
        """A REGISTER to send when its time has come (a refresh, a retry), else None."""
        if self._due is None or now < self._due:
            return None
        if self.status == "registered" and self.expires_at is not None and now >= self.expires_at:
            self.status = "retrying"
            self.error = "registration expired"
        return self.start(now)

    def on_response(self, response: SipMessage, now: float) -> SipMessage | None:
        """A final response to one of our REGISTERs; returns the next request to send at once (an answered
        challenge, a larger expiry after 423), or None."""
        try:
            number, method = response.cseq
        except ValueError:
            return None
        status = response.status or 0
        if method.upper() != "REGISTER" or number != self._inflight or status < 200:
            return None  # a late answer to a request we already gave up on
        self._inflight = None
        if status in (401, 407):
            return self._on_challenge(response, now)
        self._fresh = False
        if self._unregistering:
            self.status = "stopped"
            self.expires_at = None
            self.registered_since = None
            if status >= 300:
                self.error = f"unregister refused: {status} {response.reason or ''}".strip()
            return None
        if 200 <= status < 300:
            self._on_ok(response, now)
            return None
        if status == 423:
            min_expires = response.header("Min-Expires") or ""
            if min_expires.isdigit() and self._expires < int(min_expires) <= 2**31 - 1:
                self._expires = int(min_expires)
                return self._build(self._expires)
            self._fail(now, f"423 Interval Too Brief without a usable Min-Expires ({min_expires!r})")
            return None
        if status == 403:
            self._refused(now, f"{status} {response.reason or 'Forbidden'}: the trunk refused our credentials")
            return None
        retry_after = response.header("Retry-After") or ""
        m = re.match(r"\s*([0-9]{1,7})", retry_after)
        self._fail(now, f"{status} {response.reason or ''}".strip(), float(m.group(1)) if m else None)
        return None

    def on_timeout(self, now: float, why: str = "the registrar did not answer") -> None:
        """Our REGISTER got no final response within Timer F, or could not be sent at all (`why`)."""
        self._inflight = None
        if self._unregistering:
            self.status = "stopped"
            self.error = f"unregister failed: {why}"
            return
        self._fail(now, why)

    # -- outcomes -------------------------------------------------------------------------------------------
    def _on_challenge(self, response: SipMessage, now: float) -> SipMessage | None:
        try:
            ch = best_challenge(response)
        except DigestError as e:
            self._refused(now, f"cannot answer the {response.status} challenge: {e}")
            return None
        if self._fresh and not ch.stale:
            # We answered a challenge just now and got another one without stale=true: the password is wrong.
            self._challenge = None
            self._refused(now, f"{response.status}: authentication rejected (wrong user name or password?)")
            return None
        self._challenges += 1
        if self._challenges > MAX_CHALLENGES:
            self._challenge = None
            self._refused(now, f"{response.status}: too many challenges in a row")
            return None
        if self._challenge is None or ch.nonce != self._challenge.nonce:
            self._nc = 0
        self._challenge = ch
        self._fresh = True
        return self._build(0 if self._unregistering else self._expires)

    def _on_ok(self, response: SipMessage, now: float) -> None:
        granted = self._granted(response)
        self._failures = 0
        self._challenges = 0
        if granted <= 0:
            self._fail(now, "the registrar accepted but did not keep our Contact")
            return None
        if self.status != "registered":
            self.registered_since = now
        self.status = "registered"
        self.error = None
        self.granted = granted
        self.expires_at = now + granted
        cfg = self.config
        self._due = now + max(granted / 2, min(cfg.min_refresh_s, granted * 0.9))
        return None

    def _granted(self, response: SipMessage) -> int:
        """Our binding's expiry: its Contact's expires parameter, else the Expires header, else what we asked."""
        ours = self.contact.lower()
        for value in response.headers_all("Contact"):
            try:
                na = _parse_name_addr(value, "Contact")
            except ValueError:
                continue
            if na.uri.lower() == ours:
                e = na.params.get("expires")
                if e is not None and e.isdigit():
                    return int(e)
        e = response.header("Expires")
        if e is not None and e.strip().isdigit():
            return int(e.strip())
        return self._expires

    def _fail(self, now: float, why: str, retry_after: float | None = None) -> None:
        self._failures += 1
        cfg = self.config
        backoff = min(cfg.retry_s * 2 ** (self._failures - 1), cfg.max_retry_s)
        wait = max(backoff, min(retry_after, cfg.max_retry_s * 4)) if retry_after is not None else backoff
        self.status = "retrying"
        self.error = why
        self._fresh = False
        if self.expires_at is not None and now >= self.expires_at:
            self.expires_at = None
            self.registered_since = None
        self._due = now + wait

    def _refused(self, now: float, why: str) -> None:
        self.status = "failed"
        self.error = why
        self._fresh = False
        self._challenge = None
        self.expires_at = None
        self.registered_since = None
        self._due = now + self.config.auth_retry_s

    # -- reporting ------------------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        """For the console and the log: never the password."""
        return {
            "aor": self.config.aor,
            "status": self.status,
            "error": self.error,
            "granted_s": self.granted if self.status == "registered" else None,
            "expires_in_s": round(self.expires_at - now, 1) if self.expires_at is not None else None,
            "next_attempt_in_s": round(self._due - now, 1) if self._due is not None else None,
            "requests_sent": self.sent,
        }
