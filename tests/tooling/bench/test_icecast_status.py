"""Icecast's status-json as the benchmarks and tests read it, including the invalid JSON Icecast 2.4 writes when it
serves no mount (seen in CI while a test waited for a mount to go)."""

from __future__ import annotations

import json

import pytest

from citycast.tooling.bench.icecast import parse_status

NO_MOUNT = (
    '{"icestats":"server_start":"Wed, 02 Dec 2026 18:29:27 +0000","server_start_iso8601":"2026-12-02T18:29:27+0000",'
    '"dummy":null}}'
)


def test_icecast_without_a_mount_is_no_mount_not_an_error() -> None:
    assert parse_status(NO_MOUNT) == []


def test_one_mount_and_several_mounts() -> None:
    one = {"icestats": {"source": {"listenurl": "http://h:8000/all.ogg"}}}
    two = {"icestats": {"source": [{"listenurl": "http://h:8000/a.ogg"}, {"listenurl": "http://h:8000/a.mp3"}]}}
    assert parse_status(json.dumps(one)) == [{"listenurl": "http://h:8000/all.ogg"}]
    assert [s["listenurl"] for s in parse_status(json.dumps(two))] == ["http://h:8000/a.ogg", "http://h:8000/a.mp3"]
    assert parse_status(json.dumps({"icestats": {"server_start": "x"}})) == []


def test_broken_json_that_names_mounts_is_still_an_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        parse_status('{"icestats":{"source":[{"listenurl": }]}')
