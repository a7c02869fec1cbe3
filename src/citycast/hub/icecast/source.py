"""An Icecast source connection: one HTTP PUT whose body is the stream, as Icecast 2.4 takes it.

The request is what libshout sends: ``PUT /mount`` with basic auth (``source``: the mount's or the server's
source password), ``Content-Type``, the ``Ice-*`` headers that describe the stream on the server's directory
page, and ``Expect: 100-continue`` so a refusal (wrong password, mount taken) comes back before any audio is
sent. The body is never chunked and has no length: Icecast 2.4 reads it until the connection closes, and knows
neither chunked request bodies nor an end.

Hand-written on asyncio streams because the HTTP clients at hand (httpx, aiohttp) send a streamed body with
chunked transfer encoding, which Icecast 2.4 does not read. The metadata update (a plain GET) does use httpx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httpx

__all__ = ["IcecastAuthError", "IcecastError", "IcecastServer", "SourceConnection", "parse_icecast_url"]

RESPONSE_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 16_384  # a status line and headers; anything longer is not an Icecast answer


class IcecastError(RuntimeError):
    """The server refused the source or the connection failed; the text says which, for the operator."""


class IcecastAuthError(IcecastError):
    """401: the source password (or user) is wrong. Retried like any refusal, but said plainly."""


@dataclass(frozen=True)
class IcecastServer:
    """Where the mounts go: ``http://HOST:PORT`` (and an optional path prefix for every mount)."""

    host: str
    port: int
    user: str = "source"
    password: str = field(default="", repr=False)
    prefix: str = ""  # e.g. "/citycast": mounts become /citycast/all.ogg …

    def mount_path(self, mount: str) -> str:
        return f"{self.prefix}/{mount.lstrip('/')}"

    def url(self, mount: str) -> str:
        return f"http://{self.host}:{self.port}{self.mount_path(mount)}"

    def auth_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")


def parse_icecast_url(url: str, password: str) -> IcecastServer:
    """``http://[USER@]HOST[:PORT][/PREFIX]`` → `IcecastServer`. A password in the URL is refused: it would
    show in the process list; it comes from a file. Raises ValueError with a message for the operator."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--icecast wants http://HOST[:PORT][/PREFIX], got {url!r} (Icecast sources speak plain HTTP)")
    if parts.password is not None:
        raise ValueError("--icecast: put the source password in --icecast-password-file, not in the URL")
    if parts.query or parts.fragment:
        raise ValueError(f"--icecast: no query or fragment, got {url!r}")
    try:
        port = parts.port or 8000
    except ValueError as e:
        raise ValueError(f"--icecast: bad port in {url!r}") from e
    prefix = parts.path.rstrip("/")
    if any(c in prefix for c in " \r\n?#%"):
        raise ValueError(f"--icecast: bad path prefix {prefix!r}")
    if not password or any(c in password for c in "\r\n"):
        raise ValueError("the Icecast source password is empty or spans lines")
    return IcecastServer(parts.hostname, port, parts.username or "source", password, prefix)


@dataclass(frozen=True)
class StreamInfo:
    """The ``Ice-*`` headers: what the server's directory page and players show about the mount."""

    name: str
    description: str = ""
    genre: str = "Speech"
    public: bool = False
    bitrate_kbps: int | None = None


def _header_value(text: str) -> str:
    # A title or zone name is the operator's text: no line breaks may reach the request head.
    return " ".join(text.split())[:200]


class SourceConnection:
    """One live PUT to one mount. `open` sends the request and waits for the server's yes; `send` writes."""

    def __init__(self, server: IcecastServer, mount: str, content_type: str, info: StreamInfo) -> None:
        self.server = server
        self.mount = mount
        self.content_type = content_type
        self.info = info
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self.bytes_sent = 0

    def request_head(self) -> bytes:
        headers = [
            f"PUT {quote(self.server.mount_path(self.mount))} HTTP/1.1",
            f"Host: {self.server.host}:{self.server.port}",
            f"Authorization: {self.server.auth_header()}",
            "User-Agent: citycast",
            f"Content-Type: {self.content_type}",
            f"Ice-Name: {_header_value(self.info.name)}",
            f"Ice-Description: {_header_value(self.info.description)}",
            f"Ice-Genre: {_header_value(self.info.genre)}",
            f"Ice-Public: {1 if self.info.public else 0}",
            "Expect: 100-continue",
        ]
        if self.info.bitrate_kbps is not None:
            headers.append(f"Ice-Bitrate: {self.info.bitrate_kbps}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode()

    async def open(self, timeout_s: float = RESPONSE_TIMEOUT_S) -> None:
        """Connect and be accepted as the mount's source; raises `IcecastError` (or `IcecastAuthError`)."""
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(self.server.host, self.server.port)
                self._reader, self._writer = reader, writer
                writer.write(self.request_head())
                await writer.drain()
                status, reason = await self._read_status(reader)
        except TimeoutError:
            await self.close()
            raise IcecastError(f"{self.server.url(self.mount)}: no answer within {timeout_s:.0f} s") from None
        except OSError as e:
            await self.close()
            raise IcecastError(f"{self.server.url(self.mount)}: cannot connect: {e.strerror or e}") from None
        if status in (100, 200):
            return
        await self.close()
        where = self.server.url(self.mount)
        if status == 401:
            raise IcecastAuthError(f"{where}: the server refused the source password for user {self.server.user!r}")
        if status == 403:
            raise IcecastError(f"{where}: refused (403 {reason}): mount in use by another source, or not allowed")
        raise IcecastError(f"{where}: refused ({status} {reason})")

    @staticmethod
    async def _read_status(reader: asyncio.StreamReader) -> tuple[int, str]:
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            chunk = await reader.read(1024)
            if not chunk:
                break
            head += chunk
            if len(head) > MAX_RESPONSE_BYTES:
                raise IcecastError("the server's answer is not HTTP (too long)")
        line = head.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise IcecastError(f"the server's answer is not HTTP: {line[:80]!r}")
        return int(parts[1]), parts[2] if len(parts) > 2 else ""

    async def send(self, data: bytes) -> None:
        """Write stream bytes; raises `IcecastError` when the server has gone (then `open` a new one)."""
        writer = self._writer
        if writer is None:
            raise IcecastError("not connected")
        if not data:
            return
        try:
            writer.write(data)
            async with asyncio.timeout(RESPONSE_TIMEOUT_S):
                await writer.drain()
        except (OSError, TimeoutError) as e:
            raise IcecastError(f"{self.server.url(self.mount)}: connection lost: {e!r}") from None
        if self._reader is not None and self._reader.at_eof():
            raise IcecastError(f"{self.server.url(self.mount)}: the server closed the connection")
        self.bytes_sent += len(data)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()


async def update_metadata(client: httpx.AsyncClient, server: IcecastServer, mount: str, title: str) -> None:
    """Set the mount's title through Icecast's admin call (MP3 mounts carry no title in the stream). The source
    credentials are enough for the source's own mount. Raises `IcecastError`."""
    url = f"http://{server.host}:{server.port}/admin/metadata"
    params = {"mount": server.mount_path(mount), "mode": "updinfo", "song": title, "charset": "UTF-8"}
    try:
        r = await client.get(url, params=params, auth=(server.user, server.password), timeout=RESPONSE_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise IcecastError(f"{server.url(mount)}: metadata update failed: {e!r}") from None
    if r.status_code == 401:
        raise IcecastAuthError(f"{server.url(mount)}: metadata update: the server refused the source password")
    if r.status_code != 200:
        raise IcecastError(f"{server.url(mount)}: metadata update refused ({r.status_code})")
