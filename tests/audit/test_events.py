"""Audit events: the action table, FHIR validity, and the no-free-text rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from relay.audit import events as ev
from relay.audit.canonical import canonicalize
from relay.audit.errors import InvalidAuditRecord

NOW = datetime(2024, 5, 1, 8, 30, 12, 345678, tzinfo=UTC)
HMAC_KEY = bytes(range(32))
INS = "2 55 08 2A 123 456 78"
PATIENT = ev.patient_reference(INS, HMAC_KEY)
NURSE = ev.Actor.professional("0b5f2c1e", "nurse", "10003461033")


def record_for(action: ev.AuditAction, /, **changes: Any) -> ev.AuditRecord:
    """A plausible record for any action, honouring its outcome rule."""
    spec = ev.ACTIONS[action]
    outcome = (
        ev.Outcome.MINOR_FAILURE if spec.outcomes is ev.OutcomeRule.FAILURE else ev.Outcome.SUCCESS
    )
    base = ev.AuditRecord(
        action=action,
        outcome=outcome,
        now=NOW,
        actor=NURSE,
        observer="relais-1",
        network_address="2001:db8::7",
        purpose=ev.Purpose.TREATMENT,
        entities=(ev.EntityRef(ev.ResourceKind.CASE, "case-42"),),
        patient=PATIENT,
        search=ev.search_reference({"patient": INS}, HMAC_KEY),
        detail=(("method", "client_certificate"), ("tls_version", "TLSv1.3")),
    )
    return replace(base, **changes)


@pytest.mark.parametrize("action", list(ev.AuditAction))
def test_every_action_builds_a_valid_fhir_auditevent(action: ev.AuditAction) -> None:
    event = ev.build_audit_event(record_for(action), index=7)
    parsed = AuditEvent.model_validate(event)
    assert parsed.id == "7"
    assert parsed.type.code == ev.ACTIONS[action].event_type.code
    assert parsed.action == ev.ACTIONS[action].action.value
    # The canonical form parses back to the very same resource.
    assert json.loads(canonicalize(event)) == event


@pytest.mark.parametrize(
    "actor",
    [
        ev.Actor.patient("guest-9f2c"),
        ev.Actor.system("relais-1"),
        ev.Actor.remote_server("mx.hopital.example"),
        ev.Actor.professional("admin-1", "admin"),
    ],
)
def test_every_actor_kind_validates(actor: ev.Actor) -> None:
    event = ev.build_audit_event(record_for(ev.AuditAction.MESSAGE_RECEIVED, actor=actor), index=0)
    AuditEvent.model_validate(event)
    assert event["agent"][0]["requestor"] is True
    assert event["agent"][0]["altId"] == actor.id


@pytest.mark.parametrize(
    ("action", "event_type", "subtype", "fhir_action"),
    [
        ("login_succeeded", "110114", "110122", "E"),
        ("login_failed", "110114", "110122", "E"),
        ("logout", "110114", "110123", "E"),
        ("attachment_downloaded", "110110", None, "R"),
        ("case_transition", "110110", None, "U"),
        ("message_received", "110107", None, "C"),
        ("message_relayed", "110106", None, "R"),
        ("export", "110106", None, "R"),
        ("import", "110107", None, "C"),
        ("access_denied", "110113", "110132", "E"),
        ("role_changed", "110113", "110136", "E"),
        ("account_created", "110113", "110137", "E"),
        ("audit_stopped", "110113", "110133", "E"),
        ("audit_started", "110113", "110134", "E"),
        ("audit_read", "110101", None, "R"),
        ("audit_searched", "110101", None, "R"),
        ("application_started", "110100", "110120", "E"),
    ],
)
def test_dicom_codes(action: str, event_type: str, subtype: str | None, fhir_action: str) -> None:
    event = ev.build_audit_event(record_for(ev.AuditAction(action)), index=1)
    assert event["type"]["system"] == ev.DCM
    assert event["type"]["code"] == event_type
    codes = [(c["system"], c["code"]) for c in event["subtype"]]
    if subtype is not None:
        assert codes[0] == (ev.DCM, subtype)
    # Our own action code is always present, so events are searchable by action.
    assert codes[-1] == (ev.ACTION_SYSTEM, action)
    assert event["action"] == fhir_action


def test_the_table_covers_every_action() -> None:
    assert set(ev.ACTIONS) == set(ev.AuditAction)


def test_event_shape_follows_balp() -> None:
    event = ev.build_audit_event(record_for(ev.AuditAction.ATTACHMENT_DOWNLOADED), index=41)
    user, server = event["agent"]
    assert user["who"] == {"identifier": {"system": ev.RPPS_SYSTEM, "value": "10003461033"}}
    assert user["type"]["coding"][0]["code"] == "IRCP"  # a read: information recipient
    assert user["network"] == {"address": "2001:db8::7", "type": "2"}
    assert server["type"]["coding"][0]["code"] == "110152" and server["requestor"] is False
    patient, case, query, context = event["entity"]
    assert patient["role"]["code"] == "1" and patient["type"]["code"] == "1"
    assert patient["what"]["identifier"]["value"] == PATIENT
    assert case["what"] == {
        "identifier": {"system": "urn:relais-sante:case", "value": "case-42"},
        "type": "Task",
    }
    assert query["role"]["code"] == "24"
    assert context["detail"] == [
        {"type": "method", "valueString": "client_certificate"},
        {"type": "tls_version", "valueString": "TLSv1.3"},
    ]
    assert event["recorded"] == "2024-05-01T08:30:12.345Z"
    assert event["outcome"] == "0"
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"


def test_professional_without_rpps_is_identified_by_account() -> None:
    actor = ev.Actor.professional("acc-1", "coordinator")
    event = ev.build_audit_event(record_for(ev.AuditAction.CASE_READ, actor=actor), index=0)
    assert event["agent"][0]["who"]["identifier"] == {"system": ev.USER_SYSTEM, "value": "acc-1"}


def test_minimal_record_has_no_empty_arrays() -> None:
    record = ev.AuditRecord(
        ev.AuditAction.AUDIT_STARTED,
        ev.Outcome.SUCCESS,
        NOW,
        ev.Actor.system("relais-1"),
        "relais-1",
    )
    event = ev.build_audit_event(record, index=0)
    assert "entity" not in event and "purposeOfEvent" not in event
    AuditEvent.model_validate(event)


def test_canonical_event_carries_its_index_once_and_no_clear_patient() -> None:
    sealed = ev.seal(record_for(ev.AuditAction.PHOTO_VIEWED), index=1234, salt=bytes(32))
    assert sealed.content.count(b'"id":"') == 1
    assert b'"id":"1234"' in sealed.content
    assert INS.encode() not in sealed.content
    assert "".join(INS.split()).encode() not in sealed.content
    assert sealed.commitment == hashlib.sha256(bytes(32) + sealed.content).digest()
    assert sealed.leaf_hash == hashlib.sha256(b"\x00" + sealed.commitment).digest()


def test_seal_refuses_short_salt() -> None:
    with pytest.raises(InvalidAuditRecord, match="salt"):
        ev.seal(record_for(ev.AuditAction.LOGOUT), index=0, salt=b"short")


def test_recorded_is_utc() -> None:
    paris = timezone(timedelta(hours=2))
    record = record_for(ev.AuditAction.LOGOUT, now=datetime(2024, 5, 1, 10, 0, tzinfo=paris))
    assert ev.build_audit_event(record, index=0)["recorded"] == "2024-05-01T08:00:00.000Z"


def test_patient_reference_is_keyed_and_normalised() -> None:
    assert len(PATIENT) == 64 and int(PATIENT, 16) >= 0
    assert ev.patient_reference("255082a12345678", HMAC_KEY) == PATIENT
    assert ev.patient_reference(INS, bytes(range(1, 33))) != PATIENT
    assert ev.patient_reference("255082A12345679", HMAC_KEY) != PATIENT
    with pytest.raises(ValueError, match="at least 32"):
        ev.patient_reference(INS, b"short")
    with pytest.raises(ValueError, match="empty"):
        ev.patient_reference("  ", HMAC_KEY)


def test_search_reference_ignores_criteria_order() -> None:
    one = ev.search_reference({"patient": "x", "from": "2024-01-01"}, HMAC_KEY)
    two = ev.search_reference({"from": "2024-01-01", "patient": "x"}, HMAC_KEY)
    assert one == two != ev.search_reference({"patient": "y"}, HMAC_KEY)
    assert one != ev.patient_reference("x", HMAC_KEY)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"detail": (("reason", "le patient a refusé"),)}, "without spaces"),
        ({"detail": (("reason", "x" * 201),)}, "at most 200"),
        ({"detail": (("comment", "ok"),)}, "unknown detail key"),
        ({"detail": (("reason", "a"), ("reason", "b"))}, "unique"),
        ({"detail": (("method", "magic"),)}, "unknown method"),
        ({"observer": "relais 1"}, "node name"),
        ({"network_address": "pc-de-jean"}, "IP address"),
        ({"now": datetime(2024, 5, 1, 8, 30)}, "timezone-aware"),
        ({"patient": INS}, "keyed hash"),
        ({"search": "DUPONT"}, "keyed hash"),
        ({"action": ev.AuditAction.LOGIN_FAILED, "outcome": ev.Outcome.SUCCESS}, "failure"),
        (
            {"action": ev.AuditAction.LOGIN_SUCCEEDED, "outcome": ev.Outcome.MINOR_FAILURE},
            "succeed",
        ),
        ({"detail": tuple((key.value, "x") for key in ev.DetailKey)}, "too many details"),
        ({"entities": (ev.EntityRef(ev.ResourceKind.CASE, "c"),) * 17}, "too many entities"),
    ],
)
def test_free_text_and_bad_identifiers_are_impossible(
    changes: dict[str, Any], message: str | None
) -> None:
    with pytest.raises(InvalidAuditRecord, match=message) as caught:
        record_for(ev.AuditAction.CASE_READ, **changes)
    assert caught.value.http_status == 500


@pytest.mark.parametrize(
    ("factory", "args"),
    [
        (ev.EntityRef, (ev.ResourceKind.CASE, "case 42")),
        (ev.Actor, (ev.ActorKind.PROFESSIONAL, "Jean Dupont")),
        (ev.Actor.professional, ("u1", "Infirmière")),
        (ev.Actor.professional, ("u1", "nurse", "1234")),
    ],
)
def test_identifiers_must_be_opaque(factory: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidAuditRecord):
        factory(*args)


def test_negative_index_refused() -> None:
    with pytest.raises(InvalidAuditRecord):
        ev.build_audit_event(record_for(ev.AuditAction.LOGOUT), index=-1)
