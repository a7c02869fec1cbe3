"""Which datagrams belong to a call, and where its media may be sent: the defence against "RTP Bleed", sans-IO.

An RTP port is open to the whole network, so a call must take media from its caller only. `MediaLatch` decides,
from what the signalling says (the SIP peer's IP, the SDP's ``c=``/``m=``/``a=rtcp``) and what arrives:

* **Acceptable media IPs**: the SIP signalling peer's IP; and the SDP ``c=`` address too when both it and the
  signalling peer lie inside a trusted media range the operator configured for a trunk (``--sip-trusted-media``).
  A foreign ``c=`` is never a source we take nor a destination we send to.
* **Before our answer** (200 not sent) nothing is taken: the caller does not know our port yet.
* **The latch**: the first *valid* packet (it parses as RTP v2 of a negotiated payload type, has a sane size,
  passes SRTP authentication when SRTP is on) from an acceptable IP fixes (IP, port) and SSRC. When its IP is the
  ``c=`` address, the port must also be the SDP's ``m=`` port (no NAT in between: the SDP is the truth, and a
  stranger on the caller's own host cannot win with another port). Only when ``c=`` differs from the signalling IP
  (a caller behind NAT) is the first valid packet from the signalling IP taken from whatever port it comes from.
* **After the latch**: a packet from any other (IP, port) or with another SSRC is counted and dropped — never
  decoded, never a DTMF digit. A re-INVITE that changes the SDP's address or port unlatches; the next packet
  latches again under the same rules. Any re-INVITE re-opens the SSRC, to be set by the next valid packet from the
  latched address (the only signalled way for a caller's stream to change its SSRC).
* **RTCP** is taken only once RTP has latched, from the latched IP, from the SDP's ``a=rtcp`` port or the latched
  RTP port + 1, with a first sender SSRC equal to the latched one.
* **Sending**: RTP and RTCP go to the latched address (RTCP to its RTCP port); before the latch, only after the
  caller's ACK, and only to the SDP address when that is an acceptable media IP. Otherwise nothing is sent.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from citycast.rtp.packet import RtpError, RtpPacket

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Why a datagram was dropped: the label of `citycast_rtp_dropped_total{reason=...}`.
DROP_REASONS = (
    "before_answer",  # arrived before our 200 (the caller cannot know the port yet)
    "foreign_source",  # from an address the signalling does not name, or not the latched one
    "foreign_ssrc",  # from the latched address with another SSRC
    "bad_packet",  # not RTP v2 / not RTCP, or an absurd size
    "payload_type",  # a payload type the SDP did not negotiate
    "srtp_auth",  # SRTP authentication (or replay check) failed
    "srtcp_auth",  # SRTCP authentication (or replay check) failed
    "rtcp_foreign",  # RTCP from anywhere but the latched caller, or before the RTP latch
)
MIN_RTP = 12
MAX_RTP = 1500  # one Ethernet MTU: no codec we negotiate sends more in 20-120 ms


def parse_networks(texts: Iterable[str]) -> tuple[IpNetwork, ...]:
    """CIDRs (or single addresses) of trusted media ranges; raises ValueError naming the bad one."""
    out: list[IpNetwork] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {text!r}") from None
    return tuple(out)


def _in(ip: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """What the peer's SDP says about its media end."""

    address: tuple[str, int]  # c= and m= port (port 0: the stream is disabled)
    rtcp_port: int | None = None  # a=rtcp, else RTP + 1
    payload_types: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    packet: RtpPacket | None  # the accepted packet; None when dropped
    reason: str = ""  # one of DROP_REASONS when dropped


class MediaLatch:
    def __init__(
        self, signalling_ip: str, sdp: SdpMedia, *, trusted: Sequence[IpNetwork] = (), srtp: bool = False
    ) -> None:
        self.signalling_ip = signalling_ip
        self.trusted = tuple(trusted)
        self.srtp = srtp
        self.sdp = sdp
        self.answered = False
        self.acked = False
        self.latched: tuple[str, int] | None = None
        self.ssrc: int | None = None
        # Every reason present from the start: another thread may copy the counts while this one adds to them.
        self.dropped: Counter[str] = Counter(dict.fromkeys(DROP_REASONS, 0))
        self.accepted = 0
        self.rtcp_accepted = 0

    # -- signalling -------------------------------------------------------------------------------------------
    @property
    def media_ips(self) -> frozenset[str]:
        ips = {self.signalling_ip}
        if _in(self.sdp.address[0], self.trusted) and _in(self.signalling_ip, self.trusted):
            ips.add(self.sdp.address[0])
        return frozenset(ips)

    def renegotiate(self, sdp: SdpMedia) -> None:
        """A re-INVITE's offer: a new address or port unlatches (the caller moved); the same one keeps the latched
        address but lets the next valid packet from it set the SSRC again (a PBX that transfers or bridges a call
        starts a new stream, and says so with a re-INVITE)."""
        if sdp.address != self.sdp.address and sdp.address[1] != 0:
            self.latched = None
        self.ssrc = None
        self.sdp = sdp

    # -- receiving --------------------------------------------------------------------------------------------
    def _source_ok(self, addr: tuple[str, int]) -> bool:
        if self.latched is not None:
            return addr == self.latched
        ip, port = addr
        if ip not in self.media_ips:
            return False
        if ip == self.sdp.address[0]:
            return port == self.sdp.address[1] and port != 0
        return ip == self.signalling_ip  # NAT: the SDP names a private address, the source port is the NAT's

    def on_rtp(self, data: bytes, addr: tuple[str, int], unprotect: Callable[[bytes], bytes] | None = None) -> Verdict:
        """Classify one datagram on the RTP port. `unprotect` is the SRTP decryption (raises ValueError when the
        packet fails authentication); it runs only for a datagram from the right source, so a stranger never
        touches the SRTP state."""
        if not self.answered:
            return self._drop("before_answer")
        if not self._source_ok(addr):
            return self._drop("foreign_source")
        if not MIN_RTP <= len(data) <= MAX_RTP + (16 if self.srtp else 0):
            return self._drop("bad_packet")
        if unprotect is not None:
            try:
                data = unprotect(data)
            except ValueError:
                return self._drop("srtp_auth")
        try:
            pkt = RtpPacket.parse(data)
        except RtpError:
            return self._drop("bad_packet")
        if pkt.payload_type not in self.sdp.payload_types:
            return self._drop("payload_type")
        if self.ssrc is not None and pkt.ssrc != self.ssrc:
            return self._drop("foreign_ssrc")
        if self.latched is None:
            self.latched = addr
        if self.ssrc is None:
            self.ssrc = pkt.ssrc
        self.accepted += 1
        return Verdict(pkt)

    def rtcp_source_ok(self, addr: tuple[str, int]) -> bool:
        if self.latched is None or addr[0] != self.latched[0]:
            return False
        ports = {self.latched[1] + 1}
        if self.sdp.rtcp_port is not None:
            ports.add(self.sdp.rtcp_port)
        return addr[1] in ports

    def on_rtcp(self, addr: tuple[str, int], sender_ssrc: int | None) -> bool:
        """Whether an RTCP compound (already parsed and, with SRTP, authenticated) from `addr` whose first
        packet names `sender_ssrc` belongs to the caller; counts it either way."""
        if not self.rtcp_source_ok(addr) or sender_ssrc != self.ssrc:
            self._drop("rtcp_foreign")
            return False
        self.rtcp_accepted += 1
        return True

    def _drop(self, reason: str) -> Verdict:
        self.dropped[reason] += 1
        return Verdict(None, reason)

    # -- sending ----------------------------------------------------------------------------------------------
    def rtp_target(self) -> tuple[str, int] | None:
        """Where our RTP may go now, or None (send nothing)."""
        if self.latched is not None:
            return self.latched
        ip, port = self.sdp.address
        if self.acked and port and ip in self.media_ips:
            return (ip, port)
        return None

    def rtcp_target(self) -> tuple[str, int] | None:
        target = self.rtp_target()
        if target is None:
            return None
        if target == self.sdp.address and self.sdp.rtcp_port is not None:
            return (target[0], self.sdp.rtcp_port)
        return (target[0], target[1] + 1)


class SendBudget:
    """A hard ceiling on what one call sends: at most `rate` datagrams per second with a burst of `burst`
    (a token bucket, time passed in). The return stream's pacing already keeps to one packet per 20 ms; this makes
    sure no bug, catch-up or reflection can turn the hub into an amplifier."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.t = now
        self.refused = 0

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False
