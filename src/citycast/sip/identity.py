"""Who a call is from, for the PIN guard's per-source limits (sans-IO).

From anywhere, a call's source is the IP address its signalling came from: the only thing about a stranger's
request we did not simply take their word for. Behind a SIP trunk that is useless, though: every PSTN caller
arrives from the trunk's address, so one prankster's wrong PINs would block every telephone speaker. For a peer
the operator names as a trusted trunk (`citycast serve --sip-trusted-trunk CIDR`), the source is instead the
caller's identity as the trunk asserts it: the first P-Asserted-Identity (RFC 3325), else the From URI. A
P-Asserted-Identity from any other peer is ignored: RFC 3325 trust is a property of the network the request
came through, and anyone can write the header.

The identity is reduced to scheme, user and host (URI parameters, headers and display names dropped, scheme and
host lower-cased), and bounded in length, so the same caller always lands on the same key and no key is large.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from citycast.sip.message import SipMessage, SipParseError, _parse_name_addr, _split_outside

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_IDENTITY = 128


def parse_trunks(specs: Iterable[str]) -> tuple[Network, ...]:
    """`["203.0.113.5", "198.51.100.0/24"]` as networks; ValueError names a bad one."""
    nets: list[Network] = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"a trusted SIP trunk is an IP address or CIDR, not {spec!r}") from None
    return tuple(nets)


def is_trusted(peer_ip: str, trunks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in trunks)


def normalise_uri(uri: str) -> str:
    """`sip:+923001234567@Trunk.Example:5060;user=phone` → `sip:+923001234567@trunk.example`."""
    scheme, _, rest = uri.partition(":")
    rest = rest.split("?", 1)[0].split(";", 1)[0]
    user, at, host = rest.rpartition("@")
    # An IPv6 literal keeps its colons; otherwise ":port" goes.
    host = host[: host.find("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
    return f"{scheme.lower()}:{user}{at}{host.lower()}"[:MAX_IDENTITY]


def asserted_identity(invite: SipMessage) -> str | None:
    """The first P-Asserted-Identity URI of `invite`, if there is a well-formed one."""
    for value in invite.headers_all("P-Asserted-Identity"):
        try:
            for part in _split_outside(value, ",", "P-Asserted-Identity"):
                if part.strip():
                    return _parse_name_addr(part, "P-Asserted-Identity").uri
        except SipParseError:
            return None
    return None


def caller_source(invite: SipMessage, peer_ip: str, trunks: Sequence[Network]) -> str:
    """The key the PIN guard counts this call's attempts under."""
    if not is_trusted(peer_ip, trunks):
        return peer_ip
    uri = asserted_identity(invite) or invite.from_.uri
    return normalise_uri(uri)
