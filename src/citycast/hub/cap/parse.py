"""A CAP 1.2 message from bytes: parsed without entities, DTDs or the network, checked against the OASIS schema
(CAP-v1.2.xsd beside this module), and read into plain dataclasses. Anything wrong is a `CapError` whose message
says what, for the sender and the audit log."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lxml import etree

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
SCHEMA_PATH = Path(__file__).resolve().parent / "CAP-v1.2.xsd"
MAX_BYTES = 1_000_000  # national alerts are a few kB; a megabyte is generous and bounds the parse


class CapError(ValueError):
    """A message that is not acceptable CAP 1.2; the text says why."""


@dataclass(frozen=True)
class Resource:
    description: str
    mime_type: str
    uri: str | None
    deref: str | None  # base64 content carried in the message itself


@dataclass(frozen=True)
class Area:
    description: str
    polygons: tuple[str, ...]  # the raw "lat,lon lat,lon …" text: geometry.py reads and repairs it
    circles: tuple[str, ...]  # "lat,lon radius_km"


@dataclass(frozen=True)
class Info:
    language: str
    event: str
    urgency: str
    severity: str
    certainty: str
    headline: str
    description: str
    instruction: str
    expires: dt.datetime | None
    resources: tuple[Resource, ...]
    areas: tuple[Area, ...]


@dataclass(frozen=True)
class Reference:
    sender: str
    identifier: str
    sent: str


@dataclass(frozen=True)
class Alert:
    identifier: str
    sender: str
    sent: dt.datetime
    sent_text: str  # as written: the duplicate key and <references> use the text, not a re-formatted time
    status: str
    msg_type: str
    scope: str
    references: tuple[Reference, ...]
    infos: tuple[Info, ...] = field(default_factory=tuple)
    signed: bool = False  # carries a ds:Signature (whether it verifies is signature.py's business)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.sender, self.identifier, self.sent_text)

    def expires(self) -> dt.datetime | None:
        """The latest expiry of its infos (an info without one does not expire)."""
        times = [i.expires for i in self.infos]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)


@cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH), _parser()))


def _parser() -> etree.XMLParser:
    # No entity is expanded, no DTD loaded, nothing fetched: XXE and entity bombs have nothing to work with.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def parse_xml(data: bytes, what: str = "CAP message") -> etree._Element:
    """Bytes to an element tree, refusing what a CAP message or feed never carries: a DOCTYPE (the door to
    entity expansion and external entities), or more than `MAX_BYTES`."""
    if len(data) > MAX_BYTES:
        raise CapError(f"the {what} is {len(data)} bytes: at most {MAX_BYTES} are accepted")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        raise CapError(f"the {what} is not well-formed XML: {e}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise CapError(f"the {what} carries a DOCTYPE: refused (CAP has none; it is how entity attacks begin)")
    return root


def _text(el: etree._Element, name: str) -> str:
    child = el.find(f"{{{CAP_NS}}}{name}")
    return (child.text or "").strip() if child is not None else ""


def _texts(el: etree._Element, name: str) -> tuple[str, ...]:
    return tuple((c.text or "").strip() for c in el.findall(f"{{{CAP_NS}}}{name}"))


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _references(text: str) -> tuple[Reference, ...]:
    out = []
    for item in text.split():
        parts = item.split(",")
        if len(parts) != 3:
            raise CapError(f"<references> entry {item!r} is not sender,identifier,sent")
        out.append(Reference(*parts))
    return tuple(out)


def read_alert(root: etree._Element) -> Alert:
    """A schema-valid `<alert>` element into an `Alert`."""
    if root.tag != f"{{{CAP_NS}}}alert":
        raise CapError(f"the root element is {root.tag!r}: a CAP 1.2 message is an <alert> in {CAP_NS}")
    schema = _schema()
    if not schema.validate(root):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in list(schema.error_log)[:3])
        raise CapError(f"not valid CAP 1.2: {errors}")
    infos = []
    for i in root.findall(f"{{{CAP_NS}}}info"):
        expires = _text(i, "expires")
        infos.append(
            Info(
                language=_text(i, "language") or "en-US",
                event=_text(i, "event"),
                urgency=_text(i, "urgency"),
                severity=_text(i, "severity"),
                certainty=_text(i, "certainty"),
                headline=_text(i, "headline"),
                description=_text(i, "description"),
                instruction=_text(i, "instruction"),
                expires=_time(expires) if expires else None,
                resources=tuple(
                    Resource(
                        description=_text(r, "resourceDesc"),
                        mime_type=_text(r, "mimeType"),
                        uri=_text(r, "uri") or None,
                        deref=_text(r, "derefUri") or None,
                    )
                    for r in i.findall(f"{{{CAP_NS}}}resource")
                ),
                areas=tuple(
                    Area(_text(a, "areaDesc"), _texts(a, "polygon"), _texts(a, "circle"))
                    for a in i.findall(f"{{{CAP_NS}}}area")
                ),
            )
        )
    sent = _text(root, "sent")
    return Alert(
        identifier=_text(root, "identifier"),
        sender=_text(root, "sender"),
        sent=_time(sent),
        sent_text=sent,
        status=_text(root, "status"),
        msg_type=_text(root, "msgType"),
        scope=_text(root, "scope"),
        references=_references(_text(root, "references")),
        infos=tuple(infos),
        signed=root.find(f"{{{DSIG_NS}}}Signature") is not None,
    )


def parse_alert(data: bytes) -> Alert:
    return read_alert(parse_xml(data))
