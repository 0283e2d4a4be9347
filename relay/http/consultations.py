"""Teleconsultation REST API: schedule, participants, join links, the patient's join.

Every read and change is traced in the audit log before its result is released (issue 6).
Until the audit vocabulary has consultation-specific actions, the mapping is: scheduling and
participant changes → ``case_transition``; reads → ``case_read``; link issue/revocation →
``credentials_changed`` (a join link is a credential); a patient exchanging a link for a
guest pass → ``login_succeeded``/``login_failed`` with method ``join_link``.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from relay.audit.events import Actor, ActorKind, AuditAction, EntityRef, Outcome, ResourceKind
from relay.consultations import (
    Consultation,
    ConsultationSecrets,
    ConsultationStore,
    Participant,
    TeleconsultationSettings,
    birth_date_hash,
    issue_guest_pass,
    join_token,
    join_url,
    link_expires_at,
    load_secrets,
    validate_birth_date,
    validate_new_consultation,
    validate_new_participant,
    verify_join_link,
)
from relay.errors import BadRequest, NotFound, RelayError, TooManyRequests, Unauthenticated
from relay.http import trail
from relay.http.context import caller, runtime
from relay.http.jsonio import field_str, json_response, read_json_object
from relay.http.route import Route
from relay.policy import Action, Relation, authorize
from relay.ratelimit import FailureLimiter
from signaling import messages
from signaling.errors import CloseCode
from signaling.room import RECORDER_ID

GUEST_COOKIE: Final = "relais_consultation_guest"


@dataclass
class Teleconsultation:
    """What the consultation handlers of one application share (built at first use)."""

    settings: TeleconsultationSettings
    secrets: ConsultationSecrets
    store: ConsultationStore
    birth_date_failures: FailureLimiter


_SERVICES: weakref.WeakKeyDictionary[web.Application, Teleconsultation] = (
    weakref.WeakKeyDictionary()
)


async def teleconsultation(request: web.Request) -> Teleconsultation:
    """The application's consultation service; secrets are read (or created) at first use."""
    found = _SERVICES.get(request.app)
    if found is None:
        rt = runtime(request)
        settings = TeleconsultationSettings.from_config(rt.config.teleconsultation)
        loaded = await asyncio.to_thread(load_secrets, rt.data.keys, settings)
        found = _SERVICES.setdefault(
            request.app,
            Teleconsultation(
                settings=settings,
                secrets=loaded,
                store=ConsultationStore(rt.db),
                birth_date_failures=FailureLimiter(
                    settings.birth_date_window_minutes * 60, settings.birth_date_max_failures
                ),
            ),
        )
    return found


# --- JSON views ----------------------------------------------------------------------------


def participant_json(
    service: Teleconsultation, public_url: str, consultation: Consultation, p: Participant
) -> dict[str, Any]:
    """A participant; link participants carry their current link when it is active."""
    out: dict[str, Any] = {
        "id": p.id,
        "role": p.role.value,
        "display_name": p.display_name,
        "professional_id": p.professional_id,
    }
    if not p.is_professional:
        link: dict[str, Any] = {
            "active": p.link_active,
            "version": p.link_version,
            "birth_date_check": p.birth_date_check,
            "expires_at": link_expires_at(consultation, service.settings),
        }
        if p.link_active:
            token = join_token(service.secrets, consultation, p, service.settings)
            link["url"] = join_url(public_url, consultation.id, token)
        out["link"] = link
    return out


def consultation_json(
    service: Teleconsultation, public_url: str, c: Consultation
) -> dict[str, Any]:
    """A consultation as the API shows it to its organizer and professional participants."""
    return {
        "id": c.id,
        "organizer_id": c.organizer_id,
        "scheduled_at": c.scheduled_at.isoformat(),
        "duration_minutes": c.duration_minutes,
        "status": c.status.value,
        "patient_linked": c.patient_ref is not None,
        "case_id": c.case_id,
        "ended_at": None if c.ended_at is None else c.ended_at.isoformat(),
        "page_url": f"{public_url}/consultation/{c.id}",
        "participants": [participant_json(service, public_url, c, p) for p in c.participants],
    }


def _consultation_ref(c: Consultation) -> EntityRef:
    return EntityRef(ResourceKind.CONSULTATION, c.id)


def _participant_ref(c: Consultation, p: Participant) -> EntityRef:
    # No participant resource kind yet: "<consultation>:<participant>" names one.
    return EntityRef(ResourceKind.PARTICIPANT, f"{c.id}:{p.id}")


# --- Handlers ------------------------------------------------------------------------------


async def _load_for(request: web.Request, action: Action) -> tuple[Teleconsultation, Consultation]:
    service = await teleconsultation(request)
    who = caller(request).professional
    consultation = await service.store.get(request.match_info["id"])
    if consultation is None:
        raise NotFound("Consultation introuvable.")
    authorize(who.role, action, consultation.relation(who.id))
    return service, consultation


async def schedule(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    service = await teleconsultation(request)
    who = caller(request).professional
    authorize(who.role, Action.SCHEDULE_CONSULTATION)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    now = rt.clock()
    new = validate_new_consultation(body, now, service.settings)
    patient_ref = None if new.patient_ins is None else rt.audit.patient_reference(new.patient_ins)
    created = await service.store.create(new, who.id, patient_ref, service.secrets.links, now)
    await trail.record(
        request,
        AuditAction.CONSULTATION_SCHEDULED,
        entities=(_consultation_ref(created),),
        patient=patient_ref,
        detail=(("to_state", "scheduled"), ("count", str(len(created.participants)))),
    )
    return json_response(
        consultation_json(service, rt.public_url, created),
        status=201,
        headers={"Location": f"/api/consultations/{created.id}"},
    )


async def list_mine(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    service = await teleconsultation(request)
    who = caller(request).professional
    authorize(who.role, Action.VIEW_CONSULTATION, Relation.OWNER)
    # One audit event names every consultation shown, hence the entity cap as page size.
    found = await service.store.list_for(who.id, limit=LIST_LIMIT)
    await trail.record(
        request,
        AuditAction.CONSULTATION_READ,
        entities=tuple(_consultation_ref(c) for c in found),
        detail=(("count", str(len(found))),),
    )
    return json_response(
        {"consultations": [consultation_json(service, rt.public_url, c) for c in found]}
    )


LIST_LIMIT: Final = 16


async def show(request: web.Request) -> web.StreamResponse:
    service, consultation = await _load_for(request, Action.VIEW_CONSULTATION)
    await trail.record(
        request,
        AuditAction.CONSULTATION_READ,
        entities=(_consultation_ref(consultation),),
        patient=consultation.patient_ref,
    )
    return json_response(consultation_json(service, runtime(request).public_url, consultation))


async def add_participant(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    service, consultation = await _load_for(request, Action.MANAGE_CONSULTATION)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    now = rt.clock()
    new = validate_new_participant(body, now.date())
    updated, participant = await service.store.add_participant(
        consultation.id, new, service.secrets.links, now, service.settings.max_records
    )
    await trail.record(
        request,
        AuditAction.CONSULTATION_UPDATED,
        entities=(_consultation_ref(updated), _participant_ref(updated, participant)),
        patient=updated.patient_ref,
        detail=(("reason", "participant_added"),),
    )
    return json_response(participant_json(service, rt.public_url, updated, participant), status=201)


async def _set_link(request: web.Request, *, active: bool) -> tuple[Teleconsultation, Any, Any]:
    service, consultation = await _load_for(request, Action.MANAGE_CONSULTATION)
    updated, participant = await service.store.set_link(
        consultation.id, request.match_info["participant"], active=active
    )
    await trail.record(
        request,
        AuditAction.CONSULTATION_LINK_CHANGED,
        entities=(_consultation_ref(updated), _participant_ref(updated, participant)),
        patient=updated.patient_ref,
        detail=(("reason", "join_link_issued" if active else "join_link_revoked"),),
    )
    return service, updated, participant


async def reissue_link(request: web.Request) -> web.StreamResponse:
    service, consultation, participant = await _set_link(request, active=True)
    body = participant_json(service, runtime(request).public_url, consultation, participant)
    return json_response(body, status=201)


async def revoke_link(request: web.Request) -> web.StreamResponse:
    await _set_link(request, active=False)
    return web.Response(status=204)


async def _join_failed(request: web.Request, consultation: Consultation, reason: str) -> None:
    await trail.record(
        request,
        AuditAction.LOGIN_FAILED,
        Outcome.MINOR_FAILURE,
        actor=Actor(ActorKind.PATIENT, "unknown-guest", "guest"),
        entities=(_consultation_ref(consultation),),
        patient=consultation.patient_ref,
        detail=(("method", "join_link"), ("reason", reason)),
    )


async def join(request: web.Request) -> web.StreamResponse:
    """A patient or guest exchanges their join link (and birth date) for a guest pass."""
    rt = runtime(request)
    service = await teleconsultation(request)
    consultation = await service.store.get(request.match_info["id"])
    if consultation is None:
        raise NotFound("Consultation introuvable.")
    body = await read_json_object(request, 4096)
    token = field_str(body, "token", max_length=400) or ""
    birth_text = field_str(body, "birth_date", required=False, max_length=10)
    now = rt.clock()
    try:
        participant = verify_join_link(service.secrets, token, consultation, now.timestamp())
    except RelayError as refusal:
        await _join_failed(request, consultation, refusal.code)
        raise
    actor = Actor(ActorKind.PATIENT, participant.id, participant.role.value)
    if participant.birth_date_check:
        await _check_birth_date(request, service, consultation, participant, birth_text, now)
    value, expires_at = issue_guest_pass(
        service.secrets, consultation, participant, now.timestamp(), service.settings
    )
    await trail.record(
        request,
        AuditAction.LOGIN_SUCCEEDED,
        actor=actor,
        entities=(_consultation_ref(consultation),),
        patient=consultation.patient_ref,
        detail=(("method", "join_link"),),
    )
    response = json_response(
        {
            "consultation": {
                "id": consultation.id,
                "scheduled_at": consultation.scheduled_at.isoformat(),
                "duration_minutes": consultation.duration_minutes,
            },
            "participant": {
                "id": participant.id,
                "role": participant.role.value,
                "display_name": participant.display_name,
            },
            "pass_expires_at": expires_at,
            "websocket": f"/ws/consultations/{consultation.id}?as=guest",
        }
    )
    # HttpOnly: page scripts never see the pass; scoped to this consultation's socket.
    response.set_cookie(
        GUEST_COOKIE,
        value,
        max_age=int(service.settings.guest_pass_minutes * 60),
        secure=True,
        httponly=True,
        samesite="Strict",
        path=f"/ws/consultations/{consultation.id}",
    )
    return response


async def _check_birth_date(
    request: web.Request,
    service: Teleconsultation,
    consultation: Consultation,
    participant: Participant,
    birth_text: str | None,
    now: datetime,
) -> None:
    key = f"birth:{participant.id}"
    limiter = service.birth_date_failures
    wait = limiter.retry_after(key, now.timestamp())
    if wait:
        await _join_failed(request, consultation, "rate_limited")
        raise TooManyRequests(f"Trop d'essais. Réessayez dans {wait} secondes.", retry_after=wait)
    if birth_text is None:
        raise BadRequest(
            "Indiquez votre date de naissance pour rejoindre la consultation.",
            code="birth_date_required",
        )
    birth = validate_birth_date(birth_text, now.astimezone(UTC).date())
    expected = birth_date_hash(service.secrets.links, participant.id, birth)
    if not await service.store.birth_date_matches(participant.id, expected):
        limiter.record_failure(key, now.timestamp())
        await _join_failed(request, consultation, "birth_date_mismatch")
        raise Unauthenticated("La date de naissance ne correspond pas.", code="birth_date_mismatch")
    limiter.reset(key)


CLOSE_CODES: Final = {
    str(CloseCode.NORMAL.value): "left, or the consultation ended",
    str(CloseCode.PROTOCOL_ERROR.value): "the first message was not hello",
    "1003": "binary frame (only JSON text frames are accepted)",
    str(CloseCode.INVALID_DATA.value): "not UTF-8, not JSON, or not a JSON object",
    str(CloseCode.POLICY_VIOLATION.value): (
        "refused credentials (guest pass or session) or rate limit exceeded"
    ),
    str(CloseCode.MESSAGE_TOO_BIG.value): "frame larger than max_message_bytes",
    "1011": "the audit log could not record an event: nothing is released untraced",
    str(CloseCode.TRY_AGAIN_LATER.value): "too many sockets on the consultation, or too slow",
    str(CloseCode.UNSUPPORTED_PROTOCOL.value): "protocol version not supported",
    str(CloseCode.SESSION_REPLACED.value): "the same participant resumed on another socket",
    str(CloseCode.REMOVED.value): "removed by a professional",
    str(CloseCode.CONSULTATION_ENDED.value): "the consultation has ended",
}


async def protocol(request: web.Request) -> web.StreamResponse:
    """The signaling protocol: transport, authentication, close codes, message schemas."""
    return json_response(
        {
            "protocol": messages.PROTOCOL_VERSION,
            "websocket": "/ws/consultations/{id}",
            "authentication": (
                "Professionals: their session (cookie or Authorization: Bearer) at the "
                "upgrade. Patients and guests: POST /api/consultations/{id}/join with the "
                f"join token (from the link's #t= fragment) sets the {GUEST_COOKIE} cookie; "
                "then open the socket with ?as=guest. Tokens never appear in URLs."
            ),
            "close_codes": CLOSE_CODES,
            "recording": (
                f"Server-side recording, when a participant's permissions include 'record': "
                "it runs while a professional asked for it ('record') and every admitted "
                "participant consented ('consent', kind 'recording'); 'recording_state' says "
                f"when. While it runs, each participant sends its media to the peer "
                f"'{RECORDER_ID}': an 'offer' (send-only) and 'candidate' messages with "
                f"to='{RECORDER_ID}'; the relay answers with an 'answer' from "
                f"'{RECORDER_ID}' (its candidates are in the SDP), or an 'error' with code "
                "'invalid_sdp'. Close that connection when 'recording_state' turns inactive. "
                f"Outside a recording, '{RECORDER_ID}' is 'unknown_peer'. Stored recordings: "
                "GET /api/consultations/{id}/recordings."
            ),
            "messages": messages.json_schema(),
        }
    )


# --- Routes --------------------------------------------------------------------------------

_NEW_PARTICIPANT = {
    "type": "object",
    "description": (
        "A professional by professional_id or email (role optional, must match the "
        "account), or a link participant: role patient|guest|interpreter, display_name, "
        "optional birth_date (YYYY-MM-DD, asked when opening the link)."
    ),
    "properties": {
        "role": {"type": "string", "enum": [r.value for r in messages.Role]},
        "display_name": {"type": "string", "maxLength": messages.MAX_NAME_CHARS},
        "professional_id": {"type": "string"},
        "email": {"type": "string"},
        "birth_date": {"type": "string", "format": "date"},
    },
}
_PARTICIPANT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "role": {"type": "string"},
        "display_name": {"type": "string"},
        "professional_id": {"type": ["string", "null"]},
        "link": {
            "type": "object",
            "properties": {
                "active": {"type": "boolean"},
                "version": {"type": "integer"},
                "birth_date_check": {"type": "boolean"},
                "expires_at": {"type": "integer"},
                "url": {"type": "string"},
            },
        },
    },
}
_CONSULTATION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "organizer_id": {"type": "string"},
        "scheduled_at": {"type": "string", "format": "date-time"},
        "duration_minutes": {"type": "integer"},
        "status": {"type": "string", "enum": ["scheduled", "ended"]},
        "patient_linked": {"type": "boolean"},
        "case_id": {"type": ["string", "null"]},
        "ended_at": {"type": ["string", "null"]},
        "page_url": {"type": "string"},
        "participants": {"type": "array", "items": _PARTICIPANT},
    },
}
_SCHEDULE = {
    "type": "object",
    "required": ["scheduled_at"],
    "properties": {
        "scheduled_at": {"type": "string", "format": "date-time"},
        "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 240, "default": 20},
        "participants": {"type": "array", "items": _NEW_PARTICIPANT},
        "patient_ins": {"type": "string", "description": "INS/NIR; kept as a keyed hash"},
        "case_id": {"type": "string"},
    },
}
_JOIN = {
    "type": "object",
    "required": ["token"],
    "properties": {
        "token": {"type": "string", "maxLength": 400},
        "birth_date": {"type": "string", "format": "date"},
    },
}
_R = ResourceKind.CONSULTATION

ROUTES = [
    Route(
        "POST",
        "/api/consultations",
        schedule,
        Action.SCHEDULE_CONSULTATION,
        "Schedule a teleconsultation; link participants get their join links",
        "consultations",
        _SCHEDULE,
        response_schema=_CONSULTATION,
        success_status=201,
        errors=(400, 401, 403, 503),
    ),
    Route(
        "GET",
        "/api/consultations",
        list_mine,
        Action.VIEW_CONSULTATION,
        f"The {LIST_LIMIT} latest consultations you organise or take part in",
        "consultations",
        response_schema={
            "type": "object",
            "properties": {"consultations": {"type": "array", "items": _CONSULTATION}},
        },
        errors=(401, 403, 503),
    ),
    Route(
        "GET",
        "/api/consultations/protocol.json",
        protocol,
        Action.PUBLIC,
        "The signaling WebSocket protocol: authentication, close codes, JSON schemas",
        "consultations",
        response_schema={"type": "object"},
    ),
    Route(
        "GET",
        "/api/consultations/{id}",
        show,
        Action.VIEW_CONSULTATION,
        "A consultation with its participants and current join links",
        "consultations",
        response_schema=_CONSULTATION,
        errors=(401, 403, 404, 503),
        resource=_R,
    ),
    Route(
        "POST",
        "/api/consultations/{id}/participants",
        add_participant,
        Action.MANAGE_CONSULTATION,
        "Add a participant (with a join link if without account)",
        "consultations",
        _NEW_PARTICIPANT,
        response_schema=_PARTICIPANT,
        success_status=201,
        errors=(400, 401, 403, 404, 409, 503),
        resource=_R,
    ),
    Route(
        "POST",
        "/api/consultations/{id}/participants/{participant}/link",
        reissue_link,
        Action.MANAGE_CONSULTATION,
        "Re-issue a participant's join link (the previous one stops working)",
        "consultations",
        response_schema=_PARTICIPANT,
        success_status=201,
        errors=(401, 403, 404, 409, 503),
        resource=_R,
    ),
    Route(
        "DELETE",
        "/api/consultations/{id}/participants/{participant}/link",
        revoke_link,
        Action.MANAGE_CONSULTATION,
        "Revoke a participant's join link",
        "consultations",
        success_status=204,
        errors=(401, 403, 404, 409, 503),
        resource=_R,
    ),
    Route(
        "POST",
        "/api/consultations/{id}/join",
        join,
        Action.PUBLIC,
        "Exchange a join token (and birth date if asked) for a guest pass cookie",
        "consultations",
        _JOIN,
        response_schema={"type": "object"},
        errors=(400, 401, 403, 404, 410, 429, 503),
    ),
]
