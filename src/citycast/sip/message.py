"""SIP messages: parse and build (RFC 3261 §7, §20, §25 grammar subset), sans-IO, for hostile input.

Written here rather than taken from PyPI. The one maintained pure-Python candidate, ``sipmessage`` (BSD, by the
author of aiortc), parses header values well, but the hub needs what it leaves to the caller: hard limits on
size and header count, datagram vs. stream Content-Length rules (a stream framer), an error that carries the
SIP status to answer with, CR/LF injection checks when building, and §8.2.6 response construction. Wrapping it
would cost as much code as the subset below and add a dependency on a 0.x API; the older ``pysip``/``sip-parser``
projects are unmaintained. The grammar needed by a user agent that answers calls is small:

* start line: ``Method SP Request-URI SP SIP/2.0`` or ``SIP/2.0 SP 3DIGIT SP Reason-Phrase`` (other versions → 505);
* headers: ``name HCOLON value``, folded lines (leading SP/HT) joined with one space, compact forms
  (i f t v m l c k s e o r b x u) expanded, known names spelled canonically, list headers (Via, Contact, Allow,
  Supported, Route…) split on commas outside quotes and ``<>``, one ``(name, value)`` pair per element;
* bodies: Content-Length must be ASCII digits; a datagram body shorter than it is an error, bytes beyond it are
  dropped (§18.3), a datagram without it has the rest of the datagram as body; on streams it is mandatory
  (`StreamFramer`);
* limits: 64 KiB per message, 100 header lines, 512 header values, no control characters in the head.

`parse` validates what every later layer relies on (Via, From, To, Call-ID, CSeq and, in requests, the CSeq
method), so the properties of a parsed message never raise. Parsed messages are normalised (canonical names,
stripped values, the true Content-Length), which makes ``parse(m.to_bytes()) == m`` hold for every parsed ``m``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_MESSAGE = 64 * 1024
MAX_HEADER_LINES = 100
MAX_HEADER_VALUES = 512
_MAX_START_LINE = 8 * 1024

COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "u": "Allow-Events",
}

_KNOWN = (
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Session-Expires",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
    ").split(",
)
_CANONICAL: dict[str, str] = {name.lower(): name for name in _KNOWN}
_CANONICAL.update(COMPACT_FORMS)

# Headers whose grammar is a comma-separated list (§7.3.1); the others (From, Authorization, Date…) may hold
# commas that are not separators.
_LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "In-Reply-To",
        "P-Asserted-Identity",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Require",
        "Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)

# Headers that may appear once: two of them make the message ambiguous (which dialog, which body length?).
_SINGLE_HEADERS = frozenset({"Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Type", "Content-Length"})

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
_TOKEN_RE = re.compile(_TOKEN)
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"]*")
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.IGNORECASE)
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_CSEQ_RE = re.compile(r"([0-9]{1,10})[ \t]+(" + _TOKEN + ")")
_VIA_RE = re.compile(r"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*(" + _TOKEN + r")[ \t]+([^;\s]+)[ \t]*(?:;(.*))?", re.I)
_HOST_RE = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
_CALL_ID_RE = re.compile(r"[\x21-\x7e]+")


class SipParseError(ValueError):
    """A message that cannot be accepted.

    ``status`` is the response to send if the message was a request (400, 505 bad version, 513 too large);
    ``partial`` is the message as far as it parsed (start line and headers) when only a header's content was
    wrong, so a user agent can still build that response with `response_for`.
    """

    def __init__(self, message: str, *, status: int = 400, partial: SipMessage | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.partial = partial


@dataclass(frozen=True, slots=True)
class Via:
    """One Via header value (§20.42): ``SIP/2.0/UDP host:port;branch=…;rport``. Param names are lower case."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server (RFC 3581); None when absent or empty (see `wants_rport`)."""
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def wants_rport(self) -> bool:
        return "rport" in self.params

    def with_params(self, **params: str | None) -> Via:
        """A copy with `params` set (e.g. ``received="1.2.3.4", rport="5060"`` when answering over UDP)."""
        return Via(self.transport, self.host, self.port, {**self.params, **params})

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        hostport = host if self.port is None else f"{host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hostport}{_format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route; §20.10, §25.1)."""

    uri: str
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f'"{_escape_quoted(self.display)}" ' if self.display else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


@dataclass(slots=True)
class SipMessage:
    """A request (``method``/``uri`` set) or a response (``status``/``reason`` set).

    ``headers`` keeps the order of the wire, with canonical names and one pair per list element; lookups by
    name are case-insensitive and accept compact forms.
    """

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        key = canonical_name(name).lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    def headers_all(self, name: str) -> list[str]:
        key = canonical_name(name).lower()
        return [v for n, v in self.headers if n.lower() == key]

    def _required(self, name: str) -> str:
        value = self.header(name)
        if value is None:
            raise SipParseError(f"missing {name} header", partial=self)
        return value

    @property
    def call_id(self) -> str:
        value = self._required("Call-ID")
        if not _CALL_ID_RE.fullmatch(value):
            raise SipParseError(f"malformed Call-ID {value[:80]!r}", partial=self)
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        value = self._required("CSeq")
        m = _CSEQ_RE.fullmatch(value)
        if m is None:
            raise SipParseError(f"malformed CSeq {value[:80]!r}: want 'number METHOD'", partial=self)
        number = int(m.group(1))
        if number >= 2**31:
            raise SipParseError(f"CSeq number {number} is not below 2**31", partial=self)
        return number, m.group(2)

    @property
    def vias(self) -> list[Via]:
        values = self.headers_all("Via")
        if not values:
            raise SipParseError("missing Via header", partial=self)
        return [_parse_via(v, self) for v in values]

    @property
    def from_(self) -> NameAddr:
        return _parse_name_addr(self._required("From"), "From", self)

    @property
    def to(self) -> NameAddr:
        return _parse_name_addr(self._required("To"), "To", self)

    @property
    def contact(self) -> NameAddr | None:
        value = self.header("Contact")
        if value is None:
            return None
        if value == "*":
            return NameAddr(uri="*")
        return _parse_name_addr(value, "Contact", self)

    @property
    def content_type(self) -> str | None:
        """The media type in lower case without parameters (``application/sdp``), or None."""
        value = self.header("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower() or None

    @property
    def max_forwards(self) -> int | None:
        value = self.header("Max-Forwards")
        if value is None:
            return None
        if not _DIGITS_RE.fullmatch(value) or int(value) > 255:
            raise SipParseError(f"malformed Max-Forwards {value[:80]!r}", partial=self)
        return int(value)

    def to_bytes(self) -> bytes:
        """The wire form, CRLF line ends and a Content-Length equal to the body's (in place of any given)."""
        if self.method is not None:
            if not _TOKEN_RE.fullmatch(self.method) or self.uri is None or not _URI_RE.fullmatch(self.uri):
                raise ValueError(f"cannot build a request line from {self.method!r} {self.uri!r}")
            lines = [f"{self.method} {self.uri} SIP/2.0"]
        else:
            if self.status is None or not 100 <= self.status <= 699:
                raise ValueError(f"cannot build a status line for status {self.status!r}")
            reason = self.reason or ""
            _check_value(reason)
            lines = [f"SIP/2.0 {self.status} {reason}"]
        length_written = False
        for name, value in self.headers:
            if not _TOKEN_RE.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a token")
            _check_value(value)
            if name.lower() == "content-length":
                if not length_written:
                    lines.append(f"Content-Length: {len(self.body)}")
                    length_written = True
                continue
            lines.append(f"{name}: {value}")
        if not length_written:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def canonical_name(name: str) -> str:
    """``i`` → ``Call-ID``, ``cseq`` → ``CSeq``; unknown names unchanged."""
    return _CANONICAL.get(name.lower(), name)


def _check_value(value: str) -> None:
    if _CTL_RE.search(value):
        raise ValueError(f"header value {value[:80]!r} contains a line break or control character")


def _escape_quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _split_outside(value: str, sep: str, what: str) -> list[str]:
    """Split on `sep` where it is not inside a quoted string or ``<…>``."""
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts: list[str] = []
    start = 0
    quoted = angle = escaped = False
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif angle:
            if ch == ">":
                angle = False
        elif ch == "<":
            angle = True
        elif ch == sep:
            parts.append(value[start:i])
            start = i + 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {what}")
    if angle:
        raise SipParseError(f"unterminated '<' in {what}")
    parts.append(value[start:])
    return parts


def _parse_params(text: str, what: str, partial: SipMessage | None) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for piece in _split_outside(text, ";", what):
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError(f"malformed parameter {piece.strip()[:80]!r} in {what}", partial=partial)
        if name in params:
            raise SipParseError(f"duplicate parameter {name!r} in {what}", partial=partial)
        if eq:
            value = value.strip()
            if not value or (value.startswith('"') != value.endswith('"')) or (value == '"'):
                raise SipParseError(f"malformed value of parameter {name!r} in {what}", partial=partial)
            params[name] = value
        else:
            params[name] = None
    return params


def _parse_via(value: str, partial: SipMessage | None = None) -> Via:
    m = _VIA_RE.fullmatch(value)
    if m is None:
        want = "want 'SIP/2.0/TRANSPORT host[:port];params'"
        raise SipParseError(f"malformed Via {value[:80]!r}: {want}", partial=partial)
    transport, hostport, rest = m.group(1).upper(), m.group(2), m.group(3)
    port: int | None = None
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host += "]"
        port_text = tail[1:] if tail.startswith(":") else None
        if tail and port_text is None:
            raise SipParseError(f"malformed Via host {hostport[:80]!r}", partial=partial)
    else:
        host, colon, port_text_raw = hostport.partition(":")
        port_text = port_text_raw if colon else None
    if not _HOST_RE.fullmatch(host):
        raise SipParseError(f"malformed Via host {host[:80]!r}", partial=partial)
    if port_text is not None:
        if not _DIGITS_RE.fullmatch(port_text) or int(port_text) > 65535:
            raise SipParseError(f"malformed Via port {port_text[:80]!r}", partial=partial)
        port = int(port_text)
    params = _parse_params(rest, "Via", partial) if rest is not None else {}
    rport = params.get("rport")
    if rport is not None and (not _DIGITS_RE.fullmatch(rport) or int(rport) > 65535):
        raise SipParseError(f"malformed Via rport {rport[:80]!r}", partial=partial)
    return Via(transport, host.strip("[]"), port, params)


def _parse_name_addr(value: str, what: str, partial: SipMessage | None = None) -> NameAddr:
    text = value.strip()
    display: str | None = None
    if text.startswith('"'):
        i, chars, escaped = 1, [], False
        while i < len(text):
            ch = text[i]
            if escaped:
                chars.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                break
            else:
                chars.append(ch)
            i += 1
        else:
            raise SipParseError(f"unterminated display name in {what}", partial=partial)
        display = "".join(chars)
        text = text[i + 1 :].lstrip()
        if not text.startswith("<"):
            raise SipParseError(f"{what}: a quoted display name must be followed by <uri>", partial=partial)
    if "<" in text:
        lt = text.index("<")
        if display is None:
            display = text[:lt].strip() or None
            if display is not None and ('"' in display or ">" in display):
                raise SipParseError(f"malformed display name in {what}", partial=partial)
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError(f"unterminated '<' in {what}", partial=partial)
        uri, after = text[lt + 1 : gt], text[gt + 1 :].strip()
        if after and not after.startswith(";"):
            raise SipParseError(f"unexpected {after[:40]!r} after <uri> in {what}", partial=partial)
        rest, has_params = after[1:], bool(after)
    else:
        # addr-spec: the URI cannot carry parameters here; anything after ';' is a header parameter (§20.10)
        uri, semi, rest = text.partition(";")
        uri = uri.strip()
        has_params = bool(semi)
    if not _URI_RE.fullmatch(uri):
        raise SipParseError(f"malformed URI {uri[:80]!r} in {what}", partial=partial)
    params = _parse_params(rest, what, partial) if has_params else {}
    tag = params.get("tag")
    if tag is not None and not _TOKEN_RE.fullmatch(tag):
        raise SipParseError(f"malformed tag {tag[:80]!r} in {what}", partial=partial)
    return NameAddr(uri=uri, display=display, params=params)


def _headers_from_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
    """Unfold, split names from values, canonicalise names and split list headers."""
    raw: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not raw:
                raise SipParseError("folded header line before any header")
            raw[-1][1] += " " + line.strip(" \t")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without ':' {line[:80]!r}")
        raw.append([name.rstrip(" \t"), value])
        if len(raw) > MAX_HEADER_LINES:
            raise SipParseError(f"more than {MAX_HEADER_LINES} header lines")
    headers: list[tuple[str, str]] = []
    for name, value in raw:
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError(f"malformed header name {name[:80]!r}")
        name = canonical_name(name)
        value = value.strip(" \t")
        if name.lower() in _LIST_HEADERS:
            parts = [p.strip(" \t") for p in _split_outside(value, ",", name)]
            parts = [p for p in parts if p] or [""]
            headers.extend((name, p) for p in parts)
        else:
            headers.append((name, value))
        if len(headers) > MAX_HEADER_VALUES:
            raise SipParseError(f"more than {MAX_HEADER_VALUES} header values")
    return headers


def _parse_start_line(line: str) -> tuple[str | None, str | None, int | None, str | None]:
    if len(line) > _MAX_START_LINE:
        raise SipParseError("start line too long")
    if line[:4].upper() == "SIP/":
        m = _STATUS_RE.fullmatch(line)
        if m is None:
            version = line.split(" ", 1)[0]
            if _VERSION_RE.fullmatch(version) and version.upper() != "SIP/2.0":
                raise SipParseError(f"unsupported SIP version {version[:20]!r}", status=505)
            raise SipParseError(f"malformed status line {line[:80]!r}")
        return None, None, int(m.group(1)), m.group(2) or ""
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"malformed request line {line[:80]!r}: want 'METHOD uri SIP/2.0'")
    method, uri, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise SipParseError(f"malformed method {method[:40]!r}")
    if not _URI_RE.fullmatch(uri):
        raise SipParseError(f"malformed Request-URI {uri[:80]!r}")
    if version.upper() != "SIP/2.0":
        if _VERSION_RE.fullmatch(version):
            raise SipParseError(f"unsupported SIP version {version[:20]!r}", status=505)
        raise SipParseError(f"malformed SIP version {version[:20]!r}")
    return method, uri, None, None


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    values = [v for n, v in headers if n == "Content-Length"]
    if not values:
        return None
    if len(values) > 1:
        raise SipParseError("more than one Content-Length header")
    if not _DIGITS_RE.fullmatch(values[0]):
        raise SipParseError(f"malformed Content-Length {values[0][:20]!r}")
    return int(values[0])


def parse(data: bytes) -> SipMessage:
    """One SIP message from a datagram (or from a frame cut by `StreamFramer`). Raises `SipParseError`."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}", status=513)
    data = data.lstrip(b"\r\n")  # CRLFs before the start line are keep-alives (§7.5)
    if not data:
        raise SipParseError("empty message")
    end = _HEAD_END_RE.search(data)
    if end is None:
        raise SipParseError("no blank line after the headers")
    try:
        head = data[: end.start()].decode()
    except UnicodeDecodeError as exc:
        raise SipParseError(f"headers are not UTF-8 (byte {exc.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in head.split("\n")]
    for line in lines:
        if _CTL_RE.search(line):
            raise SipParseError(f"control character in the head: {line[:80]!r}")
    method, uri, status, reason = _parse_start_line(lines[0])
    headers = _headers_from_lines(lines[1:])
    rest = data[end.end() :]
    length = _content_length(headers)
    if length is None:
        body = rest
        headers.append(("Content-Length", str(len(body))))
    else:
        if len(rest) < length:
            raise SipParseError(f"body of {len(rest)} bytes is shorter than Content-Length {length}")
        body = rest[:length]
        headers = [(n, str(length)) if n == "Content-Length" else (n, v) for n, v in headers]
    msg = SipMessage(method=method, uri=uri, status=status, reason=reason, headers=headers, body=body)
    _validate(msg)
    return msg


def _validate(msg: SipMessage) -> None:
    """Touch everything later layers read, so that they never meet a malformed value."""
    seen: set[str] = set()
    for name, _ in msg.headers:
        if name in _SINGLE_HEADERS:
            if name in seen:
                raise SipParseError(f"more than one {name} header", partial=msg)
            seen.add(name)
    msg.vias  # noqa: B018
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    msg.call_id  # noqa: B018
    msg.contact  # noqa: B018
    msg.max_forwards  # noqa: B018
    _, method = msg.cseq
    if msg.method is not None and method != msg.method:
        raise SipParseError(f"CSeq method {method!r} differs from the request method {msg.method!r}", partial=msg)


def request(method: str, uri: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> SipMessage:
    """A request to send; names are canonicalised, Content-Length is set by `SipMessage.to_bytes`."""
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"method {method!r} is not a token")
    if not _URI_RE.fullmatch(uri):
        raise ValueError(f"malformed Request-URI {uri!r}")
    return SipMessage(method=method, uri=uri, headers=[(canonical_name(n), v) for n, v in headers], body=body)


def response_for(
    req: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipMessage:
    """The response to `req` per §8.2.6: Via (all, in order), From, To (+ `to_tag` unless it has one), Call-ID,
    CSeq copied; Timestamp too on a 100 (§8.2.6.1). Works on a `SipParseError.partial` as long as it has them."""
    if req.method is None:
        raise ValueError("response_for needs a request")
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} outside 100..699")
    if to_tag is not None and not _TOKEN_RE.fullmatch(to_tag):
        raise ValueError(f"to_tag {to_tag!r} is not a token")
    out: list[tuple[str, str]] = [("Via", v) for v in req.headers_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = req.header(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None and _parse_name_addr(value, "To").tag is None:
            value = f"{value};tag={to_tag}"
        out.append((name, value))
    timestamp = req.header("Timestamp")
    if status == 100 and timestamp is not None:
        out.append(("Timestamp", timestamp))
    out.extend((canonical_name(n), v) for n, v in headers)
    if content_type is not None:
        out.append(("Content-Type", content_type))
    return SipMessage(status=status, reason=reason, headers=out, body=body)


_FIRST_LINE_RE = re.compile(rb"(?:SIP/|" + _TOKEN.encode() + rb" )")
_STREAM_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]{1,10})[ \t]*\r?$", re.I | re.M)
_STREAM_LENGTH_NAME_RE = re.compile(rb"^(?:content-length|l)[ \t]*:", re.I | re.M)


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (§18.3), bounded.

    `feed` returns the complete messages (bytes for `parse`) and keeps the rest. CRLF keep-alives between
    messages (RFC 5626) are skipped. Garbage, a missing or malformed Content-Length, or a message over
    `max_message` raises `SipParseError`; the framer then stays failed (the connection must be closed, since
    the message boundary is lost).
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for the end of the head
        self._total: int | None = None  # size of the current message once its head is known
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, reason: str, status: int = 400) -> SipParseError:
        self._failed = reason
        self._buf.clear()
        return SipParseError(reason, status=status)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed is not None:
            raise SipParseError(f"stream already failed: {self._failed}")
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._total is None:
                self._total = self._frame_size()
                if self._total is None:
                    return out
            if len(self._buf) < self._total:
                return out
            out.append(bytes(self._buf[: self._total]))
            del self._buf[: self._total]
            self._total = None
            self._scanned = 0

    def _frame_size(self) -> int | None:
        """Size of the message at the head of the buffer, None until its head is complete."""
        if self._scanned == 0:
            stripped = len(self._buf) - len(self._buf.lstrip(b"\r\n"))
            if stripped:
                del self._buf[:stripped]
        if not self._buf:
            return None
        newline = self._buf.find(b"\n", 0, _MAX_START_LINE + 1)
        if newline < 0:
            if len(self._buf) > _MAX_START_LINE:
                raise self._fail("no line end within the first 8 KiB")
        elif not _FIRST_LINE_RE.match(self._buf):
            raise self._fail(f"garbage on the stream: {bytes(self._buf[:40])!r}")
        end = _HEAD_END_RE.search(self._buf, max(0, self._scanned - 3))
        if end is None:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_message:
                raise self._fail(f"head larger than {self.max_message} bytes", 513)
            return None
        head = bytes(self._buf[: end.start()])
        lengths = {int(m.group(1)) for m in _STREAM_LENGTH_RE.finditer(head)}
        if not lengths:
            if _STREAM_LENGTH_NAME_RE.search(head):
                raise self._fail("malformed Content-Length on a stream")
            raise self._fail("Content-Length is required on a stream transport")
        if len(lengths) > 1:
            raise self._fail("conflicting Content-Length headers")
        total = end.end() + lengths.pop()
        if total > self.max_message:
            raise self._fail(f"message of {total} bytes exceeds {self.max_message}", 513)
        return total
