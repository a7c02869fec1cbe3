"""What tests share: waiting for a condition, clients on an authenticated bus, a city leaf topology, the hub API
and the console hub the fixtures serve, a listener in a process of its own. Tests import this module, never each
other or a conftest (fixtures live in the conftest files, the classes and functions they use live here).

Waiting: `wait_until` (async) and `wait_until_sync` poll a condition and fail with an `AssertionError` naming what
was awaited. A sleep that is the point of a test (letting time pass to show that nothing arrives) is spelt
`let_time_pass`, so that every other sleep in a test stands out as a synchronisation to be replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import nats
import numpy as np
import pytest
import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority
from citycast.bus.city_bundle import CityBundle, CityFiles
from citycast.bus.jwt import KeyKind
from citycast.bus.server import EmbeddedNats, free_port
from citycast.protocol.subjects import Subjects
from citycast.protocol.telemetry import Telemetry

if TYPE_CHECKING:  # types only: importing the hub here would load it for every test
    from citycast.hub.context import HubContext
    from citycast.hub.db.models import Role
    from citycast.hub.runtime import Hub
    from citycast.site.agent import SiteAgent

T = TypeVar("T")

SUBJECTS = Subjects()

# -- waiting -------------------------------------------------------------------------------------------------------


def _failure(what: str, timeout: float, detail: Callable[[], object] | None) -> AssertionError:
    message = f"timed out after {timeout:g} s waiting for {what}"
    if detail is not None:
        message += f" ({detail()})"
    return AssertionError(message)


async def wait_until(
    cond: Callable[[], object],
    what: str,
    *,
    timeout: float = 10.0,
    every: float = 0.02,
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll `cond` until it is truthy; fail naming `what` (and `detail()`, evaluated then) after `timeout` s.

    `cond` may return an awaitable (an API call), which is awaited. The condition is checked once more at the
    deadline, so a slow loop never fails a condition that holds."""

    async def holds() -> bool:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    deadline = time.monotonic() + timeout
    while not await holds():
        if time.monotonic() >= deadline:
            if await holds():
                return
            raise _failure(what, timeout, detail)
        await asyncio.sleep(every)


def wait_until_sync(
    cond: Callable[[], object],
    what: str,
    *,
    timeout: float = 10.0,
    every: float = 0.05,
    detail: Callable[[], object] | None = None,
) -> None:
    """`wait_until` for a test that runs no event loop in its thread (browser tests, threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            if cond():
                return
            raise _failure(what, timeout, detail)
        time.sleep(every)


async def let_time_pass(seconds: float) -> None:
    """Let `seconds` pass on purpose: what a test then checks is that nothing happened meanwhile (no message, no
    second tick). Not a synchronisation: wait on the event with `wait_until` for that."""
    await asyncio.sleep(seconds)


async def wait_for_log(server: EmbeddedNats, text: str, count: int = 1, timeout: float = 10.0) -> None:
    """Wait until the server's log holds `text` at least `count` times."""
    await wait_until(
        lambda: server.log_text().count(text) >= count,
        f"{text!r} {count}x in the nats-server log",
        timeout=timeout,
        every=0.05,
        detail=lambda: server.log_tail(12),
    )


class SetClock:
    """A clock someone else sets: the wall clock plus `offset_ns`. A site's system clock when its time daemon is
    lied to, or the clock a hostile time responder serves."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def now_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def at(self, true_ns: int) -> int:
        """What this clock reads when the wall clock reads `true_ns`."""
        return true_ns + self.offset_ns


# -- an authenticated bus (operator/JWT mode) ----------------------------------------------------------------------


def start_auth_nats(authority: NatsAuthority, workdir: Path, port: int | None = None, **options: Any) -> EmbeddedNats:
    """A started nats-server in operator mode trusting `authority` (stop it yourself; fixtures do)."""
    server = EmbeddedNats(port=port or free_port(), workdir=workdir, auth_config=authority.server_config(), **options)
    server.start()
    return server


@dataclass
class Watched:
    """A client connection whose async errors (permission violations) and closing are recorded."""

    nc: Client
    errors: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]


async def connect(url: str, creds: Path, inbox_prefix: str | None = None) -> Watched:
    """A connection that does not reconnect, so a server's refusal shows as an error and a close."""
    errors: list[str] = []
    closed = asyncio.Event()

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    async def on_closed() -> None:
        closed.set()

    options: dict[str, object] = {"inbox_prefix": inbox_prefix} if inbox_prefix else {}
    nc = await nats.connect(
        url,
        user_credentials=str(creds),
        error_cb=on_error,
        closed_cb=on_closed,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        connect_timeout=3,
        **options,
    )
    return Watched(nc, errors, closed)


async def nothing_arrives(sub: Subscription, wait: float = 0.5) -> bool:
    """True if no message arrives on `sub` for `wait` s (the wait is the point); fails naming one that does."""
    try:
        msg = await sub.next_msg(timeout=wait)
    except nats.errors.TimeoutError:
        return True
    raise AssertionError(f"unexpected message on {msg.subject}: {msg.data[:60]!r}")


async def request_answered(nc: Client, subject: str, timeout: float = 5.0) -> Msg:
    """A request retried until a responder's interest has reached the requester's server and account.

    A subscription flushed on one connection is not always matched by the next request from another at once:
    across a leaf, and now and then in JWT mode on one nats-server 2.15, the first request gets "no responders".
    A subject the requester may not publish on never gets an answer, so retrying hides no permission fault.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nc.request(subject, b"t1", timeout=0.3)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def site_creds(authority: NatsAuthority, site: str, dir: Path, subjects: Subjects = SUBJECTS) -> tuple[Path, str]:
    """What enrolment gives a site: its own seed, a JWT minted for its public key, as a creds file.

    Returns the creds file and the site's public key."""
    seed = jwt.new_seed(KeyKind.USER)
    token = authority.mint_site_jwt(site, jwt.public_key(seed), subjects)
    path = dir / f"{site}.creds"
    jwt.write_private(path, jwt.creds_text(token, seed))
    return path, jwt.public_key(seed)


@dataclass
class Topology:
    """A hub nats-server listening for leafnodes and a city server run from the hub's city bundle, dialling it
    (the `topology` fixture)."""

    authority: NatsAuthority
    hub: EmbeddedNats
    city: EmbeddedNats
    bundle: CityBundle
    files: CityFiles
    dir: Path


# -- the hub API --------------------------------------------------------------------------------------------------

PASSWORD = "correct horse battery"  # every user the `api` fixture makes has it


@dataclass
class Api:
    """The hub API the `api` fixture (tests/hub/api/conftest.py) serves, and clients for it."""

    ctx: HubContext
    base_url: str
    nats: EmbeddedNats
    authority: NatsAuthority
    tokens: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/api/ws"

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=15.0)
        self._clients.append(c)
        return c

    async def login(self, username: str, password: str = PASSWORD) -> str:
        r = await self.client().post("/api/login", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    async def as_role(self, role: Role | str) -> httpx.AsyncClient:
        """A client logged in as the fixture's user of that role (named after it)."""
        from citycast.hub.db.models import Role  # here: importing the hub's models would load them for every test

        name = Role(role).value
        if name not in self.tokens:
            self.tokens[name] = await self.login(name)
        return self.client(self.tokens[name])

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()


def telemetry(site: str, **over: Any) -> Telemetry:
    """A healthy site's report; override what the test is about."""
    base: dict[str, Any] = {
        "site": site,
        "ts_ns": 1,
        "state": "idle",
        "channel": 0,
        "buffer_ms": 80.0,
        "clock_offset_ms": 0.0,
        "clock_drift_ppm": 0.0,
        "clock_error_ms": 0.1,
        "sync_error_ms": 0.2,
        "tracking_error_ms": 0.1,
        "resample_ppm": 0.0,
        "underruns": 0,
        "concealed": 0,
        "late": 0,
        "rejected": {},
        "level_rms_dbfs": -30.0,
        "level_peak_dbfs": -10.0,
        "link_rtt_ms": 5.0,
        "sink_xruns": 0,
        "resyncs": 0,
        "frames": 0,
    }
    return Telemetry(**(base | over))


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), "uvicorn to start", timeout=5)
    if task.done():
        task.result()  # its error, if it failed to start
    assert server.started, "uvicorn did not start"
    return server, task, f"http://127.0.0.1:{port}"


# -- the console in a browser --------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class ConsoleHub:
    """The hub the console tests drive (the `console_hub` fixture): it runs on a loop in a thread of its own, so
    that a browser can own the test's thread; `call(coro)` runs a coroutine there."""

    url: str
    admin_password: str
    zone_ids: dict[str, int]
    sites_by_zone: dict[str, list[str]]
    loop: asyncio.AbstractEventLoop
    hub: Hub
    agents: list[SiteAgent] = field(default_factory=list)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def site_names(self) -> list[str]:
        return [n for names in self.sites_by_zone.values() for n in names]

    @contextlib.contextmanager
    def api(self) -> Iterator[httpx.Client]:
        """An admin HTTP client on the hub (to check what the console did, from the API's side)."""
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            r = client.post("/api/login", json={"username": "admin", "password": self.admin_password})
            r.raise_for_status()
            client.headers["Authorization"] = f"Bearer {r.json()['token']}"
            yield client


# -- a listener in a process of its own ----------------------------------------------------------------------------

LISTENER = """
import asyncio, json, sys, time
from pathlib import Path
from citycast.bus.connection import connect
from citycast.protocol.frame import parse_frame

async def main(url, creds, channel, seconds):
    nc = await connect(url, name="test-listener", creds=Path(creds), forever=False)
    heard = []

    async def on_msg(msg):
        now = time.time_ns()
        frame, _ = parse_frame(msg.data)
        heard.append((frame.stream, frame.seq, len(frame.packets), (now - frame.end_ns) / 1e6))

    await nc.subscribe(f"citycast.audio.{channel}", cb=on_msg)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await nc.close()
    print(json.dumps(heard), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


class Heard:
    """What the listener heard on a channel: each message's lateness (ms after the end of its audio) and the
    packets missing between the first and the last it heard."""

    def __init__(self, rows: list[list[Any]]) -> None:
        assert rows, "the listener heard nothing"
        assert len({r[0] for r in rows}) == 1, "more than one stream on the channel"
        self.late = [float(r[3]) for r in rows]
        first, last = min(r[1] for r in rows), max(r[1] + r[2] for r in rows)
        self.missing = (last - first) - sum(int(r[2]) for r in rows)

    def __str__(self) -> str:
        late = self.late
        return (
            f"{len(late)} messages, {self.missing} packets missing, lateness p50 {np.median(late):.1f} "
            f"p99 {np.percentile(late, 99):.1f} max {max(late):.1f} ms"
        )


async def listen(nats_url: str, creds: Path, channel: int, seconds: float, ready: asyncio.Event | None = None) -> Heard:
    """Listen to `channel` for `seconds` from a process of its own (nothing a test does to the hub's loop, or its
    own, can delay the measurement); `ready` is set once it is subscribed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LISTENER, nats_url, str(creds), str(channel), str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(seconds + 30):
        assert (await proc.stdout.readline()).strip() == b"ready"
        if ready is not None:
            ready.set()
        out, _ = await proc.communicate()
    return Heard(json.loads(out))


def need_binary(binary: str) -> str:
    """The path of a Debian tool a test needs: skipped where missing, failed in CI (where set-up installs it)."""
    path = shutil.which(binary)
    if path is None:
        reason = f"`{binary}` not installed (scripts/setup.sh installs the Debian packages the tests need)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@contextlib.contextmanager
def private_pulseaudio(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon with a 48 kHz null sink `cc_null`; yields the client environment."""
    pulseaudio = need_binary("pulseaudio")
    runtime = tmp_path / "pulse-runtime"
    runtime.mkdir(mode=0o700)
    socket = tmp_path / "native"
    env = dict(os.environ)
    env.update(PULSE_RUNTIME_PATH=str(runtime), XDG_RUNTIME_DIR=str(runtime), HOME=str(tmp_path))
    env.pop("PULSE_SERVER", None)
    log = (tmp_path / "pulseaudio.log").open("wb")
    daemon = subprocess.Popen(
        [
            pulseaudio,
            "--daemonize=no",
            "--system=false",
            # Real-time sink threads, as rtkit gives a desktop's: on a loaded box without them the null sink renders
            # late and its latency reports wander by milliseconds (tests/media/test_pulse_sink.py).
            "--realtime=yes",
            "--high-priority=yes",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "-n",
            "--load=module-null-sink sink_name=cc_null rate=48000 channels=2",
            f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
            "--log-target=stderr",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"pulseaudio did not start:\n{(tmp_path / 'pulseaudio.log').read_text()[-2000:]}")
            time.sleep(0.05)
        env.update(PULSE_SERVER=f"unix:{socket}", PULSE_SINK="cc_null", PULSE_SOURCE="cc_null.monitor")
        yield env
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        log.close()


def fresh_interpreter(code: str) -> str:
    """Run `code` in a new Python (as a site's process starts: nothing imported yet) and return what it printed.
    For checks of what a path imports, which the test process itself, having imported everything, cannot make."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
