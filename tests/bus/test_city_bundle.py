"""The city bundle on its own: written privately, every part checked at load, refused clearly when bad. (The
bundle at work, a city server joining the hub's bus, is in test_leaf_auth.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citycast.bus import jwt
from citycast.bus.authority import NatsAuthority
from citycast.bus.city_bundle import CityBundle, CityBundleError, export_city_bundle
from citycast.bus.jwt import KeyKind


def test_bundle_is_private_and_refused_clearly_when_bad(tmp_path: Path) -> None:
    authority = NatsAuthority.load_or_create(tmp_path / "auth")
    path = tmp_path / "city.bundle"
    bundle = export_city_bundle(authority, path, "north")
    assert path.stat().st_mode & 0o777 == 0o600
    assert CityBundle.load(path) == bundle
    operator = jwt.decode(bundle.operator_jwt)  # verifies the signature against its issuer
    assert operator["iss"] == operator["sub"] == authority.operator_public  # self-signed by the hub's operator
    assert operator["nats"]["system_account"] == authority.system_public
    leaf = jwt.decode(jwt.parse_creds(bundle.leaf_creds).jwt)
    assert "citycast.audio.*" not in leaf["nats"]["pub"]["allow"]
    assert "citycast.audio.*" in leaf["nats"]["sub"]["allow"]
    files = bundle.install(tmp_path / "city")
    for p in (files.leaf_creds, files.system_leaf_creds, files.time_creds):
        assert p.stat().st_mode & 0o777 == 0o600
    assert "extension_hint: will_extend" in bundle.server_config(files.resolver_dir)

    def refused(text: str, match: str) -> None:
        path.write_text(text)
        with pytest.raises(CityBundleError, match=match):
            CityBundle.load(path)

    good = json.loads(bundle.to_json())
    refused("{not json", "not JSON")
    refused(json.dumps({**good, "version": 99}), "version 1")
    refused(json.dumps({k: v for k, v in good.items() if k != "leaf_creds"}), "lacks leaf_creds")
    head, body, sig = good["account_jwt"].split(".")
    refused(json.dumps({**good, "account_jwt": f"{head}.{body}.{sig[::-1]}"}), "not valid")
    other = NatsAuthority.load_or_create(tmp_path / "other")
    refused(json.dumps({**good, "account_jwt": other.account_jwt()}), "not valid")
    stranger = jwt.new_seed(KeyKind.USER)
    foreign = jwt.creds_text(jwt.user_jwt(other.account_seed, jwt.public_key(stranger), "x"), stranger)
    refused(json.dumps({**good, "leaf_creds": foreign}), "leaf_creds is not a user")
    refused(json.dumps({**good, "zone": "a.b"}), "zone|site name")
    with pytest.raises(CityBundleError, match="cannot read"):
        CityBundle.load(tmp_path / "missing.bundle")
    with pytest.raises(ValueError, match="site name"):
        export_city_bundle(authority, tmp_path / "x.bundle", "no spaces")


def test_an_exported_bundle_loads_as_written_with_the_hubs_chain(tmp_path: Path) -> None:
    authority = NatsAuthority.load_or_create(tmp_path / "auth")
    bundle = export_city_bundle(authority, tmp_path / "a.bundle", "north")
    assert CityBundle.load(tmp_path / "a.bundle") == bundle
    assert (bundle.zone, bundle.account, bundle.account_jwt) == (
        "north",
        authority.account_public,
        authority.account_jwt(),
    )
