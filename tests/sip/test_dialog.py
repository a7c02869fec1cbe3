"""RFC 3261 §12–§15 UAS dialogs in simulated time, alone and together with the transaction layer."""

from __future__ import annotations

import pytest

from citycast.sip.dialog import Dialog, DialogError, DialogState, dialog_id, split_header_list
from citycast.sip.message import SipMessage, parse, response_for
from citycast.sip.transaction import TransactionLayer

CALLER = ("10.0.0.2", 5060)
CONTACT = "<sip:citycast@10.0.0.1:5060>"
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"


def sip(
    method: str,
    *,
    cseq: int = 1,
    branch: str = "z9hG4bKinv1",
    to_tag: str | None = None,
    from_tag: str = "alice1",
    call_id: str = "call-1@10.0.0.2",
    contact: str | None = "<sip:alice@10.0.0.2:5060;transport=udp>",
    extra: str = "",
    body: bytes = b"",
) -> SipMessage:
    to = "<sip:citycast@10.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:citycast@10.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.2:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Alice" <sip:alice@10.0.0.2>;tag={from_tag}\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + extra
        + (f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
    )
    return parse(head.encode() + body)


def in_dialog(method: str, cseq: int, **kw: object) -> SipMessage:
    return sip(method, cseq=cseq, to_tag="cc1", branch=f"z9hG4bK{method.lower()}{cseq}", **kw)  # type: ignore[arg-type]


def confirmed_dialog(now: float = 0.0) -> tuple[Dialog, SipMessage]:
    invite = sip("INVITE", body=SDP)
    dialog = Dialog.from_invite(invite, "cc1", CONTACT)
    ok = dialog.response(invite, 200, "OK", body=b"v=0\r\n", content_type="application/sdp")
    dialog.track_2xx(ok, CALLER, now)
    return dialog, ok


def retransmit_times(dialog: Dialog, end: float) -> tuple[list[float], list[float]]:
    """Tick at each deadline up to `end`: when the 2xx went out again, and when the ACK wait gave up."""
    sent: list[float] = []
    gave_up: list[float] = []
    while (at := dialog.next_deadline()) is not None and at <= end:
        if dialog.tick(at):
            gave_up.append(at)
        out, dialog.outbox = dialog.outbox, []
        sent.extend(at for _ in out)
    return sent, gave_up


# --- creation ---


def test_dialog_state_comes_from_the_invite() -> None:
    invite = sip(
        "INVITE",
        cseq=314,
        extra=(
            "Record-Route: <sip:p2.example.net;lr>, <sip:p1.example.net;lr>\r\n"
            "Record-Route: <sip:p0.example.net;lr>\r\n"
        ),
    )
    dialog = Dialog.from_invite(invite, "cc1", "sip:citycast@10.0.0.1:5060")
    assert dialog.id == ("call-1@10.0.0.2", "cc1", "alice1")
    assert dialog.remote_target == "sip:alice@10.0.0.2:5060;transport=udp"
    assert dialog.route_set == ["<sip:p2.example.net;lr>", "<sip:p1.example.net;lr>", "<sip:p0.example.net;lr>"]
    assert dialog.remote_cseq == 314
    assert dialog.local_contact == CONTACT
    assert dialog.state is DialogState.EARLY


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"contact": None}, "Contact"),
        ({"to_tag": "x"}, "To tag"),
    ],
)
def test_invites_that_cannot_make_a_dialog_are_refused(kw: dict[str, object], why: str) -> None:
    with pytest.raises(DialogError, match=why):
        Dialog.from_invite(sip("INVITE", **kw), "cc1", CONTACT)  # type: ignore[arg-type]
    with pytest.raises(DialogError):
        Dialog.from_invite(sip("OPTIONS"), "cc1", CONTACT)


def test_invite_without_from_tag_is_refused() -> None:
    raw = sip("INVITE").to_bytes().replace(b";tag=alice1", b"")
    with pytest.raises(DialogError, match="From tag"):
        Dialog.from_invite(parse(raw), "cc1", CONTACT)


def test_2xx_carries_our_tag_contact_and_the_record_route() -> None:
    invite = sip("INVITE", extra="Record-Route: <sip:p1.example.net;lr>\r\n", body=SDP)
    dialog = Dialog.from_invite(invite, "cc1", CONTACT)
    ringing = dialog.response(invite, 180, "Ringing")
    ok = parse(dialog.response(invite, 200, "OK", body=b"v=0\r\n", content_type="application/sdp").to_bytes())
    assert ringing.to.tag == ok.to.tag == "cc1"
    assert ok.contact is not None and ok.contact.uri == "sip:citycast@10.0.0.1:5060"
    assert ok.headers_all("Record-Route") == ["<sip:p1.example.net;lr>"]
    assert ok.body == b"v=0\r\n" and ok.content_type == "application/sdp"
    assert dialog_id(invite) == ("call-1@10.0.0.2", "", "alice1")


def test_split_header_list_respects_brackets_and_quotes() -> None:
    assert split_header_list(['"a, b" <sip:x;lr>, <sip:y,z>', " <sip:w> "]) == [
        '"a, b" <sip:x;lr>',
        "<sip:y,z>",
        "<sip:w>",
    ]


# --- 2xx retransmission and ACK ---


def test_2xx_is_retransmitted_until_64_t1_then_the_call_must_end() -> None:
    dialog, _ = confirmed_dialog()
    assert dialog.state is DialogState.CONFIRMED and dialog.awaiting_ack
    sent, gave_up = retransmit_times(dialog, 100.0)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert gave_up == [32.0]
    assert dialog.ack_timed_out and not dialog.awaiting_ack
    assert dialog.next_deadline() is None and dialog.tick(200.0) is False  # reported once


def test_retransmitted_2xx_is_byte_identical_and_goes_to_the_caller() -> None:
    dialog, ok = confirmed_dialog()
    dialog.tick(0.5)
    assert dialog.outbox == [(ok.to_bytes(), CALLER)]


def test_ack_stops_retransmission_and_a_second_ack_is_ignored() -> None:
    dialog, _ = confirmed_dialog()
    sent, _ = retransmit_times(dialog, 2.0)
    assert sent == [0.5, 1.5]
    ack = in_dialog("ACK", 1, body=b"")
    assert dialog.on_request(ack, 2.1).kind == "ack"
    assert dialog.next_deadline() is None and dialog.outbox == []
    assert dialog.on_request(ack, 2.2).kind == "ignore"
    assert dialog.tick(100.0) is False and not dialog.ack_timed_out


def test_ack_with_wrong_cseq_or_tag_does_not_stop_retransmission() -> None:
    dialog, _ = confirmed_dialog()
    assert dialog.on_request(in_dialog("ACK", 7), 0.1).kind == "ignore"
    assert dialog.on_request(sip("ACK", to_tag="other", branch="z9hG4bKx"), 0.1).kind == "ignore"
    assert dialog.awaiting_ack


# --- in-dialog requests ---


def test_lower_cseq_gets_500_and_wrong_dialog_481() -> None:
    dialog, _ = confirmed_dialog()
    dialog.on_request(in_dialog("ACK", 1), 0.1)
    ev = dialog.on_request(in_dialog("INFO", 5), 1.0)
    assert ev.kind == "request"
    assert dialog.remote_cseq == 5
    ev = dialog.on_request(in_dialog("INFO", 4), 1.1)
    assert (ev.kind, ev.status) == ("reject", 500)
    assert dialog.remote_cseq == 5
    ev = dialog.on_request(sip("BYE", cseq=9, to_tag="someone-else", branch="z9hG4bKb"), 1.2)
    assert (ev.kind, ev.status) == ("reject", 481)
    assert dialog.state is DialogState.CONFIRMED


def test_bye_from_the_caller_ends_the_dialog() -> None:
    dialog, _ = confirmed_dialog()
    ev = dialog.on_request(in_dialog("BYE", 2), 0.3)  # BYE before the ACK: the 2xx retransmission stops too
    assert ev.kind == "bye"
    assert dialog.state is DialogState.TERMINATED and not dialog.awaiting_ack
    assert dialog.on_request(in_dialog("BYE", 2), 0.4).kind == "bye"  # idempotent
    ev = dialog.on_request(in_dialog("INFO", 3), 0.5)
    assert (ev.kind, ev.status) == ("reject", 481)
    ok = dialog.response(in_dialog("BYE", 2), 200, "OK")
    assert ok.to.tag == "cc1" and ok.contact is None


def test_reinvite_is_surfaced_with_its_offer_and_refreshes_the_target() -> None:
    dialog, _ = confirmed_dialog()
    hold = SDP.replace(b"a=sendrecv", b"a=sendonly")
    early = dialog.on_request(in_dialog("INVITE", 2, body=hold), 0.2)
    assert (early.kind, early.status) == ("reject", 500)  # our 2xx still waits for its ACK (§14.2)
    assert early.headers[0][0] == "Retry-After" and 0 <= int(early.headers[0][1]) <= 10
    dialog.on_request(in_dialog("ACK", 1), 0.3)
    reinvite = in_dialog("INVITE", 3, body=hold, contact="<sip:alice@10.0.0.9:5062>")
    ev = dialog.on_request(reinvite, 1.0)
    assert ev.kind == "reinvite" and b"a=sendonly" in ev.request.body
    assert dialog.remote_target == "sip:alice@10.0.0.9:5062"
    # A second re-INVITE while the first is unanswered.
    ev = dialog.on_request(in_dialog("INVITE", 4, body=SDP), 1.1)
    assert (ev.kind, ev.status) == ("reject", 500)
    # The call logic answers: its 2xx is retransmitted until the ACK of the re-INVITE.
    ok = dialog.response(reinvite, 200, "OK", body=b"v=0\r\n", content_type="application/sdp")
    assert ok.contact is not None and ok.to.tag == "cc1"
    dialog.track_2xx(ok, CALLER, 2.0)
    assert dialog.next_deadline() == 2.5
    assert dialog.on_request(in_dialog("ACK", 1), 2.1).kind == "ignore"  # the old ACK does not count
    assert dialog.on_request(in_dialog("ACK", 3), 2.2).kind == "ack"
    assert dialog.on_request(in_dialog("INVITE", 5, body=SDP), 3.0).kind == "reinvite"  # resume


def test_a_rejected_reinvite_closes_it() -> None:
    dialog, _ = confirmed_dialog()
    dialog.on_request(in_dialog("ACK", 1), 0.3)
    reinvite = in_dialog("INVITE", 2, body=b"garbage")
    assert dialog.on_request(reinvite, 1.0).kind == "reinvite"
    dialog.response(reinvite, 488, "Not Acceptable Here")
    assert dialog.on_request(in_dialog("INVITE", 3, body=SDP), 2.0).kind == "reinvite"


def test_only_2xx_to_invite_is_tracked() -> None:
    dialog, _ = confirmed_dialog()
    bye = in_dialog("BYE", 2)
    with pytest.raises(DialogError):
        dialog.track_2xx(response_for(bye, 200, "OK"), CALLER, 1.0)
    with pytest.raises(DialogError):
        dialog.track_2xx(response_for(sip("INVITE"), 486, "Busy Here", to_tag="cc1"), CALLER, 1.0)


# --- our requests ---


def test_our_bye_swaps_from_and_to_and_counts_our_own_cseq() -> None:
    dialog, _ = confirmed_dialog()
    dialog.on_request(in_dialog("ACK", 1), 0.3)
    dialog.on_request(in_dialog("INFO", 2), 0.4)
    bye = parse(dialog.bye(sent_by="10.0.0.1:5060").to_bytes())
    assert bye.method == "BYE" and bye.uri == "sip:alice@10.0.0.2:5060;transport=udp"
    assert bye.cseq == (1, "BYE")  # our CSeq space, independent of the caller's
    assert bye.from_.uri == "sip:citycast@10.0.0.1" and bye.from_.tag == "cc1"
    assert bye.to.uri == "sip:alice@10.0.0.2" and bye.to.tag == "alice1" and bye.to.display == "Alice"
    assert bye.call_id == "call-1@10.0.0.2"
    (via,) = bye.vias
    assert (via.transport, via.host, via.port) == ("UDP", "10.0.0.1", 5060)
    assert via.branch is not None and via.branch.startswith("z9hG4bK")
    assert bye.headers_all("Route") == []
    assert dialog.state is DialogState.TERMINATED
    assert dialog.new_request("INFO", sent_by="10.0.0.1:5060").cseq == (2, "INFO")


def test_bye_follows_the_route_set_loose_and_strict() -> None:
    loose = Dialog.from_invite(
        sip("INVITE", extra="Record-Route: <sip:p2.example.net;lr>, <sip:p1.example.net;lr>\r\n"), "cc1", CONTACT
    )
    bye = parse(loose.bye(sent_by="10.0.0.1:5060", transport="tcp").to_bytes())
    assert bye.uri == "sip:alice@10.0.0.2:5060;transport=udp"
    assert bye.headers_all("Route") == ["<sip:p2.example.net;lr>", "<sip:p1.example.net;lr>"]
    assert bye.vias[0].transport == "TCP"

    strict = Dialog.from_invite(
        sip("INVITE", extra="Record-Route: <sip:p2.example.net>, <sip:p1.example.net;lr>\r\n"), "cc1", CONTACT
    )
    bye = parse(strict.bye(sent_by="10.0.0.1:5060").to_bytes())
    assert bye.uri == "sip:p2.example.net"  # §12.2.1.1: a strict router takes the Request-URI
    assert bye.headers_all("Route") == ["<sip:p1.example.net;lr>", "<sip:alice@10.0.0.2:5060;transport=udp>"]


def test_ack_and_cancel_are_not_built_by_the_dialog() -> None:
    dialog, _ = confirmed_dialog()
    with pytest.raises(DialogError):
        dialog.new_request("ACK", sent_by="10.0.0.1:5060")


# --- with the transaction layer ---


def drain(layer: TransactionLayer) -> list[SipMessage]:
    out, layer.outbox = layer.outbox, []
    return [parse(data) for data, _ in out]


@pytest.mark.parametrize("reliable", [False, True])
def test_whole_call_caller_hangs_up(reliable: bool) -> None:
    layer = TransactionLayer(reliable=reliable)
    invite = sip("INVITE", body=SDP)
    tx = layer.on_request(invite, CALLER, 0.0)
    assert tx is not None
    dialog = Dialog.from_invite(tx.request, "cc1", CONTACT)
    tx.respond(dialog.response(tx.request, 180, "Ringing"), 0.1)
    ok = dialog.response(tx.request, 200, "OK", body=b"v=0\r\n", content_type="application/sdp")
    tx.respond(ok, 0.5)
    dialog.track_2xx(ok, tx.source, 0.5)
    assert [m.status for m in drain(layer)] == [180, 200]
    # The ACK of the 2xx is a new branch: the layer hands it over statelessly, the dialog takes it.
    ack = layer.on_request(in_dialog("ACK", 1), CALLER, 0.7)
    assert ack is not None and dialog.on_request(ack.request, 0.7).kind == "ack"
    bye_tx = layer.on_request(in_dialog("BYE", 2), CALLER, 10.0)
    assert bye_tx is not None
    assert dialog.on_request(bye_tx.request, 10.0).kind == "bye"
    bye_tx.respond(dialog.response(bye_tx.request, 200, "OK"), 10.0)
    assert [(m.status, m.cseq) for m in drain(layer)] == [(200, (2, "BYE"))]
    while (at := layer.next_deadline()) is not None:
        layer.tick(at)
    assert len(layer) == 0 and dialog.next_deadline() is None
    assert dialog.outbox == []


def test_whole_call_we_hang_up_and_unacked_2xx_forces_bye() -> None:
    layer = TransactionLayer(reliable=False)
    tx = layer.on_request(sip("INVITE", body=SDP), CALLER, 0.0)
    assert tx is not None
    dialog = Dialog.from_invite(tx.request, "cc1", CONTACT)
    ok = dialog.response(tx.request, 200, "OK", body=b"v=0\r\n", content_type="application/sdp")
    tx.respond(ok, 0.1)
    dialog.track_2xx(ok, tx.source, 0.1)
    drain(layer)
    now = 0.1
    while not dialog.tick(now):
        now = min(d for d in (dialog.next_deadline(), layer.next_deadline()) if d is not None)
        layer.tick(now)
    assert now == pytest.approx(32.1)
    bye = dialog.bye(sent_by="10.0.0.1:5060")
    client = layer.send_request(bye, CALLER, now)
    (sent,) = drain(layer)
    assert sent.method == "BYE" and sent.to.tag == "alice1"
    assert layer.on_response(response_for(sent, 200, "OK"), now + 0.05) is client
    assert client.result().status == 200
    while (at := layer.next_deadline()) is not None:
        layer.tick(at)
    assert len(layer) == 0
