"""HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760), sans-IO.

`Challenge.parse` reads one WWW-Authenticate / Proxy-Authenticate value, `best_challenge` picks the strongest one
of a 401/407 we can answer, `authorization` builds the header value answering it, and `digest_response` is the
hash itself: MD5 and SHA-256, their "-sess" variants, qop auth and auth-int (cnonce and nc), and the RFC 2069 form
without qop.

Written here with hashlib rather than taken from a library: the kept HTTP client (httpx) has a digest, but only
as a private part of its request flow (`httpx._auth.DigestAuth`, tied to httpx requests and responses) and
without auth-int; the SIP libraries on PyPI that carry one would bring a whole second SIP stack. The RFC examples
(tests/sip/test_digest.py) pin it down.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from citycast.sip.message import SipMessage

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# Strongest first: with several challenges (RFC 8760 §2.4) we answer the best one we support.
_PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")
_AUTH_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(?:,|$)')


class DigestError(ValueError):
    """A challenge we cannot answer (not Digest, no nonce, an unknown algorithm or qop)."""


def _h(algorithm: str, data: str | bytes) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    fn = _HASHES.get(base)
    if fn is None:
        raise DigestError(f"digest algorithm {algorithm!r} is not supported (MD5, SHA-256 and their -sess are)")
    return fn(data.encode() if isinstance(data, str) else data).hexdigest()


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value of a digest Authorization (RFC 2617 §3.2.2, RFC 7616 §3.4.1), lower-case hex.

    ``qop`` None is the RFC 2069 compatible form (no nc/cnonce); "auth-int" hashes `body` into A2.
    """
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        if not cnonce:
            raise DigestError(f"{algorithm} needs a cnonce")
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        a2 = f"{method}:{uri}:{_h(algorithm, body)}"
    elif qop in (None, "auth"):
        a2 = f"{method}:{uri}"
    else:
        raise DigestError(f"qop {qop!r} is not supported")
    ha2 = _h(algorithm, a2)
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    if not nc or not cnonce:
        raise DigestError("qop needs nc and cnonce")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True)
class Challenge:
    """One parsed WWW-Authenticate / Proxy-Authenticate Digest challenge (§22.4, RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False  # from a 407: answered with Proxy-Authorization

    @classmethod
    def parse(cls, value: str, *, proxy: bool = False) -> Challenge:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "digest":
            raise DigestError(f"authentication scheme {scheme[:40]!r} is not Digest")
        params: dict[str, str] = {}
        pos = 0
        rest = rest.strip()
        while pos < len(rest):
            m = _AUTH_PARAM_RE.match(rest, pos)
            if m is None:
                raise DigestError(f"malformed challenge near {rest[pos : pos + 40]!r}")
            raw = m.group(2)
            params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
            pos = m.end()
        if "nonce" not in params:
            raise DigestError("challenge without a nonce")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in _PREFERENCE:
            raise DigestError(f"digest algorithm {algorithm!r} is not supported (MD5, SHA-256 and their -sess are)")
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        if qop and not {"auth", "auth-int"} & set(qop):
            raise DigestError(f"no supported qop in {params['qop']!r}")
        stale = params.get("stale", "").lower() == "true"
        return cls(realm=params.get("realm", ""), nonce=params["nonce"], algorithm=algorithm, qop=qop,
                   opaque=params.get("opaque"), stale=stale, proxy=proxy)  # fmt: skip


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    ch: Challenge, *, username: str, password: str, method: str, uri: str, nc: int, cnonce: str, body: bytes = b""
) -> str:
    """The Authorization header value answering `ch` (algorithm as challenged; qop auth preferred over auth-int)."""
    qop = ("auth" if "auth" in ch.qop else "auth-int") if ch.qop else None
    nc_text = f"{nc:08x}"
    response = digest_response(algorithm=ch.algorithm, username=username, realm=ch.realm, password=password,
                               method=method, uri=uri, nonce=ch.nonce, qop=qop, nc=nc_text, cnonce=cnonce,
                               body=body)  # fmt: skip
    parts = [f"username={_quote(username)}", f"realm={_quote(ch.realm)}", f"nonce={_quote(ch.nonce)}",
             f"uri={_quote(uri)}", f"response={_quote(response)}", f"algorithm={ch.algorithm}"]  # fmt: skip
    if ch.opaque is not None:
        parts.append(f"opaque={_quote(ch.opaque)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}", f"cnonce={_quote(cnonce)}"]
    return "Digest " + ", ".join(parts)


def best_challenge(response: SipMessage) -> Challenge:
    """The strongest Digest challenge of a 401/407 we can answer; raises DigestError when there is none."""
    proxy = response.status == 407
    values = response.headers_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
    if not values:
        raise DigestError(f"{response.status} without a {'Proxy' if proxy else 'WWW'}-Authenticate header")
    found: list[Challenge] = []
    errors: list[str] = []
    for v in values:
        try:
            found.append(Challenge.parse(v, proxy=proxy))
        except DigestError as e:
            errors.append(str(e))
    if not found:
        raise DigestError("; ".join(errors))
    return min(found, key=lambda c: _PREFERENCE.index(c.algorithm))
