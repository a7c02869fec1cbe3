"""SIP transactions (RFC 3261 §17, with the RFC 6026 correction), sans-IO with time passed in.

`TransactionLayer` sits between the transport and the call logic (the "TU"). The transport hands it every parsed
request (`on_request`) and response (`on_response`), drains `outbox` (``(bytes, address)`` pairs) and calls
`tick(now)` at `next_deadline()`. Nothing here reads a clock, sleeps or touches a socket, so a 32-second Timer H
or a lossy link is replayed in microseconds by the tests and the same object runs under the asyncio shell.

What it implements:

* matching (§17.2.3): the top Via branch (with the ``z9hG4bK`` magic cookie), its sent-by and the method, an ACK
  matching the INVITE it acknowledges; requests from RFC 2543 peers (no cookie) fall back to Call-ID, From tag,
  CSeq number and top Via;
* the INVITE server transaction (§17.2.1): Proceeding (a "100 Trying" goes out by itself if the TU has not
  answered within 200 ms), Completed after a 3xx–6xx (Timer G retransmits it on unreliable transports, doubling
  up to T2; Timer H = 64·T1 gives up waiting for the ACK), Confirmed on the ACK (Timer I = T4, 0 on reliable);
  a 2xx leads to Accepted (RFC 6026: it absorbs retransmitted INVITEs for Timer L = 64·T1, which plain RFC 3261
  would mistake for new calls; the dialog, not the transaction, retransmits the 2xx);
* the non-INVITE server transaction (§17.2.2): Trying, Proceeding, Completed (Timer J = 64·T1, 0 on reliable);
  one the TU never answers is forgotten after 64·T1, when the client has given up anyway;
* the non-INVITE client transaction (§17.1.2) for our BYE and REGISTER: Timer E retransmits (doubling up to T2,
  T2 once a provisional arrived), Timer F = 64·T1 times out, Timer K = T4 (0 on reliable) absorbs late copies;
* CANCEL (§9.2): `cancel` answers 200 (or 481 when nothing matches) and ends a pending INVITE with 487.

A retransmitted request never reaches the TU: the layer answers it with the last response itself. Terminated
transactions leave the table at once, so `len(layer)` is the number of live ones (tests assert it returns to 0).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from citycast.sip.message import SipMessage, response_for

MAGIC_COOKIE = "z9hG4bK"
T1 = 0.5
T2 = 4.0
T4 = 5.0
TRYING_DELAY = 0.2  # §17.2.1: a 100 must go out within 200 ms unless the TU answers sooner

Address = tuple[str, int]
_Key = tuple[str, ...]


class TransactionError(ValueError):
    """A request that cannot belong to a transaction, or a TU call that the state machine forbids."""


class TransactionTimeoutError(TransactionError):
    """A client transaction got no final response within Timer F."""


class State(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


def new_branch() -> str:
    """A fresh branch parameter: the magic cookie plus enough randomness to be unique in space and time (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag (§19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


def _sent_by(msg: SipMessage) -> str:
    via = msg.vias[0]
    return f"{via.host.lower()}:{via.port or ''}"


def _server_key(msg: SipMessage) -> _Key:
    """The §17.2.3 matching key of a request; raises TransactionError when the request has nothing to match on."""
    try:
        vias = msg.vias
        if not vias:
            raise TransactionError("request has no Via")
        number, cseq_method = msg.cseq
        method = msg.method or ""
        if cseq_method.upper() != method.upper():
            raise TransactionError(f"CSeq method {cseq_method!r} differs from request method {method!r}")
        # An ACK belongs to the INVITE transaction it acknowledges; everything else is keyed by its own method.
        method = "INVITE" if method == "ACK" else method
        branch = vias[0].branch or ""
        if branch.startswith(MAGIC_COOKIE):
            return ("3261", branch, _sent_by(msg), method)
        # RFC 2543 peer: the branch is not unique, fall back to the dialog-ish identifiers (§17.2.3, second part).
        return ("2543", msg.call_id, msg.from_.tag or "", str(number), _sent_by(msg), method)
    except (ValueError, IndexError) as exc:
        if isinstance(exc, TransactionError):
            raise
        raise TransactionError(f"request cannot be matched to a transaction: {exc}") from exc


def _client_key(msg: SipMessage) -> _Key:
    """§17.1.3: a response matches the client transaction whose branch and CSeq method it carries."""
    try:
        vias = msg.vias
        if not vias:
            raise TransactionError("message has no Via")
        branch = vias[0].branch or ""
        return (branch, msg.cseq[1].upper())
    except (ValueError, IndexError) as exc:
        if isinstance(exc, TransactionError):
            raise
        raise TransactionError(f"response cannot be matched to a transaction: {exc}") from exc


@dataclass(frozen=True)
class TransactionTimeout:
    """Reported by `tick`: a timer gave up. "F": our request got no final response; "H": no ACK for our 3xx–6xx."""

    transaction: ServerTransaction | ClientTransaction
    timer: str


class _Timers:
    """Named deadlines of one transaction; the earliest is what the layer waits for."""

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due: dict[str, float] = {}

    def next(self) -> tuple[str, float] | None:
        if not self.due:
            return None
        name = min(self.due, key=self.due.__getitem__)
        return name, self.due[name]


class ServerTransaction:
    """One received request and the responses to it. The TU answers with `respond`.

    The base class also stands for an ACK to a 2xx (its own transaction with no state, §17): `on_request` hands it
    to the TU, and `respond` refuses it.
    """

    def __init__(self, layer: TransactionLayer, key: _Key | None, request: SipMessage, source: Address) -> None:
        self._layer = layer
        self.key = key
        self.request = request
        self.source = source
        self.method = (request.method or "").upper()
        self.state = State.TERMINATED
        self.last_response: SipMessage | None = None
        self._last_bytes: bytes | None = None
        self._timers = _Timers()

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and (self.last_response.status or 0) >= 200

    def respond(self, response: SipMessage, now: float) -> None:
        raise TransactionError(f"{self.method} is never answered")

    def _send(self, response: SipMessage) -> None:
        self.last_response = response
        self._last_bytes = response.to_bytes()
        self._layer.outbox.append((self._last_bytes, self.source))

    def _resend(self) -> None:
        if self._last_bytes is not None:
            self._layer.outbox.append((self._last_bytes, self.source))
            self._layer.resent += 1

    def _check_response(self, response: SipMessage) -> int:
        status = response.status
        if status is None or not 100 <= status <= 699:
            raise TransactionError(f"not a response status: {status!r}")
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise TransactionError(f"{self.method} transaction is {self.state.value}, cannot send {status}")
        return status

    def _on_retransmission(self, request: SipMessage, now: float) -> ServerTransaction | None:
        return None

    def _fire(self, timer: str, at: float) -> TransactionTimeout | None:
        return None

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._timers.due.clear()


class InviteServerTransaction(ServerTransaction):
    """§17.2.1 (Figure 7) with the RFC 6026 Accepted state."""

    def __init__(self, layer: TransactionLayer, key: _Key, request: SipMessage, source: Address, now: float) -> None:
        super().__init__(layer, key, request, source)
        self.state = State.PROCEEDING
        self._timers.due["trying"] = now + layer.trying_delay
        self._g_interval = layer.t1

    def respond(self, response: SipMessage, now: float) -> None:
        status = self._check_response(response)
        self._timers.due.pop("trying", None)
        self._send(response)
        if status < 200:
            return
        layer = self._layer
        if status < 300:
            self.state = State.ACCEPTED
            self._timers.due["L"] = now + 64 * layer.t1
            return
        self.state = State.COMPLETED
        if not layer.reliable:
            self._timers.due["G"] = now + self._g_interval
        self._timers.due["H"] = now + 64 * layer.t1

    def _on_retransmission(self, request: SipMessage, now: float) -> ServerTransaction | None:
        layer = self._layer
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._timers.due.pop("G", None)
                self._timers.due.pop("H", None)
                self._timers.due["I"] = now + (0.0 if layer.reliable else layer.t4)
                return None
            if self.state is State.ACCEPTED:
                # Only a peer reusing the INVITE's branch for the 2xx ACK gets here; the dialog still needs it.
                return ServerTransaction(layer, None, request, self.source)
            return None  # an ACK before any final response, or a duplicate while Confirmed: absorbed
        if self.state in (State.PROCEEDING, State.COMPLETED):
            self._resend()  # the last provisional, or the final response
        return None  # Accepted / Confirmed absorb retransmitted INVITEs

    def _fire(self, timer: str, at: float) -> TransactionTimeout | None:
        layer = self._layer
        if timer == "trying":
            if self.last_response is None:
                self._send(response_for(self.request, 100, "Trying"))
            return None
        if timer == "G":
            self._resend()
            self._g_interval = min(2 * self._g_interval, layer.t2)
            self._timers.due["G"] = at + self._g_interval
            return None
        self._terminate()
        return TransactionTimeout(self, "H") if timer == "H" else None


class NonInviteServerTransaction(ServerTransaction):
    """§17.2.2 (Figure 8)."""

    def __init__(self, layer: TransactionLayer, key: _Key, request: SipMessage, source: Address, now: float) -> None:
        super().__init__(layer, key, request, source)
        self.state = State.TRYING
        # Not in the RFC: a TU that never answers must not leak the transaction. By 64·T1 the client's Timer F
        # has given up, so nothing is lost by forgetting it then.
        self._timers.due["abandon"] = now + 64 * layer.t1

    def respond(self, response: SipMessage, now: float) -> None:
        status = self._check_response(response)
        self._send(response)
        if status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        self._timers.due.pop("abandon", None)
        self._timers.due["J"] = now + (0.0 if self._layer.reliable else 64 * self._layer.t1)

    def _on_retransmission(self, request: SipMessage, now: float) -> ServerTransaction | None:
        if self.state in (State.PROCEEDING, State.COMPLETED):
            self._resend()
        return None  # Trying: absorbed, the TU has not said anything yet

    def _fire(self, timer: str, at: float) -> TransactionTimeout | None:
        self._terminate()
        return None


class ClientTransaction:
    """§17.1.2 (Figure 6): one request we sent (BYE, REGISTER, …) and its outcome, future-style.

    `done()`, `result()` (the final response; raises TransactionTimeoutError after Timer F) and
    `add_done_callback(fn)` let the asyncio shell wrap it in a real future.
    """

    def __init__(self, layer: TransactionLayer, key: _Key, request: SipMessage, dest: Address, now: float) -> None:
        self._layer = layer
        self.key = key
        self.request = request
        self.dest = dest
        self.method = (request.method or "").upper()
        self.state = State.TRYING
        self.provisional: SipMessage | None = None
        self._final: SipMessage | None = None
        self._timed_out = False
        self._callbacks: list[Callable[[ClientTransaction], None]] = []
        self._bytes = request.to_bytes()
        self._timers = _Timers()
        self._e_interval = layer.t1
        layer.outbox.append((self._bytes, dest))
        if not layer.reliable:
            self._timers.due["E"] = now + self._e_interval
        self._timers.due["F"] = now + 64 * layer.t1

    def done(self) -> bool:
        return self._final is not None or self._timed_out

    def result(self) -> SipMessage:
        if self._timed_out:
            raise TransactionTimeoutError(f"no final response to {self.method} within {64 * self._layer.t1:g} s")
        if self._final is None:
            raise TransactionError(f"{self.method} has no final response yet")
        return self._final

    def add_done_callback(self, fn: Callable[[ClientTransaction], None]) -> None:
        if self.done():
            fn(self)
        else:
            self._callbacks.append(fn)

    def _resolve(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def _on_response(self, response: SipMessage, now: float) -> bool:
        """Feed a matching response; True when it is news for the TU (not a retransmission)."""
        status = response.status or 0
        if self.state not in (State.TRYING, State.PROCEEDING):
            return False  # Completed absorbs retransmitted finals (Timer K)
        if status < 200:
            self.state = State.PROCEEDING
            self.provisional = response
            return True
        self.state = State.COMPLETED
        self._final = response
        self._timers.due.pop("E", None)
        self._timers.due.pop("F", None)
        self._timers.due["K"] = now + (0.0 if self._layer.reliable else self._layer.t4)
        self._resolve()
        return True

    def _fire(self, timer: str, at: float) -> TransactionTimeout | None:
        layer = self._layer
        if timer == "E":
            layer.outbox.append((self._bytes, self.dest))
            layer.resent += 1
            # §17.1.2.2: once a provisional arrived, retransmit every T2 rather than keep doubling from T1.
            self._e_interval = layer.t2 if self.state is State.PROCEEDING else min(2 * self._e_interval, layer.t2)
            self._timers.due["E"] = at + self._e_interval
            return None
        self.state = State.TERMINATED
        self._timers.due.clear()
        if timer == "F":
            self._timed_out = True
            self._resolve()
            return TransactionTimeout(self, "F")
        return None


class TransactionLayer:
    """All live transactions of one transport (reliable = TCP/TLS, unreliable = UDP)."""

    def __init__(
        self,
        reliable: bool,
        *,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
        trying_delay: float = TRYING_DELAY,
    ) -> None:
        if not 0 < t1 <= t2 or t4 <= 0 or trying_delay < 0:
            raise ValueError(f"bad timer values T1={t1} T2={t2} T4={t4} trying={trying_delay}")
        self.reliable = reliable
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.trying_delay = trying_delay
        self.outbox: list[tuple[bytes, Address]] = []
        self.dropped = 0  # requests/responses that matched nothing sensible (counted for metrics, never raised)
        # A lossy path shows here: requests the peer sent again (absorbed or answered again), ours sent again.
        self.retransmissions_received = 0
        self.resent = 0
        self._server: dict[_Key, ServerTransaction] = {}
        self._client: dict[_Key, ClientTransaction] = {}

    def __len__(self) -> int:
        return len(self._server) + len(self._client)

    @property
    def server_transactions(self) -> Iterable[ServerTransaction]:
        return self._server.values()

    @property
    def client_transactions(self) -> Iterable[ClientTransaction]:
        return self._client.values()

    # --- server side ---

    def on_request(self, request: SipMessage, source: Address, now: float) -> ServerTransaction | None:
        """A request from the transport. Returns the new transaction for the TU, or None when the layer handled it
        (a retransmission answered with the last response, an absorbed ACK) or dropped it (nothing to match on).

        An ACK that matches no INVITE transaction is the ACK of a 2xx: it comes back as a stateless
        `ServerTransaction` (not kept, cannot be answered) for the dialog.
        """
        if request.method is None:
            self.dropped += 1
            return None
        try:
            key = _server_key(request)
        except TransactionError:
            self.dropped += 1
            return None
        existing = self._server.get(key)
        if existing is not None:
            if request.method != "ACK":  # the ACK of a non-2xx final matches its INVITE's transaction too
                self.retransmissions_received += 1
            return existing._on_retransmission(request, now)
        method = request.method  # SIP methods are case-sensitive (§7.1): "invite" is some extension, not INVITE
        if method == "ACK":
            return ServerTransaction(self, None, request, source)
        tx: ServerTransaction
        if method == "INVITE":
            tx = InviteServerTransaction(self, key, request, source, now)
        else:
            tx = NonInviteServerTransaction(self, key, request, source, now)
        self._server[key] = tx
        return tx

    def invite_for(self, cancel: SipMessage) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL targets: same key except the method (§9.2)."""
        try:
            key = _server_key(cancel)
        except TransactionError:
            return None
        tx = self._server.get((*key[:-1], "INVITE"))
        return tx if isinstance(tx, InviteServerTransaction) else None

    def cancel(
        self, cancel_tx: ServerTransaction, now: float, *, to_tag: str | None = None
    ) -> ServerTransaction | None:
        """Answer a CANCEL transaction (§9.2) and return the INVITE transaction it ended, if it ended one.

        200 to the CANCEL whenever it matches a transaction, 481 otherwise; an INVITE still without a final
        response gets 487 (with the To tag of our provisional answers, `to_tag`, or a fresh one).
        """
        invite = self.invite_for(cancel_tx.request)
        if invite is None:
            cancel_tx.respond(response_for(cancel_tx.request, 481, "Call/Transaction Does Not Exist"), now)
            return None
        # §9.2: the CANCEL's 200 SHOULD carry the same To tag as the INVITE's responses.
        last = invite.last_response
        tag = to_tag or (last.to.tag if last is not None and last.to.tag else None) or new_tag()
        cancel_tx.respond(response_for(cancel_tx.request, 200, "OK", to_tag=tag), now)
        if invite.state is not State.PROCEEDING:
            return None  # already answered finally: the CANCEL has no effect on it
        invite.respond(response_for(invite.request, 487, "Request Terminated", to_tag=tag), now)
        return invite

    # --- client side ---

    def send_request(self, request: SipMessage, dest: Address, now: float) -> ClientTransaction:
        """Start a non-INVITE client transaction. The request must carry its own top Via with a fresh branch."""
        method = (request.method or "").upper()
        if method in ("", "INVITE", "ACK"):
            raise TransactionError(f"no client transaction for {method or 'a response'} here")
        key = _client_key(request)
        if not key[0].startswith(MAGIC_COOKIE):
            raise TransactionError(f"branch {key[0]!r} lacks the {MAGIC_COOKIE} magic cookie")
        if key in self._client:
            raise TransactionError(f"branch {key[0]!r} is already in use")
        tx = ClientTransaction(self, key, request, dest, now)
        self._client[key] = tx
        return tx

    def on_response(self, response: SipMessage, now: float) -> ClientTransaction | None:
        """A response from the transport: the transaction it advanced, or None (unknown, or a retransmission)."""
        if response.status is None:
            self.dropped += 1
            return None
        try:
            key = _client_key(response)
        except TransactionError:
            self.dropped += 1
            return None
        tx = self._client.get(key)
        if tx is None:
            self.dropped += 1  # RFC 6026 §7.1.3: stray responses are dropped, never forwarded
            return None
        return tx if tx._on_response(response, now) else None

    # --- time ---

    def next_deadline(self) -> float | None:
        best: float | None = None
        txs: list[ServerTransaction | ClientTransaction] = [*self._server.values(), *self._client.values()]
        for tx in txs:
            nxt = tx._timers.next()
            if nxt is not None and (best is None or nxt[1] < best):
                best = nxt[1]
        return best

    def tick(self, now: float) -> list[TransactionTimeout]:
        """Fire every timer due by `now` (in deadline order per transaction) and drop terminated transactions."""
        timeouts: list[TransactionTimeout] = []
        txs: list[ServerTransaction | ClientTransaction] = [*self._server.values(), *self._client.values()]
        for tx in txs:
            self._run(tx, now, timeouts)
        return timeouts

    def _run(self, tx: ServerTransaction | ClientTransaction, now: float, timeouts: list[TransactionTimeout]) -> None:
        while tx.state is not State.TERMINATED:
            nxt = tx._timers.next()
            if nxt is None or nxt[1] > now:
                break
            name, at = nxt
            del tx._timers.due[name]
            timeout = tx._fire(name, at)
            if timeout is not None:
                timeouts.append(timeout)
        if tx.state is State.TERMINATED:
            if isinstance(tx, ClientTransaction):
                self._client.pop(tx.key, None)
            elif tx.key is not None:
                self._server.pop(tx.key, None)
