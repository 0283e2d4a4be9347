"""Validation of a tele-expertise request: every field, its French error, the consent rule."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from typing import Any

import pytest

from relay.case_request import (
    ANATOMIC_SITES,
    FIELD_LABELS_FR,
    CaseFieldError,
    Consent,
    ConsentMethod,
    DurationUnit,
    InsPatient,
    Laterality,
    PseudonymousPatient,
    Recipient,
    Requester,
    Sex,
    WoundDuration,
    WoundSize,
    parse_case_request,
    patient_key,
    require_complete,
    submit_event,
)
from relay.cases import Submit, Urgency
from relay.roles import Role
from tests.relay.cases.helpers import NIR, RPPS, T0, valid_body, with_nir_key


def test_a_complete_request_parses_into_frozen_values() -> None:
    request = parse_case_request(valid_body(), T0)
    assert request.requester == Requester("nurse-1", Role.NURSE, RPPS)
    assert request.patient == InsPatient(NIR, "Durand", "Jeanne", date(1950, 3, 2), Sex.FEMALE)
    assert request.recipient == Recipient("derm-1", "team-derm")
    assert request.question is not None and request.question.startswith("La plaie")
    assert request.wound is not None
    assert request.wound.site is ANATOMIC_SITES["heel"]
    assert request.wound.laterality is Laterality.LEFT
    assert request.wound.size == WoundSize(3.0, 2.5, 0.4)
    assert request.wound.duration == WoundDuration(3, DurationUnit.WEEKS)
    assert request.wound.site_label_fr == "Talon gauche"
    assert request.urgency is Urgency.WITHIN_72H
    assert request.consent == Consent("nurse-1", T0 - timedelta(minutes=10), ConsentMethod.ORAL)
    require_complete(request)
    assert submit_event(request) == Submit(
        urgency=Urgency.WITHIN_72H,
        patient_key="ins:" + NIR,
        specialist_id="derm-1",
        team_id="team-derm",
        consent_recorded=True,
    )
    assert submit_event(request, key="hmac:abc").patient_key == "hmac:abc"


def test_a_draft_needs_only_the_requester() -> None:
    request = parse_case_request({"requester": valid_body()["requester"], "question": ""}, T0)
    assert request.patient is None and request.question is None and request.consent is None
    with pytest.raises(CaseFieldError) as info:
        require_complete(request)
    assert info.value.field == "patient" and info.value.code == "missing_field"


def test_a_request_without_consent_can_be_a_draft_but_not_be_submitted() -> None:
    body = valid_body()
    del body["consent"]
    request = parse_case_request(body, T0)  # a draft may lack consent
    with pytest.raises(CaseFieldError) as info:
        require_complete(request)
    assert info.value.code == "consent_required"
    assert info.value.field == "consent"
    assert info.value.http_status == 400
    assert info.value.message.startswith("Consentement du patient : le consentement")
    with pytest.raises(CaseFieldError):
        submit_event(request)


def test_a_pseudonymous_patient() -> None:
    body = valid_body()
    body["patient"] = {"kind": "pseudonymous", "local_id": "MSP-0042"}
    request = parse_case_request(body, T0)
    assert request.patient == PseudonymousPatient("MSP-0042")
    assert patient_key(request.patient) == "local:MSP-0042"


def test_corsican_nir_and_spaces_are_accepted() -> None:
    body = valid_body()
    corsican = with_nir_key("150032A123456")  # male, born 1950, Corse-du-Sud
    body["patient"] |= {
        "nir": " ".join([corsican[:5], corsican[5:]]),
        "sex": "male",
        "birth_date": "1950-03-02",
    }
    request = parse_case_request(body, T0)
    assert isinstance(request.patient, InsPatient) and request.patient.nir == corsican


def test_unpaired_site_takes_no_side() -> None:
    body = valid_body()
    body["wound"] |= {"site": "sacrum", "laterality": "none"}
    request = parse_case_request(body, T0)
    assert request.wound is not None and request.wound.site_label_fr == "Sacrum"


def set_path(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()
TOO_OLD = (T0 - timedelta(days=400)).isoformat()
FUTURE = (T0 + timedelta(hours=1)).isoformat()
BAD_KEY_NIR = NIR[:13] + f"{(int(NIR[13:]) + 1) % 100:02d}"

INVALID: list[tuple[str, Any, str, str]] = [
    # (path, value, field named by the error, code)
    ("requester", DELETE, "requester", "missing_field"),
    ("requester.id", "", "requester.id", "missing_field"),
    ("requester.id", "nurse 1!", "requester.id", "invalid_case_field"),
    ("requester.role", "admin", "requester.role", "invalid_case_field"),
    ("requester.role", "coordinator", "requester.role", "invalid_case_field"),
    ("requester.role", "infirmière", "requester.role", "invalid_case_field"),
    ("requester.rpps", "10000000000", "requester.rpps", "invalid_identifier"),
    ("requester.rpps", "1234", "requester.rpps", "invalid_identifier"),
    ("requester.rpps", 10000000008, "requester.rpps", "invalid_case_field"),
    ("requester.extra", 1, "requester", "unknown_field"),
    ("extra", 1, "", "unknown_field"),
    ("patient", "Jeanne Durand", "patient", "invalid_case_field"),
    ("patient.kind", "name", "patient.kind", "invalid_case_field"),
    ("patient.kind", DELETE, "patient.kind", "missing_field"),
    ("patient.nir", BAD_KEY_NIR, "patient.nir", "invalid_identifier"),
    ("patient.nir", "2500375", "patient.nir", "invalid_identifier"),
    ("patient.nir", DELETE, "patient.nir", "missing_field"),
    ("patient.sex", "male", "patient.nir", "invalid_case_field"),  # NIR says female
    ("patient.birth_date", "1951-03-02", "patient.nir", "invalid_case_field"),  # NIR says 1950
    ("patient.sex", "F", "patient.sex", "invalid_case_field"),
    ("patient.family_name", "Durand2", "patient.family_name", "invalid_case_field"),
    ("patient.family_name", "", "patient.family_name", "missing_field"),
    ("patient.given_name", "J" * 101, "patient.given_name", "invalid_case_field"),
    ("patient.birth_date", "1950-02-30", "patient.birth_date", "invalid_case_field"),
    ("patient.birth_date", "02/03/1950", "patient.birth_date", "invalid_case_field"),
    ("patient.birth_date", "2050-03-02", "patient.birth_date", "invalid_case_field"),
    ("patient.birth_date", "1850-03-02", "patient.birth_date", "invalid_case_field"),
    ("patient.local_id", "x", "patient", "unknown_field"),  # INS patient with a local id
    ("recipient", {}, "recipient", "missing_field"),
    ("recipient.specialist_id", "nurse-1", "recipient.specialist_id", "invalid_case_field"),
    ("recipient.team_id", "équipe derm", "recipient.team_id", "invalid_case_field"),
    ("question", "   ", "question", "missing_field"),
    ("question", "ok?", "question", "invalid_case_field"),
    ("question", "x" * 4001, "question", "invalid_case_field"),
    ("question", "Avis svp\x07 merci", "question", "invalid_case_field"),
    ("question", 42, "question", "invalid_case_field"),
    ("wound.site", "nose", "wound.site", "invalid_case_field"),
    ("wound.site", DELETE, "wound.site", "missing_field"),
    ("wound.laterality", "none", "wound.laterality", "invalid_case_field"),  # heel is paired
    ("wound.laterality", "up", "wound.laterality", "invalid_case_field"),
    ("wound.size_cm.length", 0, "wound.size_cm.length", "invalid_case_field"),
    ("wound.size_cm.length", -2, "wound.size_cm.length", "invalid_case_field"),
    ("wound.size_cm.length", "3", "wound.size_cm.length", "invalid_case_field"),
    ("wound.size_cm.length", True, "wound.size_cm.length", "invalid_case_field"),
    ("wound.size_cm.length", float("nan"), "wound.size_cm.length", "invalid_case_field"),
    ("wound.size_cm.length", 101, "wound.size_cm.length", "invalid_case_field"),
    ("wound.size_cm.width", DELETE, "wound.size_cm.width", "missing_field"),
    ("wound.size_cm.depth", 31, "wound.size_cm.depth", "invalid_case_field"),
    ("wound.size_cm.area", 4, "wound.size_cm", "unknown_field"),
    ("wound.duration.value", 1.5, "wound.duration.value", "invalid_case_field"),
    ("wound.duration.value", -1, "wound.duration.value", "invalid_case_field"),
    ("wound.duration.value", 521, "wound.duration.value", "invalid_case_field"),
    ("wound.duration.value", DELETE, "wound.duration.value", "missing_field"),
    ("wound.duration.unit", "years", "wound.duration.unit", "invalid_case_field"),
    ("wound.treatment", "x" * 1001, "wound.treatment", "invalid_case_field"),
    ("urgency", "soon", "urgency", "invalid_case_field"),
    ("consent.method", "email", "consent.method", "invalid_case_field"),
    ("consent.collected_at", "2024-05-01T09:50:00", "consent.collected_at", "invalid_case_field"),
    ("consent.collected_at", "hier", "consent.collected_at", "invalid_case_field"),
    ("consent.collected_at", FUTURE, "consent.collected_at", "invalid_case_field"),
    ("consent.collected_at", TOO_OLD, "consent.collected_at", "invalid_case_field"),
    ("consent.collected_by", DELETE, "consent.collected_by", "missing_field"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "code"), INVALID, ids=[f"{p}={v!r:.20}" for p, v, *_ in INVALID]
)
def test_each_invalid_field_is_named_in_french(
    path: str, value: Any, field: str, code: str
) -> None:
    with pytest.raises(CaseFieldError) as info:
        parse_case_request(set_path(valid_body(), path, value), T0)
    assert (info.value.field, info.value.code) == (field, code)
    assert info.value.http_status == 400
    assert info.value.message.startswith(FIELD_LABELS_FR[field] + " : ")


def test_identifier_errors_keep_the_identifier_explanation() -> None:
    with pytest.raises(CaseFieldError) as info:
        parse_case_request(set_path(valid_body(), "patient.nir", BAD_KEY_NIR), T0)
    assert info.value.message == (
        "Patient — matricule INS (NIR) : Le NIR est invalide : la clé de contrôle ne "
        "correspond pas."
    )


def test_body_must_be_an_object() -> None:
    with pytest.raises(CaseFieldError) as info:
        parse_case_request(["requester"], T0)
    assert info.value.field == ""


def test_sites_are_coded_and_paired_sites_are_limbs_or_paired_organs() -> None:
    for site in ANATOMIC_SITES.values():
        assert site.snomed_code.isdigit() and site.dicom_cid in (4, 4029, 4031)
        assert site.label_fr and site.snomed_display
    paired = {key for key, site in ANATOMIC_SITES.items() if site.paired}
    assert {"heel", "foot", "lower_leg", "hand", "breast"} <= paired
    assert not {"sacrum", "abdomen", "back", "head"} & paired


def test_text_is_normalised() -> None:
    body = valid_body()
    body["question"] = "  Ligne 1\r\nLigne 2  "
    body["patient"]["family_name"] = "  Le   Goff "
    request = parse_case_request(body, T0)
    assert request.question == "Ligne 1\nLigne 2"
    assert isinstance(request.patient, InsPatient) and request.patient.family_name == "Le Goff"
