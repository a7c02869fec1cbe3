"""A zone's chime and start lead through the API: set, shown, cleared; a file that is not in the media library,
a path out of it or a lead out of range is refused with a reason, and only an admin may change them."""

from __future__ import annotations

import wave

from tests.helpers import Api

from citycast.hub.db.models import Role, Zone


async def test_chime_and_lead_are_zone_settings_an_admin_sets(api: Api) -> None:
    admin = await api.as_role(Role.admin)
    r = await admin.post(
        "/api/zones", json={"name": "saddar", "channel": 10, "chime": "builtin", "start_lead_ms": 1500}
    )
    assert r.status_code == 201 and r.json()["chime"] == "builtin" and r.json()["start_lead_ms"] == 1500
    zone_id = r.json()["id"]

    missing = await admin.patch(f"/api/zones/{zone_id}", json={"chime": "file:bell.wav"})
    assert missing.status_code == 422 and "bell.wav" in missing.json()["detail"]
    with wave.open(str(api.ctx.media_dir / "bell.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(bytes(9600))
    r = await admin.patch(f"/api/zones/{zone_id}", json={"chime": "file:bell.wav", "start_lead_ms": 0})
    assert r.status_code == 200 and r.json()["chime"] == "file:bell.wav" and r.json()["start_lead_ms"] == 0

    # Out of the media library, or no chime syntax at all: refused before any file is looked at.
    for chime in ("file:../hub.db", "file:/etc/passwd", "file:.hidden", "http://x/bell.wav", "builtin2"):
        bad = await admin.patch(f"/api/zones/{zone_id}", json={"chime": chime})
        assert bad.status_code == 422 and "chime" in bad.json()["detail"], chime
    for lead in (-1, 10_001):
        bad = await admin.patch(f"/api/zones/{zone_id}", json={"start_lead_ms": lead})
        assert bad.status_code == 422 and "start_lead_ms" in bad.json()["detail"]
    operator = await api.as_role(Role.operator)
    assert (await operator.patch(f"/api/zones/{zone_id}", json={"chime": "builtin"})).status_code == 403

    r = await admin.patch(f"/api/zones/{zone_id}", json={"chime": ""})  # none any more
    assert r.status_code == 200 and r.json()["chime"] is None
    with api.ctx.db.session() as s:
        zone = s.get(Zone, zone_id)
        assert zone is not None and zone.chime is None and zone.start_lead_ms == 0
    assert (await admin.get("/api/zones")).status_code == 200  # still serving
