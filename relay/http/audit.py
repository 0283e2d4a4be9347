"""Audit trail over HTTP: checkpoints and proofs, one's own trail, and the admin search.

Reading events is itself audited (110101 Audit Log Used) before the events are returned.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from relay.audit.events import AuditAction, EntityRef, ResourceKind
from relay.errors import BadRequest, NotFound
from relay.http.context import caller, runtime
from relay.http.jsonio import json_response
from relay.http.route import Route
from relay.http.trail import record
from relay.identifiers import validate_nir
from relay.policy import Action, authorize

MAX_PAGE = 200


def _int(request: web.Request, name: str, *, default: int | None = None, minimum: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"Le paramètre « {name} » est obligatoire.", code="missing_field")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Le paramètre « {name} » doit être un entier.") from None
    if value < minimum:
        raise BadRequest(f"Le paramètre « {name} » doit être au moins {minimum}.")
    return value


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(
            f"« {name} » doit être une date ISO 8601 (ex. 2026-11-23T10:00:00+00:00)."
        ) from None
    if value.tzinfo is None:
        raise BadRequest(f"« {name} » doit préciser le fuseau horaire (ex. +00:00).")
    return value


async def checkpoint(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    note = await rt.audit.latest_checkpoint()
    if note is None:
        raise NotFound("Aucun point de contrôle n'a encore été signé.")
    return json_response({"checkpoint": note, "verifier_key": rt.audit.verifier_key})


async def inclusion(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    index = _int(request, "index")
    size = _int(request, "size", default=0, minimum=1) if "size" in request.query else None
    return json_response(await rt.audit.inclusion_proof(index, size))


async def consistency(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    first = _int(request, "first", minimum=1)
    second = _int(request, "second", minimum=1) if "second" in request.query else None
    return json_response(await rt.audit.consistency_proof(first, second))


def _events_json(events: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "index": e.index,
            "recorded_at": e.recorded_at.isoformat()
            if isinstance(e.recorded_at, datetime)
            else e.recorded_at,
            "action": e.action,
            "outcome": e.outcome,
            "event": e.event,
        }
        for e in events
    ]


async def my_trail(request: web.Request) -> web.StreamResponse:
    """The caller's own trail: what was done with their account."""
    rt = runtime(request)
    who = caller(request)
    limit = min(_int(request, "limit", default=50, minimum=1), MAX_PAGE)
    after = _int(request, "after", default=-1, minimum=-1)
    await record(
        request,
        AuditAction.AUDIT_READ,
        entities=(EntityRef(ResourceKind.AUDIT_LOG, "own-trail"),),
    )
    events = await rt.audit.search(
        actor=who.professional.id, limit=limit, after_index=after if after >= 0 else None
    )
    return json_response({"events": _events_json(events)})


async def search(request: web.Request) -> web.StreamResponse:
    """Administrator / DPO search by person, patient, resource, action, time, outcome."""
    rt = runtime(request)
    who = caller(request)
    authorize(who.professional.role, Action.SEARCH_AUDIT)
    q = request.query
    patient_ref = None
    if "patient" in q:
        # Patients are found by identifier, hashed exactly as when the events were written.
        patient_ref = rt.audit.patient_reference(validate_nir(q["patient"]))
    criteria = {
        key: q[key]
        for key in ("actor", "resource", "action", "outcome", "since", "until")
        if key in q
    }
    if patient_ref:
        criteria["patient"] = patient_ref
    limit = min(_int(request, "limit", default=50, minimum=1), MAX_PAGE)
    after = _int(request, "after", default=-1, minimum=-1)
    since, until = _time(request, "since"), _time(request, "until")
    await record(
        request,
        AuditAction.AUDIT_SEARCHED,
        search=rt.audit.search_reference(criteria),
        patient=patient_ref,
        entities=(EntityRef(ResourceKind.AUDIT_LOG, "search"),),
    )
    events = await rt.audit.search(
        actor=q.get("actor"),
        patient=patient_ref,
        resource=q.get("resource"),
        action=q.get("action"),
        outcome=q.get("outcome"),
        since=since,
        until=until,
        limit=limit,
        after_index=after if after >= 0 else None,
    )
    return json_response({"events": _events_json(events)})


def _query(name: str, description: str, schema_type: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": schema_type},
    }


_EVENTS = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": {"type": "object"}}},
}
_PAGE = (
    _query("limit", "page size (max 200)", "integer"),
    _query("after", "return events after this index", "integer"),
)

ROUTES = [
    Route(
        "GET",
        "/api/audit/checkpoint",
        checkpoint,
        Action.READ_AUDIT_PROOFS,
        "Latest signed checkpoint (C2SP note) and the log's verifier key",
        "audit",
        errors=(401, 404),
    ),
    Route(
        "GET",
        "/api/audit/proof/inclusion",
        inclusion,
        Action.READ_AUDIT_PROOFS,
        "RFC 9162 inclusion proof of entry `index` in the tree of `size` entries",
        "audit",
        errors=(400, 401),
        parameters=(
            {"name": "index", "in": "query", "required": True, "schema": {"type": "integer"}},
            _query("size", "tree size", "integer"),
        ),
    ),
    Route(
        "GET",
        "/api/audit/proof/consistency",
        consistency,
        Action.READ_AUDIT_PROOFS,
        "RFC 9162 consistency proof between tree sizes `first` and `second`",
        "audit",
        errors=(400, 401),
        parameters=(
            {"name": "first", "in": "query", "required": True, "schema": {"type": "integer"}},
            _query("second", "tree size", "integer"),
        ),
    ),
    Route(
        "GET",
        "/api/audit/me",
        my_trail,
        Action.READ_OWN_AUDIT,
        "Your own audit trail (this read is itself audited)",
        "audit",
        response_schema=_EVENTS,
        errors=(400, 401, 503),
        parameters=_PAGE,
    ),
    Route(
        "GET",
        "/api/audit/events",
        search,
        Action.SEARCH_AUDIT,
        "Search the audit log (administrators; the search is itself audited)",
        "audit",
        response_schema=_EVENTS,
        errors=(400, 401, 403, 503),
        parameters=(
            _query("actor", "account id"),
            _query("patient", "patient INS/NIR"),
            _query("resource", "resource id"),
            _query("action", "audit action code"),
            _query("outcome", "0, 4, 8 or 12"),
            _query("since", "ISO 8601 time"),
            _query("until", "ISO 8601 time"),
            *_PAGE,
        ),
    ),
]
