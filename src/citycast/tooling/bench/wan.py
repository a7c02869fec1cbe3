"""WAN emulation for `citycast bench --wan PROFILE`: kernel netem where the kernel has it, a userspace relay otherwise.

Two network namespaces, "london" (the hub side) and "karachi" (the city side), each with a device `wan0`
(10.77.0.1/24 and 10.77.0.2/24), joined by one of two emulators (see docs/benchmarks.md, "WAN emulation"):

- **netem**: a veth pair, one end in each namespace, and on each end's egress
  `tc qdisc add dev wan0 root netem limit N delay D J loss random L%` (`netem_commands`), so each direction gets
  the profile's delay, uniform jitter and independent loss from the kernel.
- **relay**: where the kernel has no `sch_netem` (the development machine has none), one TUN device per
  namespace. The TUN devices are opened in the root namespace (so this process holds their file descriptors) and
  then moved into their namespaces. A relay child process owns both descriptors: it reads each IP packet from one,
  and writes it to the other after a delay drawn uniformly from the profile's range, dropping a share of packets,
  independently in each direction (the sans-IO core is `citycast.tooling.bench.relay.DelayLine`). The relay runs
  in its own process, not a thread, so the GIL of a busy benchmark process cannot delay packets.

`WanLink(emulator="auto")` picks netem when `netem_available()` (a netem qdisc added on a veth in a throwaway
namespace) says the kernel accepts it, the relay otherwise; `WanLink.emulator` and `stats()["emulator"]` say
which one ran.

Cleanup: `WanLink.__exit__` stops the relay and deletes the namespaces (the veth or TUN devices vanish with them),
also after exceptions; an `atexit` hook and SIGTERM/SIGHUP handlers do the same when the benchmark is killed;
`cleanup_stale()` removes namespaces left behind by runs that died harder (SIGKILL). Namespace names carry the
owning PID: `cc-<pid>-<rand>-london`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import random
import re
import secrets
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from citycast.tooling.bench.relay import DEFAULT_MAX_QUEUED, DelayLine, LatencyRecorder

NETNS_DIR = "/run/netns"
TUN_PATH = "/dev/net/tun"
DEFAULT_PREFIX = "cc-"
WEST_IP = "10.77.0.1"
EAST_IP = "10.77.0.2"
PREFIX_LEN = 24
MTU = 1500
DEV_NAME = "wan0"  # name of the TUN device inside each namespace

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_PR_SET_PDEATHSIG = 1
_PR_SET_TIMERSLACK = 29
_RT_PRIORITY = 10


class WanError(RuntimeError):
    """WAN emulation cannot be set up (or torn down)."""


@dataclass(frozen=True)
class WanProfile:
    """One-way delay `delay_ms ± jitter_ms` (uniform) and independent random loss; same both directions."""

    name: str
    delay_ms: float
    jitter_ms: float
    loss: float

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.jitter_ms > self.delay_ms:
            raise ValueError(f"profile {self.name!r}: need 0 <= jitter_ms <= delay_ms")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"profile {self.name!r}: loss must be in [0, 1)")

    @property
    def emulated(self) -> bool:
        """False for the loopback profile: the benchmark then runs on plain loopback, without a WanLink."""
        return self.delay_ms > 0 or self.loss > 0

    @property
    def rtt_ms(self) -> float:
        """Nominal round-trip time (two mean one-way delays)."""
        return 2 * self.delay_ms


PROFILES: dict[str, WanProfile] = {
    p.name: p
    for p in (
        WanProfile("none", 0.0, 0.0, 0.0),
        WanProfile("loopback", 0.0, 0.0, 0.0),
        WanProfile("london-karachi", 70.0, 10.0, 0.01),
        WanProfile("cellular-bad", 120.0, 40.0, 0.05),
    )
}


def get_profile(name: str) -> WanProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise WanError(f"unknown WAN profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


def ns_command(ns: str, argv: list[str]) -> list[str]:
    """The argv that runs `argv` inside network namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


EMULATORS = ("auto", "netem", "relay")


def netem_qdisc_args(profile: WanProfile, dev: str = DEV_NAME, limit: int = DEFAULT_MAX_QUEUED) -> list[str]:
    """The `tc` arguments that give `dev`'s egress the profile's one-way delay, jitter and loss.

    Times in whole microseconds, so no float formatting reaches `tc`. No `distribution` keyword: without a table
    the kernel draws the jitter uniformly, as the relay does (iproute2 ships no `uniform.dist` to name).
    `limit` is the relay's queue bound: netem's default (1,000 packets) would tail-drop a busy 70 ms path.
    """
    if not profile.emulated:
        raise ValueError(f"profile {profile.name!r} emulates nothing")
    if limit < 1:
        raise ValueError("limit must be >= 1")
    args = ["qdisc", "add", "dev", dev, "root", "netem", "limit", str(limit)]
    args += ["delay", f"{round(profile.delay_ms * 1000)}us"]
    if profile.jitter_ms:
        args.append(f"{round(profile.jitter_ms * 1000)}us")
    if profile.loss:
        args += ["loss", "random", f"{profile.loss * 100:.6g}%"]
    return args


def netem_commands(
    profile: WanProfile, west_ns: str, east_ns: str, dev: str = DEV_NAME, limit: int = DEFAULT_MAX_QUEUED
) -> list[list[str]]:
    """The `tc` argvs for both ends of the veth: each end shapes what leaves its namespace, so each direction
    gets the profile once (west's egress is west → east, east's is east → west)."""
    return [["tc", "-n", ns, *netem_qdisc_args(profile, dev, limit)] for ns in (west_ns, east_ns)]


def veth_command(west_ns: str, east_ns: str, dev: str = DEV_NAME) -> list[str]:
    """The `ip` argv that creates the veth pair with one end `dev` in each namespace (no end ever sits in the
    root namespace, so deleting the namespaces removes it whatever happened)."""
    return ["ip", "-n", west_ns, "link", "add", "name", dev, "type", "veth", "peer", "name", dev, "netns", east_ns]


def netem_stats(tc_json: str) -> dict[str, int]:
    """`forwarded`/`dropped` of the netem qdisc in `tc -s -j qdisc show` output (packets sent, packets dropped
    by loss or a full queue); zeros when there is none."""
    try:
        qdiscs = json.loads(tc_json)
    except ValueError:
        qdiscs = []
    for q in qdiscs if isinstance(qdiscs, list) else []:
        if isinstance(q, dict) and q.get("kind") == "netem":
            return {"forwarded": int(q.get("packets", 0)), "dropped": int(q.get("drops", 0))}
    return {"forwarded": 0, "dropped": 0}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise WanError(f"the `{argv[0]}` command (iproute2) is not installed") from None


def netem_available(prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether this kernel accepts a netem qdisc: try one on a veth in a throwaway namespace, then delete it.

    Needs root. False when `tc` is missing or the kernel refuses (no `sch_netem`, as on the development
    machine); the namespace is named like a run's (`<prefix><pid>-<hex>-probe`), so `cleanup_stale` removes it
    should this process die in between.
    """
    require_root()
    ns = f"{prefix}{os.getpid()}-{secrets.token_hex(2)}-probe"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1")
        try:
            proc = _run(["tc", "-n", ns, "qdisc", "add", "dev", "probe0", "root", "netem", "delay", "1ms"])
        except WanError:
            return False
        return proc.returncode == 0
    finally:
        _delete_ns(ns)


def choose_emulator(requested: str, netem_ok: Callable[[], bool] = netem_available) -> str:
    """`netem` or `relay` for a requested `auto`/`netem`/`relay`; only `auto` asks the kernel."""
    if requested not in EMULATORS:
        raise WanError(f"unknown WAN emulator {requested!r}; known: {', '.join(EMULATORS)}")
    if requested != "auto":
        return requested
    return "netem" if netem_ok() else "relay"


def require_root() -> None:
    if os.geteuid() != 0:
        raise WanError(
            "--wan needs root (network namespaces and TUN devices); "
            "run as root, or use --wan none to benchmark over loopback"
        )
    if not os.path.exists(TUN_PATH):
        raise WanError(f"--wan needs root (network namespaces and TUN devices): {TUN_PATH} is missing")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise WanError("the `ip` command (iproute2) is not installed") from None
    if check and proc.returncode != 0:
        raise WanError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _open_tun(name: str) -> int:
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except OSError as exc:
        os.close(fd)
        raise WanError(f"cannot create TUN device {name}: {exc}") from exc
    return fd


def _ns_pids(ns: str) -> list[int]:
    proc = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_processes(ns: str, grace_s: float = 1.0) -> None:
    """End processes still running inside one of our namespaces (TERM, then KILL after `grace_s`)."""
    pids = _ns_pids(ns)
    if not pids:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_ns(ns: str) -> None:
    if not os.path.exists(os.path.join(NETNS_DIR, ns)):
        return
    _kill_ns_processes(ns)
    proc = _ip("netns", "del", ns, check=False)
    if proc.returncode != 0 and os.path.exists(os.path.join(NETNS_DIR, ns)):
        raise WanError(f"cannot delete namespace {ns}: {proc.stderr.strip()}")


def list_namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces `<prefix><pid>-<hex>-<side>` whose owning process is gone; return the deleted names.

    Namespaces with the prefix but another naming scheme, or whose owner still runs, are left alone.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-[0-9a-f]+-[a-z]+$")
    deleted: list[str] = []
    for ns in list_namespaces(prefix):
        m = pattern.match(ns)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        _delete_ns(ns)
        deleted.append(ns)
    return deleted


class WanLink:
    """Two namespaces joined by an emulated WAN path; a synchronous context manager.

    `west_ns` is the ingest/hub side ("london"), `east_ns` the sites side ("karachi"). Run processes inside
    them with `ns_command(link.east_ns, argv)`. `emulator` is `auto` (netem if the kernel has it, else the
    relay), `netem` or `relay`; after entering, `link.emulator` says which one runs. `seed` makes the relay's
    delay and loss draws reproducible (netem draws from the kernel's generator); `max_queued` bounds the packets
    waiting in either. `join_west` names an existing namespace (another link's `west_ns`) to use as this link's
    west side instead of making one: a second path from the same "london", on its own `subnet` (`A.B.C`, the
    ends get .1 and .2) and device `dev` there, and an east namespace named `east_name`.
    """

    def __init__(
        self,
        profile: WanProfile,
        *,
        seed: int | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_seconds: float = 24 * 3600.0,
        max_queued: int = DEFAULT_MAX_QUEUED,
        realtime: bool = True,
        emulator: str = "auto",
        join_west: str | None = None,
        east_name: str = "karachi",
        subnet: str = "10.77.0",
        dev: str = DEV_NAME,
        rto_min_ms: float | None = None,
    ) -> None:
        if emulator not in EMULATORS:
            raise WanError(f"unknown WAN emulator {emulator!r}; known: {', '.join(EMULATORS)}")
        self.profile = profile
        self.emulator = emulator
        self.realtime = realtime
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.max_seconds = max_seconds
        self.max_queued = max_queued
        run = f"{prefix}{os.getpid()}-{secrets.token_hex(2)}"
        # A second path into the same "london" (`join_west`: a namespace another link made and will delete)
        # needs its own subnet and device name there, so the two paths are two routes, not one address twice.
        self._join_west = join_west
        self.west_ns = join_west or f"{run}-london"
        self.east_ns = f"{run}-{east_name}"
        self.west_ip = f"{subnet}.1"
        self.east_ip = f"{subnet}.2"
        self.dev = dev
        # TCP's lowest retransmission timeout on the path's route at both ends (`ip route ... rto_min`), as an
        # operator would set it on the hub and the city servers; None leaves the kernel's 200 ms.
        self.rto_min_ms = rto_min_ms
        self._subnet = subnet
        self._tun_names = {"west": f"cc{secrets.token_hex(4)}w", "east": f"cc{secrets.token_hex(4)}e"}
        self._created_ns: list[str] = []
        self._fds: list[int] = []
        self._relay: subprocess.Popen[bytes] | None = None
        self._ctrl_w: int | None = None  # parent → relay commands
        self._reply_r: int | None = None  # relay → parent replies
        self._reply_buf = b""
        self._last_stats: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._entered = False
        self._prev_handlers: dict[int, Any] = {}
        self._atexit_registered = False

    # -- context manager -------------------------------------------------------------------------------------

    def __enter__(self) -> WanLink:
        if self._entered:
            raise WanError("a WanLink can be entered only once")
        self._entered = True
        require_root()
        self.emulator = choose_emulator(self.emulator)
        self._install_cleanup_hooks()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    # -- setup -----------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        sides = (("west", self.west_ns, self.west_ip), ("east", self.east_ns, self.east_ip))
        for _, ns, _ in sides:
            if ns == self._join_west:
                continue
            _ip("netns", "add", ns)
            self._created_ns.append(ns)
        if self.emulator == "netem":
            _ip(*veth_command(self.west_ns, self.east_ns, self.dev)[1:])
        for side, ns, addr in sides:
            if self.emulator == "relay":
                tun = self._tun_names[side]
                self._fds.append(_open_tun(tun))
                _ip("link", "set", "dev", tun, "netns", ns)
                _ip("-n", ns, "link", "set", "dev", tun, "name", self.dev)
            _ip("-n", ns, "link", "set", "dev", self.dev, "mtu", str(MTU))
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", self.dev)
            _ip("-n", ns, "link", "set", "dev", self.dev, "up")
            _ip("-n", ns, "link", "set", "dev", "lo", "up")
            if self.rto_min_ms is not None:
                _ip("-n", ns, "route", "replace", f"{self._subnet}.0/{PREFIX_LEN}", "dev", self.dev, "proto", "kernel",
                    "scope", "link", "src", addr, "rto_min", f"{self.rto_min_ms:g}ms")  # fmt: skip
        if self.emulator == "netem":
            for argv in netem_commands(self.profile, self.west_ns, self.east_ns, self.dev, self.max_queued):
                proc = _run(argv)
                if proc.returncode != 0:
                    raise WanError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        else:
            self._start_relay()

    def _start_relay(self) -> None:
        ctrl_r, ctrl_w = os.pipe()
        reply_r, reply_w = os.pipe()
        west_fd, east_fd = self._fds
        p = self.profile
        args = {
            "west_fd": west_fd,
            "east_fd": east_fd,
            "ctrl_fd": ctrl_r,
            "reply_fd": reply_w,
            "delay_ns": round(p.delay_ms * 1e6),
            "jitter_ns": round(p.jitter_ms * 1e6),
            "loss": p.loss,
            "seed": self.seed,
            "max_seconds": self.max_seconds,
            "max_queued": self.max_queued,
            "realtime": self.realtime,
        }
        code = (
            "import sys, json; from citycast.tooling.bench.wan import run_relay; run_relay(**json.loads(sys.argv[1]))"
        )
        try:
            self._relay = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(args)],
                pass_fds=(west_fd, east_fd, ctrl_r, reply_w),
                start_new_session=True,  # a terminal's Ctrl-C goes to us; we stop the relay in order
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(ctrl_r)
            os.close(reply_w)
            self._ctrl_w, self._reply_r = ctrl_w, reply_r
        # The relay now owns the TUN devices: when it exits they vanish with it.
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        line = self._read_reply(timeout_s=15.0)
        if line != b"ready":
            raise WanError(f"WAN relay did not start (got {line!r})")

    def _ask(self, command: bytes, timeout_s: float) -> bytes | None:
        """Send the relay one control command; its one-line answer, or None if it cannot be had."""
        if self._ctrl_w is None:
            return None
        try:
            os.write(self._ctrl_w, command)
        except OSError:
            return None
        return self._read_reply(timeout_s=timeout_s)

    def _read_reply(self, timeout_s: float) -> bytes | None:
        assert self._reply_r is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._reply_buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self._reply_r], [], [], left)
            if not r:
                return None
            chunk = os.read(self._reply_r, 65536)
            if not chunk:
                return None
            self._reply_buf += chunk
        line, _, self._reply_buf = self._reply_buf.partition(b"\n")
        return line

    # -- stats -----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Packets forwarded/dropped per direction, and with the relay its scheduling lateness (µs).

        Keys: `emulator`, `profile`, `seed`, `running`, `west_to_east` and `east_to_west` (each `forwarded` and
        `dropped`; the relay adds `pushed` and `overflow`); the relay also gives `queued`, `write_errors`,
        `max_lateness_us`, `lateness_us` (`p50`, `p99`, `max`, `count`). After the link is closed, the final
        figures.
        """
        with self._lock:
            if self._relay is not None and self._relay.poll() is None:
                line = self._ask(b"s\n", timeout_s=5.0)
                if line:
                    self._last_stats = json.loads(line)
            elif self.emulator == "netem" and self._created_ns and not self._closed:
                self._last_stats = self._netem_stats()
            base = {"emulator": self.emulator, "profile": self.profile.name, "seed": self.seed}
            if self._last_stats is None:
                return {**base, "running": False}
            return {**self._last_stats, **base}

    def _netem_stats(self) -> dict[str, Any]:
        sides = {"west_to_east": self.west_ns, "east_to_west": self.east_ns}
        out: dict[str, Any] = {"running": True}
        for key, ns in sides.items():
            proc = _run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", self.dev])
            out[key] = netem_stats(proc.stdout if proc.returncode == 0 else "")
        return out

    # -- teardown --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the relay and delete the namespaces. Idempotent; safe from signal handlers and atexit."""
        with self._lock:
            if self._closed:
                return
            errors: list[str] = []
            if self.emulator == "netem" and self._created_ns:
                try:
                    self._last_stats = {**self._netem_stats(), "running": False}
                except Exception as exc:
                    errors.append(f"netem stats: {exc}")
            self._closed = True
            try:
                self._stop_relay()
            except Exception as exc:
                errors.append(f"relay: {exc}")
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
            for ns in reversed(self._created_ns):
                try:
                    _delete_ns(ns)
                except Exception as exc:
                    errors.append(str(exc))
            self._created_ns.clear()
            self._remove_cleanup_hooks()
            if errors:
                raise WanError("WAN teardown incomplete: " + "; ".join(errors))

    def _stop_relay(self) -> None:
        relay = self._relay
        if relay is not None:
            if relay.poll() is None:
                line = self._ask(b"q\n", timeout_s=3.0)
                if line:
                    with contextlib.suppress(ValueError):
                        self._last_stats = json.loads(line)
            try:
                relay.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(timeout=3.0)
            self._relay = None
        for fd in (self._ctrl_w, self._reply_r):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._ctrl_w = self._reply_r = None

    def _install_cleanup_hooks(self) -> None:
        atexit.register(self._atexit)
        self._atexit_registered = True
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            prev = signal.getsignal(sig)
            self._prev_handlers[sig] = prev
            signal.signal(sig, self._make_handler(prev))

    def _make_handler(self, prev: Any) -> Callable[[int, types.FrameType | None], None]:
        def handler(signum: int, frame: types.FrameType | None) -> None:
            with contextlib.suppress(Exception):
                self.close()
            if callable(prev):
                prev(signum, frame)
            elif prev == signal.SIG_IGN:
                return
            else:
                raise SystemExit(128 + signum)

        return handler

    def _remove_cleanup_hooks(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._atexit)
            self._atexit_registered = False
        if self._prev_handlers and threading.current_thread() is threading.main_thread():
            for sig, prev in self._prev_handlers.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, prev)
            self._prev_handlers.clear()

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- the relay (runs in a child process) ---------------------------------------------------------------------


def _prctl(option: int, arg: int) -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def run_relay(
    *,
    west_fd: int,
    east_fd: int,
    ctrl_fd: int,
    reply_fd: int,
    delay_ns: int,
    jitter_ns: int,
    loss: float,
    seed: int,
    max_seconds: float,
    max_queued: int = DEFAULT_MAX_QUEUED,
    realtime: bool = True,
) -> None:
    """Relay packets between two TUN fds until told to quit (`q`), the control pipe closes, or `max_seconds`.

    Control protocol (one line each): `s` → one JSON stats line; `q` → final JSON stats line, then exit.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # our parent dies → we die → the TUN devices vanish
    _prctl(_PR_SET_TIMERSLACK, 1)  # wake from select() within ~µs, not the default 50 µs slack
    if realtime:
        # A low real-time priority: the relay sleeps almost always, but when a packet is due it must not wait
        # behind the benchmark's own busy processes (on 2 cores, p99 lateness goes from ~3 ms to ~0.1 ms).
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RT_PRIORITY))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    master = random.Random(seed)
    lines = {
        west_fd: DelayLine(delay_ns, jitter_ns, loss, rng=random.Random(master.getrandbits(64)), max_queued=max_queued),
        east_fd: DelayLine(delay_ns, jitter_ns, loss, rng=random.Random(master.getrandbits(64)), max_queued=max_queued),
    }
    out_of = {west_fd: east_fd, east_fd: west_fd}
    lateness = LatencyRecorder()
    write_errors = 0
    for fd in (west_fd, east_fd):
        os.set_blocking(fd, False)
    clock = time.monotonic_ns

    def stats() -> bytes:
        d = {
            "running": True,
            "west_to_east": lines[west_fd].stats.as_dict(),
            "east_to_west": lines[east_fd].stats.as_dict(),
            "queued": len(lines[west_fd]) + len(lines[east_fd]),
            "write_errors": write_errors,
            "max_lateness_us": lateness.max_ns / 1000,
            "lateness_us": {
                "p50": lateness.percentile_ns(50) / 1000,
                "p99": lateness.percentile_ns(99) / 1000,
                "max": lateness.max_ns / 1000,
                "count": lateness.count,
            },
        }
        return json.dumps(d).encode() + b"\n"

    def flush() -> None:
        nonlocal write_errors
        now = clock()
        for in_fd, line in lines.items():
            ready = line.due_with_times(now)
            out_fd = out_of[in_fd]
            for due_ns, packet in ready:
                lateness.add(clock() - due_ns)
                try:
                    os.write(out_fd, packet)
                except OSError:
                    write_errors += 1

    os.write(reply_fd, b"ready\n")
    rlist = [west_fd, east_fd, ctrl_fd]
    ctrl_buf = b""
    end = time.monotonic() + max_seconds
    while time.monotonic() < end:
        flush()
        dues = [d for d in (lines[west_fd].next_due_ns(), lines[east_fd].next_due_ns()) if d is not None]
        timeout = max(0.0, (min(dues) - clock()) / 1e9) if dues else 1.0
        readable, _, _ = select.select(rlist, [], [], min(timeout, 1.0))
        for fd in readable:
            if fd == ctrl_fd:
                chunk = os.read(ctrl_fd, 4096)
                if not chunk:
                    return
                ctrl_buf += chunk
                while b"\n" in ctrl_buf:
                    cmd, _, ctrl_buf = ctrl_buf.partition(b"\n")
                    if cmd == b"s":
                        os.write(reply_fd, stats())
                    elif cmd == b"q":
                        os.write(reply_fd, stats().replace(b'"running": true', b'"running": false', 1))
                        return
                continue
            line = lines[fd]
            for _ in range(256):  # bounded batch, so one busy direction cannot starve the timer
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if not packet:
                    break
                line.push(packet, clock())
