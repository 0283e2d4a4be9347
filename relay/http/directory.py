"""Directory search over professionals and teams (to address messages and cases)."""

from __future__ import annotations

from aiohttp import web

from relay.errors import BadRequest
from relay.http.context import runtime
from relay.http.jsonio import json_response
from relay.http.route import Route
from relay.policy import Action

MAX_RESULTS = 25


async def search(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    query = request.query.get("q", "").strip()
    if not 2 <= len(query) <= 100:
        raise BadRequest("La recherche doit comporter entre 2 et 100 caractères.", code="bad_query")
    pros, teams = await rt.accounts.search_directory(query, MAX_RESULTS)
    domain = rt.config.server.domain
    return json_response(
        {
            "professionals": [
                {
                    "id": p.id,
                    "display_name": p.display_name,
                    "role": p.role.value,
                    "specialty": p.specialty,
                    "rpps": p.rpps,
                    "address": p.email,
                }
                for p in pros
            ],
            "teams": [
                {
                    "id": t.id,
                    "name": t.name,
                    "kind": t.kind.value,
                    "specialty": t.specialty,
                    "address": f"{t.address}@{domain}",
                    "members": members,
                }
                for t, members in teams
            ],
        }
    )


_RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "professionals": {"type": "array", "items": {"type": "object"}},
        "teams": {"type": "array", "items": {"type": "object"}},
    },
}

ROUTES = [
    Route(
        "GET",
        "/api/directory",
        search,
        Action.SEARCH_DIRECTORY,
        "Search professionals and teams by name, address or specialty",
        "directory",
        response_schema=_RESULT_SCHEMA,
        errors=(400, 401),
        parameters=(
            {
                "name": "q",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "minLength": 2, "maxLength": 100},
            },
        ),
    )
]
