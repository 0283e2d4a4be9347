"""The OpenAPI 3.1 document, generated from the route table (so it cannot drift)."""

from __future__ import annotations

import re
from typing import Any

from relay.http.route import Route
from relay.policy import Action

_STATUS_TEXT = {
    400: "Malformed request (JSON syntax, missing or invalid field)",
    401: "Not authenticated, or authentication failed",
    403: "The policy table does not allow this action",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported content type",
    429: "Too many attempts; see Retry-After",
    503: "A dependency is unavailable; nothing was done",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


_PATH_PARAMETER = re.compile(r"{(\w+)}")


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower())}",
        "x-policy-action": route.action.value,
    }
    if route.action is Action.PUBLIC:
        operation["security"] = []
    # Path parameters come from the template itself, so a route cannot forget or misname
    # one; ``route.parameters`` adds the query and header ones.
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAMETER.findall(route.path)
    ]
    declared = {(p["name"], p["in"]) for p in parameters}
    parameters += [p for p in route.parameters if (p["name"], p["in"]) not in declared]
    if parameters:
        operation["parameters"] = parameters
    if route.request_schema is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                route.request_content_type: {"schema": route.request_schema},
                **{kind: {"schema": schema} for kind, schema in route.other_request_bodies},
            },
        }
    success: dict[str, Any] = {"description": "Success"}
    if route.response_schema is not None:
        success["content"] = {route.response_content_type: {"schema": route.response_schema}}
    responses: dict[str, Any] = {str(route.success_status): success}
    for status in route.errors:
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    operation["responses"] = responses
    return operation


def build_document(routes: list[Route], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.in_api_document:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Relais Santé API",
            "version": version,
            "description": (
                "Secure messaging, tele-expertise and teleconsultation relay. Errors are "
                '`{"error": {"code", "message"}}`; messages are in French for end users.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"cookie": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "relais_session"},
            },
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "paths": paths,
    }
