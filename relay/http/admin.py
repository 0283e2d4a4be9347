"""Account administration over the API (the same operations as ``relais user/team add``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.accounts import validate_new_professional
from relay.audit.events import AuditAction, EntityRef, ResourceKind
from relay.errors import BadRequest, NotFound
from relay.http import trail
from relay.http.context import caller, runtime
from relay.http.jsonio import field_str, json_response, read_json_object
from relay.http.route import Route
from relay.http.session import PROFESSIONAL_SCHEMA, professional_json
from relay.policy import Action, authorize
from relay.roles import TeamKind


async def create_professional(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    authorize(who.professional.role, Action.MANAGE_ACCOUNTS)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    new = validate_new_professional(
        email=field_str(body, "email", max_length=254) or "",
        display_name=field_str(body, "display_name", max_length=120) or "",
        role=field_str(body, "role", max_length=32) or "",
        rpps=field_str(body, "rpps", required=False, max_length=32),
        specialty=field_str(body, "specialty", required=False, max_length=120),
    )
    password = field_str(body, "password", max_length=1024) or ""
    rt.passwords.check_strength(password)
    pro = await rt.accounts.create_professional(new, await rt.passwords.hash(password), rt.clock())
    await trail.record(
        request,
        AuditAction.ACCOUNT_CREATED,
        entities=(EntityRef(ResourceKind.ACCOUNT, pro.id),),
        detail=(("new_role", pro.role.value),),
    )
    return json_response(professional_json(pro), status=201)


async def create_team(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    authorize(who.professional.role, Action.MANAGE_ACCOUNTS)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    kind_text = field_str(body, "kind", max_length=32) or ""
    try:
        kind = TeamKind(kind_text)
    except ValueError:
        kinds = ", ".join(k.value for k in TeamKind)
        raise BadRequest(f"Type d'équipe inconnu « {kind_text} » (attendu : {kinds}).") from None
    name = (field_str(body, "name", max_length=120) or "").strip()
    if not name:
        raise BadRequest("Le nom de l'équipe est obligatoire.", code="missing_field")
    team = await rt.accounts.create_team(
        address=field_str(body, "address", max_length=64) or "",
        name=name,
        kind=kind,
        specialty=field_str(body, "specialty", required=False, max_length=120),
        now=rt.clock(),
    )
    await trail.record(
        request,
        AuditAction.TEAM_CHANGED,
        entities=(EntityRef(ResourceKind.TEAM, team.id),),
        detail=(("reason", "team_created"),),
    )
    return json_response(
        _team_json(
            team.id,
            team.address,
            team.name,
            team.kind.value,
            team.specialty,
            rt.config.server.domain,
        ),
        status=201,
    )


def _team_json(
    team_id: str, address: str, name: str, kind: str, specialty: str | None, domain: str
) -> dict[str, Any]:
    return {
        "id": team_id,
        "address": f"{address}@{domain}",
        "name": name,
        "kind": kind,
        "specialty": specialty,
    }


async def add_member(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    authorize(who.professional.role, Action.MANAGE_ACCOUNTS)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    team = await rt.accounts.team_by_id(request.match_info["id"])
    if team is None:
        raise NotFound("Équipe introuvable.")
    member = await rt.accounts.by_id(field_str(body, "professional_id", max_length=64) or "")
    if member is None:
        raise NotFound("Professionnel introuvable.")
    await trail.record(
        request,
        AuditAction.TEAM_CHANGED,
        entities=(
            EntityRef(ResourceKind.TEAM, team.id),
            EntityRef(ResourceKind.ACCOUNT, member.id),
        ),
        detail=(("reason", "member_added"),),
    )
    await rt.accounts.add_member(team.id, member.id, rt.clock())
    return web.Response(status=204)


_NEW_PRO = {
    "type": "object",
    "required": ["email", "display_name", "role", "password"],
    "properties": {
        "email": {"type": "string"},
        "display_name": {"type": "string"},
        "role": {
            "type": "string",
            "enum": ["nurse", "physician", "specialist", "coordinator", "admin"],
        },
        "rpps": {"type": "string"},
        "specialty": {"type": "string"},
        "password": {"type": "string"},
    },
}
_NEW_TEAM = {
    "type": "object",
    "required": ["address", "name", "kind"],
    "properties": {
        "address": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["msp", "cpts", "service", "specialty_pool"]},
        "specialty": {"type": "string"},
    },
}

ROUTES = [
    Route(
        "POST",
        "/api/admin/professionals",
        create_professional,
        Action.MANAGE_ACCOUNTS,
        "Create a professional's account",
        "administration",
        _NEW_PRO,
        response_schema=PROFESSIONAL_SCHEMA,
        success_status=201,
        errors=(400, 401, 403, 409, 413, 415),
    ),
    Route(
        "POST",
        "/api/admin/teams",
        create_team,
        Action.MANAGE_ACCOUNTS,
        "Create a team",
        "administration",
        _NEW_TEAM,
        success_status=201,
        errors=(400, 401, 403, 409),
    ),
    Route(
        "POST",
        "/api/admin/teams/{id}/members",
        add_member,
        Action.MANAGE_ACCOUNTS,
        "Add a professional to a team",
        "administration",
        {
            "type": "object",
            "required": ["professional_id"],
            "properties": {"professional_id": {"type": "string"}},
        },
        success_status=204,
        errors=(400, 401, 403, 404),
    ),
]
