"""Languages over real HTTP: a user's console language is kept with the user; the API's refusals come in the
signed-in user's language, else Accept-Language's; the hub's display time zone is an admin's setting; a PIN
carries the language of its telephone prompts."""

from __future__ import annotations

from tests.helpers import PASSWORD, Api

from citycast.hub.i18n import pick_language, translate_detail, validation_message


def test_accept_language_picks_the_best_supported_language() -> None:
    assert pick_language("ur-PK,ur;q=0.9,en;q=0.8") == "ur"
    assert pick_language("fr-FR, en;q=0.5, ur;q=0.7") == "ur"
    assert pick_language("en, ur;q=0") == "en"
    assert pick_language("ur;q=0") == "en"  # refused outright: the default
    assert pick_language("de, fr") == "en"
    assert pick_language("ur;q=banana, en") == "en"  # a malformed item is skipped, not trusted
    assert pick_language(None) == "en" and pick_language("") == "en"
    assert pick_language("x" * 5000 + ",ur") == "en"  # read only so far: no work for a huge header


def test_server_messages_in_urdu_and_unknown_ones_left_alone() -> None:
    assert translate_detail("wrong username or password", "ur") == "صارف کا نام یا پاس ورڈ غلط ہے۔"
    assert translate_detail("this needs the admin role (you are viewer)", "ur").startswith("اس کے لیے admin")
    assert translate_detail("PIN 7 does not exist", "ur") == "PIN 7 موجود نہیں۔"
    assert translate_detail("something nobody catalogued", "ur") == "something nobody catalogued"
    assert translate_detail("wrong username or password", "en") == "wrong username or password"
    error = {"type": "string_too_short", "msg": "String should have at least 8 characters", "ctx": {"min_length": 8}}
    assert validation_message(error, "password", "ur") == "password: کم از کم 8 حروف ہونے چاہییں"
    assert validation_message(error, "password", "en") == "password: String should have at least 8 characters"
    odd = {"type": "string_too_short", "msg": "too short", "ctx": {}}  # a ctx without the part the template names
    assert validation_message(odd, "password", "ur") == "password: too short"


async def test_a_user_keeps_their_language_and_reads_refusals_in_it(api: Api) -> None:
    c = await api.as_role("viewer")
    assert (await c.get("/api/me")).json()["language"] == "en"
    r = await c.put("/api/me/language", json={"language": "ur"})
    assert r.status_code == 200 and r.json()["language"] == "ur"
    assert (await c.get("/api/me")).json()["language"] == "ur"
    # Kept with the user, not the session: a new sign-in finds it.
    again = api.client()
    r = await again.post("/api/login", json={"username": "viewer", "password": PASSWORD})
    assert r.json()["user"]["language"] == "ur"
    # A refusal in the user's language, whatever the browser says.
    r = await c.get("/api/users", headers={"Accept-Language": "en"})
    assert r.status_code == 403 and r.json()["detail"] == "اس کے لیے admin کا کردار درکار ہے (آپ viewer ہیں)۔"
    # A language the hub does not have is refused clearly, and the user's stays.
    r = await c.put("/api/me/language", json={"language": "fr"})
    assert r.status_code == 422 and "language" in r.json()["detail"]
    assert (await c.get("/api/me")).json()["language"] == "ur"


async def test_refusals_before_sign_in_follow_accept_language(api: Api) -> None:
    c = api.client()
    r = await c.post("/api/login", json={"username": "admin", "password": "wrong"}, headers={"Accept-Language": "ur"})
    assert r.status_code == 401 and r.json()["detail"] == "صارف کا نام یا پاس ورڈ غلط ہے۔"
    r = await c.post("/api/login", json={"username": "admin", "password": "wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    r = await c.post("/api/login", json={"username": "admin"}, headers={"Accept-Language": "ur-PK,en;q=0.5"})
    assert r.status_code == 422 and r.json()["detail"] == "password: یہ ضروری ہے"
    assert r.json()["errors"][0]["type"] == "missing"  # the structured list stays as pydantic words it
    # A stranger's header, however odd, picks a language or none, and the hub goes on answering.
    odd: list[bytes] = [
        b"ur;q=2",
        b"*;q=banana, ur-PK;q=0.001",
        b";;;,,,",
        b"ur;" + b"q=1;" * 2000,
        "éé".encode("latin-1"),
    ]
    for header in odd:
        r = await c.post(
            "/api/login", json={"username": "nobody", "password": "x"}, headers={b"Accept-Language": header}
        )
        assert r.status_code == 401, (header, r.text)
    r = await c.get("/api/me", headers={"Accept-Language": "ur"})
    assert r.status_code == 401 and r.json()["detail"].startswith("آپ سائن اِن نہیں ہیں")
    assert r.headers["www-authenticate"] == "Bearer"  # the handler keeps the headers


async def test_the_time_zone_is_an_admins_setting(api: Api) -> None:
    viewer = await api.as_role("viewer")
    assert (await viewer.get("/api/locale")).json() == {"languages": ["en", "ur"], "time_zone": "Asia/Karachi"}
    assert (await viewer.put("/api/locale", json={"time_zone": "UTC"})).status_code == 403
    admin = await api.as_role("admin")
    for bad in ("Mars/Olympus", "Asia", "../../etc/passwd", "/etc/localtime", "Asia/Karachi\u0000"):
        r = await admin.put("/api/locale", json={"time_zone": bad})
        assert r.status_code == 422 and "no such time zone" in r.json()["detail"], (bad, r.text)
    assert (await admin.put("/api/locale", json={"time_zone": "Asia/Dubai"})).status_code == 200
    assert (await viewer.get("/api/locale")).json()["time_zone"] == "Asia/Dubai"


async def test_a_pin_carries_its_prompts_language(api: Api) -> None:
    c = await api.as_role("operator")
    r = await c.post("/api/pins", json={"label": "Imam, Orangi", "language": "ur"})
    assert r.status_code == 201 and r.json()["language"] == "ur"
    pin_id = r.json()["id"]
    r = await c.post("/api/pins", json={"label": "Imam, Saddar"})
    assert r.json()["language"] == "en"
    r = await c.patch(f"/api/pins/{pin_id}", json={"language": "en"})
    assert r.status_code == 200 and r.json()["language"] == "en"
    assert (await c.patch(f"/api/pins/{pin_id}", json={"language": None})).status_code == 422
    assert (await c.patch(f"/api/pins/{pin_id}", json={"language": "xx"})).status_code == 422
