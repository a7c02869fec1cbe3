"""RFC 3261 §17 transactions driven in simulated time: schedules, absorption, CANCEL, cleanup."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycast.sip.message import SipMessage, parse, request, response_for
from citycast.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    State,
    TransactionError,
    TransactionLayer,
    TransactionTimeout,
    TransactionTimeoutError,
    new_branch,
)

CALLER = ("10.0.0.2", 5060)


def sip_request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKinv1",
    cseq: int = 1,
    cseq_method: str | None = None,
    call_id: str = "call-1@10.0.0.2",
    to_tag: str | None = None,
    sent_by: str = "10.0.0.2:5060",
) -> SipMessage:
    to = "<sip:citycast@10.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    raw = (
        f"{method} sip:citycast@10.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@10.0.0.2>;tag=alice1\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:alice@10.0.0.2:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse(raw.encode())


def drain(layer: TransactionLayer) -> list[SipMessage]:
    out, layer.outbox = layer.outbox, []
    assert all(addr == CALLER for _, addr in out)
    return [parse(data) for data, _ in out]


def run_until(layer: TransactionLayer, end: float) -> tuple[list[tuple[float, SipMessage]], list[tuple[float, str]]]:
    """Tick at every deadline up to `end`: what was sent when, and which timers gave up when."""
    sent: list[tuple[float, SipMessage]] = []
    timeouts: list[tuple[float, str]] = []
    while (at := layer.next_deadline()) is not None and at <= end:
        timeouts.extend((at, t.timer) for t in layer.tick(at))
        sent.extend((at, m) for m in drain(layer))
    return sent, timeouts


def new_invite(layer: TransactionLayer, now: float = 0.0, **kw: object) -> ServerTransaction:
    tx = layer.on_request(sip_request("INVITE", **kw), CALLER, now)  # type: ignore[arg-type]
    assert tx is not None
    return tx


# --- INVITE server transaction ---


def test_final_error_is_retransmitted_on_timer_g_until_timer_h() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer)
    tx.respond(response_for(tx.request, 486, "Busy Here", to_tag="cc1"), 0.0)
    assert [m.status for m in drain(layer)] == [486]
    assert tx.state is State.COMPLETED
    sent, timeouts = run_until(layer, 100.0)
    # T1 doubling, capped at T2 = 4 s; Timer H = 64·T1 = 32 s ends it with a report.
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(m.status == 486 for _, m in sent)
    assert timeouts == [(32.0, "H")]
    assert tx.state is State.TERMINATED
    assert len(layer) == 0
    assert (layer.resent, layer.retransmissions_received) == (10, 0)  # counted for /metrics


def test_ack_stops_retransmissions_and_is_absorbed_until_timer_i() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer)
    tx.respond(response_for(tx.request, 603, "Decline", to_tag="cc1"), 0.0)
    drain(layer)
    sent, _ = run_until(layer, 1.0)
    assert [t for t, _ in sent] == [0.5]
    # A retransmitted INVITE (our 603 was lost) gets the 603 again and never reaches the TU.
    assert layer.on_request(sip_request("INVITE"), CALLER, 1.1) is None
    assert [m.status for m in drain(layer)] == [603]
    ack = sip_request("ACK", cseq_method="ACK", to_tag="cc1")
    assert layer.on_request(ack, CALLER, 1.2) is None
    assert tx.state is State.CONFIRMED
    assert layer.on_request(ack, CALLER, 2.0) is None  # duplicate ACK: absorbed too
    assert layer.on_request(sip_request("INVITE"), CALLER, 2.1) is None  # Confirmed absorbs INVITEs silently
    assert drain(layer) == []
    # Two INVITEs came again (one answered again, one absorbed); ours went out again at 0.5 s and at 1.1 s.
    assert (layer.retransmissions_received, layer.resent) == (2, 2)
    assert layer.next_deadline() == pytest.approx(1.2 + 5.0)  # Timer I = T4
    sent, timeouts = run_until(layer, 100.0)
    assert sent == [] and timeouts == []
    assert len(layer) == 0


def test_reliable_transport_has_no_timer_g_and_zero_timer_i() -> None:
    layer = TransactionLayer(reliable=True)
    tx = new_invite(layer)
    tx.respond(response_for(tx.request, 486, "Busy Here", to_tag="cc1"), 0.0)
    drain(layer)
    assert layer.next_deadline() == 32.0  # only Timer H
    layer.on_request(sip_request("ACK", cseq_method="ACK", to_tag="cc1"), CALLER, 0.3)
    assert layer.next_deadline() == 0.3  # Timer I = 0
    assert layer.tick(0.3) == []
    assert len(layer) == 0 and drain(layer) == []

    # Without ACK, Timer H still gives up, with nothing retransmitted.
    tx = new_invite(layer, 50.0, branch="z9hG4bKinv2")
    tx.respond(response_for(tx.request, 480, "Temporarily Unavailable", to_tag="cc2"), 50.0)
    drain(layer)
    sent, timeouts = run_until(layer, 200.0)
    assert sent == [] and timeouts == [(82.0, "H")]
    assert len(layer) == 0


def test_100_trying_goes_out_by_itself_after_200_ms() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer, 10.0)
    assert layer.next_deadline() == pytest.approx(10.2)
    assert layer.tick(10.19) == [] and drain(layer) == []
    layer.tick(10.2)
    (trying,) = drain(layer)
    assert trying.status == 100 and trying.call_id == "call-1@10.0.0.2" and trying.to.tag is None
    # The TU answering within 200 ms suppresses it.
    tx2 = new_invite(layer, 20.0, branch="z9hG4bKinv2")
    tx2.respond(response_for(tx2.request, 180, "Ringing", to_tag="t2"), 20.1)
    assert [m.status for m in drain(layer)] == [180]
    layer.tick(20.3)
    assert drain(layer) == []
    for t in (tx, tx2):
        t.respond(response_for(t.request, 200, "OK", to_tag="t"), 21.0)
    run_until(layer, 100.0)
    assert len(layer) == 0


def test_duplicate_invite_while_proceeding_gets_the_last_provisional() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer)
    assert layer.on_request(sip_request("INVITE"), CALLER, 0.05) is None  # nothing to repeat yet
    assert drain(layer) == []
    tx.respond(response_for(tx.request, 100, "Trying"), 0.1)
    tx.respond(response_for(tx.request, 183, "Session Progress", to_tag="cc1"), 0.15)
    drain(layer)
    assert layer.on_request(sip_request("INVITE"), CALLER, 0.6) is None
    (again,) = drain(layer)
    assert again.status == 183 and again.to.tag == "cc1"
    assert len(layer) == 1  # still one transaction, not a second call


def test_2xx_moves_to_accepted_which_absorbs_retransmitted_invites() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer)
    tx.respond(response_for(tx.request, 200, "OK", to_tag="cc1"), 0.1)
    drain(layer)
    assert tx.state is State.ACCEPTED
    # RFC 6026: a late INVITE copy is not a new call, and the transaction does not retransmit the 2xx itself.
    assert layer.on_request(sip_request("INVITE"), CALLER, 0.5) is None
    assert drain(layer) == [] and len(layer) == 1
    # The ACK of a 2xx has its own branch: it goes to the TU as a stateless transaction that cannot be answered.
    ack_tx = layer.on_request(sip_request("ACK", branch="z9hG4bKack1", to_tag="cc1"), CALLER, 0.6)
    assert ack_tx is not None and ack_tx.method == "ACK"
    with pytest.raises(TransactionError):
        ack_tx.respond(response_for(ack_tx.request, 200, "OK"), 0.6)
    assert len(layer) == 1
    sent, timeouts = run_until(layer, 100.0)
    assert sent == [] and timeouts == []  # Timer L ends it quietly at 64·T1
    assert len(layer) == 0


def test_a_final_response_cannot_be_followed_by_another() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer)
    tx.respond(response_for(tx.request, 486, "Busy Here", to_tag="cc1"), 0.0)
    with pytest.raises(TransactionError):
        tx.respond(response_for(tx.request, 200, "OK", to_tag="cc1"), 0.1)
    with pytest.raises(TransactionError):
        tx.respond(tx.request, 0.1)  # a request is not a response


# --- CANCEL ---


def test_cancel_gets_200_and_the_invite_487_with_the_same_tag() -> None:
    layer = TransactionLayer(reliable=False)
    invite_tx = new_invite(layer)
    invite_tx.respond(response_for(invite_tx.request, 180, "Ringing", to_tag="cc1"), 0.1)
    drain(layer)
    cancel = sip_request("CANCEL", cseq=1)
    cancel_tx = layer.on_request(cancel, CALLER, 1.0)
    assert cancel_tx is not None and cancel_tx is not invite_tx and cancel_tx.method == "CANCEL"
    assert layer.invite_for(cancel) is invite_tx
    assert layer.cancel(cancel_tx, 1.0) is invite_tx
    ok, terminated = drain(layer)
    assert (ok.status, ok.cseq) == (200, (1, "CANCEL"))
    assert (terminated.status, terminated.cseq) == (487, (1, "INVITE"))
    assert ok.to.tag == terminated.to.tag == "cc1"
    # A retransmitted CANCEL is answered by the layer with the same 200.
    assert layer.on_request(cancel, CALLER, 1.2) is None
    assert [m.status for m in drain(layer)] == [200]
    layer.on_request(sip_request("ACK", cseq_method="ACK", to_tag="cc1"), CALLER, 1.3)
    assert invite_tx.state is State.CONFIRMED
    sent, timeouts = run_until(layer, 100.0)
    assert sent == [] and timeouts == []
    assert len(layer) == 0


def test_cancel_without_invite_gets_481_and_after_final_has_no_effect() -> None:
    layer = TransactionLayer(reliable=True)
    stray = layer.on_request(sip_request("CANCEL", branch="z9hG4bKnone"), CALLER, 0.0)
    assert stray is not None
    assert layer.cancel(stray, 0.0) is None
    assert [m.status for m in drain(layer)] == [481]

    invite_tx = new_invite(layer, 1.0)
    invite_tx.respond(response_for(invite_tx.request, 200, "OK", to_tag="cc9"), 1.0)
    drain(layer)
    late = layer.on_request(sip_request("CANCEL"), CALLER, 1.1)
    assert late is not None
    assert layer.cancel(late, 1.1) is None
    (ok,) = drain(layer)
    assert ok.status == 200 and ok.to.tag == "cc9"  # 200 to the CANCEL, no 487: the call stands
    run_until(layer, 100.0)
    assert len(layer) == 0


# --- non-INVITE server transaction ---


@pytest.mark.parametrize(("reliable", "gone_at"), [(False, 1.0 + 32.0), (True, 1.0)])
def test_non_invite_server_timer_j(reliable: bool, gone_at: float) -> None:
    layer = TransactionLayer(reliable=reliable)
    bye = sip_request("BYE", branch="z9hG4bKbye1", cseq=2, to_tag="cc1")
    tx = layer.on_request(bye, CALLER, 0.0)
    assert tx is not None and tx.state is State.TRYING
    assert layer.next_deadline() == 32.0  # no 100 Trying for non-INVITE, only the guard against a silent TU
    assert layer.on_request(bye, CALLER, 0.5) is None and drain(layer) == []  # Trying absorbs
    tx.respond(response_for(bye, 200, "OK"), 1.0)
    assert [m.status for m in drain(layer)] == [200]
    if not reliable:
        assert layer.on_request(bye, CALLER, 2.0) is None
        assert [m.status for m in drain(layer)] == [200]  # Completed repeats the final
    assert layer.next_deadline() == gone_at
    assert layer.tick(gone_at) == []
    assert len(layer) == 0
    # After the transaction is gone, a late copy is a new request again (the dialog then answers 481).
    assert layer.on_request(bye, CALLER, gone_at + 1) is not None


def test_non_invite_provisional_is_repeated_while_proceeding() -> None:
    layer = TransactionLayer(reliable=False)
    reg = sip_request("OPTIONS", branch="z9hG4bKopt")
    tx = layer.on_request(reg, CALLER, 0.0)
    assert tx is not None
    tx.respond(response_for(reg, 100, "Trying"), 0.1)
    assert tx.state is State.PROCEEDING
    drain(layer)
    assert layer.on_request(reg, CALLER, 0.6) is None
    assert [m.status for m in drain(layer)] == [100]


# --- matching and bad input ---


def test_matching_uses_branch_sent_by_and_method() -> None:
    layer = TransactionLayer(reliable=False)
    a = new_invite(layer)
    # Same branch from another host: another transaction (a broken or hostile peer must not hijack it).
    b = layer.on_request(sip_request("INVITE", sent_by="10.0.0.3:5060"), CALLER, 0.0)
    # Same branch, another method: another transaction.
    c = layer.on_request(sip_request("OPTIONS"), CALLER, 0.0)
    assert b is not None and c is not None and len({id(a), id(b), id(c)}) == 3
    assert len(layer) == 3


def test_rfc2543_requests_without_magic_cookie_match_on_dialog_fields() -> None:
    layer = TransactionLayer(reliable=False)
    tx = new_invite(layer, branch="oldstyle")
    assert layer.on_request(sip_request("INVITE", branch="oldstyle"), CALLER, 0.1) is None
    tx.respond(response_for(tx.request, 486, "Busy Here", to_tag="cc1"), 0.2)
    drain(layer)
    ack = sip_request("ACK", branch="oldstyle", cseq_method="ACK", to_tag="cc1")
    assert layer.on_request(ack, CALLER, 0.3) is None
    assert tx.state is State.CONFIRMED
    other = layer.on_request(sip_request("INVITE", branch="oldstyle", cseq=2), CALLER, 0.4)
    assert other is not None and other is not tx


def test_mismatched_and_malformed_messages_are_dropped_without_state() -> None:
    layer = TransactionLayer(reliable=False)
    good = sip_request("INVITE")
    # parse() refuses this; a message built in code can still carry it.
    bad_cseq = SipMessage(
        method="INVITE", uri=good.uri, headers=[(n, "1 BYE" if n == "CSeq" else v) for n, v in good.headers]
    )
    assert layer.on_request(bad_cseq, CALLER, 0.0) is None
    a_response = response_for(sip_request("OPTIONS"), 200, "OK")
    assert layer.on_request(a_response, CALLER, 0.0) is None
    assert layer.on_response(a_response, 0.0) is None  # no client transaction has that branch
    assert layer.on_response(sip_request("OPTIONS"), 0.0) is None  # a request is not a response
    assert layer.on_request(sip_request("ACK", branch="z9hG4bKlost", cseq_method="ACK"), CALLER, 0.0) is not None
    assert layer.dropped == 4
    assert len(layer) == 0 and layer.outbox == [] and layer.next_deadline() is None


def test_bad_timer_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="bad timer"):
        TransactionLayer(reliable=False, t1=5.0, t2=4.0)


# --- non-INVITE client transaction ---


def our_bye(branch: str | None = None) -> SipMessage:
    return request(
        "BYE",
        "sip:alice@10.0.0.2:5060",
        [
            ("Via", f"SIP/2.0/UDP 10.0.0.1:5060;branch={branch or new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", "<sip:citycast@10.0.0.1>;tag=cc1"),
            ("To", '"Alice" <sip:alice@10.0.0.2>;tag=alice1'),
            ("Call-ID", "call-1@10.0.0.2"),
            ("CSeq", "1 BYE"),
        ],
        b"",
    )


def test_client_timer_e_doubles_to_t2_and_timer_f_times_out() -> None:
    layer = TransactionLayer(reliable=False)
    done: list[ClientTransaction] = []
    tx = layer.send_request(our_bye(), CALLER, 0.0)
    tx.add_done_callback(done.append)
    assert [m.method for m in drain(layer)] == ["BYE"]
    sent, timeouts = run_until(layer, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(m.method == "BYE" for _, m in sent)
    assert timeouts == [(32.0, "F")]
    assert done == [tx] and tx.done() and layer.resent == 10
    with pytest.raises(TransactionTimeoutError):
        tx.result()
    assert len(layer) == 0


def test_client_provisional_switches_to_t2_and_final_completes_until_timer_k() -> None:
    layer = TransactionLayer(reliable=False)
    bye = our_bye()
    tx = layer.send_request(bye, CALLER, 0.0)
    drain(layer)
    with pytest.raises(TransactionError):
        tx.result()
    sent, _ = run_until(layer, 0.9)
    assert [t for t, _ in sent] == [0.5]
    assert layer.on_response(response_for(bye, 100, "Trying"), 1.0) is tx
    assert tx.state is State.PROCEEDING
    sent, _ = run_until(layer, 10.0)
    assert [t for t, _ in sent] == [1.5, 5.5, 9.5]  # after a provisional: every T2
    done: list[ClientTransaction] = []
    tx.add_done_callback(done.append)
    assert layer.on_response(response_for(bye, 200, "OK"), 10.0) is tx
    assert done == [tx] and tx.result().status == 200
    assert layer.on_response(response_for(bye, 200, "OK"), 10.5) is None  # late copy absorbed
    assert layer.next_deadline() == 15.0  # Timer K = T4
    late: list[ClientTransaction] = []
    tx.add_done_callback(late.append)
    assert late == [tx]  # a callback added after completion runs at once
    sent, timeouts = run_until(layer, 100.0)
    assert sent == [] and timeouts == []
    assert len(layer) == 0


def test_client_on_reliable_transport_never_retransmits() -> None:
    layer = TransactionLayer(reliable=True)
    bye = our_bye()
    tx = layer.send_request(bye, CALLER, 0.0)
    drain(layer)
    assert layer.next_deadline() == 32.0
    layer.on_response(response_for(bye, 481, "Call/Transaction Does Not Exist"), 0.2)
    assert tx.result().status == 481
    assert layer.tick(0.2) == [] and len(layer) == 0


def test_client_refuses_requests_it_cannot_track() -> None:
    layer = TransactionLayer(reliable=False)
    with pytest.raises(TransactionError, match="magic cookie"):
        layer.send_request(our_bye("nocookie"), CALLER, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(sip_request("INVITE"), CALLER, 0.0)
    layer.send_request(our_bye("z9hG4bKsame"), CALLER, 0.0)
    with pytest.raises(TransactionError, match="already"):
        layer.send_request(our_bye("z9hG4bKsame"), CALLER, 0.0)
    assert len(layer) == 1


def test_timeouts_name_their_transaction() -> None:
    layer = TransactionLayer(reliable=True)
    tx = layer.send_request(our_bye(), CALLER, 0.0)
    (timeout,) = layer.tick(32.0)
    assert timeout == TransactionTimeout(tx, "F")


# --- any interleaving leaves nothing behind ---

_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS")
_STATUSES = (100, 180, 200, 302, 486, 487, 500)


@settings(max_examples=300, deadline=None)
@given(
    reliable=st.booleans(),
    ops=st.lists(
        st.tuples(
            st.sampled_from(("request", "respond", "send", "response", "tick")),
            st.integers(0, 4),  # method / status / transaction pick
            st.sampled_from(("z9hG4bKa", "z9hG4bKb", "plain")),
            st.sampled_from(("10.0.0.2:5060", "10.0.0.3")),
            st.floats(0.0, 6.0),
        ),
        max_size=40,
    ),
)
def test_any_message_sequence_ends_with_an_empty_table(
    reliable: bool, ops: list[tuple[str, int, str, str, float]]
) -> None:
    layer = TransactionLayer(reliable=reliable)
    now = 0.0
    server: list[ServerTransaction] = []
    sent: list[SipMessage] = []
    for op, pick, branch, sent_by, dt in ops:
        now += dt
        if op == "request":
            method = _METHODS[pick]
            tx = layer.on_request(sip_request(method, branch=branch, sent_by=sent_by, to_tag="t"), CALLER, now)
            if tx is not None:
                server.append(tx)
                if tx.method == "CANCEL":
                    layer.cancel(tx, now)
        elif op == "respond" and server:
            tx = server[pick % len(server)]
            status = _STATUSES[(pick + int(dt)) % len(_STATUSES)]
            try:
                tx.respond(response_for(tx.request, status, "X", to_tag="t"), now)
            except TransactionError:
                assert tx.method == "ACK" or tx.final_sent or tx.state is State.TERMINATED
        elif op == "send":
            bye = our_bye()
            layer.send_request(bye, CALLER, now)
            sent.append(bye)
        elif op == "response" and sent:
            layer.on_response(response_for(sent[pick % len(sent)], _STATUSES[pick], "X"), now)
        else:
            layer.tick(now)
        layer.outbox.clear()
    # Every transaction ends on its own (Timer H, J, K, F, L, I, or the abandon timer of an unanswered non-INVITE)
    # once the TU has answered its INVITEs.
    for tx in server:
        if tx.method == "INVITE" and not tx.final_sent and tx.state is not State.TERMINATED:
            tx.respond(response_for(tx.request, 500, "Server Internal Error", to_tag="t"), now)
    layer.tick(now + 1000.0)
    assert len(layer) == 0 and layer.next_deadline() is None


def test_non_invite_the_tu_never_answers_is_forgotten_after_64_t1() -> None:
    layer = TransactionLayer(reliable=False)
    tx = layer.on_request(sip_request("OPTIONS", branch="z9hG4bKmute"), CALLER, 0.0)
    assert tx is not None
    assert layer.tick(31.9) == [] and len(layer) == 1
    assert layer.tick(32.0) == [] and len(layer) == 0 and layer.outbox == []
    with pytest.raises(TransactionError):
        tx.respond(response_for(tx.request, 200, "OK"), 40.0)
