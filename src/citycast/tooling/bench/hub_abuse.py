"""`citycast bench-hub --abuse`: does a stranger hammering the hub's web side reach the city's audio?

A real hub (`citycast serve`, its own process) and N full sites (`citycast site` processes, enrolled through the
API, timed sinks). One address plays to them twice in the same run: first quietly, then while strangers hammer
the login (a new loopback address and name per guess, so every guess costs an Argon2 check), the go-live PIN
page (wrong PINs), the login with 200 MB bodies (raw sockets), and heavy list queries (logged in). Per phase:
the sites' underruns and concealed packets (their telemetry, via the API) and the broadcaster's own publish
lateness (the hub logs it when the address ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from citycast.tooling.bench.fleet import citycast_argv
from citycast.tooling.bench.hub_bench import _Hub
from citycast.tooling.demo import speech_asset

MAX_GUESSES = 100_000  # every abuse loop is bounded in count as well as by its phase's time
_LATENESS = re.compile(r"address (\d+) ended .*?publish lateness p50 ([\d.]+) p99 ([\d.]+) max ([\d.]+) ms")


@dataclass
class PhaseFigures:
    seconds: float
    underruns: int
    concealed: int
    publish_lateness_ms: dict[str, float]
    requests: dict[str, int] = field(default_factory=dict)  # abuse requests sent, by kind and answer


@dataclass
class AbuseBenchResult:
    sites: int
    quiet: PhaseFigures
    abuse: PhaseFigures

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["p99_delta_ms"] = round(self.abuse.publish_lateness_ms["p99"] - self.quiet.publish_lateness_ms["p99"], 2)
        return out


async def _site_totals(api: httpx.AsyncClient) -> tuple[int, int]:
    sites = (await api.get("/api/sites")).json()
    return sum(s.get("underruns") or 0 for s in sites), sum(s.get("concealed") or 0 for s in sites)


def hub_lateness(log: Path, address_id: int) -> dict[str, float]:
    for line in log.read_text(errors="replace").splitlines():  # one record a line (_Hub sets COLUMNS)
        m = _LATENESS.search(line)
        if m is not None and int(m.group(1)) == address_id:
            return {"p50": float(m.group(2)), "p99": float(m.group(3)), "max": float(m.group(4))}
    raise RuntimeError(f"the hub did not log the publish lateness of address {address_id}")


async def _play(api: httpx.AsyncClient, hub: _Hub, zone: int, seconds: float) -> PhaseFigures:
    u0, c0 = await _site_totals(api)
    r = await api.post(
        "/api/addresses", json={"title": "bench", "source": "tone", "zone_ids": [zone], "priority": "live"}
    )
    r.raise_for_status()
    address_id = r.json()["id"]
    await asyncio.sleep(seconds)
    (await api.post(f"/api/addresses/{address_id}/stop")).raise_for_status()
    await asyncio.sleep(2.5)  # the sites' last telemetry of the address
    u1, c1 = await _site_totals(api)
    for _ in range(50):
        with contextlib.suppress(RuntimeError):
            return PhaseFigures(seconds, u1 - u0, c1 - c0, hub_lateness(hub.work / "hub.log", address_id))
        await asyncio.sleep(0.2)
    return PhaseFigures(seconds, u1 - u0, c1 - c0, hub_lateness(hub.work / "hub.log", address_id))


async def _abuse(hub: _Hub, token: str, seconds: float, counts: dict[str, int]) -> None:
    deadline = time.monotonic() + seconds
    hosts = (f"127.{a}.{b}.{c}" for a, b, c in itertools.product(range(20, 250), range(250), range(1, 250)))
    tls = ssl.create_default_context()

    def note(kind: str, status: int) -> None:
        counts[f"{kind}:{status}"] = counts.get(f"{kind}:{status}", 0) + 1

    async def login_guesser(k: int) -> None:
        for i in range(MAX_GUESSES):
            if time.monotonic() > deadline:
                return
            transport = httpx.AsyncHTTPTransport(local_address=next(hosts), verify=tls)
            async with httpx.AsyncClient(base_url=hub.base, transport=transport, timeout=30) as c:
                with contextlib.suppress(httpx.HTTPError):
                    r = await c.post("/api/login", json={"username": f"stranger{k}-{i}", "password": "guess"})
                    note("login", r.status_code)

    async def pin_guesser() -> None:
        async with httpx.AsyncClient(base_url=hub.base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
            for i in range(MAX_GUESSES):
                if time.monotonic() > deadline:
                    return
                body = {"sdp": "v=0\r\n", "type": "offer", "pin": f"{i:06d}"}
                with contextlib.suppress(httpx.HTTPError):
                    note("pin", (await c.post("/api/golive/offer", json=body)).status_code)
                await asyncio.sleep(0.05)

    async def lister() -> None:
        async with httpx.AsyncClient(base_url=hub.base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
            for _ in range(MAX_GUESSES):
                if time.monotonic() > deadline:
                    return
                for path in ("/api/addresses?limit=1000", "/api/sites", "/api/recordings", "/api/fleet"):
                    with contextlib.suppress(httpx.HTTPError):
                        note("list", (await c.get(path)).status_code)

    def big_body() -> int:
        head = (
            b"POST /api/login HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", hub.http_port), timeout=10) as s:
            s.sendall(head)
            with contextlib.suppress(OSError):
                for _ in range(4):
                    s.sendall(b"x" * 2**20)
            with contextlib.suppress(OSError):
                data = s.recv(4096)
                return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
        return 0

    async def big_bodies() -> None:
        for _ in range(MAX_GUESSES):
            if time.monotonic() > deadline:
                return
            note("body", await asyncio.to_thread(big_body))
            await asyncio.sleep(0.1)

    await asyncio.gather(*(login_guesser(k) for k in range(8)), pin_guesser(), lister(), big_bodies())


async def run_abuse_bench(*, sites: int, seconds: float, work: Path | None = None) -> AbuseBenchResult:
    tmp = Path(tempfile.mkdtemp(prefix="citycast-abuse-")) if work is None else work
    tmp.mkdir(parents=True, exist_ok=True)
    hub = _Hub(tmp, verbose=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(hub.start)
        async with httpx.AsyncClient(base_url=hub.base, timeout=60) as api:
            token = await hub.log_in_admin(api)
            zone = (await api.post("/api/zones", json={"name": "bench", "channel": 1})).json()["id"]
            for i in range(sites):
                r = await api.post(
                    "/api/sites", json={"name": f"site-{i}", "lat": 24.86, "lon": 67.02, "zone_id": zone}
                )
                r.raise_for_status()
                log = open(tmp / f"site-{i}.log", "wb")  # noqa: SIM115 - handed to the child
                procs.append(
                    subprocess.Popen(
                        citycast_argv(
                            "site",
                            "--enrol",
                            hub.base,
                            r.json()["enrol_token"],
                            "--config",
                            str(tmp / f"site-{i}.json"),
                            "--sink",
                            "timed",
                            "--talkback-source",
                            str(speech_asset()),
                        ),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
            deadline = time.monotonic() + 60
            while True:
                states = [s["state"] for s in (await api.get("/api/sites")).json()]
                if states.count("idle") == sites:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sites did not come up: {states}")
                await asyncio.sleep(0.5)
            quiet = await _play(api, hub, zone, seconds)
            counts: dict[str, int] = {}
            abuse_task = asyncio.create_task(_abuse(hub, token, seconds + 1, counts))
            try:
                abuse = await _play(api, hub, zone, seconds)
            finally:
                await abuse_task
            abuse.requests = counts
        return AbuseBenchResult(sites, quiet, abuse)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                await asyncio.to_thread(p.wait, 10)
            except subprocess.TimeoutExpired:
                p.kill()
        await asyncio.to_thread(hub.stop)
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)
