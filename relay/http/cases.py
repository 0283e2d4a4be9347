"""Tele-expertise cases over HTTP (issue 5): a thin adapter around :mod:`relay.cases`.

Each handler: resolve the caller's relation to the case (policy table), call the core,
record the audit event, commit, answer. Clinical content is read from and written to the
encrypted blob store through :class:`~relay.case_store.CaseStore`.

Notifications (the core's ``NotifyRecipient``/``NotifyRequester``/``Escalate`` effects) are
handed to :data:`NOTIFICATION_HOOKS`, empty for now: the e-mail path of the messaging issue
registers itself there later (see :func:`deliver_notifications`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from relay import case_mail, dicom_export
from relay import cases as core
from relay.accounts import new_id
from relay.audit.events import Actor as AuditActor
from relay.audit.events import AuditAction, AuditRecord, EntityRef, Outcome, ResourceKind
from relay.billing import BillingAct, BillingWarning, check_rqd_limit
from relay.case_fhir import CaseAnswer, CasePhoto, case_bundle
from relay.case_request import (
    CaseRequest,
    InsPatient,
    parse_case_request,
    patient_key,
    submit_event,
)
from relay.case_store import CaseStore, StoredCase
from relay.errors import BadRequest, NotFound
from relay.http import trail
from relay.http.context import caller, runtime
from relay.http.jsonio import field_str, json_response, read_json_object
from relay.http.pages import signed_in_page
from relay.http.route import Route
from relay.http.uploads import expire_uploads
from relay.policy import Action, Relation, authorize
from relay.runtime import Runtime

log = logging.getLogger("relais.cases")

MAX_BODY: Final = 64 * 1024
MAX_TEXT_CHARS: Final = 8000
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"

NotificationHook = Callable[[Runtime, Sequence[core.Effect]], Awaitable[None]]
NOTIFICATION_HOOKS: list[NotificationHook] = [case_mail.notify]
"""Called with the notification effects of every transition (e-mails: relay.case_mail)."""

_NOTICES = (core.NotifyRecipient, core.NotifyRequester, core.Escalate)

# Texts carried by an event, and their kind in the case's messages.
_EVENTS: Final[dict[str, tuple[Callable[[str], core.CaseEvent], str | None]]] = {
    "accept": (lambda _t: core.Accept(), None),
    "release": (lambda _t: core.Release(), None),
    "reject": (lambda t: core.Reject(t), "rejection"),
    "cancel": (lambda _t: core.Cancel(), None),
    "answer": (lambda _t: core.Answer(), "answer"),
    "ask_requester": (lambda _t: core.AskRequester(), "question"),
    "reply": (lambda _t: core.ReplyToSpecialist(), "reply"),
    "follow_up": (lambda _t: core.FollowUp(), "follow_up"),
    "close": (lambda _t: core.Close(), None),
}


async def deliver_notifications(rt: Runtime, effects: Sequence[core.Effect]) -> None:
    """Hand notification effects to the registered hooks; a failing hook never undoes the
    transition (it is committed and audited); it is logged without content."""
    notices = [e for e in effects if isinstance(e, _NOTICES)]
    for hook in NOTIFICATION_HOOKS:
        try:
            await hook(rt, notices)
        except Exception as exc:
            log.error("case notification hook failed: %s", type(exc).__name__)


def store_of(rt: Runtime) -> CaseStore:
    return CaseStore(rt.db, rt.blobs)


async def _actor(request: web.Request) -> core.Actor:
    rt, who = runtime(request), caller(request).professional
    teams = frozenset(t.id for t in await rt.accounts.teams_of(who.id))
    return core.Actor.professional(who.id, who.role, teams)


def relation_to(stored: StoredCase, actor: core.Actor) -> Relation:
    """OWNER: requester, named specialist, assignee; TEAM: the requester's shared team, or
    the recipient team while the case is open to it. Drafts are the requester's alone."""
    case = stored.case
    if actor.id == case.requester_id:
        return Relation.OWNER
    if stored.shared_team_id is not None and stored.shared_team_id in actor.team_ids:
        return Relation.TEAM
    if case.state is core.CaseState.DRAFT:
        return Relation.NONE
    if actor.id in (case.specialist_id, case.assignee_id):
        return Relation.OWNER
    if case.team_open and case.team_id in actor.team_ids:
        return Relation.TEAM
    return Relation.NONE


async def _load(request: web.Request, action: Action) -> tuple[StoredCase, core.Actor]:
    rt = runtime(request)
    stored = await store_of(rt).get(request.match_info["id"])
    if stored is None:
        raise NotFound("Demande de télé-expertise introuvable.")
    actor = await _actor(request)
    assert actor.role is not None
    authorize(actor.role, action, relation_to(stored, actor))
    return stored, actor


async def _team_id(rt: Runtime, value: str) -> str:
    team = await rt.accounts.team_by_id(value)
    if team is None:
        team = await rt.accounts.team_by_address(value.split("@", 1)[0])
    if team is None:
        raise BadRequest("Équipe inconnue.", code="unknown_team")
    return team.id


async def _validated(
    request: web.Request, body: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], CaseRequest]:
    """The request body with the requester from the session and the team resolved."""
    rt, who = runtime(request), caller(request).professional
    fields = {k: v for k, v in body.items() if k not in ("share_with_team", "photo_ids", "submit")}
    fields["requester"] = {"id": who.id, "role": who.role.value, "rpps": who.rpps or ""}
    recipient = fields.get("recipient")
    if isinstance(recipient, dict) and isinstance(recipient.get("team_id"), str):
        fields["recipient"] = {**recipient, "team_id": await _team_id(rt, recipient["team_id"])}
    return fields, parse_case_request(fields, now)


def _patient_ref(rt: Runtime, req: CaseRequest) -> str | None:
    """Keyed hash of the patient identifier (never the NIR itself in SQL or the log)."""
    return None if req.patient is None else rt.audit.patient_reference(patient_key(req.patient))


async def _audit_transitions(
    request: web.Request, case: core.Case, effects: Sequence[core.Effect]
) -> None:
    """Write the core's AuditTransition effects (before anything is committed or released)."""
    for effect in effects:
        if isinstance(effect, core.AuditTransition):
            await trail.record(
                request,
                AuditAction.CASE_TRANSITION,
                entities=(EntityRef(ResourceKind.CASE, case.id),),
                patient=case.patient_key,
                detail=(
                    ("reason", effect.event.value),
                    ("from_state", effect.from_state.value),
                    ("to_state", effect.to_state.value),
                ),
            )


async def _fire(
    request: web.Request,
    stored: StoredCase,
    event: core.CaseEvent,
    actor: core.Actor,
    *,
    text: tuple[str, str] | None = None,
    request_blob_id: str | None = None,
) -> tuple[core.Case, list[BillingWarning]]:
    """Apply ``event``, audit the transition, commit, then hand notifications out."""
    rt = runtime(request)
    store = store_of(rt)
    now = rt.clock()
    case, effects = core.apply(stored.case, event, actor, now)
    await _audit_transitions(request, case, effects)
    acts = [e for e in effects if isinstance(e, core.RecordBillingAct)]
    message = None
    if text is not None:
        message = (text[0], actor.id, await store.put_text(text[1]), now)
    await store.update(stored, case, request_blob_id=request_blob_id, acts=acts, message=message)
    await deliver_notifications(rt, effects)
    warnings: list[BillingWarning] = []
    for act in acts:
        history = await store.billing_acts(act.professional_id, act.patient_key)
        new = BillingAct(act.code, act.professional_id, act.patient_key, act.case_id, act.at)
        warning = check_rqd_limit([h for h in history if h.case_id != act.case_id], new)
        if warning is not None:
            warnings.append(warning)
    return case, warnings


SCHEDULER_PERIOD_SECONDS: Final = 60.0


async def scheduler_tick(rt: Runtime) -> int:
    """Fire the system events that are due (reminders, escalations, expiries, auto-closes)
    on every case whose next instant has come; returns how many events were applied.

    Each event goes through :func:`relay.cases.apply` with the system actor, is audited
    before it is committed, and its notifications go to :data:`NOTIFICATION_HOOKS`.
    """
    store = store_of(rt)
    now = rt.clock()
    applied = 0
    for stored in await store.due(now):
        case = stored.case
        for due_event in core.due_actions(case, now):
            case, effects = core.apply(case, due_event, core.Actor.system(), now)
            await rt.audit.record(
                AuditRecord(
                    action=AuditAction.CASE_TRANSITION,
                    outcome=Outcome.SUCCESS,
                    now=now,
                    actor=AuditActor.system(rt.config.server.node_name),
                    observer=rt.config.server.node_name,
                    entities=(EntityRef(ResourceKind.CASE, case.id),),
                    patient=case.patient_key,
                    detail=(("reason", due_event.kind.value), ("to_state", case.state.value)),
                )
            )
            await deliver_notifications(rt, effects)
            applied += 1
        # Even with nothing due (a stale wake-up), writing refreshes next_wakeup.
        await store.update(stored, case)
    return applied


async def run_scheduler(rt: Runtime, period: float = SCHEDULER_PERIOD_SECONDS) -> None:
    """The background task of a running relay: :func:`scheduler_tick` every ``period``."""
    while True:
        try:
            count = await scheduler_tick(rt)
            if count:
                log.info("case scheduler: %d event(s) applied", count)
            expired = await expire_uploads(rt, rt.clock())
            if expired:
                log.info("uploads: %d abandoned or finished upload(s) forgotten", expired)
        except Exception as exc:  # retried at the next tick; a Conflict means a race lost
            log.error("case scheduler tick failed: %s", type(exc).__name__)
        await asyncio.sleep(period)


async def _earlier_photos(
    rt: Runtime, stored: StoredCase, body: dict[str, Any], actor: core.Actor | None
) -> list[dict[str, Any]]:
    """Photos of the same wound (same patient, site and side) in the other cases the
    viewer may open, oldest first: shown side by side to follow the healing."""
    wound = body.get("wound")
    if actor is None or stored.case.patient_key is None or not isinstance(wound, dict):
        return []
    store = store_of(rt)
    found: list[dict[str, Any]] = []
    for other in await store.same_patient(stored.case.patient_key, exclude=stored.case.id):
        if relation_to(other, actor) is Relation.NONE:
            continue
        other_wound = (await store.request_body(other.request_blob_id))[0].get("wound")
        if not isinstance(other_wound, dict) or (
            other_wound.get("site"),
            other_wound.get("laterality"),
        ) != (wound.get("site"), wound.get("laterality")):
            continue
        found += [
            {"case_id": other.case.id, "id": p.id, "at": p.created_at.isoformat()}
            for p in await store.photos_of(other.case.id)
        ]
    return sorted(found, key=lambda p: str(p["at"]))


async def _dicom_summary(rt: Runtime, blob_id: str | None) -> dict[str, Any] | None:
    if blob_id is None:
        return None
    summary: dict[str, Any] = json.loads(await rt.blobs.read_all_verified(blob_id, max_bytes=65536))
    return summary


async def _view(rt: Runtime, stored: StoredCase, actor: core.Actor | None = None) -> dict[str, Any]:
    store = store_of(rt)
    case = stored.case
    body, _ = await store.request_body(stored.request_blob_id)
    body.pop("requester", None)
    messages = [
        {
            "kind": m.kind,
            "author_id": m.author_id,
            "at": m.created_at.isoformat(),
            "text": await store.read_text(m.blob_id),
        }
        for m in await store.messages_of(case.id)
    ]
    return {
        **_summary(stored),
        "request": body,
        "history": [
            {
                "at": h.at.isoformat(),
                "event": h.event.value,
                "actor_id": h.actor_id,
                "from": h.from_state.value,
                "to": h.to_state.value,
            }
            for h in case.history
        ],
        "messages": messages,
        "photos": [
            {
                "id": p.id,
                "width": p.width,
                "height": p.height,
                "at": p.created_at.isoformat(),
                "dicom": await _dicom_summary(rt, p.summary_blob_id),
            }
            for p in await store.photos_of(case.id)
        ],
        "earlier_photos": await _earlier_photos(rt, stored, body, actor),
        "billing_acts": [
            {"code": a.code.value, "professional_id": a.professional_id}
            for a in await store.acts_of_case(case.id)
        ],
    }


def _summary(stored: StoredCase) -> dict[str, Any]:
    case = stored.case
    return {
        "id": case.id,
        "state": case.state.value,
        "state_label": core.STATE_LABELS_FR[case.state],
        "urgency": case.urgency.value,
        "created_at": case.created_at.isoformat(),
        "due_at": None if case.due_at is None else case.due_at.isoformat(),
        "requester_id": case.requester_id,
        "specialist_id": case.specialist_id,
        "team_id": case.team_id,
        "assignee_id": case.assignee_id,
        "escalated": case.escalated,
        "shared_team_id": stored.shared_team_id,
    }


async def create(request: web.Request) -> web.StreamResponse:
    rt, who = runtime(request), caller(request).professional
    store = store_of(rt)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 8 <= len(key) <= 128:
        raise BadRequest("En-tête Idempotency-Key invalide (8 à 128 caractères).")
    body = await read_json_object(request, MAX_BODY)
    actor = await _actor(request)
    now = rt.clock()
    fields, req = await _validated(request, body, now)
    shared = field_str(body, "share_with_team", required=False, max_length=200)
    shared_id = None
    if shared:
        shared_id = await _team_id(rt, shared)
        if shared_id not in actor.team_ids:
            raise BadRequest("Vous ne pouvez partager qu'avec une de vos équipes.")
    photo_ids = body.get("photo_ids") or []
    if not isinstance(photo_ids, list) or len(photo_ids) > 50:
        raise BadRequest("« photo_ids » : une liste d'identifiants est attendue.")
    if key is not None:
        replayed = await store.by_idempotency_key(who.id, key)
        if replayed is not None:
            return await _replay(rt, replayed)
    # Created and submitted in one transaction, photos attached in it too: a retry after
    # a lost answer or a crash finds the whole case or nothing (then creates it whole).
    case = core.new_draft(new_id(), actor, now)
    effects: list[core.Effect] = []
    if body.get("submit") is True:
        case, effects = core.apply(case, submit_event(req, key=_patient_ref(rt, req)), actor, now)
        await _audit_transitions(request, case, effects)
    blob_id = await store.put_request(fields, now)
    case_id, created = await store.create(
        case,
        request_blob_id=blob_id,
        shared_team_id=shared_id,
        idempotency_key=key,
        photo_ids=[str(p) for p in photo_ids],
    )
    if not created:  # a concurrent retry won the race: its case, nothing new
        await rt.blobs.delete(blob_id)
        return await _replay(rt, case_id)
    await deliver_notifications(rt, effects)
    stored = await store.get(case_id)
    assert stored is not None
    return json_response(
        await _view(rt, stored, actor), status=201, headers={"Location": f"/api/cases/{case_id}"}
    )


async def _replay(rt: Runtime, case_id: str) -> web.StreamResponse:
    stored = await store_of(rt).get(case_id)
    assert stored is not None  # keys are deleted with their case
    return json_response(await _view(rt, stored), headers={"Idempotent-Replayed": "true"})


async def update_draft(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, actor = await _load(request, Action.ACT_ON_CASE)
    if stored.case.state is not core.CaseState.DRAFT or actor.id != stored.case.requester_id:
        raise BadRequest("Seul un brouillon peut être modifié, par son auteur·rice.")
    body = await read_json_object(request, MAX_BODY)
    now = rt.clock()
    fields, req = await _validated(request, body, now)
    store = store_of(rt)
    blob_id = await store.put_request(fields, now)
    if body.get("submit") is True:
        await _fire(
            request,
            stored,
            submit_event(req, key=_patient_ref(rt, req)),
            actor,
            request_blob_id=blob_id,
        )
    else:
        await store.update(stored, stored.case, request_blob_id=blob_id)
    await rt.blobs.delete(stored.request_blob_id)
    fresh = await store.get(stored.case.id)
    assert fresh is not None
    return json_response(await _view(rt, fresh))


async def attach(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, actor = await _load(request, Action.ACT_ON_CASE)
    if actor.id != stored.case.requester_id or stored.case.state in core.TERMINAL_STATES:
        raise BadRequest("Seul·e l'auteur·rice d'une demande ouverte peut y joindre des photos.")
    body = await read_json_object(request, MAX_BODY)
    ids = body.get("photo_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > 50:
        raise BadRequest("« photo_ids » : une liste d'identifiants est attendue.")
    count = await store_of(rt).attach_photos(stored.case.id, actor.id, ids)
    if count != len(ids):
        raise NotFound("Photo introuvable ou déjà jointe à une autre demande.")
    return json_response({"attached": count})


async def event(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, actor = await _load(request, Action.ACT_ON_CASE)
    body = await read_json_object(request, MAX_BODY)
    name = field_str(body, "event", max_length=32)
    if name not in _EVENTS:
        raise BadRequest(f"Événement inconnu : {', '.join(_EVENTS)}.", code="invalid_field")
    make, kind = _EVENTS[name]
    text = field_str(body, "text", required=kind is not None, max_length=MAX_TEXT_CHARS) or ""
    if kind is not None and not text.strip():
        raise BadRequest("Le texte est obligatoire.", code="missing_field")
    _, warnings = await _fire(
        request,
        stored,
        make(text),
        actor,
        text=(kind, text.strip()) if kind is not None else None,
    )
    fresh = await store_of(rt).get(stored.case.id)
    assert fresh is not None
    view = await _view(rt, fresh)
    view["billing_warnings"] = [w.message for w in warnings]
    return json_response(view)


async def read(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, actor = await _load(request, Action.VIEW_CASE)
    view = await _view(rt, stored, actor)
    patient = stored.case.patient_key
    if patient is None:
        patient = _patient_ref(rt, await store_of(rt).load_request(stored.request_blob_id))
    await trail.record(
        request,
        AuditAction.CASE_READ,
        entities=(EntityRef(ResourceKind.CASE, stored.case.id),),
        patient=patient,
    )
    return json_response(view)


async def mine(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    actor = await _actor(request)
    found = await store_of(rt).for_requester(actor.id, actor.team_ids)
    return json_response({"cases": [_summary(s) for s in found]})


async def queue(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    actor = await _actor(request)
    urgency = None
    if "urgency" in request.query:
        try:
            urgency = core.Urgency(request.query["urgency"])
        except ValueError:
            raise BadRequest("Urgence inconnue (urgent, 72h, routine).") from None
    due_before = None
    if "due_before" in request.query:
        try:
            due_before = datetime.fromisoformat(request.query["due_before"])
        except ValueError:
            raise BadRequest("« due_before » : date ISO 8601 attendue.") from None
        if due_before.tzinfo is None:
            raise BadRequest("« due_before » : précisez le fuseau horaire.")
    found = await store_of(rt).queue(
        actor.id, actor.team_ids, urgency=urgency, due_before=due_before
    )
    visible = [s for s in found if relation_to(s, actor) is not Relation.NONE]
    return json_response({"cases": [_summary(s) for s in visible]})


async def photo(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, _ = await _load(request, Action.VIEW_CASE)
    record = await store_of(rt).photo(request.match_info["photo"])
    if record is None or record.case_id != stored.case.id:
        raise NotFound("Photo introuvable.")
    thumbnail = request.query.get("size") == "thumbnail"
    blob_id = record.thumbnail_blob_id if thumbnail else record.jpeg_blob_id
    data = await rt.blobs.read_all_verified(blob_id, max_bytes=rt.config.http.max_upload_bytes)
    receipt = await trail.record(
        request,
        AuditAction.PHOTO_VIEWED,
        entities=(
            EntityRef(ResourceKind.CASE, stored.case.id),
            EntityRef(ResourceKind.PHOTO, record.id),
        ),
        patient=stored.case.patient_key,
        receipt=True,
    )
    assert receipt is not None
    return web.Response(
        body=data,
        headers={
            "Content-Type": "image/jpeg",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
            trail.RECEIPT_HEADER: receipt.to_header(),
        },
    )


async def fhir(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, _ = await _load(request, Action.VIEW_CASE)
    store = store_of(rt)
    req = await store.load_request(stored.request_blob_id)
    answers = [m for m in await store.messages_of(stored.case.id) if m.kind == "answer"]
    answer = None
    if answers:
        last = answers[-1]
        answer = CaseAnswer(last.author_id, await store.read_text(last.blob_id), last.created_at)
    photos = [
        CasePhoto(
            id=p.id,
            url=f"{rt.public_url}/api/cases/{stored.case.id}/photos/{p.id}",
            width=p.width,
            height=p.height,
            size_bytes=p.size,
            created_at=p.created_at,
            uploaded_by=p.owner_id,
        )
        for p in await store.photos_of(stored.case.id)
    ]
    bundle = case_bundle(
        stored.case, req, answer, photos, rt.clock(), base_url=f"{rt.public_url}/fhir"
    )
    receipt = await trail.record(
        request,
        AuditAction.EXPORT,
        entities=(EntityRef(ResourceKind.CASE, stored.case.id),),
        patient=stored.case.patient_key or _patient_ref(rt, req),
        detail=(("format", "fhir"),),
        receipt=True,
    )
    assert receipt is not None
    response = json_response(bundle, headers={trail.RECEIPT_HEADER: receipt.to_header()})
    response.content_type = "application/fhir+json"
    return response


# The request form's sites (relay.case_request) are finer or coarser than the DICOM
# export's (relay.dicom_export): same key when both have it, else the enclosing region.
_DICOM_SITE: Final[dict[str, dicom_export.WoundSite]] = {
    "lower_leg": dicom_export.WoundSite.LOWER_LIMB,
    "ankle": dicom_export.WoundSite.LOWER_LIMB,
    "shoulder": dicom_export.WoundSite.UPPER_LIMB,
    "upper_arm": dicom_export.WoundSite.UPPER_LIMB,
    "forearm": dicom_export.WoundSite.UPPER_LIMB,
    "finger": dicom_export.WoundSite.HAND,
    "face": dicom_export.WoundSite.HEAD,
    "breast": dicom_export.WoundSite.CHEST,
}
_DICOM_SIDE: Final = {
    "left": dicom_export.Laterality.LEFT,
    "right": dicom_export.Laterality.RIGHT,
    "bilateral": dicom_export.Laterality.BOTH,
    "none": dicom_export.Laterality.NONE,
}
_DICOM_SEX: Final = {
    "female": dicom_export.PatientSex.FEMALE,
    "male": dicom_export.PatientSex.MALE,
    "unknown": dicom_export.PatientSex.UNKNOWN,
}


def _dicom_of(
    req: CaseRequest,
    jpeg: bytes,
    taken: datetime,
    now: datetime,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> bytes:
    """One photo as a DICOM VL Photographic Image (new UIDs unless the study/series are
    given, so that every photo of a case lands in one study; coded region and side)."""
    if req.wound is None or req.patient is None:
        raise BadRequest("Export DICOM : la demande doit indiquer le patient et la plaie.")
    key = req.wound.site.key
    site = _DICOM_SITE.get(key) or dicom_export.WoundSite(key)
    if isinstance(req.patient, InsPatient):
        name = dicom_export.PersonName(req.patient.family_name, req.patient.given_name)
        patient_id, issuer = req.patient.nir, "1.2.250.1.213.1.4.8"  # OID of the INS-NIR
        birth, sex = req.patient.birth_date, _DICOM_SEX[req.patient.sex.value]
    else:
        name = dicom_export.PersonName("ANONYME")
        patient_id, issuer = req.patient.local_id, None
        birth, sex = None, dicom_export.PatientSex.UNKNOWN
    export = dicom_export.WoundPhotoExport(
        jpeg=jpeg,
        patient_name=name,
        patient_id=patient_id,
        issuer_of_patient_id=issuer,
        patient_birth_date=birth,
        patient_sex=sex,
        study_description="Télé-expertise plaie",
        wound_site=site,
        laterality=_DICOM_SIDE[req.wound.laterality.value],
        content_datetime=taken,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        instance_number=instance_number,
    )
    return dicom_export.build_wound_photo(export, now=now).data


async def photo_dicom(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    stored, _ = await _load(request, Action.VIEW_CASE)
    store = store_of(rt)
    record = await store.photo(request.match_info["photo"])
    if record is None or record.case_id != stored.case.id:
        raise NotFound("Photo introuvable.")
    req = await store.load_request(stored.request_blob_id)
    jpeg = await rt.blobs.read_all_verified(
        record.jpeg_blob_id, max_bytes=rt.config.http.max_upload_bytes
    )
    data = await asyncio.to_thread(_dicom_of, req, jpeg, record.created_at, rt.clock())
    receipt = await trail.record(
        request,
        AuditAction.EXPORT,
        entities=(
            EntityRef(ResourceKind.CASE, stored.case.id),
            EntityRef(ResourceKind.PHOTO, record.id),
        ),
        patient=stored.case.patient_key or _patient_ref(rt, req),
        detail=(("format", "dicom"), ("size", str(len(data)))),
        receipt=True,
    )
    assert receipt is not None
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/dicom",
            "Content-Disposition": f'attachment; filename="{record.id}.dcm"',
            trail.RECEIPT_HEADER: receipt.to_header(),
        },
    )


async def page(request: web.Request) -> web.StreamResponse:
    """The French web page (requests, queue, one case); the API does the authorization."""
    return await signed_in_page(request, "cases.html")


_CASE = {"type": "object"}
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event"],
    "properties": {"event": {"enum": list(_EVENTS)}, "text": {"type": "string"}},
}
_IDEM = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}

ROUTES = [
    Route(
        "GET",
        "/teleexpertise",
        page,
        Action.PUBLIC,
        "Tele-expertise page",
        "web",
        in_api_document=False,
    ),
    Route(
        "POST",
        "/api/cases",
        create,
        Action.CREATE_CASE,
        "Create a tele-expertise request (draft, or submitted with submit=true)",
        "cases",
        _CASE,
        response_schema=_CASE,
        success_status=201,
        errors=(400, 401, 403, 415, 503),
        parameters=(_IDEM,),
    ),
    Route(
        "GET",
        "/api/cases",
        mine,
        Action.CREATE_CASE,
        "My requests and those shared with my teams",
        "cases",
        response_schema=_CASE,
        errors=(401, 403),
    ),
    Route(
        "GET",
        "/api/cases/queue",
        queue,
        Action.VIEW_CASE_QUEUE,
        "Open cases for me or my teams (filters: urgency, due_before)",
        "cases",
        response_schema=_CASE,
        errors=(400, 401, 403),
        parameters=(
            {"name": "urgency", "in": "query", "schema": {"type": "string"}},
            {"name": "due_before", "in": "query", "schema": {"type": "string"}},
        ),
    ),
    Route(
        "GET",
        "/api/cases/{id}",
        read,
        Action.VIEW_CASE,
        "A case (audited read)",
        "cases",
        response_schema=_CASE,
        errors=(401, 403, 404, 503),
        resource=ResourceKind.CASE,
    ),
    Route(
        "PUT",
        "/api/cases/{id}",
        update_draft,
        Action.ACT_ON_CASE,
        "Update a draft request (and submit it with submit=true)",
        "cases",
        _CASE,
        response_schema=_CASE,
        errors=(400, 401, 403, 404, 409, 415, 503),
        resource=ResourceKind.CASE,
    ),
    Route(
        "POST",
        "/api/cases/{id}/photos",
        attach,
        Action.ACT_ON_CASE,
        "Attach uploaded photos to a case",
        "cases",
        {"type": "object", "properties": {"photo_ids": {"type": "array"}}},
        response_schema=_CASE,
        errors=(400, 401, 403, 404),
        resource=ResourceKind.CASE,
    ),
    Route(
        "POST",
        "/api/cases/{id}/events",
        event,
        Action.ACT_ON_CASE,
        "Take, return, reject, cancel, answer, ask, reply, follow up, close",
        "cases",
        _EVENT_SCHEMA,
        response_schema=_CASE,
        errors=(400, 401, 403, 404, 409, 503),
        resource=ResourceKind.CASE,
    ),
    Route(
        "GET",
        "/api/cases/{id}/photos/{photo}",
        photo,
        Action.VIEW_CASE,
        "A sanitized photo of the case (?size=thumbnail); audited, with a receipt",
        "cases",
        response_content_type="image/jpeg",
        response_schema={"type": "string", "format": "binary"},
        errors=(401, 403, 404, 503),
        resource=ResourceKind.CASE,
    ),
    Route(
        "GET",
        "/api/cases/{id}/photos/{photo}/dicom",
        photo_dicom,
        Action.VIEW_CASE,
        "A photo of the case as a DICOM VL Photographic Image (new UIDs); audited export",
        "cases",
        response_content_type="application/dicom",
        response_schema={"type": "string", "format": "binary"},
        errors=(400, 401, 403, 404, 422, 503),
        resource=ResourceKind.CASE,
    ),
    Route(
        "GET",
        "/api/cases/{id}/fhir",
        fhir,
        Action.VIEW_CASE,
        "The case as a FHIR R4 Bundle",
        "cases",
        response_content_type="application/fhir+json",
        response_schema=_CASE,
        errors=(401, 403, 404, 503),
        resource=ResourceKind.CASE,
    ),
]
