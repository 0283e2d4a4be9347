"""Per-request helpers: the runtime, the caller, the route's declared action."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from relay.accounts import Professional
from relay.errors import Unauthenticated
from relay.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
SESSION_COOKIE = "relais_session"


@dataclass(frozen=True)
class Caller:
    """The authenticated professional behind a request, and how they logged in."""

    professional: Professional
    token: str
    method: str


CALLER = web.RequestKey("caller", Caller)


def runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def caller(request: web.Request) -> Caller:
    found = request.get(CALLER)
    if not isinstance(found, Caller):
        raise Unauthenticated("Veuillez vous connecter.")
    return found


def session_token(request: web.Request) -> str | None:
    """The session token from ``Authorization: Bearer`` (API clients) or the cookie (web)."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip() or None
    return request.cookies.get(SESSION_COOKIE) or None


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"
