"""Property-based run of every operation in /openapi.json (schemathesis), logged in as admin, against the real
app served over HTTP: no 5xx, and every status code, content type and body matches the published schema."""

from __future__ import annotations

import asyncio

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tests.helpers import Api

from citycast.hub.db.models import Role

MAX_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, token: str) -> tuple[int, dict[str, int], list[str]]:
    """Runs in a worker thread (the server lives on the test's event loop). Returns the number of operations,
    of calls made per generation mode, and the failures."""
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)  # it needs a login
    # Logging out, or changing the admin's own password, would end the session the run is using: those are
    # covered by test_auth.py.
    schema = schema.exclude(path="/api/logout").exclude(method="PATCH", path="/api/users/{user_id}")
    failures: list[str] = []
    operations = 0
    calls = {mode.value: 0 for mode in GenerationMode}
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                response = case.call(headers=headers, timeout=15)
                calls[case.meta.generation.mode.value if case.meta else "positive"] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing invalid to send (an operation without parameters or body)
            except (Exception, BaseExceptionGroup) as e:
                failures.append(f"{op.label} [{mode.value}]: {e}"[:2000])
    return operations, calls, failures


async def test_openapi_conformance_and_no_server_errors(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    zone = (await admin.post("/api/zones", json={"name": "saddar", "channel": 1})).json()
    await admin.post("/api/sites", json={"name": "s1", "lat": 24.8, "lon": 67.0, "zone_id": zone["id"]})
    operations, calls, failures = await asyncio.to_thread(fuzz, api.base_url, api.tokens["admin"])
    assert operations >= 35  # every route of the contract is in the schema
    assert calls["positive"] >= operations * 3 and calls["negative"] >= operations, calls
    assert failures == [], "\n\n".join(failures)
    # The admin session survived the run, and the hub still answers.
    assert (await admin.get("/api/me")).status_code == 200


async def test_openapi_documents_every_contract_route(api: Api) -> None:
    spec = (await (await api.as_role(Role.viewer)).get("/openapi.json")).json()  # for logged-in users only
    paths = spec["paths"]
    expected = {
        "/api/login": {"post"},
        "/api/logout": {"post"},
        "/api/me": {"get"},
        "/api/users": {"get", "post"},
        "/api/users/{user_id}": {"patch", "delete"},
        "/api/zones": {"get", "post"},
        "/api/zones/{zone_id}": {"patch", "delete"},
        "/api/zones/{zone_id}/control": {"post"},
        "/api/sites": {"get", "post"},
        "/api/sites/{site_id}": {"patch", "delete"},
        "/api/sites/{site_id}/token": {"post"},
        "/api/sites/{site_id}/revoke": {"post"},
        "/api/sites/{site_id}/control": {"post"},
        "/api/enrol": {"post"},
        "/api/sources": {"get"},
        "/api/addresses": {"get", "post"},
        "/api/addresses/{address_id}/stop": {"post"},
        "/api/schedules": {"get", "post"},
        "/api/schedules/{schedule_id}": {"patch", "delete"},
        "/api/recordings": {"get"},
        "/api/recordings/{recording_id}/audio": {"get"},
        "/api/receipts": {"get"},
        "/api/receipts/refused": {"get"},
        "/api/receipts/{address_id}": {"get"},
        "/api/receipts/{address_id}/csv": {"get"},
        "/api/receipts/{address_id}/print": {"get"},
        "/api/cap": {"post"},
        "/api/cap/alerts": {"get"},
        "/api/cap/settings": {"get", "put"},
        "/api/cap/keys": {"post"},
        "/api/settings": {"get", "put"},
        "/api/alerts": {"get"},
        "/api/audit": {"get"},
        "/api/fleet": {"get"},
        "/api/health": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
        for method in methods:
            ok = [code for code in paths[path][method]["responses"] if code.startswith("2")]
            assert ok, (path, method)
            content = paths[path][method]["responses"][ok[0]].get("content", {})
            assert content, f"{method} {path} has no documented response body"
