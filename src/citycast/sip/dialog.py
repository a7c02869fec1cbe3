"""SIP dialogs on the UAS side (RFC 3261 §12–§13, §14, §15), sans-IO with time passed in.

A caller's INVITE plus our 2xx makes a `Dialog`: Call-ID, our tag and theirs, their target (Contact), the route
set (Record-Route), both CSeq spaces. It does what the transaction layer deliberately leaves to the UA core:

* retransmits the 2xx until the ACK comes (§13.3.1.4: T1, doubling up to T2, whatever the transport, because a
  UDP hop may sit behind a TCP one); after 64·T1 without ACK `tick` reports that the call must be ended with BYE;
* screens in-dialog requests (`on_request`): wrong tags → 481, CSeq lower than the last → 500 (§12.2.2), a
  re-INVITE while the previous 2xx still waits for its ACK → 500 with Retry-After (§14.2), target refresh from
  Contact; what is left (ACK, BYE, re-INVITE, INFO, …) is surfaced to the call logic, which reads the SDP (hold and
  resume are its business);
* builds our requests (`bye`, `new_request`): next local CSeq, From/To swapped from the INVITE with the tags, the
  Request-URI and Route from the remote target and route set (loose routing, or §12.2.1.1 strict routing).

Its outbox and `next_deadline` work like the transaction layer's: the transport drains and ticks both.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from citycast.sip.message import SipMessage, request, response_for
from citycast.sip.transaction import T1, T2, Address, new_branch

EventKind = Literal["ack", "bye", "reinvite", "request", "reject", "ignore"]


class DialogError(ValueError):
    """The request cannot establish a dialog (e.g. an INVITE without Contact: answer 400)."""


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class DialogEvent:
    """The verdict on an in-dialog request.

    ``reject``: answer it with `status`/`reason`/`headers` and nothing else; ``ignore``: drop it (a stray ACK);
    ``ack``: the ACK of our 2xx (its body is the SDP answer when our 2xx carried the offer); ``bye``: answer 200
    and end the call; ``reinvite``: a new offer (or none) in `request.body` for the call logic to answer;
    ``request``: any other method (INFO with DTMF, OPTIONS, UPDATE…) for the call logic.
    """

    kind: EventKind
    request: SipMessage
    status: int = 0
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()


def dialog_id(msg: SipMessage) -> tuple[str, str, str]:
    """(Call-ID, local tag, remote tag) of a request we receive as UAS: our tag is in To, theirs in From."""
    return (msg.call_id, msg.to.tag or "", msg.from_.tag or "")


def split_header_list(values: Sequence[str]) -> list[str]:
    """Split comma-separated header values (Record-Route, Route) on commas outside <…> and quotes."""
    out: list[str] = []
    for value in values:
        depth, quoted, start = 0, False, 0
        for i, ch in enumerate(value):
            if ch == '"' and (i == 0 or value[i - 1] != "\\"):
                quoted = not quoted
            elif not quoted and ch == "<":
                depth += 1
            elif not quoted and ch == ">":
                depth = max(0, depth - 1)
            elif not quoted and depth == 0 and ch == ",":
                if part := value[start:i].strip():
                    out.append(part)
                start = i + 1
        if part := value[start:].strip():
            out.append(part)
    return out


def _uri_of(name_addr: str) -> str:
    """The URI inside a name-addr (``"A" <sip:a@b;lr>;x=y`` → ``sip:a@b;lr``), or the addr-spec itself."""
    lt, gt = name_addr.find("<"), name_addr.rfind(">")
    if 0 <= lt < gt:
        return name_addr[lt + 1 : gt].strip()
    return name_addr.split(";", 1)[0].strip()


def _as_name_addr(contact: str) -> str:
    return contact if "<" in contact else f"<{contact}>"


@dataclass
class _Pending2xx:
    """A 2xx to an INVITE waiting for its ACK."""

    cseq: int
    data: bytes
    dest: Address
    interval: float
    next_send: float
    give_up: float


class Dialog:
    """One call's dialog as seen by us, the UAS."""

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_party: str,
        remote_party: str,
        local_contact: str,
        remote_target: str,
        route_set: list[str],
        remote_cseq: int,
        local_cseq: int = 0,
        t1: float = T1,
        t2: float = T2,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_party = local_party  # our From value in requests we send (with our tag)
        self.remote_party = remote_party  # our To value in requests we send (with their tag)
        self.local_contact = _as_name_addr(local_contact)
        self.remote_target = remote_target
        self.route_set = route_set
        self.remote_cseq = remote_cseq
        self.local_cseq = local_cseq
        self.t1, self.t2 = t1, t2
        self.state = DialogState.EARLY
        self.outbox: list[tuple[bytes, Address]] = []
        self.ack_timed_out = False
        self._pending: _Pending2xx | None = None
        self._reinvite_open: int | None = None  # CSeq of a re-INVITE the call logic has not answered finally

    @classmethod
    def from_invite(
        cls,
        invite: SipMessage,
        local_tag: str,
        local_contact: str,
        *,
        local_cseq: int = 0,
        t1: float = T1,
        t2: float = T2,
    ) -> Dialog:
        """The dialog our answer to `invite` creates (§12.1.1). Raises DialogError when it cannot make one."""
        if (invite.method or "").upper() != "INVITE":
            raise DialogError(f"a dialog is created by an INVITE, not {invite.method or 'a response'}")
        if not local_tag:
            raise DialogError("local tag must not be empty")
        try:
            to, from_ = invite.to, invite.from_
            number, _ = invite.cseq
            contact = invite.contact
            to_raw, from_raw = invite.header("To"), invite.header("From")
        except ValueError as exc:
            raise DialogError(f"INVITE cannot create a dialog: {exc}") from exc
        if to.tag:
            raise DialogError("INVITE already carries a To tag: it belongs to an existing dialog")
        if not from_.tag:
            raise DialogError("INVITE has no From tag")  # RFC 2543 peers; we need it to tell dialogs apart
        if contact is None or not contact.uri or contact.uri == "*":
            raise DialogError("INVITE has no usable Contact")
        if to_raw is None or from_raw is None:
            raise DialogError("INVITE lacks To or From")
        route_set = split_header_list(invite.headers_all("Record-Route"))
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag,
            local_party=f"{to_raw.strip()};tag={local_tag}",
            remote_party=from_raw.strip(),
            local_contact=local_contact,
            remote_target=contact.uri,
            route_set=route_set,
            remote_cseq=number,
            local_cseq=local_cseq,
            t1=t1,
            t2=t2,
        )

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    # --- answering ---

    def response(
        self,
        req: SipMessage,
        status: int,
        reason: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> SipMessage:
        """A response in this dialog: our To tag; for INVITE 1xx/2xx also our Contact and the Record-Route (§12.1.1)."""
        extra = list(headers)
        method = (req.method or "").upper()
        if method == "INVITE" and status < 300 and status != 100:
            extra.append(("Contact", self.local_contact))
            if not any(name.lower() == "record-route" for name, _ in extra):
                extra.extend(("Record-Route", rr) for rr in req.headers_all("Record-Route"))
        if method == "INVITE" and status >= 200 and self._reinvite_open is not None:
            self._reinvite_open = None
        to_tag = None if req.to.tag else self.local_tag
        return response_for(req, status, reason, to_tag=to_tag, headers=extra, body=body, content_type=content_type)

    def track_2xx(self, response: SipMessage, dest: Address, now: float) -> None:
        """Our 2xx to an INVITE has been sent (through its transaction): retransmit it until the ACK arrives."""
        status = response.status or 0
        if not 200 <= status < 300:
            raise DialogError(f"only a 2xx is retransmitted by the dialog, not {status}")
        number, method = response.cseq
        if method.upper() != "INVITE":
            raise DialogError(f"2xx to {method} needs no ACK")
        self.state = DialogState.CONFIRMED
        self._pending = _Pending2xx(
            cseq=number,
            data=response.to_bytes(),
            dest=dest,
            interval=self.t1,
            next_send=now + self.t1,
            give_up=now + 64 * self.t1,
        )

    @property
    def awaiting_ack(self) -> bool:
        return self._pending is not None

    # --- in-dialog requests ---

    def on_request(self, req: SipMessage, now: float) -> DialogEvent:
        method = (req.method or "").upper()
        try:
            matches = dialog_id(req) == self.id
            number, cseq_method = req.cseq
        except ValueError as exc:
            if method == "ACK":
                return DialogEvent("ignore", req)
            return DialogEvent("reject", req, 400, f"Bad Request ({exc})")
        if method == "ACK":
            pending = self._pending
            if matches and pending is not None and number == pending.cseq:
                self._pending = None
                return DialogEvent("ack", req)
            return DialogEvent("ignore", req)  # duplicate or stray ACK: never answered (§17)
        if not matches:
            return DialogEvent("reject", req, 481, "Call/Transaction Does Not Exist")
        if self.state is DialogState.TERMINATED:
            if method == "BYE":
                return DialogEvent("bye", req)  # a BYE crossing ours, or a retransmission after the transaction
            return DialogEvent("reject", req, 481, "Call/Transaction Does Not Exist")
        if cseq_method.upper() != method:
            return DialogEvent("reject", req, 400, "Bad Request (CSeq method differs)")
        if method != "CANCEL":  # a CANCEL repeats the CSeq of what it cancels and is handled by the transactions
            if number < self.remote_cseq:
                return DialogEvent("reject", req, 500, "CSeq Out of Order")
            self.remote_cseq = number
        if method == "BYE":
            self._end()
            return DialogEvent("bye", req)
        if method == "INVITE":
            if self._pending is not None or self._reinvite_open is not None:
                # §14.2: the previous INVITE is not finished; the peer retries after a random 0–10 s.
                retry = str(random.randint(0, 10))  # spreads retries; not a secret
                return DialogEvent("reject", req, 500, "Previous INVITE Pending", (("Retry-After", retry),))
            self._reinvite_open = number
            self._refresh_target(req)
            return DialogEvent("reinvite", req)
        if method == "UPDATE":
            self._refresh_target(req)
        return DialogEvent("request", req)

    def _refresh_target(self, req: SipMessage) -> None:
        try:
            contact = req.contact
        except ValueError:
            return
        if contact is not None and contact.uri:
            self.remote_target = contact.uri

    # --- our requests ---

    def new_request(
        self,
        method: str,
        *,
        sent_by: str,
        transport: str = "UDP",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipMessage:
        """A request in this dialog (§12.2.1.1) with a fresh top Via branch, ready for `send_request`."""
        method = method.upper()
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} takes the CSeq of the request it refers to; not built here")
        self.local_cseq += 1
        uri, routes = self._request_target()
        hdrs: list[tuple[str, str]] = [
            ("Via", f"SIP/2.0/{transport.upper()} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", self.local_party),
            ("To", self.remote_party),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.local_cseq} {method}"),
        ]
        hdrs.extend(("Route", r) for r in routes)
        if method in ("INVITE", "UPDATE"):
            hdrs.append(("Contact", self.local_contact))
        hdrs.extend(headers)
        if body and content_type:
            hdrs.append(("Content-Type", content_type))
        return request(method, uri, hdrs, body)

    def bye(self, *, sent_by: str, transport: str = "UDP") -> SipMessage:
        """Our BYE (§15.1.1): the dialog ends as soon as it is handed to its client transaction."""
        msg = self.new_request("BYE", sent_by=sent_by, transport=transport)
        self._end()
        return msg

    def _request_target(self) -> tuple[str, list[str]]:
        """Request-URI and Route values: loose routing keeps the target; a strict first hop takes its place."""
        if not self.route_set:
            return self.remote_target, []
        first = _uri_of(self.route_set[0])
        if ";lr" in first.lower():
            return self.remote_target, list(self.route_set)
        return first, [*self.route_set[1:], f"<{self.remote_target}>"]

    def _end(self) -> None:
        self.state = DialogState.TERMINATED
        self._pending = None
        self._reinvite_open = None

    # --- time ---

    def next_deadline(self) -> float | None:
        p = self._pending
        return None if p is None else min(p.next_send, p.give_up)

    def tick(self, now: float) -> bool:
        """Retransmit the pending 2xx as due. True once, when 64·T1 passed without ACK: end the call with BYE."""
        p = self._pending
        if p is None:
            return False
        while p.next_send <= now and p.next_send < p.give_up:
            self.outbox.append((p.data, p.dest))
            p.interval = min(2 * p.interval, self.t2)
            p.next_send += p.interval
        if now >= p.give_up:
            self._pending = None
            self.ack_timed_out = True
            return True
        return False
