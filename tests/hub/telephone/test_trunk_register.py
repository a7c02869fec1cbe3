"""The `Telephone` keeping a registration at a SIP trunk, with sipp as the trunk's registrar (401 challenge,
verifyauth, refreshes, unregister; a wrong password ends in a "failed" status after two REGISTERs). The sans-IO
`Registration` is tested in tests/sip/test_register.py."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.helpers import wait_until

from citycast.bus.server import free_port
from citycast.hub.runtime import Hub, HubOptions
from citycast.hub.telephone.service import Telephone
from citycast.sip.register import RegisterConfig

SCENARIOS = Path(__file__).parent / "scenarios"
needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = Hub(HubOptions(data_dir=tmp_path / "hub", http_port=free_port(), nats_port=free_port(), delay_ms=120))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def registrar(tmp: Path, port: int, password: str, expires: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "sipp", "-sf", str(SCENARIOS / "registrar.xml"), "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
        "-m", "1", "-key", "user", "4711", "-key", "pass", password, "-key", "expires", str(expires),
        "-timeout", "40s", "-timeout_error", "-nostdin", "-trace_msg", "-message_file", str(tmp / "registrar.log"),
        "-trace_err", "-error_file", str(tmp / "registrar.err"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # let it bind; a REGISTER sent earlier is retransmitted by Timer E anyway
    return proc


async def finish(proc: asyncio.subprocess.Process, tmp: Path) -> tuple[int, str, str]:
    out, _ = await asyncio.wait_for(proc.communicate(), 50)
    text = out.decode(errors="replace")
    err = tmp / "registrar.err"
    text += err.read_text(errors="replace") if err.exists() else ""
    log = tmp / "registrar.log"
    return proc.returncode or 0, text, log.read_text(errors="replace") if log.exists() else ""


@pytest.mark.slow
@needs_sipp
async def test_telephone_registers_refreshes_and_unregisters(hub: Hub, tmp_path: Path) -> None:
    port = free_port()
    proc = await registrar(tmp_path, port, "s3cret", expires=2)
    cfg = RegisterConfig(f"sip:4711@127.0.0.1:{port}", "s3cret", min_refresh_s=1.0, retry_s=1.0)
    phone = Telephone(hub.telephone_services(), "127.0.0.1", free_port(), register=cfg)
    try:
        await phone.start()
        reg = phone.registration
        assert reg is not None
        await wait_until(
            lambda: reg.status == "registered", "the registration", timeout=15, detail=phone.registration_status
        )
        assert reg.granted == 2
        # Two refreshes of the 2 s binding (at 1 s each), both accepted by verifyauth.
        await wait_until(lambda: reg.sent >= 4 and reg.status == "registered", "a refreshed registration", timeout=15)
        status = phone.registration_status()
        assert status is not None and status["status"] == "registered" and status["error"] is None
        # The console's view of it: GET /api/telephone on the hub that runs this telephone.
        hub.context.telephone_status = phone.status
        async with httpx.AsyncClient(base_url=hub.http_url, timeout=10) as api:
            r = await api.post("/api/login", json={"username": "admin", "password": hub.admin_password})
            api.headers["Authorization"] = f"Bearer {r.json()['token']}"
            # Refreshed every second, so a read may fall while a refresh is out ("registering"): read again.
            shown = (await api.get("/api/telephone")).json()
            deadline = time.monotonic() + 10
            while shown["registration"]["status"] == "registering" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                shown = (await api.get("/api/telephone")).json()
        assert shown["enabled"] and shown["sip"] == f"127.0.0.1:{phone.port}" and shown["calls"] == 0
        assert shown["registration"]["status"] == "registered" and shown["registration"]["aor"] == cfg.aor
        assert "password" not in json.dumps(shown) and "s3cret" not in json.dumps(shown)
        assert shown["signalling"]["unparseable"] == 0
    finally:
        await phone.stop()
    code, out, trace = await finish(proc, tmp_path)
    assert code == 0, out  # the scenario reached its end: our Expires: 0 was authenticated and answered
    assert reg.status == "stopped" and reg.error is None
    received = [m for m in re.split(r"^-{20,}.*$", trace, flags=re.M) if "message received" in m]
    registers = [m for m in received if re.search(r"^\s*REGISTER sip:", m, re.M)]
    assert len(registers) >= 4, trace[-3000:]
    assert "Authorization" not in registers[0] and "nc=00000002" in trace  # the nonce reused on refresh
    assert re.search(r"^\s*Expires: 0\s*$", registers[-1], re.M), registers[-1]
    assert "SIP/2.0 403" not in trace


@pytest.mark.slow
@needs_sipp
async def test_wrong_password_ends_in_failed_status_without_hammering(hub: Hub, tmp_path: Path) -> None:
    port = free_port()
    proc = await registrar(tmp_path, port, "right-one", expires=60)
    cfg = RegisterConfig(f"sip:4711@127.0.0.1:{port}", "wrong-one", min_refresh_s=1.0, retry_s=0.5)
    phone = Telephone(hub.telephone_services(), "127.0.0.1", free_port(), register=cfg)
    try:
        await phone.start()
        reg = phone.registration
        assert reg is not None
        await wait_until(
            lambda: reg.status == "failed", "the registration to fail", timeout=15, detail=phone.registration_status
        )
        assert "403" in (reg.error or "")
        await asyncio.sleep(2.0)  # four back-off periods of a transient failure: nothing more is sent
        assert reg.sent == 2 and reg.status == "failed"
        status = phone.registration_status()
        assert status is not None and status["next_attempt_in_s"] > 3000
    finally:
        await phone.stop()
    code, out, trace = await finish(proc, tmp_path)
    assert code == 0, out
    assert "SIP/2.0 403" in trace and "Expires: 0" not in trace  # never bound: nothing to unregister
