"""Login limits a stranger meets: per account from many addresses, parallel guesses from one, and bodies too big
to read, over real HTTP (uvicorn on loopback; each attacker address a real 127.0.0.x source)."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import httpx
from tests.helpers import PASSWORD, Api


def from_address(api: Api, host: str) -> httpx.AsyncClient:
    """A client whose connections really come from `host` (any 127.0.0.0/8 address is loopback on Linux)."""
    transport = httpx.AsyncHTTPTransport(local_address=host)
    c = httpx.AsyncClient(base_url=api.base_url, transport=transport, timeout=30.0)
    api._clients.append(c)
    return c


def chunked_post(base_url: str, path: str, chunk: int, chunks: int) -> tuple[int, str]:
    """POST a chunked body on a raw socket, as fast as the peer takes it; then the status and the detail. A
    refused body makes the peer close while we still send, so send errors are expected and ignored."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            for _ in range(chunks):
                sock.sendall(f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                got = sock.recv(65536)
                if not got:
                    break
                data += got
        except OSError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, json.loads(body)["detail"] if body else ""


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


async def test_one_account_tried_from_many_addresses_is_slowed_but_its_owner_still_gets_in(api: Api) -> None:
    owner = from_address(api, "127.0.0.1")
    assert (await owner.post("/api/login", json={"username": "operator", "password": PASSWORD})).status_code == 200
    # A stranger with 30 addresses, one guess from each: the per-address limit (10 a minute) never sees them.
    codes = []
    for i in range(30):
        r = await from_address(api, f"127.0.1.{10 + i}").post(
            "/api/login", json={"username": "operator", "password": f"guess-{i}"}
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "operator" in r.json()["detail"]
    checked = codes.count(401)
    # 20 failures, then one guess per 30 s slot for the whole world: 21 checked, the rest refused unchecked.
    assert checked == 21, codes
    assert codes.count(429) == 30 - checked
    # Its owner, from an address it logged in from before, is not locked out by the stranger.
    r = await owner.post("/api/login", json={"username": "operator", "password": PASSWORD})
    assert r.status_code == 200, r.text
    # A new address waits for the slot like everyone else, with the right password too (no oracle).
    r = await from_address(api, "127.0.2.1").post("/api/login", json={"username": "operator", "password": PASSWORD})
    assert r.status_code == 429


async def test_parallel_guesses_from_one_address_are_counted_before_they_are_checked(api: Api) -> None:
    c = from_address(api, "127.0.3.1")

    async def guess(i: int) -> int:
        r = await c.post("/api/login", json={"username": f"nobody-{i}", "password": "guess"})
        return r.status_code

    codes = await asyncio.gather(*(guess(i) for i in range(30)))
    # The limit is 10 a minute: the 20 others are refused without an Argon2 check, however they interleave.
    assert codes.count(401) <= 10, codes
    assert codes.count(429) >= 20, codes


async def test_a_login_body_over_the_limit_is_refused_before_it_is_read(api: Api) -> None:
    c = from_address(api, "127.0.4.1")
    big = b'{"username": "a", "password": "' + b"x" * (100 * 1024) + b'"}'
    r = await c.post("/api/login", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most 65536 bytes" in r.json()["detail"]

    # Chunked, no length: read only up to the limit, then refused; the rest is never read.
    status, detail = await asyncio.to_thread(chunked_post, api.base_url, "/api/login", 4096, 100)
    assert status == 413 and "too large" in detail
    # The hub still serves, and a normal body is still read.
    r = await from_address(api, "127.0.4.2").post("/api/login", json={"username": "operator", "password": PASSWORD})
    assert r.status_code == 200
