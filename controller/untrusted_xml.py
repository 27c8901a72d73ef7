"""XML from outside (CAP alerts posted or dropped, CAP documents and feeds fetched), parsed
by a parser made for it.

Such a document is hostile until checked. A DTD is what entity expansion ("billion
laughs": a few hundred bytes growing to gigabytes), external entities (`SYSTEM
"file:///..."`: a local file read into the alert) and external DTD fetches hang on, and
neither a CAP 1.2 alert nor an Atom or RSS feed needs one; so any DTD is refused, with
or without entities, before anything in it is acted on. The check is the parser's
(defusedxml on expat), not a search of the bytes: it sees the document as decoded, so
a UTF-16 document, or one with a declaration in any other encoding, is refused alike.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring

# What a refusal adds: why, and what the sender can do about it.
_WHY = (
    "DTDs and entities are refused in XML from outside (no entity expansion, no external "
    "fetch); send the document without a <!DOCTYPE ...> declaration"
)


class RefusedXmlError(ValueError):
    """The document declares a DTD, an entity or an external reference; str() says which."""


def parse_untrusted(raw: bytes) -> ET.Element:
    """The root element of an XML document read from outside.

    Raises RefusedXmlError for a DTD (internal or external, with or without entities), an
    entity declaration or an external reference, in whatever encoding the document is
    written, and xml.etree.ElementTree.ParseError for a document that is not well-formed.
    """
    try:
        root: ET.Element = fromstring(
            raw, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DTDForbidden as exc:
        where = f" (it names {exc.sysid!r})" if exc.sysid else ""
        raise RefusedXmlError(
            f"the document declares a DTD, <!DOCTYPE {exc.name} ...>{where}; {_WHY}"
        ) from None
    except EntitiesForbidden as exc:
        raise RefusedXmlError(f"the document declares the entity {exc.name!r}; {_WHY}") from None
    except ExternalReferenceForbidden as exc:
        raise RefusedXmlError(
            f"the document refers to the external resource {exc.sysid!r}; {_WHY}"
        ) from None
    return root
