"""A private PipeWire for the sound-stack bench (`citycast bench --sink ... --sound-server pipewire`).

Raspberry Pi OS and the desktop images of Debian and Ubuntu have run PipeWire since 2023, with `pipewire-pulse`
serving PulseAudio's protocol: there `citycast site` (its `auto` sink finds a pulse server) plays through
PipeWire, and `PulseSink` dates its blocks by what `pipewire-pulse` reports. This runs that stack as a desktop does,
all of it under one working folder and owned by the bench: a D-Bus session bus (WirePlumber will not start
without one), `pipewire`, its session manager `wireplumber` (which links a client's stream to the sink it asked
for) and `pipewire-pulse`. The card and the sites' sinks are PulseAudio module lines loaded through
`pipewire-pulse`'s own implementation of them, the same lines `PulseServer` loads into PulseAudio.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

# In the order they start; each needs the one before it.
BINARIES = ("dbus-daemon", "pipewire", "wireplumber", "pipewire-pulse")
START_TIMEOUT_S = 15.0


class PipeWireError(RuntimeError):
    pass


class PipeWireServer:
    """`with PipeWireServer(workdir, modules) as pw:` a running PipeWire whose pulse server is `pw.server`, with
    `modules` (lines such as "module-null-sink sink_name=x channels=2") loaded into it."""

    def __init__(self, workdir: Path, modules: list[str]) -> None:
        self.workdir = workdir.resolve()
        self.modules = modules
        self.runtime = self.workdir / "runtime"
        self.socket = self.runtime / "pulse" / "native"
        self.bus = self.workdir / "bus"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    def processes(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """The stack's running processes, by name, in the order they started."""
        return list(self.procs)

    def env(self, sink: str | None = None) -> dict[str, str]:
        """What a client process needs to find this server (through pipewire-pulse, or PipeWire's own socket for
        its ALSA plugin) and, for the ALSA pulse plugin, its sink."""
        env = {**os.environ, "PULSE_SERVER": self.server, "PULSE_RUNTIME_PATH": str(self.runtime / "pulse"),
               "PIPEWIRE_RUNTIME_DIR": str(self.runtime)}  # fmt: skip
        if sink is not None:
            env["PULSE_SINK"] = sink
        return env

    def _own_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "PIPEWIRE_", "DBUS_"))}
        # Nothing of the user's session or configuration: a stack of its own, as on a fresh box.
        env.update(
            HOME=str(self.workdir),
            XDG_RUNTIME_DIR=str(self.runtime),
            PIPEWIRE_RUNTIME_DIR=str(self.runtime),
            XDG_CONFIG_HOME=str(self.workdir / "config"),
            XDG_STATE_HOME=str(self.workdir / "state"),
            XDG_DATA_HOME=str(self.workdir / "data"),
            DBUS_SESSION_BUS_ADDRESS=f"unix:path={self.bus}",
            DISABLE_RTKIT="1",  # as root PipeWire raises its own threads to real time (module-rt); no rtkit here
        )
        return env

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        log.close()
        self.procs.append((name, proc))
        return proc

    def _wait_for(self, path: Path, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        proc = self.procs[-1][1]
        while not path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-1500:]
                raise PipeWireError(f"{name} did not start:\n{tail}")
            time.sleep(0.05)

    def _pactl(self, *args: str) -> str:
        pactl = shutil.which("pactl")
        if pactl is None:
            raise PipeWireError("pactl is not installed (Debian: pulseaudio-utils; scripts/setup.sh installs it)")
        done = subprocess.run([pactl, *args], env=self.env(), capture_output=True, text=True, timeout=15)
        if done.returncode != 0:
            raise PipeWireError(f"pactl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def __enter__(self) -> PipeWireServer:
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise PipeWireError(
                f"not installed: {', '.join(missing)} (Debian: dbus, pipewire, pipewire-pulse, wireplumber; "
                "scripts/setup.sh installs them)"
            )
        self.runtime.mkdir(parents=True, mode=0o700)
        env = self._own_env()
        try:
            self._start("dbus-daemon", ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                        f"--address=unix:path={self.bus}"], env)  # fmt: skip
            self._wait_for(self.bus, "dbus-daemon")
            self._start("pipewire", ["pipewire"], env)
            self._wait_for(self.runtime / "pipewire-0", "pipewire")
            self._start("wireplumber", ["wireplumber"], env)
            self._start("pipewire-pulse", ["pipewire-pulse"], env)
            self._wait_for(self.socket, "pipewire-pulse")
            for line in self.modules:
                name, *args = line.split()
                self._pactl("load-module", name, *args)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
