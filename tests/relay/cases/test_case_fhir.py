"""The case as a FHIR R4 Bundle, validated by fhir.resources (R4B models) in every state."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from relay.case_fhir import (
    INS_NIR_SYSTEM,
    RPPS_SYSTEM,
    CaseAnswer,
    CasePhoto,
    Professional,
    case_bundle,
)
from relay.case_request import CaseRequest, parse_case_request
from relay.cases import Case, CaseState, FollowUp, apply
from relay.roles import Role
from tests.relay.cases.helpers import (
    NAMED,
    NIR,
    REQUESTER,
    RPPS,
    T0,
    case_in,
    valid_body,
    with_luhn,
)

BASE = "https://relais.localhost/fhir"
NOW = T0 + timedelta(days=2)
SPECIALIST_RPPS = with_luhn("1000000001")

# FHIR R4 value sets (required bindings) that fhir.resources does not check itself.
TASK_STATUS = {
    "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
    "in-progress", "on-hold", "failed", "completed", "entered-in-error",
}  # fmt: skip
REQUEST_STATUS = {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error",
                  "unknown"}  # fmt: skip
REQUEST_PRIORITY = {"routine", "urgent", "asap", "stat"}
EVENT_STATUS = {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                "entered-in-error", "unknown"}  # fmt: skip
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

EXPECTED_TASK_STATUS = {
    "draft": "draft",
    "submitted": "requested",
    "accepted": "accepted",
    "awaiting_requester": "on-hold",
    "awaiting_after_answer": "on-hold",
    "answered": "in-progress",
    "closed": "completed",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "expired": "failed",
}
EXPECTED_REQUEST_STATUS = {
    "draft": "draft",
    "closed": "completed",
    "rejected": "revoked",
    "cancelled": "revoked",
    "expired": "revoked",
}

DIRECTORY = {
    NAMED.id: Professional(
        NAMED.id, Role.SPECIALIST, SPECIALIST_RPPS, "Martin", "Paul", "Dermatologie"
    )
}


def photos() -> list[CasePhoto]:
    return [
        CasePhoto(
            f"photo-{n}",
            f"https://relais.localhost/api/cases/case-1/photos/photo-{n}",
            1600,
            1200,
            250_000,
            T0 - timedelta(minutes=5 - n),
            REQUESTER.id,
        )
        for n in (1, 2)
    ]


def answer_for(case: Case) -> CaseAnswer | None:
    if case.first_answered_at is None:
        return None
    return CaseAnswer(NAMED.id, "Détersion puis hydrocolloïde ; revoir dans 15 jours.", T0)


def bundle_for(state: str, request: CaseRequest | None = None) -> tuple[Case, dict[str, Any]]:
    case = case_in(state)
    request = request or parse_case_request(valid_body(), T0)
    bundle = case_bundle(
        case, request, answer_for(case), photos(), NOW, directory=DIRECTORY, base_url=BASE
    )
    return case, bundle


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def one(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    found = resources(bundle, kind)
    assert len(found) == 1, kind
    return found[0]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


STATES = [*(s.value for s in CaseState), "awaiting_after_answer"]


@pytest.mark.parametrize("state", STATES)
def test_bundle_validates_in_every_state(state: str) -> None:
    case, bundle = bundle_for(state)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    # Each resource also validates on its own, with its own model.
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert FHIR_ID.fullmatch(resource["id"])
        assert entry["fullUrl"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"
    # Every reference resolves inside the Bundle.
    full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
    for ref in references(bundle):
        assert f"{BASE}/{ref}" in full_urls, ref

    task = one(bundle, "Task")
    assert task["status"] in TASK_STATUS
    assert task["status"] == EXPECTED_TASK_STATUS[state]
    assert task["businessStatus"]["coding"][0]["code"] == case.state.value
    assert task["intent"] == "order" and task["priority"] in REQUEST_PRIORITY
    service = one(bundle, "ServiceRequest")
    assert service["status"] in REQUEST_STATUS
    assert service["status"] == EXPECTED_REQUEST_STATUS.get(state, "active")
    assert service["priority"] == "urgent"  # "72h" triage
    assert len(resources(bundle, "Media")) == 2
    one(bundle, "Consent")
    one(bundle, "Patient")
    communications = resources(bundle, "Communication")
    assert all(c["status"] in EVENT_STATUS for c in communications)
    expected = (0 if state == "draft" else 1) + (case.first_answered_at is not None)
    assert len(communications) == expected


def test_task_carries_owner_due_date_and_recipients() -> None:
    case, bundle = bundle_for("accepted")
    task = one(bundle, "Task")
    assert case.window_start is not None and case.due_at is not None
    assert task["restriction"]["period"] == {
        "start": "2024-05-01T08:00:00Z",
        "end": "2024-05-04T08:00:00Z",
    }
    role = next(
        r
        for r in resources(bundle, "PractitionerRole")
        if r["practitioner"] == owner_practitioner(bundle, task["owner"])
    )
    assert role["specialty"] == [{"text": "Dermatologie"}]
    recipients = task["restriction"]["recipient"]
    assert recipients[1] == {
        "type": "Organization",
        "identifier": {"system": "urn:relais-sante:team", "value": "team-derm"},
    }
    assert "owner" not in one(bundle_for("submitted")[1], "Task")


def owner_practitioner(bundle: dict[str, Any], ref: dict[str, str]) -> dict[str, str]:
    role_id = ref["reference"].split("/")[1]
    role = next(r for r in resources(bundle, "PractitionerRole") if r["id"] == role_id)
    practitioner: dict[str, str] = role["practitioner"]
    return practitioner


def test_answer_is_a_communication_in_response_to_the_question() -> None:
    _, bundle = bundle_for("answered")
    service = one(bundle, "ServiceRequest")
    communications = {c["id"]: c for c in resources(bundle, "Communication")}
    answer = next(c for c in communications.values() if "inResponseTo" in c)
    question_id = answer["inResponseTo"][0]["reference"].split("/")[1]
    question = communications[question_id]
    assert question["payload"][0]["contentString"].startswith("La plaie du talon")
    assert answer["basedOn"] == [{"reference": f"ServiceRequest/{service['id']}"}]
    assert answer["payload"][0]["contentString"].startswith("Détersion")
    task = one(bundle, "Task")
    assert task["output"][0]["valueReference"] == {"reference": f"Communication/{answer['id']}"}


def test_patient_carries_the_ins_as_fr_core_slices_it() -> None:
    _, bundle = bundle_for("submitted")
    patient = one(bundle, "Patient")
    assert patient["identifier"] == [
        {
            "use": "official",
            "type": {
                "coding": [
                    {
                        "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                        "code": "INS-NIR",
                        "display": "NIR définitif",
                    }
                ]
            },
            "system": INS_NIR_SYSTEM,
            "value": NIR,
        }
    ]
    assert INS_NIR_SYSTEM == "urn:oid:1.2.250.1.213.1.4.8"
    assert patient["gender"] == "female" and patient["birthDate"] == "1950-03-02"
    assert patient["name"] == [{"use": "official", "family": "Durand", "given": ["Jeanne"]}]


def test_practitioners_carry_their_rpps() -> None:
    _, bundle = bundle_for("answered")
    by_rpps = {}
    for practitioner in resources(bundle, "Practitioner"):
        for identifier in practitioner["identifier"]:
            if identifier["system"] == RPPS_SYSTEM:
                assert identifier["type"]["coding"][0]["code"] == "RPPS"
                by_rpps[identifier["value"]] = practitioner
    assert RPPS_SYSTEM == "https://rpps.esante.gouv.fr"
    assert set(by_rpps) == {RPPS, SPECIALIST_RPPS}
    assert by_rpps[SPECIALIST_RPPS]["name"] == [
        {"use": "usual", "family": "Martin", "given": ["Paul"]}
    ]
    nurse_role = next(
        r for r in resources(bundle, "PractitionerRole") if r["code"][0]["text"] == "Infirmier·e"
    )
    assert nurse_role["code"][0]["coding"][0]["code"] == "60"


def test_photos_are_media_linked_from_the_request() -> None:
    _, bundle = bundle_for("submitted")
    media = resources(bundle, "Media")
    service = one(bundle, "ServiceRequest")
    refs = {r["reference"] for r in service["supportingInfo"]}
    assert {f"Media/{m['id']}" for m in media} <= refs
    assert f"Consent/{one(bundle, 'Consent')['id']}" in refs
    first = media[0]
    assert first["content"]["url"].endswith("/photos/photo-1")
    assert first["content"]["contentType"] == "image/jpeg" and "data" not in first["content"]
    assert first["bodySite"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "84607009", "display": "Skin of heel"}
    ]
    assert first["bodySite"]["text"] == "Talon gauche"
    assert service["bodySite"] == [first["bodySite"]]


def test_consent_and_who_collected_it() -> None:
    _, bundle = bundle_for("submitted")
    consent = one(bundle, "Consent")
    assert consent["status"] == "active"
    assert consent["dateTime"] == "2024-05-01T07:50:00Z"
    assert consent["category"][1] == {"text": "Recueil oral"}
    provenance = one(bundle, "Provenance")
    assert provenance["target"] == [{"reference": f"Consent/{consent['id']}"}]
    collector = owner_practitioner(bundle, provenance["agent"][0]["who"])
    practitioner_id = collector["reference"].split("/")[1]
    practitioner = next(p for p in resources(bundle, "Practitioner") if p["id"] == practitioner_id)
    assert {"system": "urn:relais-sante:account", "value": REQUESTER.id} in practitioner[
        "identifier"
    ]


def test_rejected_task_states_the_reason() -> None:
    _, bundle = bundle_for("rejected")
    assert one(bundle, "Task")["statusReason"] == {"text": "Hors de ma spécialité"}


def test_follow_up_after_an_answer_keeps_the_task_moving_forward() -> None:
    case = case_in("answered")
    case, _ = apply(case, FollowUp(), REQUESTER, T0 + timedelta(hours=5))
    request = parse_case_request(valid_body(), T0)
    bundle = case_bundle(case, request, answer_for(case), [], NOW, base_url=BASE)
    Bundle.model_validate(bundle)
    assert one(bundle, "Task")["status"] == "in-progress"  # not back to "accepted"


def test_an_empty_draft_still_validates() -> None:
    request = parse_case_request({"requester": valid_body()["requester"]}, T0)
    bundle = case_bundle(case_in("draft"), request, None, [], NOW, base_url=BASE)
    Bundle.model_validate(bundle)
    service = one(bundle, "ServiceRequest")
    assert service["subject"] == {"display": "Patient non renseigné (brouillon)"}
    assert resources(bundle, "Patient") == [] and resources(bundle, "Consent") == []
    assert "priority" not in service


def test_pseudonymous_patient_has_no_identity_traits() -> None:
    body = valid_body()
    body["patient"] = {"kind": "pseudonymous", "local_id": "MSP-0042"}
    _, bundle = bundle_for("submitted", parse_case_request(body, T0))
    Bundle.model_validate(bundle)
    patient = one(bundle, "Patient")
    assert patient["identifier"] == [
        {"use": "secondary", "system": "urn:relais-sante:patient-local-id", "value": "MSP-0042"}
    ]
    assert set(patient) == {"resourceType", "id", "identifier"}


def test_same_case_same_bundle_and_ids_differ_between_cases() -> None:
    _, first = bundle_for("answered")
    _, again = bundle_for("answered")
    assert first == again
    other = case_bundle(
        replace(case_in("answered"), id="case-2"),
        parse_case_request(valid_body(), T0),
        None,
        [],
        NOW,
        base_url=BASE,
    )
    assert {e["fullUrl"] for e in first["entry"]}.isdisjoint({e["fullUrl"] for e in other["entry"]})
