"""Recording audit events from HTTP handlers (issue 3: traced before released).

Handlers call :func:`record` *before* handing anything out; when the audit log cannot
write, :class:`AuditUnavailable` becomes a 503 and the action is not performed.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from relay.accounts import Professional
from relay.audit.errors import AuditUnavailable
from relay.audit.events import Actor, AuditAction, AuditRecord, EntityRef, Outcome
from relay.audit.log import Receipt
from relay.errors import ServiceUnavailable
from relay.http.context import caller, runtime

RECEIPT_HEADER = "X-Audit-Receipt"


def actor_of(pro: Professional) -> Actor:
    return Actor.professional(pro.id, pro.role.value, pro.rpps)


def address_of(request: web.Request) -> str | None:
    remote = request.remote
    if remote is None:
        return None
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        return None


async def record(
    request: web.Request,
    action: AuditAction,
    outcome: Outcome = Outcome.SUCCESS,
    *,
    actor: Actor | None = None,
    entities: tuple[EntityRef, ...] = (),
    patient: str | None = None,
    search: str | None = None,
    detail: tuple[tuple[str, str], ...] = (),
    receipt: bool = False,
) -> Receipt | None:
    """Append one event for this request; raise 503 if it cannot be durably written."""
    rt = runtime(request)
    if actor is None:
        actor = actor_of(caller(request).professional)
    event = AuditRecord(
        action=action,
        outcome=outcome,
        now=rt.clock(),
        actor=actor,
        observer=rt.config.server.node_name,
        network_address=address_of(request),
        entities=entities,
        patient=patient,
        search=search,
        detail=detail,
    )
    try:
        return await rt.audit.record(event, receipt=receipt)
    except AuditUnavailable:
        raise ServiceUnavailable(
            "Le journal d'audit est momentanément indisponible : l'action a été refusée "
            "pour ne pas être effectuée sans trace. Réessayez dans quelques instants.",
            code="audit_unavailable",
        ) from None
