"""`citycast city` (the city server) and `citycast city-bundle` (what the hub gives it): wrong combinations are
clear errors before anything starts. The city server running against a hub is tests/hub/test_city_leaf.py."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from citycast.bus.authority import NatsAuthority
from citycast.bus.city_bundle import export_city_bundle
from citycast.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def test_the_city_server_needs_its_zone() -> None:
    result = runner.invoke(app, ["city"], env=WIDE)
    assert result.exit_code == 2 and "--zone" in result.stderr


def test_a_city_bundle_needs_the_hubs_leafnode_and_must_be_for_this_zone(tmp_path: Path) -> None:
    bundle = tmp_path / "north.bundle.json"
    export_city_bundle(NatsAuthority.load_or_create(tmp_path / "auth"), bundle, "north")
    common = ["--city-bundle", str(bundle), "--data-dir", str(tmp_path / "city"), "--listen", "127.0.0.1:4999"]
    result = runner.invoke(app, ["city", "--zone", "north", *common], env=WIDE)
    assert result.exit_code == 2 and "--city-bundle needs --leaf-remote" in result.stderr
    result = runner.invoke(app, ["city", "--zone", "south", "--leaf-remote", "nats://127.0.0.1:1", *common], env=WIDE)
    assert result.exit_code == 2 and "the bundle is for zone 'north', not 'south'" in result.stderr
    assert not (tmp_path / "city").exists()  # no NATS configured or started


def test_a_bad_listen_address_is_a_clear_error() -> None:
    result = runner.invoke(app, ["city", "--zone", "north", "--listen", "nowhere"], env=WIDE)
    assert result.exit_code == 2 and "--listen wants HOST:PORT, got 'nowhere'" in result.stderr


def test_city_bundle_before_the_hub_has_run_says_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "north.bundle.json"
    result = runner.invoke(app, ["city-bundle", "--zone", "north", "--out", str(out), "--data-dir", str(tmp_path)],
                           env=WIDE)  # fmt: skip
    assert result.exit_code == 2 and "run `citycast serve --data-dir" in result.stderr
    assert not out.exists()
