"""Login, logout, cookies and bearer tokens, roles, the audit log and the login rate limit, over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from tests.helpers import PASSWORD, Api

from citycast.hub.api.deps import FailureLimiter
from citycast.hub.db.models import AuditEntry, Role


def audit_rows(api: Api, action: str) -> list[AuditEntry]:
    with api.ctx.db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


async def test_health_needs_no_login(api: Api) -> None:
    r = await api.client().get("/api/health")
    assert r.status_code == 200 and r.json() == {"ok": True}


async def test_login_sets_a_strict_httponly_cookie_that_works_until_logout(api: Api) -> None:
    c = api.client()
    r = await c.post("/api/login", json={"username": "operator", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["user"]["username"] == "operator" and body["user"]["role"] == "operator"
    cookie = r.headers["set-cookie"].lower()
    assert "citycast_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert c.cookies.get("citycast_session") == body["token"]

    me = await c.get("/api/me")  # the cookie alone
    assert me.status_code == 200 and me.json()["username"] == "operator"
    bearer = await api.client(body["token"]).get("/api/me")
    assert bearer.status_code == 200 and bearer.json()["role"] == "operator"

    assert (await c.post("/api/logout")).status_code == 200
    # The session is gone on the server, not only the cookie in this client.
    after = await api.client(body["token"]).get("/api/me")
    assert after.status_code == 401 and "not logged in" in after.json()["detail"]
    assert [row.username for row in audit_rows(api, "login")] == ["operator"]
    assert [row.username for row in audit_rows(api, "logout")] == ["operator"]
    assert audit_rows(api, "login")[0].remote == "127.0.0.1"


@pytest.mark.parametrize("path", ["/api/me", "/api/sites", "/api/zones", "/api/fleet", "/api/settings"])
async def test_reads_need_a_login(api: Api, path: str) -> None:
    r = await api.client().get(path)
    assert r.status_code == 401
    bad = await api.client("not-a-session-token").get(path)
    assert bad.status_code == 401 and isinstance(bad.json()["detail"], str)


async def test_wrong_passwords_are_refused_audited_and_rate_limited(api: Api) -> None:
    c = api.client()
    wrong = await c.post("/api/login", json={"username": "admin", "password": "guess"})
    unknown = await c.post("/api/login", json={"username": "nobody", "password": "guess"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]  # does not tell which usernames exist
    failed = audit_rows(api, "login.failed")
    assert [row.target for row in failed] == ["user:admin", "user:nobody"]
    assert all(row.remote == "127.0.0.1" and row.user_id is None for row in failed)

    for i in range(8):
        r = await c.post("/api/login", json={"username": "admin", "password": f"guess{i}"})
        assert r.status_code == 401
    # Ten failures in a minute: from now on even the right password is refused, with a Retry-After.
    blocked = await c.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 60
    assert "too many failed attempts" in blocked.json()["detail"]
    assert len(audit_rows(api, "login.failed")) == 10
    assert audit_rows(api, "login") == []


def test_failure_limiter_window_and_memory_bound() -> None:
    lim = FailureLimiter(limit=3, window_s=60.0, max_remotes=2)
    for t in (0.0, 10.0, 20.0):
        assert lim.retry_after("a", t) == 0.0
        lim.failed("a", t)
    assert lim.retry_after("a", 30.0) == pytest.approx(30.0)  # the oldest of the three leaves the window at 60
    assert lim.retry_after("a", 60.0) == 0.0
    assert lim.retry_after("b", 30.0) == 0.0  # per address
    lim.failed("b", 1.0)
    lim.failed("c", 2.0)
    lim.failed("d", 3.0)
    assert lim.retry_after("a", 30.0) == 0.0  # forgotten: only the two most recent addresses are kept


async def test_bad_login_body_is_a_clear_422(api: Api) -> None:
    r = await api.client().post("/api/login", json={"username": "admin"})
    assert r.status_code == 422
    assert "password" in r.json()["detail"] and "Field required" in r.json()["detail"]
    raw = await api.client().post("/api/login", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 422 and isinstance(raw.json()["detail"], str)


# (method, path, body, the least role allowed). Each write is tried by every role.
WRITES: list[tuple[str, str, dict[str, object] | None, Role]] = [
    ("POST", "/api/zones", {"name": "z-{role}", "channel": 0, "color": "#112233"}, Role.admin),
    ("POST", "/api/sites", {"name": "s-{role}", "lat": 24.8, "lon": 67.0}, Role.admin),
    ("PUT", "/api/settings", {"retention_days": 30}, Role.admin),
    ("POST", "/api/users", {"username": "u-{role}", "password": "long enough pw", "role": "viewer"}, Role.admin),
    ("POST", "/api/sites/{site}/control", {"volume": 0.5}, Role.operator),
    ("POST", "/api/zones/{zone}/control", {"muted": True}, Role.operator),
]


def _fill(value: object, role: str, ids: dict[str, int]) -> object:
    if isinstance(value, str):
        return value.replace("{role}", role).replace("{site}", str(ids["site"])).replace("{zone}", str(ids["zone"]))
    if isinstance(value, dict):
        return {k: _fill(v, role, ids) for k, v in value.items()}
    return value


async def test_each_role_may_do_its_writes_and_no_more(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    zone = (await admin.post("/api/zones", json={"name": "saddar", "channel": 100})).json()
    site = await admin.post("/api/sites", json={"name": "base", "lat": 24.8, "lon": 67.0, "zone_id": zone["id"]})
    ids = {"zone": zone["id"], "site": site.json()["site"]["id"]}
    channel = 1
    for method, path, body, needed in WRITES:
        for role in (Role.viewer, Role.speaker, Role.operator, Role.admin):
            c = await api.as_role(role)
            payload = _fill(body, role.value, ids)
            if isinstance(payload, dict) and "channel" in payload:
                payload["channel"] = channel
                channel += 1
            r = await c.request(method, str(_fill(path, role.value, ids)), json=payload)
            allowed = role in ROLE_AT_LEAST[needed]
            assert r.status_code == (201 if method == "POST" and "control" not in path else 200) if allowed else 403, (
                method,
                path,
                role,
                r.status_code,
                r.text,
            )
            if not allowed:
                assert f"needs the {needed.value} role" in r.json()["detail"]
    # Every allowed write left an audit row, by the user who made it, with the client's address.
    with api.ctx.db.session() as s:
        rows = list(s.scalars(select(AuditEntry)))
    by_action = {(r.action, r.username) for r in rows}
    assert {("zone.create", "admin"), ("site.create", "admin"), ("settings.update", "admin")} <= by_action
    assert {("user.create", "admin"), ("site.control", "operator"), ("zone.control", "operator")} <= by_action
    assert ("site.control", "viewer") not in by_action
    assert all(r.remote == "127.0.0.1" for r in rows)


ROLE_AT_LEAST = {
    Role.admin: {Role.admin},
    Role.operator: {Role.admin, Role.operator},
    Role.speaker: {Role.admin, Role.operator, Role.speaker},
    Role.viewer: set(Role),
}


async def test_users_admin_cannot_remove_the_last_admin_and_password_change_logs_out(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    users = {u["username"]: u for u in (await admin.get("/api/users")).json()}
    assert set(users) == {"admin", "operator", "speaker", "viewer"}
    me = users["admin"]
    assert (await admin.delete(f"/api/users/{me['id']}")).status_code == 409
    demote = await admin.patch(f"/api/users/{me['id']}", json={"role": "viewer"})
    assert demote.status_code == 409 and "last active admin" in demote.json()["detail"]

    dup = await admin.post("/api/users", json={"username": "viewer", "password": "long enough pw", "role": "viewer"})
    assert dup.status_code == 409
    short = await admin.post("/api/users", json={"username": "x", "password": "short", "role": "viewer"})
    assert short.status_code == 422 and "password" in short.json()["detail"]

    viewer_client = await api.as_role(Role.viewer)
    assert (await viewer_client.get("/api/me")).status_code == 200
    r = await admin.patch(f"/api/users/{users['viewer']['id']}", json={"password": "a new password"})
    assert r.status_code == 200
    assert (await viewer_client.get("/api/me")).status_code == 401  # old sessions end with the old password
    assert (await api.client().post("/api/login", json={"username": "viewer", "password": "a new password"})).is_success

    assert (await admin.delete(f"/api/users/{users['speaker']['id']}")).status_code == 200
    assert (await admin.delete(f"/api/users/{users['speaker']['id']}")).status_code == 404
    audit = (await admin.get("/api/audit?limit=5")).json()
    assert audit[0]["action"] == "user.delete" and audit[0]["target"] == "user:speaker"
    assert (await (await api.as_role(Role.operator)).get("/api/audit")).status_code == 403


async def test_disabled_user_cannot_log_in(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    users = {u["username"]: u for u in (await admin.get("/api/users")).json()}
    assert (await admin.patch(f"/api/users/{users['speaker']['id']}", json={"disabled": True})).status_code == 200
    r = await api.client().post("/api/login", json={"username": "speaker", "password": PASSWORD})
    assert r.status_code == 401


async def test_cookie_is_not_secure_over_plain_http_but_is_sent_back(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as c:
        r = await c.post("/api/login", json={"username": "viewer", "password": PASSWORD})
        assert "secure" not in r.headers["set-cookie"].lower()
        assert (await c.get("/api/me")).json()["username"] == "viewer"
