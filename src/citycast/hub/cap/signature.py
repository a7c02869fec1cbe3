"""The authority's XML signature on a CAP message (enveloped XML-DSig, as national alert feeds sign), checked
with signxml against the certificates the operator configured.

What is read afterwards is what the signature covers (signxml's `signed_xml`), never the document as received:
a forged alert wrapped around a genuinely signed one is then harmless."""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree
from signxml.exceptions import SignXMLException
from signxml.verifier import XMLVerifier

from citycast.hub.cap.parse import CapError


class SignatureRefused(CapError):
    """The signature does not verify against any configured authority certificate."""


def verify(root: etree._Element, authority_pems: Sequence[str]) -> etree._Element:
    """The signed `<alert>` if a configured authority signed it; `SignatureRefused` otherwise."""
    if not authority_pems:
        raise SignatureRefused("the message is signed but no authority certificate is configured to check it")
    last = ""
    for pem in authority_pems:
        try:
            result = XMLVerifier().verify(root, x509_cert=pem)
        except (SignXMLException, etree.LxmlError) as e:
            last = str(e) or type(e).__name__
            continue
        signed = result.signed_xml if not isinstance(result, list) else None
        if signed is None:
            last = "the signature covers nothing"
            continue
        return signed
    raise SignatureRefused(f"the XML signature does not verify against the configured authorities: {last}")
