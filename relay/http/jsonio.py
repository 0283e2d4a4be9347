"""Reading and writing JSON bodies with explicit limits and precise errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay.errors import BadRequest, PayloadTooLarge, RelayError, UnsupportedMediaType


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 naming what is wrong.

    Requiring ``application/json`` also protects cookie-authenticated endpoints from
    cross-site form posts (a browser cannot send this type cross-origin without a
    CORS preflight, which we never grant).
    """
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Le corps de la requête doit être du JSON (application/json).")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"Le corps de la requête dépasse la limite de {max_bytes} octets.")
    body = await request.content.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"Le corps de la requête dépasse la limite de {max_bytes} octets.")
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("Le corps de la requête n'est pas encodé en UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"JSON invalide (ligne {exc.lineno}, colonne {exc.colno}) : {exc.msg}.",
            code="malformed_json",
        ) from None
    if not isinstance(value, dict):
        raise BadRequest("Le corps de la requête doit être un objet JSON.", code="malformed_json")
    return value


def field_str(
    body: dict[str, Any], name: str, *, required: bool = True, max_length: int = 1000
) -> str | None:
    """A string field of a JSON object, checked for presence, type and length."""
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"Le champ « {name} » est obligatoire.", code="missing_field")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Le champ « {name} » doit être une chaîne.", code="invalid_field")
    if len(value) > max_length:
        raise BadRequest(
            f"Le champ « {name} » dépasse {max_length} caractères.", code="invalid_field"
        )
    return value


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        data, status=status, headers=headers, dumps=lambda v: json.dumps(v, ensure_ascii=False)
    )


def error_response(error: RelayError) -> web.Response:
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return json_response(
        {"error": {"code": error.code, "message": error.message}},
        status=error.http_status,
        headers=headers,
    )
