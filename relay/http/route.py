"""A route of the API: method, path, handler, and the policy action it requires.

The route table is the single source for the router, the authorization
middleware and the OpenAPI document, so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.audit.events import ResourceKind
from relay.policy import Action

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Schema = dict[str, Any]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    action: Action
    summary: str
    tag: str
    request_schema: Schema | None = None
    request_content_type: str = "application/json"
    other_request_bodies: tuple[tuple[str, Schema], ...] = ()  # (content type, schema)
    response_schema: Schema | None = None
    response_content_type: str = "application/json"
    success_status: int = 200
    errors: tuple[int, ...] = ()
    parameters: tuple[Schema, ...] = field(default_factory=tuple)
    in_api_document: bool = True
    resource: ResourceKind | None = None  # what `{id}` names, for audit events
