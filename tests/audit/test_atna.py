"""DICOM PS3.15 audit messages, RFC 5424 syslog messages and RFC 5425 framing."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.audit import atna
from relay.audit import events as ev

NOW = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
PATIENT = ev.patient_reference("255082A12345678", bytes(32))


def _download() -> dict[str, object]:
    record = ev.AuditRecord(
        ev.AuditAction.ATTACHMENT_DOWNLOADED,
        ev.Outcome.SUCCESS,
        NOW,
        ev.Actor.professional("acc-7", "nurse", "10003461033"),
        "relais-1",
        network_address="192.0.2.10",
        purpose=ev.Purpose.TREATMENT,
        entities=(ev.EntityRef(ev.ResourceKind.ATTACHMENT, "att-1"),),
        patient=PATIENT,
        detail=(("tls_version", "TLSv1.3"),),
    )
    return ev.build_audit_event(record, index=12)


def test_audit_message_structure() -> None:
    message = ET.fromstring(atna.audit_message_xml(_download()))  # noqa: S314 (our own output)
    assert message.tag == "AuditMessage"
    assert [child.tag for child in message] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]
    identification = message[0]
    assert identification.attrib == {
        "EventActionCode": "R",
        "EventDateTime": "2024-05-01T08:30:00.000Z",
        "EventOutcomeIndicator": "0",
    }
    event_id = identification.find("EventID")
    assert event_id is not None
    assert event_id.attrib == {
        "csd-code": "110110",
        "codeSystemName": "DCM",
        "originalText": "Patient Record",
    }
    type_codes = identification.findall("EventTypeCode")
    assert [t.get("csd-code") for t in type_codes] == ["attachment_downloaded"]
    purpose = identification.find("PurposeOfUse")
    assert purpose is not None and purpose.get("csd-code") == "TREAT"

    user, server = message.findall("ActiveParticipant")
    assert user.get("UserID") == "10003461033"  # RPPS, never a name
    assert user.get("AlternativeUserID") == "acc-7"
    assert user.get("UserIsRequestor") == "true"
    assert user.get("NetworkAccessPointID") == "192.0.2.10"
    assert user.get("NetworkAccessPointTypeCode") == "2"
    assert "UserName" not in user.attrib
    assert [r.get("csd-code") for r in user.findall("RoleIDCode")] == ["IRCP", "nurse"]
    assert server.get("UserID") == "relais-1" and server.get("UserIsRequestor") == "false"
    role = server.find("RoleIDCode")
    assert role is not None and role.get("csd-code") == "110152"

    source = message.find("AuditSourceIdentification")
    assert source is not None
    assert source.get("AuditSourceID") == "relais-1"
    source_type = source.find("AuditSourceTypeCode")
    assert source_type is not None and source_type.get("csd-code") == "4"

    patient, attachment, context = message.findall("ParticipantObjectIdentification")
    assert patient.attrib == {
        "ParticipantObjectID": PATIENT,
        "ParticipantObjectTypeCode": "1",
        "ParticipantObjectTypeCodeRole": "1",
    }
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None
    assert (id_type.get("csd-code"), id_type.get("codeSystemName")) == ("2", "RFC-3881")
    assert attachment.get("ParticipantObjectID") == "att-1"
    assert attachment.get("ParticipantObjectTypeCodeRole") == "4"
    detail = context.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "tls_version"
    assert base64.b64decode(detail.get("value", "")) == b"TLSv1.3"


def test_login_event_type_code() -> None:
    record = ev.AuditRecord(
        ev.AuditAction.LOGIN_FAILED,
        ev.Outcome.MINOR_FAILURE,
        NOW,
        ev.Actor.professional("acc-7", "nurse"),
        "relais-1",
        detail=(("method", "totp"),),
    )
    message = atna.audit_message(ev.build_audit_event(record, index=0))
    identification = message.find("EventIdentification")
    assert identification is not None
    assert identification.get("EventOutcomeIndicator") == "4"
    codes = [(c.get("csd-code"), c.get("codeSystemName")) for c in identification]
    assert codes[:2] == [("110114", "DCM"), ("110122", "DCM")]


@pytest.mark.parametrize("action", list(ev.AuditAction))
def test_every_action_gives_well_formed_xml(action: ev.AuditAction) -> None:
    outcome = (
        ev.Outcome.MINOR_FAILURE
        if ev.ACTIONS[action].outcomes is ev.OutcomeRule.FAILURE
        else ev.Outcome.SUCCESS
    )
    record = ev.AuditRecord(action, outcome, NOW, ev.Actor.system("relais-1"), "relais-1")
    (document,) = atna.iter_audit_messages_xml([ev.build_audit_event(record, index=3)])
    assert document.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(document)  # noqa: S314 (our own output)
    assert root.find("EventIdentification/EventID") is not None


def test_syslog_message_exact_bytes() -> None:
    xml = b"<AuditMessage/>"
    message = atna.syslog_message(xml, now=NOW, hostname="relais-1", procid="4242")
    assert message == (
        b"<85>1 2024-05-01T08:30:00.000Z relais-1 relais 4242 IHE+RFC-3881 - <AuditMessage/>"
    )
    failure = atna.syslog_message(
        xml, now=NOW, hostname="relais-1", severity=atna.severity_for_outcome("8")
    )
    assert failure.startswith(b"<84>1 ")


def test_syslog_timestamp_is_utc() -> None:
    paris = datetime(2024, 5, 1, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    message = atna.syslog_message(b"x", now=paris, hostname="h")
    assert b" 2024-05-01T08:30:00.000Z " in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "relais 1"},
        {"hostname": ""},
        {"hostname": "hôte"},
        {"hostname": "h", "msgid": "M" * 33},
        {"hostname": "h", "app_name": "a" * 49},
        {"hostname": "h", "severity": 8},
        {"hostname": "h", "facility": 24},
    ],
)
def test_syslog_header_fields_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        atna.syslog_message(b"x", now=NOW, **kwargs)  # type: ignore[arg-type]


def test_syslog_naive_time_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        atna.syslog_message(b"x", now=datetime(2024, 1, 1), hostname="h")


def test_syslog_round_trip() -> None:
    xml = atna.audit_message_xml(_download())
    parsed = atna.parse_syslog_message(
        atna.syslog_message(xml, now=NOW, hostname="relais-1", msgid="DICOM+RFC3881")
    )
    assert parsed == atna.SyslogMessage(
        facility=10,
        severity=5,
        timestamp="2024-05-01T08:30:00.000Z",
        hostname="relais-1",
        app_name="relais",
        procid="-",
        msgid="DICOM+RFC3881",
        structured_data="-",
        msg=xml,
    )


def test_parse_structured_data_elements() -> None:
    data = b'<13>1 - host app - ID [a x="1\\]2"][b y="z"] hello'
    parsed = atna.parse_syslog_message(data)
    assert parsed.structured_data == '[a x="1\\]2"][b y="z"]'
    assert parsed.msg == b"hello"
    for bad in (
        b"not syslog",
        b"<999>1 - h a - m - x",
        b"<1>1 - h a - m [open",
        b"<1>1 - h a - m ?",
    ):
        with pytest.raises(ValueError):
            atna.parse_syslog_message(bad)


def test_rfc5425_octet_counting() -> None:
    assert atna.frame(b"hello") == b"5 hello"
    assert atna.frame("é".encode()) == b"2 \xc3\xa9"  # octets, not characters
    stream = atna.frames([b"one", b"two words"]) + b"12 partial"
    messages, rest = atna.parse_frames(stream)
    assert messages == [b"one", b"two words"]
    assert rest == b"12 partial"
    with pytest.raises(ValueError):
        atna.frame(b"")


@pytest.mark.parametrize("stream", [b"05 hello", b"x hello", b"5x hello", b"1234567890123"])
def test_bad_frames_are_refused(stream: bytes) -> None:
    with pytest.raises(ValueError):
        atna.parse_frames(stream)


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6), st.integers(0, 20))
def test_frames_round_trip(messages: list[bytes], cut: int) -> None:
    stream = atna.frames(messages)
    parsed, rest = atna.parse_frames(stream)
    assert parsed == messages and rest == b""
    # A stream cut anywhere yields the complete frames and keeps the rest for later.
    head = stream[: max(0, len(stream) - cut)]
    first, remainder = atna.parse_frames(head)
    more, final = atna.parse_frames(remainder + stream[len(head) :])
    assert first + more == messages and final == b""
