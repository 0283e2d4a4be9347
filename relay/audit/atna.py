"""IHE ATNA output: DICOM PS3.15 A.5 audit messages, RFC 5424 syslog, RFC 5425 framing.

* :func:`audit_message` maps one stored FHIR AuditEvent (the dict of
  :func:`relay.audit.events.build_audit_event`) to a DICOM ``<AuditMessage>``: coded values
  use the DICOM schema form ``csd-code`` / ``codeSystemName`` / ``originalText``.
* :func:`syslog_message` wraps a message in an RFC 5424 SYSLOG-MSG. IHE ITI TF-2 §3.20
  (Record Audit Event [ITI-20]): facility 10 (security/authorization), severity 5 (notice)
  or 4 (warning), MSGID ``IHE+RFC-3881``, the XML in MSG (no BOM: ITI CP-477).
  DICOM PS3.15 A.7 also allows ``DICOM+RFC3881``; pass ``msgid`` to use it.
* :func:`frame` is RFC 5425 §4.3 octet counting: ``MSG-LEN SP SYSLOG-MSG``.

Everything here is pure; the TLS sender and its durable queue are adapters.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from relay.audit.events import DCM

__all__ = [
    "IHE_MSGID",
    "SyslogMessage",
    "audit_message",
    "audit_message_xml",
    "frame",
    "frames",
    "iter_audit_messages_xml",
    "parse_frames",
    "parse_syslog_message",
    "severity_for_outcome",
    "syslog_message",
]

IHE_MSGID = "IHE+RFC-3881"
FACILITY_SECURITY = 10  # RFC 5424 §6.2.1: 10 = security/authorization messages
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5

# DICOM PS3.15 A.5.2 AuditSourceTypeCode 4 = "Application Server process tier".
_SOURCE_TYPE_TEXT = {"4": "Application Server Process"}


def _system_name(system: str) -> str:
    return "DCM" if system == DCM else system


def _coded(parent: ET.Element, tag: str, coding: Mapping[str, Any]) -> ET.Element:
    # DICOM PS3.15 A.5.1 CodedValueType: csd-code, codeSystemName and originalText required.
    code = str(coding["code"])
    return ET.SubElement(
        parent,
        tag,
        {
            "csd-code": code,
            "codeSystemName": _system_name(str(coding.get("system", ""))),
            "originalText": str(coding.get("display", code)),
        },
    )


def _codings(concept: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not concept:
        return []
    return list(concept.get("coding", []))


def _who(agent: Mapping[str, Any]) -> str:
    who = agent.get("who", {})
    identifier = who.get("identifier")
    if identifier:
        return str(identifier["value"])
    return str(who.get("display", agent.get("altId", "unknown")))


def _entity_id(entity: Mapping[str, Any]) -> tuple[str, str]:
    identifier = entity["what"]["identifier"]
    return str(identifier["value"]), str(identifier["system"])


def audit_message(event: Mapping[str, Any]) -> ET.Element:
    """DICOM PS3.15 A.5.1 ``AuditMessage`` for one FHIR AuditEvent.

    Children come in the schema's order: EventIdentification, ActiveParticipant+,
    AuditSourceIdentification, ParticipantObjectIdentification*.
    """
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": str(event["action"]),
            "EventDateTime": str(event["recorded"]),
            "EventOutcomeIndicator": str(event["outcome"]),
        },
    )
    _coded(identification, "EventID", event["type"])
    for coding in event.get("subtype", []):
        _coded(identification, "EventTypeCode", coding)
    for concept in event.get("purposeOfEvent", []):
        for coding in _codings(concept):
            _coded(identification, "PurposeOfUse", coding)

    for agent in event["agent"]:
        attributes = {
            "UserID": _who(agent),
            "UserIsRequestor": "true" if agent.get("requestor") else "false",
        }
        if "altId" in agent:
            attributes["AlternativeUserID"] = str(agent["altId"])
        network = agent.get("network")
        if network:
            attributes["NetworkAccessPointID"] = str(network["address"])
            attributes["NetworkAccessPointTypeCode"] = str(network["type"])
        participant = ET.SubElement(message, "ActiveParticipant", attributes)
        for coding in _codings(agent.get("type")):
            _coded(participant, "RoleIDCode", coding)
        for concept in agent.get("role", []):
            for coding in _codings(concept):
                _coded(participant, "RoleIDCode", coding)

    source = event["source"]
    source_element = ET.SubElement(
        message,
        "AuditSourceIdentification",
        {
            "AuditSourceID": str(source["observer"].get("display", source.get("site", ""))),
            "AuditEnterpriseSiteID": str(source.get("site", "")),
        },
    )
    for coding in source.get("type", []):
        code = str(coding["code"])
        ET.SubElement(
            source_element,
            "AuditSourceTypeCode",
            {
                "csd-code": code,
                "codeSystemName": "DCM",
                "originalText": _SOURCE_TYPE_TEXT.get(code, str(coding.get("display", code))),
            },
        )

    for entity in event.get("entity", []):
        value, system = _entity_id(entity)
        attributes = {
            "ParticipantObjectID": value,
            "ParticipantObjectTypeCode": str(entity["type"]["code"]),
        }
        if "role" in entity:
            attributes["ParticipantObjectTypeCodeRole"] = str(entity["role"]["code"])
        participant_object = ET.SubElement(message, "ParticipantObjectIdentification", attributes)
        if entity.get("role", {}).get("code") == "1":
            # PS3.15 A.5.3.14: a patient is EV(2, RFC-3881, "Patient Number"); ours is keyed.
            type_code = {"code": "2", "system": "RFC-3881", "display": "Patient Number"}
        else:
            kind = system.rsplit(":", 1)[-1]
            type_code = {"code": kind, "system": "urn:relais-sante", "display": kind}
        _coded(participant_object, "ParticipantObjectIDTypeCode", type_code)
        for detail in entity.get("detail", []):
            # PS3.15 A.5.1: ParticipantObjectDetail value is base64Binary.
            ET.SubElement(
                participant_object,
                "ParticipantObjectDetail",
                {
                    "type": str(detail["type"]),
                    "value": base64.b64encode(str(detail["valueString"]).encode()).decode(),
                },
            )
    return message


def audit_message_xml(event: Mapping[str, Any]) -> bytes:
    """The ``AuditMessage`` of one event as a UTF-8 XML document."""
    document: bytes = ET.tostring(audit_message(event), encoding="utf-8", xml_declaration=True)
    return document


def iter_audit_messages_xml(events: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """One XML document per event, for ``relais audit export --format atna``."""
    for event in events:
        yield audit_message_xml(event)


# --- RFC 5424 / RFC 5425 ----------------------------------------------------------------------

_PRINTUSASCII = re.compile(rb"[\x21-\x7e]+")


def severity_for_outcome(outcome: str) -> int:
    """ITI-20: severity 5 (notice) for a success, 4 (warning) for a failure."""
    return SEVERITY_NOTICE if outcome == "0" else SEVERITY_WARNING


def _field(value: str, name: str, limit: int) -> bytes:
    raw = value.encode("ascii", "strict") if value.isascii() else b""
    if not raw or len(raw) > limit or not _PRINTUSASCII.fullmatch(raw):
        raise ValueError(f"syslog {name} must be 1..{limit} printable US-ASCII characters")
    return raw


def _timestamp(now: datetime) -> bytes:
    # RFC 5424 §6.2.3: RFC 3339 date-time, at most 6 fraction digits, "Z" allowed.
    if now.tzinfo is None:
        raise ValueError("syslog timestamp must be timezone-aware")
    text = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text.encode("ascii")


def syslog_message(
    msg: bytes,
    *,
    now: datetime,
    hostname: str,
    app_name: str = "relais",
    procid: str = "-",
    msgid: str = IHE_MSGID,
    severity: int = SEVERITY_NOTICE,
    facility: int = FACILITY_SECURITY,
) -> bytes:
    """An RFC 5424 SYSLOG-MSG: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError("facility must be 0..23 and severity 0..7")
    header = b" ".join(
        (
            b"<%d>1" % (facility * 8 + severity),
            _timestamp(now),
            _field(hostname, "HOSTNAME", 255),
            _field(app_name, "APP-NAME", 48),
            _field(procid, "PROCID", 128),
            _field(msgid, "MSGID", 32),
            b"-",  # no STRUCTURED-DATA
        )
    )
    return header + b" " + msg if msg else header


@dataclass(frozen=True)
class SyslogMessage:
    """A parsed RFC 5424 message (the fields :func:`syslog_message` writes)."""

    facility: int
    severity: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes


_HEADER_RE = re.compile(
    rb"<(?P<pri>[0-9]{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) "
    rb"(?P<msgid>\S+) "
)


def _structured_data(data: bytes, position: int) -> int:
    # Returns the index just after STRUCTURED-DATA: "-" or one or more [SD-ELEMENT]s, where
    # '"', '\' and ']' inside values are backslash-escaped (RFC 5424 §6.3.3).
    if data[position : position + 1] == b"-":
        return position + 1
    if data[position : position + 1] != b"[":
        raise ValueError("syslog STRUCTURED-DATA must be '-' or start with '['")
    in_value = False
    index = position
    while index < len(data):
        char = data[index : index + 1]
        if in_value:
            if char == b"\\":
                index += 1
            elif char == b'"':
                in_value = False
        elif char == b'"':
            in_value = True
        elif char == b"]" and data[index + 1 : index + 2] != b"[":
            return index + 1
        index += 1
    raise ValueError("unterminated syslog STRUCTURED-DATA")


def parse_syslog_message(data: bytes) -> SyslogMessage:
    """Parse an RFC 5424 SYSLOG-MSG; inverse of :func:`syslog_message`."""
    match = _HEADER_RE.match(data)
    if match is None:
        raise ValueError("not an RFC 5424 message")
    prival = int(match["pri"])
    if prival > 191:
        raise ValueError("syslog PRI out of range")
    sd_end = _structured_data(data, match.end())
    rest = data[sd_end:]
    if rest and not rest.startswith(b" "):
        raise ValueError("syslog MSG must follow STRUCTURED-DATA after a space")
    return SyslogMessage(
        facility=prival // 8,
        severity=prival % 8,
        timestamp=match["ts"].decode("ascii"),
        hostname=match["host"].decode("ascii"),
        app_name=match["app"].decode("ascii"),
        procid=match["proc"].decode("ascii"),
        msgid=match["msgid"].decode("ascii"),
        structured_data=data[match.end() : sd_end].decode("utf-8"),
        msg=rest[1:],
    )


def frame(msg: bytes) -> bytes:
    """RFC 5425 §4.3 octet-counting frame: ``MSG-LEN SP SYSLOG-MSG``."""
    if not msg:
        raise ValueError("an empty syslog message cannot be framed (MSG-LEN is non-zero)")
    return b"%d " % len(msg) + msg


def parse_frames(buffer: bytes, max_length: int = 1 << 20) -> tuple[list[bytes], bytes]:
    """Split a byte stream into RFC 5425 frames; return complete messages and the rest."""
    messages: list[bytes] = []
    position = 0
    while True:
        space = buffer.find(b" ", position, position + 12)
        if space < 0:
            if len(buffer) - position >= 12:
                raise ValueError("syslog frame length is not a number")
            break
        digits = buffer[position:space]
        if not digits.isdigit() or digits.startswith(b"0"):
            raise ValueError("syslog frame length must be a non-zero decimal number")
        length = int(digits)
        if length > max_length:
            raise ValueError("syslog frame too long")
        end = space + 1 + length
        if end > len(buffer):
            break
        messages.append(buffer[space + 1 : end])
        position = end
    return messages, buffer[position:]


def frames(messages: Sequence[bytes]) -> bytes:
    """Several frames back to back."""
    return b"".join(frame(message) for message in messages)
