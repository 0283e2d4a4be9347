"""A tele-expertise case as a FHIR R4 Bundle (``GET /api/cases/{id}/fhir``): pure builder.

The Bundle is of type ``collection`` — a set of resources gathered for exchange, with no
Composition and no signature obligations (``document`` would require a Composition as first
entry and makes the set an attested, immutable document, which a case still open is not).
Entries, each with an absolute ``fullUrl`` ``{base_url}/{type}/{id}`` so the relative
references between them resolve inside the Bundle (FHIR R4 §2.36.4, resolving references in
Bundles):

- **ServiceRequest** — the request: ``reasonCode``, ``bodySite`` (SNOMED CT), ``note`` (the
  clinical question, then the wound details), ``supportingInfo`` → each Media and the
  Consent, ``requester`` → PractitionerRole, ``performer`` → named specialist and/or team.
- **Task** — the workflow: ``status`` mapped from the case state (below), ``businessStatus``
  carrying our exact state, ``owner`` (the specialist in charge), ``restriction.period``
  (the current response window, its end the due date), ``restriction.recipient``.
- **Communication** — the question (requester → recipient) and the answer
  (``inResponseTo`` the question, ``basedOn`` the ServiceRequest, ``partOf`` the Task).
- **Media** (R4) — one per photo: ``content`` is a link to the sanitized JPEG, never inline.
- **Consent** and a **Provenance** naming who collected it (R4 Consent has no "collected
  by": its ``performer`` is the person consenting, the patient).
- **Patient** — INS identifier as FR Core's ``fr-core-patient-ins`` profile slices it:
  system ``urn:oid:1.2.250.1.213.1.4.8``, type ``fr-core-cs-v2-0203#INS-NIR``, use
  ``official`` (Interop'Santé FR Core, ``FRCorePatientINSProfile.fsh``). FR Core reserves
  that slice for a *qualified* identity (checked with the INSi teleservice); the relay only
  checks the NIR key, so the profile is not claimed in ``meta.profile``. A pseudonymous patient
  carries only our local identifier.
- **Practitioner** + **PractitionerRole** per professional involved: RPPS as FR Core's
  ``fr-core-practitioner`` ``rpps`` slice — system ``https://rpps.esante.gouv.fr``, type
  ``fr-core-cs-v2-0203#RPPS`` (``urn:oid:1.2.250.1.71.4.2.1`` is the *idNatPs* slice, whose
  value FR Core says must not be built by the sender, so it is not emitted). Profession
  coded in the ANS nomenclature TRE_G15 (10 médecin, 60 infirmier).

Task status (FHIR R4 task-status) from the case state, kept monotone along FHIR's Task state
machine even when a follow-up sends the case back to ``accepted``::

    draft → draft              submitted → requested
    accepted → accepted (before any answer), in-progress (after one)
    awaiting_requester → on-hold      answered → in-progress     closed → completed
    rejected → rejected        cancelled → cancelled      expired → failed

Validated in the tests with ``fhir.resources`` (its R4B models: R4B shares R4's resources,
including Media). Resource ids are UUIDv5 of the case id, so the same case gives the same
Bundle (stable diffs, idempotent exports).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from relay.case_request import (
    CONSENT_METHOD_LABELS_FR,
    CaseRequest,
    InsPatient,
    PseudonymousPatient,
    WoundDetails,
)
from relay.cases import STATE_LABELS_FR, URGENCY_LABELS_FR, Case, CaseState, Urgency
from relay.roles import ROLE_LABELS_FR, Role

__all__ = [
    "ACCOUNT_SYSTEM",
    "CASE_STATE_SYSTEM",
    "CASE_SYSTEM",
    "DEFAULT_BASE_URL",
    "INS_NIR_SYSTEM",
    "RPPS_SYSTEM",
    "CaseAnswer",
    "CasePhoto",
    "Professional",
    "case_bundle",
    "service_request_status",
    "task_status",
]

DEFAULT_BASE_URL: Final = "https://relais.localhost/fhir"

# Our identifier systems, in the relay's urn:relais-sante: namespace (as relay.audit uses).
CASE_SYSTEM: Final = "urn:relais-sante:case"
ACCOUNT_SYSTEM: Final = "urn:relais-sante:account"
TEAM_SYSTEM: Final = "urn:relais-sante:team"
PHOTO_SYSTEM: Final = "urn:relais-sante:photo"
PATIENT_LOCAL_SYSTEM: Final = "urn:relais-sante:patient-local-id"
CASE_STATE_SYSTEM: Final = "urn:relais-sante:case-state"

# French national systems (Interop'Santé FR Core; ANS nomenclatures).
INS_NIR_SYSTEM: Final = "urn:oid:1.2.250.1.213.1.4.8"
RPPS_SYSTEM: Final = "https://rpps.esante.gouv.fr"
FR_IDENTIFIER_TYPE: Final = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
TRE_G15_PROFESSION: Final = (
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
)

# HL7 / international terminologies.
SNOMED: Final = "http://snomed.info/sct"
LOINC: Final = "http://loinc.org"
CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
MEDIA_TYPE: Final = "http://terminology.hl7.org/CodeSystem/media-type"
PROVENANCE_PARTICIPANT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

_PROFESSION_G15: Final[Mapping[Role, tuple[str, str]]] = {
    Role.NURSE: ("60", "Infirmier"),
    Role.PHYSICIAN: ("10", "Médecin"),
    Role.SPECIALIST: ("10", "Médecin"),
}

_TASK_STATUS: Final[Mapping[CaseState, str]] = {
    CaseState.DRAFT: "draft",
    CaseState.SUBMITTED: "requested",
    CaseState.ACCEPTED: "accepted",
    CaseState.AWAITING_REQUESTER: "on-hold",
    CaseState.ANSWERED: "in-progress",
    CaseState.CLOSED: "completed",
    CaseState.REJECTED: "rejected",
    CaseState.CANCELLED: "cancelled",
    CaseState.EXPIRED: "failed",
}

_REQUEST_STATUS: Final[Mapping[CaseState, str]] = {
    CaseState.DRAFT: "draft",
    CaseState.SUBMITTED: "active",
    CaseState.ACCEPTED: "active",
    CaseState.AWAITING_REQUESTER: "active",
    CaseState.ANSWERED: "active",
    CaseState.CLOSED: "completed",
    CaseState.REJECTED: "revoked",
    CaseState.CANCELLED: "revoked",
    CaseState.EXPIRED: "revoked",
}

# FHIR request-priority orders routine < urgent < asap < stat: our 24 h triage is the
# highest we have, without being an emergency ("stat").
_PRIORITY: Final[Mapping[Urgency, str]] = {
    Urgency.URGENT: "asap",
    Urgency.WITHIN_72H: "urgent",
    Urgency.ROUTINE: "routine",
}

_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:relais-sante:case-fhir")


@dataclass(frozen=True)
class Professional:
    """What the directory knows of a professional involved in the case."""

    id: str
    role: Role
    rpps: str | None = None
    family_name: str | None = None
    given_name: str | None = None
    specialty: str | None = None


@dataclass(frozen=True)
class CaseAnswer:
    """The specialist's answer (latest one when there were follow-ups)."""

    author_id: str
    text: str
    sent_at: datetime


@dataclass(frozen=True)
class CasePhoto:
    """A sanitized photo of the case; ``url`` is where an authorized client fetches it
    (absolute, e.g. ``https://relais.example/api/cases/<id>/photos/<photo>``)."""

    id: str
    url: str
    width: int
    height: int
    size_bytes: int
    created_at: datetime
    uploaded_by: str
    content_type: str = "image/jpeg"


def task_status(case: Case) -> str:
    """FHIR Task.status of the case (see the module docstring for the mapping)."""
    if case.state is CaseState.ACCEPTED and case.first_answered_at is not None:
        return "in-progress"
    return _TASK_STATUS[case.state]


def service_request_status(case: Case) -> str:
    """FHIR ServiceRequest.status of the case."""
    return _REQUEST_STATUS[case.state]


def _instant(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Builder:
    """Collects the entries of one case's Bundle; ids and references in one place."""

    def __init__(self, case: Case, base_url: str) -> None:
        self.case = case
        self.base_url = base_url.rstrip("/")
        self.entries: list[dict[str, Any]] = []

    def rid(self, name: str) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.case.id}/{name}"))

    def ref(self, resource_type: str, name: str) -> dict[str, str]:
        return {"reference": f"{resource_type}/{self.rid(name)}"}

    def add(self, resource_type: str, name: str, body: dict[str, Any]) -> dict[str, str]:
        rid = self.rid(name)
        resource = {"resourceType": resource_type, "id": rid, **body}
        self.entries.append(
            {"fullUrl": f"{self.base_url}/{resource_type}/{rid}", "resource": resource}
        )
        return {"reference": f"{resource_type}/{rid}"}


def _professional_ids(
    case: Case, request: CaseRequest, answer: CaseAnswer | None, photos: Sequence[CasePhoto]
) -> list[str]:
    ids = [case.requester_id, case.specialist_id, case.assignee_id]
    if request.recipient is not None:
        ids.append(request.recipient.specialist_id)
    if answer is not None:
        ids.append(answer.author_id)
    if request.consent is not None:
        ids.append(request.consent.collected_by)
    ids.extend(photo.uploaded_by for photo in photos)
    seen: dict[str, None] = {}
    for pro_id in ids:
        if pro_id is not None:
            seen.setdefault(pro_id, None)
    return list(seen)


def _practitioner(builder: _Builder, pro_id: str, info: Professional | None) -> dict[str, str]:
    identifiers: list[dict[str, Any]] = [{"system": ACCOUNT_SYSTEM, "value": pro_id}]
    body: dict[str, Any] = {"identifier": identifiers}
    if info is not None and info.rpps is not None:
        identifiers.append(
            {
                "use": "official",
                "type": {
                    "coding": [{"system": FR_IDENTIFIER_TYPE, "code": "RPPS", "display": "N° RPPS"}]
                },
                "system": RPPS_SYSTEM,
                "value": info.rpps,
            }
        )
    if info is not None and (info.family_name or info.given_name):
        name: dict[str, Any] = {"use": "usual"}
        if info.family_name:
            name["family"] = info.family_name
        if info.given_name:
            name["given"] = [info.given_name]
        body["name"] = [name]
    practitioner = builder.add("Practitioner", f"practitioner/{pro_id}", body)
    role_body: dict[str, Any] = {"active": True, "practitioner": practitioner}
    if info is not None:
        concept: dict[str, Any] = {"text": ROLE_LABELS_FR[info.role]}
        profession = _PROFESSION_G15.get(info.role)
        if profession is not None:
            concept["coding"] = [
                {"system": TRE_G15_PROFESSION, "code": profession[0], "display": profession[1]}
            ]
        role_body["code"] = [concept]
        if info.specialty:
            role_body["specialty"] = [{"text": info.specialty}]
    return builder.add("PractitionerRole", f"role/{pro_id}", role_body)


def _patient(builder: _Builder, request: CaseRequest) -> dict[str, Any]:
    patient = request.patient
    if patient is None:
        # A draft may not name its patient yet; ServiceRequest.subject is still required.
        return {"display": "Patient non renseigné (brouillon)"}
    body: dict[str, Any]
    if isinstance(patient, InsPatient):
        body = {
            "identifier": [
                {
                    "use": "official",
                    "type": {
                        "coding": [
                            {
                                "system": FR_IDENTIFIER_TYPE,
                                "code": "INS-NIR",
                                "display": "NIR définitif",
                            }
                        ]
                    },
                    "system": INS_NIR_SYSTEM,
                    "value": patient.nir,
                }
            ],
            "name": [
                {"use": "official", "family": patient.family_name, "given": [patient.given_name]}
            ],
            "gender": patient.sex.value,
            "birthDate": patient.birth_date.isoformat(),
        }
    else:
        assert isinstance(patient, PseudonymousPatient)
        body = {
            "identifier": [
                {"use": "secondary", "system": PATIENT_LOCAL_SYSTEM, "value": patient.local_id}
            ]
        }
    return builder.add("Patient", "patient", body)


def _body_site(wound: WoundDetails) -> dict[str, Any]:
    site = wound.site
    return {
        "coding": [{"system": SNOMED, "code": site.snomed_code, "display": site.snomed_display}],
        "text": wound.site_label_fr,
    }


def _wound_note(wound: WoundDetails, urgency: Urgency | None) -> str:
    size = wound.size
    values = [size.length_cm, size.width_cm]
    if size.depth_cm is not None:
        values.append(size.depth_cm)
    dims = " × ".join(f"{value:g}".replace(".", ",") for value in values)  # French decimals
    lines = [
        f"Localisation : {wound.site_label_fr}",
        f"Dimensions : {dims} cm",
        f"Ancienneté : {wound.duration.label_fr}",
        f"Traitement en cours : {wound.treatment or 'non précisé'}",
    ]
    if urgency is not None:
        lines.append(f"Délai demandé : {URGENCY_LABELS_FR[urgency]}")
    return "\n".join(lines)


def _submitted_at(case: Case) -> datetime | None:
    for entry in case.history:
        if entry.to_state is CaseState.SUBMITTED:
            return entry.at
    return None


def _recipients(
    case: Case, request: CaseRequest, roles: Mapping[str, dict[str, str]]
) -> list[dict[str, Any]]:
    specialist = case.specialist_id
    team = case.team_id
    if request.recipient is not None and case.state is CaseState.DRAFT:
        specialist, team = request.recipient.specialist_id, request.recipient.team_id
    out: list[dict[str, Any]] = []
    if specialist is not None:
        out.append(roles[specialist])
    if team is not None:
        out.append({"type": "Organization", "identifier": {"system": TEAM_SYSTEM, "value": team}})
    return out


def case_bundle(
    case: Case,
    request: CaseRequest,
    answer: CaseAnswer | None,
    photos: Sequence[CasePhoto],
    now: datetime,
    *,
    directory: Mapping[str, Professional] = MappingProxyType({}),
    base_url: str = DEFAULT_BASE_URL,
) -> dict[str, Any]:
    """The case as a FHIR R4 ``collection`` Bundle (a JSON-ready dict).

    ``directory`` gives names, RPPS and specialty of the professionals involved (the
    requester's role and RPPS come from the request when absent); ``base_url`` is the FHIR
    base of the relay (``fullUrl`` prefix); ``now`` stamps ``Bundle.timestamp``.
    """
    builder = _Builder(case, base_url)
    known = dict(directory)
    known.setdefault(
        request.requester.id,
        Professional(request.requester.id, request.requester.role, request.requester.rpps),
    )

    subject = _patient(builder, request)
    patient_ref = subject if "reference" in subject else None
    roles = {
        pro_id: _practitioner(builder, pro_id, known.get(pro_id))
        for pro_id in _professional_ids(case, request, answer, photos)
    }
    recipients = _recipients(case, request, roles)
    request_ref = builder.ref("ServiceRequest", "service-request")
    task_ref = builder.ref("Task", "task")
    urgency = request.urgency or (None if case.state is CaseState.DRAFT else case.urgency)

    # Media, one per photo.
    media_refs: list[dict[str, str]] = []
    for index, photo in enumerate(photos, start=1):
        media: dict[str, Any] = {
            "identifier": [{"system": PHOTO_SYSTEM, "value": photo.id}],
            "basedOn": [request_ref],
            "status": "completed",
            "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
            "createdDateTime": _instant(photo.created_at),
            "operator": roles[photo.uploaded_by],
            "height": photo.height,
            "width": photo.width,
            "content": {
                "contentType": photo.content_type,
                "url": photo.url,
                "size": photo.size_bytes,
                "title": f"Photo {index}",
                "creation": _instant(photo.created_at),
            },
        }
        if patient_ref is not None:
            media["subject"] = patient_ref
        if request.wound is not None:
            media["bodySite"] = _body_site(request.wound)
        media_refs.append(builder.add("Media", f"media/{photo.id}", media))

    # Consent, and who collected it.
    consent_ref: dict[str, str] | None = None
    if request.consent is not None:
        consent = request.consent
        consent_body: dict[str, Any] = {
            "status": "active",
            "scope": {
                "coding": [{"system": CONSENT_SCOPE, "code": "treatment", "display": "Treatment"}]
            },
            "category": [
                {
                    "coding": [{"system": LOINC, "code": "59284-0"}],
                    "text": "Consentement du patient à la télé-expertise",
                },
                {"text": f"Recueil {CONSENT_METHOD_LABELS_FR[consent.method]}"},
            ],
            "dateTime": _instant(consent.collected_at),
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
            "provision": {"type": "permit"},
        }
        if patient_ref is not None:
            consent_body["patient"] = patient_ref
            consent_body["performer"] = [patient_ref]
        consent_ref = builder.add("Consent", "consent", consent_body)
        builder.add(
            "Provenance",
            "consent-provenance",
            {
                "target": [consent_ref],
                "recorded": _instant(consent.collected_at),
                "agent": [
                    {
                        "type": {
                            "coding": [{"system": PROVENANCE_PARTICIPANT, "code": "author"}],
                            "text": "Recueil du consentement",
                        },
                        "who": roles[consent.collected_by],
                    }
                ],
            },
        )

    # ServiceRequest: the question.
    submitted_at = _submitted_at(case)
    service: dict[str, Any] = {
        "identifier": [{"system": CASE_SYSTEM, "value": case.id}],
        "status": service_request_status(case),
        "intent": "order",
        "code": {"text": "Télé-expertise"},
        "subject": subject,
        "authoredOn": _instant(submitted_at or case.created_at),
        "requester": roles[case.requester_id],
        "reasonCode": [{"text": "Avis spécialisé sur une plaie"}],
    }
    if urgency is not None:
        service["priority"] = _PRIORITY[urgency]
    if recipients:
        service["performer"] = recipients
    if request.wound is not None:
        service["bodySite"] = [_body_site(request.wound)]
    supporting = [*media_refs, *([consent_ref] if consent_ref is not None else [])]
    if supporting:
        service["supportingInfo"] = supporting
    notes = []
    if request.question is not None:
        notes.append({"text": request.question})
    if request.wound is not None:
        notes.append({"text": _wound_note(request.wound, urgency)})
    if notes:
        service["note"] = notes
    builder.add("ServiceRequest", "service-request", service)

    # Communications: the question as sent, then the answer in response to it.
    question_ref: dict[str, str] | None = None
    if request.question is not None and submitted_at is not None:
        question: dict[str, Any] = {
            "basedOn": [request_ref],
            "partOf": [task_ref],
            "status": "completed",
            "sent": _instant(submitted_at),
            "sender": roles[case.requester_id],
            "payload": [{"contentString": request.question}],
        }
        if recipients:
            question["recipient"] = recipients
        if patient_ref is not None:
            question["subject"] = patient_ref
        question_ref = builder.add("Communication", "question", question)
    answer_ref: dict[str, str] | None = None
    if answer is not None:
        reply: dict[str, Any] = {
            "basedOn": [request_ref],
            "partOf": [task_ref],
            "status": "completed",
            "sent": _instant(answer.sent_at),
            "sender": roles[answer.author_id],
            "recipient": [roles[case.requester_id]],
            "payload": [{"contentString": answer.text}],
        }
        if question_ref is not None:
            reply["inResponseTo"] = [question_ref]
        if patient_ref is not None:
            reply["subject"] = patient_ref
        answer_ref = builder.add("Communication", "answer", reply)

    # Task: the workflow.
    label = STATE_LABELS_FR[case.state]
    task: dict[str, Any] = {
        "identifier": [{"system": CASE_SYSTEM, "value": case.id}],
        "basedOn": [request_ref],
        "status": task_status(case),
        "businessStatus": {
            "coding": [{"system": CASE_STATE_SYSTEM, "code": case.state.value, "display": label}],
            "text": label,
        },
        "intent": "order",
        "focus": request_ref,
        "authoredOn": _instant(case.created_at),
        "lastModified": _instant(case.history[-1].at if case.history else case.created_at),
        "requester": roles[case.requester_id],
    }
    if urgency is not None:
        task["priority"] = _PRIORITY[urgency]
    if patient_ref is not None:
        task["for"] = patient_ref
    if case.rejection_reason is not None:
        task["statusReason"] = {"text": case.rejection_reason}
    if case.assignee_id is not None:
        task["owner"] = roles[case.assignee_id]
    restriction: dict[str, Any] = {}
    if case.window_start is not None and case.due_at is not None:
        restriction["period"] = {"start": _instant(case.window_start), "end": _instant(case.due_at)}
    if recipients:
        restriction["recipient"] = recipients
    if restriction:
        task["restriction"] = restriction
    if answer_ref is not None:
        task["output"] = [
            {"type": {"text": "Réponse du spécialiste"}, "valueReference": answer_ref}
        ]
    builder.add("Task", "task", task)

    return {
        "resourceType": "Bundle",
        "id": builder.rid("bundle"),
        "type": "collection",
        "timestamp": _instant(now),
        "entry": _ordered(builder.entries),
    }


_ORDER: Final = (
    "ServiceRequest",
    "Task",
    "Communication",
    "Media",
    "Consent",
    "Provenance",
    "Patient",
    "PractitionerRole",
    "Practitioner",
)


def _ordered(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries in reading order: the request first, the people last (stable otherwise)."""
    return sorted(entries, key=lambda entry: _ORDER.index(entry["resource"]["resourceType"]))
