"""CAP 1.2 documents read and checked against the OASIS schema; what is not CAP refused with a reason; and the
parser played against as an attacker would: external entities, entity bombs, a network DTD."""

from __future__ import annotations

import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from citycast.hub.cap.parse import CapError, parse_alert

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_an_alert_in_two_languages_with_two_areas() -> None:
    a = parse_alert(_fixture("flood_alert.xml"))
    assert a.key == ("alerts@ndma.gov.pk", "PK-NDMA-2026-12-02-0142", "2026-12-02T14:00:00+05:00")
    assert a.sent == dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)
    assert (a.status, a.msg_type, a.signed) == ("Actual", "Alert", False)
    assert [i.language for i in a.infos] == ["ur-PK", "en-PK"]
    assert a.infos[1].headline == "Flood warning for the Lyari river"
    assert [len(i.areas) for i in a.infos] == [2, 2]
    assert a.infos[0].areas[1].circles == ("24.81,67.03 1.5",)
    assert a.expires() == dt.datetime(2099, 12, 2, 15, 0, tzinfo=dt.UTC)


def test_references_of_a_cancel() -> None:
    a = parse_alert(_fixture("flood_cancel.xml"))
    assert a.msg_type == "Cancel"
    assert [(r.identifier, r.sent) for r in a.references] == [
        ("PK-NDMA-2026-12-02-0142", "2026-12-02T14:00:00+05:00"),
        ("PK-NDMA-2026-12-02-0143", "2026-12-02T14:20:00+05:00"),
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_fixture("malformed_missing_status.xml"), r"not valid CAP 1\.2: .*status"),
        (_fixture("flood_alert.xml").replace(b"<severity>Extreme", b"<severity>Apocalyptic"), "not valid CAP 1.2"),
        (_fixture("flood_alert.xml")[:-40], "not well-formed XML"),
        (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.1'/>", "root element"),
        (b"", "not well-formed"),
        (b"<a>" * 10 + b"x" * 1_000_001, "at most 1000000"),
    ],
)
def test_what_is_not_cap_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(CapError, match=reason):
        parse_alert(data)


def _alert_with(doctype: str, headline: str) -> bytes:
    text = _fixture("heat_expired.xml").decode()
    text = text.replace('<?xml version="1.0" encoding="UTF-8"?>\n', f'<?xml version="1.0"?>\n{doctype}\n')
    return text.replace("Heatwave warning for Karachi", headline).encode()


class _Watch(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'<!ENTITY secret "fetched">')

    def log_message(self, *args: object) -> None:
        pass


def test_the_attackers_xml_is_refused_and_reaches_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Watch)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/evil.dtd"
    try:
        attacks = [
            # XXE: a local file into the headline
            _alert_with(f'<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file://{secret}">]>', "&xxe;"),
            # XXE over the network, and a parameter entity fetching a remote DTD
            _alert_with(f'<!DOCTYPE alert [<!ENTITY xxe SYSTEM "{url}">]>', "&xxe;"),
            _alert_with(f'<!DOCTYPE alert [<!ENTITY % remote SYSTEM "{url}"> %remote;]>', "x"),
            _alert_with(f'<!DOCTYPE alert SYSTEM "{url}">', "x"),
            # billion laughs
            _alert_with(
                '<!DOCTYPE alert [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                + "".join(f'<!ENTITY {n} "{("&" + p + ";") * 10}">' for p, n in zip("bcdefgh", "cdefghi", strict=True))
                + "]>",
                "&i;",
            ),
        ]
        for data in attacks:
            with pytest.raises(CapError, match=r"DOCTYPE|entity amplification") as e:
                parse_alert(data)
            assert "TOP SECRET" not in str(e.value)
        assert _Watch.hits == []  # nothing was fetched
    finally:
        server.shutdown()
