"""The Icecast setting through the API: admins set it (password write-only, checked URL), others cannot."""

from __future__ import annotations

from sqlalchemy import select
from tests.helpers import Api

from citycast.hub.db.models import AuditEntry, Role

URL = "/api/settings/icecast"


async def test_an_admin_sets_icecast_the_password_is_never_shown_and_others_cannot(api: Api) -> None:
    viewer, operator, admin = [await api.as_role(r) for r in (Role.viewer, Role.operator, Role.admin)]
    r = await viewer.get(URL)
    assert r.status_code == 200 and r.json()["enabled"] is False

    body = {"enabled": True, "url": "http://icecast.example:8000/city", "password": "s3cret-source", "public": True}
    for client in (viewer, operator):
        assert (await client.put(URL, json=body)).status_code == 403
    r = await admin.put(URL, json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["enabled"], got["url"], got["user"], got["password_set"]) == (
        True,
        "http://icecast.example:8000/city",
        "source",
        True,
    )
    assert "s3cret-source" not in r.text
    r = await viewer.get(URL)
    assert r.json()["password_set"] is True and "s3cret-source" not in r.text

    # A change without the password keeps it; bad URLs are refused with a reason, the setting unchanged.
    r = await admin.put(URL, json={"enabled": True, "url": "http://other.example", "public": False})
    assert r.json()["password_set"] is True and r.json()["url"] == "http://other.example:8000"
    for bad in ("https://x.example", "http://source:pw@x.example", "ftp://x", "http://x.example/a b", "http://x:99999"):
        r = await admin.put(URL, json={"enabled": True, "url": bad, "password": "p"})
        assert r.status_code == 422, (bad, r.text)
    assert (
        await admin.put(URL, json={"enabled": True, "url": "http://x.example", "password": "a\r\nb"})
    ).status_code == 422
    assert (await viewer.get(URL)).json()["url"] == "http://other.example:8000"

    assert (await admin.put(URL, json={"enabled": False})).json()["enabled"] is False
    with api.ctx.db.session() as s:
        details = [str(a.detail) for a in s.scalars(select(AuditEntry).where(AuditEntry.target == "icecast"))]
    assert len(details) == 3 and not any("s3cret" in d for d in details)
