"""Calls over a lossy path: sipp in one network namespace, the hub (`citycast serve --sip`) in another, joined by
the userspace WAN relay dropping 20 % of packets each way. Every call must complete: lost INVITEs, BYEs and their
answers are retransmitted by sipp and answered again by our transactions, lost 200s and ACKs make the telephone
retransmit its 200 until an ACK gets through (RFC 3261 §13.3.1.4)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import wait_until_sync

from citycast.tooling.bench.fleet import citycast_argv
from citycast.tooling.bench.sip_bench import parse_sipp_stats
from citycast.tooling.bench.wan import WanLink, WanProfile, ns_command

SCENARIOS = Path(__file__).parent / "scenarios"
CALLS = 20
LOSS = 0.2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed"),
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun (namespaces)"
    ),
]


def _wait_health(prefix: list[str], hub: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the hub answers /api/health inside its namespace (each probe a process there), or has exited."""
    probe = (
        "import httpx, sys\n"
        "try:\n"
        "    sys.exit(0 if httpx.get('http://127.0.0.1:8000/api/health', timeout=2).status_code == 200 else 1)\n"
        "except httpx.HTTPError:\n"
        "    sys.exit(1)"
    )

    def healthy() -> bool:
        r = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, check=False, timeout=30)
        return r.returncode == 0

    wait_until_sync(lambda: hub.poll() is not None or healthy(), "the hub's health in its namespace", timeout=90,
                    every=0.5, detail=lambda: log.read_text(errors="replace")[-3000:])  # fmt: skip
    assert hub.poll() is None, log.read_text(errors="replace")[-3000:]


def _metrics(prefix: list[str]) -> dict[str, float]:
    """The hub's /metrics, read from inside its namespace."""
    probe = "import httpx; print(httpx.get('http://127.0.0.1:8000/metrics').text)"
    r = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, check=True, timeout=60)
    out: dict[str, float] = {}
    for line in r.stdout.decode().splitlines():
        m = re.fullmatch(r"(citycast_sip_[a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _telephone(prefix: list[str], data: Path) -> dict[str, object]:
    """GET /api/telephone as the admin, from inside the hub's namespace, once no call is left (up to 64*T1 + 5 s):
    the hub answers sipp's last BYE before it has torn that call down (its media on the media plane, its address),
    and a call whose every 200 or ACK was lost ends only when our 2xx retransmissions give up (64*T1 = 32 s, then
    our BYE, RFC 3261 §13.3.1.4). A call still there after that is stuck."""
    probe = (
        "import httpx, json, pathlib, sys, time\n"
        f"password = pathlib.Path({str(data / 'initial-admin-password')!r}).read_text().strip()\n"
        "c = httpx.Client(base_url='http://127.0.0.1:8000')\n"
        "token = c.post('/api/login', json={'username': 'admin', 'password': password}).json()['token']\n"
        "deadline = time.monotonic() + 37\n"
        "while True:\n"
        "    shown = c.get('/api/telephone', headers={'Authorization': f'Bearer {token}'}).json()\n"
        "    if shown.get('calls') == 0 or time.monotonic() > deadline:\n"
        "        break\n"
        "    time.sleep(0.2)\n"
        "print(json.dumps(shown))"
    )
    r = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, check=True, timeout=60)
    shown: dict[str, object] = json.loads(r.stdout)
    return shown


def test_every_call_completes_over_a_lossy_path(tmp_path: Path) -> None:
    profile = WanProfile("lossy-sip", delay_ms=5.0, jitter_ms=0.0, loss=LOSS)
    with WanLink(profile, seed=20261126) as link:
        hub_prefix, caller_prefix = ns_command(link.east_ns, []), ns_command(link.west_ns, [])
        hub_log = tmp_path / "hub.log"
        with open(hub_log, "wb") as out:
            hub = subprocess.Popen(
                [*hub_prefix, *citycast_argv("-v", "serve", "--data-dir", str(tmp_path / "hub"),
                                             "--listen", "127.0.0.1:4222", "--http", "127.0.0.1:8000",
                                             "--sip", f"{link.east_ip}:5060", "--rtp-ports", "20000-20199",
                                             "--public-metrics")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"},
            )  # fmt: skip
        try:
            _wait_health(hub_prefix, hub, hub_log)
            argv = ["sipp", f"{link.east_ip}:5060", "-sf", str(SCENARIOS / "lossy_call.xml"), "-s", "citycast",
                    "-i", link.west_ip, "-p", "5070", "-t", "u1", "-r", "4", "-m", str(CALLS), "-l", "8",
                    "-d", "1000", "-key", "rtp_port", "9", "-max_invite_retrans", "12", "-max_non_invite_retrans", "12",
                    "-timeout", "90s", "-timeout_error", "-nostdin", "-trace_stat", "-stf", str(tmp_path / "stat.csv"),
                    "-fd", "1", "-trace_err", "-error_file", str(tmp_path / "errors.log")]  # fmt: skip
            sipp = subprocess.run(
                [*caller_prefix, *argv], cwd=tmp_path, capture_output=True, check=False, timeout=120
            )  # fmt: skip
            screen = sipp.stdout.decode(errors="replace")
            errors = (tmp_path / "errors.log").read_text(errors="replace") if (tmp_path / "errors.log").exists() else ""
            wan = link.stats()
            metrics = _metrics(hub_prefix)
            telephone = _telephone(hub_prefix, tmp_path / "hub")
        finally:
            hub.terminate()
            try:
                hub.wait(timeout=20)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()
    assert sipp.returncode == 0, screen[-3000:] + errors[-2000:]
    stats = parse_sipp_stats(tmp_path / "stat.csv")
    print("figures:", metrics, stats.get("Retransmissions(C)"), wan["west_to_east"], wan["east_to_west"])
    assert int(stats["SuccessfulCall(C)"]) == CALLS and int(stats["FailedCall(C)"]) == 0, stats
    # The path really lost packets both ways, and both ends really recovered by retransmitting:
    assert wan["west_to_east"]["dropped"] > 0 and wan["east_to_west"]["dropped"] > 0, wan
    assert int(stats["Retransmissions(C)"]) > 0, stats  # sipp resent INVITEs/BYEs whose answers were lost
    # The hub counted the requests sipp sent again, and resent 200s whose ACK (or which themselves) were lost:
    # with a 1 s pause before the BYE, a lost ACK is noticed at T1 = 0.5 s.
    assert metrics["citycast_sip_retransmissions_received_total"] > 0, metrics
    assert metrics['citycast_sip_retransmissions_sent_total{kind="2xx"}'] > 0, metrics
    # The console's view of the same telephone: every call over, the same counters.
    assert telephone["enabled"] is True and telephone["sip"] == "10.77.0.2:5060" and telephone["calls"] == 0, (
        telephone,
        hub_log.read_text(errors="replace")[-6000:],
    )
    signalling = telephone["signalling"]
    assert isinstance(signalling, dict) and signalling["resent_2xx"] > 0, telephone
    assert hub.returncode == 0 or hub.returncode == -15, hub_log.read_text(errors="replace")[-3000:]
    assert "Traceback" not in hub_log.read_text(errors="replace")
