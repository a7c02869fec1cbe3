"""The deployed shape as real processes, for `citycast bench-city`: a hub in "london", two city servers in two
"karachi" namespaces each behind its own emulated long-haul path, and N enrolled site agents.

Namespaces (each link is a `citycast.tooling.bench.wan.WanLink`; the second joins the first's "london"):

    root ── veth (API, 10.78.x.0/30) ── london: hub (JWT mode, NATS, leafnode port, HTTPS API)
                                          ├─ path A (10.77.1.0/24, wanA) ── karachia: city server A, the sites
                                          └─ path B (10.77.2.0/24, wanB) ── karachib: city server B
                                       karachia ── veth (the city's LAN, 10.80.0.0/30) ── karachib

The sites live beside city server A and reach B over the city's LAN, so cutting a long-haul path never cuts a
site from a city server, as in a real city. This process talks to the hub as an operator would, over HTTPS
(the hub's own CA) on the API veth: sites are created and enrolled through the API and the console's figures
(site states, counters, alerts, recordings) are read from it.

A path is cut by dropping, in nftables' input hook, whatever arrives over it on both ends: a silent black hole
both ways (the relay keeps running; TCP sees only loss), whichever emulator carries the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import av
import httpx
import psutil

from citycast.bus.tls import client_context
from citycast.tooling.bench.fleet import Fleet, Member, citycast_argv
from citycast.tooling.bench.wan import WanError, WanLink, WanProfile, ns_command

ZONE = "karachi"
HUB_NATS_PORT = 4222
HUB_LEAF_PORT = 7422
HUB_HTTPS_PORT = 8443
CITY_PORT = 4222
CITY_LAN = ("10.80.0.1", "10.80.0.2")  # karachia, karachib
SPEECH_FILE = "speech-loop.opus"


class RigError(RuntimeError):
    pass


def run_ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise RigError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def nft_cut_rules(table: str, dev: str) -> str:
    """An nftables table dropping everything that arrives over `dev` (one end of a cut path)."""
    return (
        f"table inet {table} {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n"
        f'  iifname "{dev}" drop\n }}\n}}\n'
    )


def write_looped_speech(out: Path, seconds: float) -> float:
    """The bundled speech clip repeated to last at least `seconds`, remuxed (never re-encoded) into Ogg Opus.

    Returns the file's length in seconds."""
    src = av.open(str(resources.files("citycast") / "assets" / "speech.opus"))
    try:
        stream = src.streams.audio[0]
        packets = [(bytes(p), int(p.duration or 960)) for p in src.demux(stream) if p.size]
        clip = sum(d for _, d in packets)
        loops = max(1, int(seconds * 48000 // clip) + 1)
        dst = av.open(str(out), "w", format="ogg")
        try:
            ostream = dst.add_stream_from_template(stream)
            pts = 0
            for _ in range(loops):
                for data, dur in packets:
                    pkt = av.Packet(data)
                    pkt.pts = pkt.dts = pts
                    pkt.duration = dur
                    pkt.time_base = Fraction(1, 48000)
                    pkt.stream = ostream
                    dst.mux(pkt)
                    pts += dur
        finally:
            dst.close()
    finally:
        src.close()
    return loops * clip / 48000


@dataclass
class SiteProc:
    name: str
    config: Path
    city: int  # the city server it dials until sites take several uplinks
    member: Member | None = None
    incarnation: int = 0


@dataclass
class CityRig:
    """Builds and runs the topology; every process is a `Fleet` member, stopped with it."""

    profile: WanProfile
    sites: int
    work: Path
    delay_ms: float
    seed: int = 1
    links: list[WanLink] = field(default_factory=list)
    fleet: Fleet | None = None
    hub: Member | None = None
    cities: list[Member | None] = field(default_factory=lambda: [None, None])
    site_procs: list[SiteProc] = field(default_factory=list)
    api: httpx.Client | None = None
    zone_id: int = 0
    api_ip: str = ""
    multi_uplink: bool = False
    rto_min_ms: float | None = None  # TCP's lowest retransmission timeout on both long-haul routes (None: 200 ms)
    time_peer: bool = True  # city server B's responder follows A's over the city's LAN (`city --time-peer`)
    # Odd sites list city server B first, so half the sites take their clock from each responder: what a city
    # gets when its sites reach different city servers first; it measures how well the two responders agree.
    clock_split: bool = False
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _cut: set[int] = field(default_factory=set)

    # -- building ---------------------------------------------------------------------------------------------
    def __enter__(self) -> CityRig:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
            self.api = None
        self._stack.close()

    @property
    def london(self) -> str:
        return self.links[0].west_ns

    def karachi(self, city: int) -> str:
        return self.links[city].east_ns

    def _build(self) -> None:
        a = self._stack.enter_context(WanLink(self.profile, seed=self.seed, east_name="karachia",
                                              subnet="10.77.1", dev="wanA", rto_min_ms=self.rto_min_ms))  # fmt: skip
        self.links.append(a)
        b = self._stack.enter_context(WanLink(self.profile, seed=self.seed + 1, join_west=a.west_ns,
                                              east_name="karachib", subnet="10.77.2", dev="wanB",
                                              rto_min_ms=self.rto_min_ms))  # fmt: skip
        self.links.append(b)
        # Both ends of every veth sit in our namespaces (or one in root, deleted with its peer), so deleting the
        # namespaces removes them whatever happened.
        lan = f"cl{secrets.token_hex(3)}"
        run_ip("-n", a.east_ns, "link", "add", "name", lan, "type", "veth", "peer", "name", lan, "netns", b.east_ns)
        for ns, ip in ((a.east_ns, CITY_LAN[0]), (b.east_ns, CITY_LAN[1])):
            run_ip("-n", ns, "addr", "add", f"{ip}/30", "dev", lan)
            run_ip("-n", ns, "link", "set", "dev", lan, "up")
        octet = secrets.randbelow(250) + 1
        root_dev = f"ca{secrets.token_hex(3)}"
        run_ip("link", "add", "name", root_dev, "type", "veth", "peer", "name", "api0", "netns", a.west_ns)
        run_ip("addr", "add", f"10.78.{octet}.1/30", "dev", root_dev)
        run_ip("link", "set", "dev", root_dev, "up")
        run_ip("-n", a.west_ns, "addr", "add", f"10.78.{octet}.2/30", "dev", "api0")
        run_ip("-n", a.west_ns, "link", "set", "dev", "api0", "up")
        self.api_ip = f"10.78.{octet}.2"
        self.fleet = self._stack.enter_context(Fleet(self.work / "logs"))
        (self.work / "hub" / "media").mkdir(parents=True, exist_ok=True)

    # -- the hub --------------------------------------------------------------------------------------------
    def hub_argv(self) -> list[str]:
        a, b = self.links
        return citycast_argv(
            "serve", "--data-dir", str(self.work / "hub"), "--listen", f"0.0.0.0:{HUB_NATS_PORT}",
            "--leaf-listen", str(HUB_LEAF_PORT), "--http", "127.0.0.1:8000",
            "--https", f"{self.api_ip}:{HUB_HTTPS_PORT}", "--tls-name", a.west_ip, "--tls-name", b.west_ip,
            "--public-nats", f"nats://127.0.0.1:{CITY_PORT}", "--public-nats", f"nats://{CITY_LAN[1]}:{CITY_PORT}",
            "--delay-ms", f"{self.delay_ms:g}",
        )  # fmt: skip

    def start_hub(self, timeout: float = 90.0) -> None:
        assert self.fleet is not None
        self.hub = self.fleet.spawn("hub", "hub", self.hub_argv(), ns_command(self.london, []))
        self.wait_api(timeout)

    def stop_hub(self) -> None:
        """SIGTERM, as systemd stops it: the hub closes its addresses and recordings, then exits."""
        assert self.fleet is not None
        self.fleet.stop("hub", timeout=30)
        self.fleet.members = [m for m in self.fleet.members if m.role != "hub"]
        self.hub = None

    def wait_api(self, timeout: float) -> None:
        url = f"https://{self.api_ip}:{HUB_HTTPS_PORT}"
        ca = self.work / "hub" / "tls" / "ca.pem"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if ca.exists():
                ctx = client_context(ca.read_text())
                with contextlib.suppress(httpx.HTTPError, ssl.SSLError):
                    if httpx.get(url + "/api/health", verify=ctx, timeout=2).status_code == 200:
                        if self.api is None:
                            self.api = httpx.Client(base_url=url, verify=ctx, timeout=20)
                            self._login()
                        else:
                            self._login()
                        return
            time.sleep(0.2)
        raise RigError(f"the hub's API did not answer in {timeout:.0f} s; see {self.work / 'logs' / 'hub.log'}")

    def _login(self) -> None:
        assert self.api is not None
        password = (self.work / "hub" / "initial-admin-password").read_text().strip()
        r = self.api.post("/api/login", json={"username": "admin", "password": password})
        r.raise_for_status()
        self.api.headers["Authorization"] = f"Bearer {r.json()['token']}"

    # -- city servers ---------------------------------------------------------------------------------------
    def make_bundles(self) -> None:
        for i, names in enumerate((["127.0.0.1", CITY_LAN[0]], ["127.0.0.1", CITY_LAN[1]])):
            argv = citycast_argv("city-bundle", "--zone", ZONE, "--out", str(self.work / f"city-{i}.bundle.json"),
                                 "--data-dir", str(self.work / "hub"))  # fmt: skip
            for n in names:
                argv += ["--tls-name", n]
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            if p.returncode != 0:
                raise RigError(f"citycast city-bundle failed: {p.stderr.strip()}")

    def start_city(self, i: int) -> None:
        assert self.fleet is not None
        argv = citycast_argv(
            "city", "--zone", ZONE, "--city-bundle", str(self.work / f"city-{i}.bundle.json"),
            "--leaf-remote", f"nats://{self.links[i].west_ip}:{HUB_LEAF_PORT}", "--time-upstream",
            "--listen", f"0.0.0.0:{CITY_PORT}", "--data-dir", str(self.work / f"city-{i}"),
        )  # fmt: skip
        if i == 1 and self.time_peer:
            argv += ["--time-peer", f"nats://{CITY_LAN[0]}:{CITY_PORT}"]
        self.cities[i] = self.fleet.spawn(f"city-{i}", f"city-{i}", argv, ns_command(self.karachi(i), []))

    def kill_city(self, i: int) -> None:
        """SIGKILL the city server and its nats-server: the box lost power."""
        m = self.cities[i]
        if m is not None:
            kill_tree(m)
            assert self.fleet is not None
            self.fleet.members.remove(m)
        self.cities[i] = None

    def city_url(self, i: int) -> str:
        return f"nats://{'127.0.0.1' if i == 0 else CITY_LAN[1]}:{CITY_PORT}"

    # -- long-haul paths ------------------------------------------------------------------------------------
    def cut(self, path: int, down: bool) -> None:
        """Black-hole path `path` (0: A, 1: B) both ways, or restore it."""
        link = self.links[path]
        table = f"cc_cut_{path}"
        for ns in (link.west_ns, link.east_ns):
            if down:
                p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft_cut_rules(table, link.dev),
                                   capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
            else:
                p = subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table],
                                   capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
            if p.returncode != 0:
                raise RigError(f"nft in {ns} failed: {p.stderr.strip()}")
        if down:
            self._cut.add(path)
        else:
            self._cut.discard(path)

    # -- sites ----------------------------------------------------------------------------------------------
    def enrol_sites(self) -> None:
        """Zone and sites through the API, each enrolled with its one-time token over HTTPS (as `citycast site
        --enrol` does); each site then dials its city server(s)."""
        import asyncio

        from citycast.site.enrol import enrol

        assert self.api is not None
        r = self.api.post("/api/zones", json={"name": ZONE, "channel": 1})
        r.raise_for_status()
        self.zone_id = int(r.json()["id"])
        if self.multi_uplink:
            # As an operator lists a zone's city servers: enrolment then hands each site all of them.
            urls = [self.city_url(0), self.city_url(1)]
            r = self.api.patch(f"/api/zones/{self.zone_id}", json={"city_servers": urls})
            r.raise_for_status()
        tokens = []
        for i in range(self.sites):
            name = f"site-{i:03d}"
            body = {"name": name, "lat": 24.86 + i * 1e-3, "lon": 67.02, "zone_id": self.zone_id}
            r = self.api.post("/api/sites", json=body)
            r.raise_for_status()
            tokens.append((name, str(r.json()["enrol_token"])))
        base = f"https://{self.api_ip}:{HUB_HTTPS_PORT}"
        sites_dir = self.work / "sites"

        async def enrol_all() -> None:
            for name, token in tokens:
                await enrol(base, token, sites_dir / name / "site.json")

        asyncio.run(enrol_all())
        for i, (name, _) in enumerate(tokens):
            sp = SiteProc(name, sites_dir / name / "site.json", city=i % 2)
            self._point_at_cities(sp)
            self.site_procs.append(sp)

    def _point_at_cities(self, sp: SiteProc) -> None:
        """The enrolment answer names every city server (the hub's --public-nats); a site with one uplink dials
        its own city server, one with several dials all, in the zone's order as enrolment hands it to every site:
        their clocks then all follow the same city's time responder, whose long-haul error moves the whole city
        together (with an own-first order the hour's soak saw two groups of sites by sync error, 0.05 and 0.4 ms)."""
        data: dict[str, Any] = json.loads(sp.config.read_text())
        own = self.city_url(sp.city)
        order = [self.city_url(0), self.city_url(1)]
        if self.clock_split and sp.city == 1:
            order.reverse()
        data["nats_urls"] = order if self.multi_uplink else [own]
        if "city_servers" in data:
            data["city_servers"] = data["nats_urls"]
        sp.config.write_text(json.dumps(data, indent=1))
        os.chmod(sp.config, 0o600)

    def start_site(self, sp: SiteProc, fallback: Path) -> None:
        assert self.fleet is not None
        wav = self.work / "wav" / f"{sp.name}.r{sp.incarnation}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        argv = citycast_argv("site", "--config", str(sp.config), "--sink", "timed", "--wav", str(wav),
                             "--fallback", str(fallback), "--time-zone", ZONE)  # fmt: skip
        sp.member = self.fleet.spawn(sp.name, f"{sp.name}.r{sp.incarnation}", argv, ns_command(self.karachi(0), []))
        sp.incarnation += 1

    def kill_site(self, sp: SiteProc) -> None:
        """SIGKILL the site agent (a crash, or the box losing power)."""
        if sp.member is not None:
            kill_tree(sp.member)
            assert self.fleet is not None
            self.fleet.members.remove(sp.member)
        sp.member = None

    # -- watching -------------------------------------------------------------------------------------------
    def check_alive(self) -> None:
        assert self.fleet is not None
        bad = self.fleet.failed()
        if bad:
            raise RigError(f"{bad[0].name} exited with an error:\n{self.fleet.log_tail(bad[0], 25)}")

    def get(self, path: str) -> Any:
        """GET from the hub's API; None while the hub is down or slow."""
        if self.api is None:
            return None
        try:
            r = self.api.get(path, timeout=5)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None


def kill_tree(m: Member) -> None:
    """SIGKILL a member and everything it started (a city server's nats-server), by pid."""
    try:
        proc = psutil.Process(m.pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    if m.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.popen.wait(timeout=10)
    psutil.wait_procs(procs, timeout=5)


__all__ = ["CityRig", "RigError", "SiteProc", "WanError", "kill_tree", "nft_cut_rules", "write_looped_speech"]
