"""The aiohttp application: route table, middlewares (errors, auth, headers, metrics)."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.audit.errors import AuditError
from relay.audit.events import AuditAction, EntityRef, Outcome
from relay.errors import Forbidden, NotFound, PayloadTooLarge, RelayError, Unauthenticated
from relay.http import (
    admin,
    audit,
    case_pacs,
    cases,
    consultation_page,
    consultations,
    directory,
    events_ws,
    files,
    guest,
    health,
    messages,
    pages,
    recordings,
    session,
    signaling_ws,
    trail,
    uploads,
)
from relay.http.context import CALLER, RUNTIME, SESSION_COOKIE, Caller, runtime, session_token
from relay.http.jsonio import error_response, json_response
from relay.http.openapi import build_document
from relay.http.route import Route
from relay.policy import Action, authorize, may_ever
from relay.runtime import Runtime
from storage.errors import StorageError

log = logging.getLogger("relais.http")

ROUTE_TABLE = web.AppKey("route_table", dict[tuple[str, str], Route])


def _version() -> str:
    try:
        return version("relais-sante")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def all_routes() -> list[Route]:
    routes: list[Route] = [
        *health.ROUTES,
        *session.ROUTES,
        *directory.ROUTES,
        *files.ROUTES,
        *admin.ROUTES,
        *audit.ROUTES,
        *pages.ROUTES,
        *consultations.ROUTES,
        *recordings.ROUTES,
        *consultation_page.ROUTES,
        *signaling_ws.ROUTES,
        *messages.ROUTES,
        *events_ws.ROUTES,
        *guest.ROUTES,
        *uploads.ROUTES,
        *cases.ROUTES,
        *case_pacs.ROUTES,
    ]
    routes.append(
        Route(
            "GET",
            "/api/openapi.json",
            openapi,
            Action.PUBLIC,
            "This OpenAPI 3.1 document",
            "operations",
        )
    )
    return routes


async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(build_document(all_routes(), _version()))


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error": {...}}`` with its status; never a stack trace."""
    try:
        return await handler(request)
    except Forbidden as exc:
        try:
            await _trace_denial(request)
        except RelayError as audit_error:
            return error_response(audit_error)
        return error_response(exc)
    except RelayError as exc:
        return error_response(exc)
    except AuditError as exc:
        # Proof requests out of range and the like; AuditUnavailable never reaches here
        # (trail.record turns it into a 503 with a French message).
        error = RelayError(str(exc))
        error.http_status, error.code = exc.http_status, exc.code
        return error_response(error)
    except StorageError as exc:
        log.error("storage failure on %s: %s", _route_template(request), type(exc).__name__)
        error = RelayError("Le service de stockage est momentanément indisponible.")
        error.http_status, error.code = exc.http_status, exc.code
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("Le corps de la requête est trop volumineux."))
    except web.HTTPNotFound:
        return error_response(NotFound("Adresse introuvable."))
    except web.HTTPMethodNotAllowed as exc:
        error = RelayError("Méthode non autorisée pour cette adresse.", code="method_not_allowed")
        error.http_status = exc.status
        return error_response(error)
    except web.HTTPException:
        raise  # redirects and the like
    except Exception:
        log.exception("unexpected error on %s", _route_template(request))
        return error_response(RelayError("Erreur interne du relais. L'incident est journalisé."))


async def _trace_denial(request: web.Request) -> None:
    """Every authorization refusal is an audit event (110113/110132, outcome 4)."""
    if not isinstance(request.get(CALLER), Caller):
        return
    entities: tuple[EntityRef, ...] = ()
    resource_id = request.match_info.get("id")
    route = request.app[ROUTE_TABLE].get((request.method, _route_template(request)))
    if resource_id and route is not None and route.resource is not None:
        entities = (EntityRef(route.resource, resource_id),)
    detail: tuple[tuple[str, str], ...] = (("http_status", "403"),)
    if route is not None:
        detail += (("reason", route.action.value),)
    await trail.record(
        request, AuditAction.ACCESS_DENIED, Outcome.MINOR_FAILURE, entities=entities, detail=detail
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the session and apply the route's policy action before the handler runs."""
    route = request.app[ROUTE_TABLE].get((request.method, _route_template(request)))
    if route is None or route.action is Action.PUBLIC:
        return await handler(request)
    rt = runtime(request)
    token = session_token(request)
    found = None
    if token:
        idle = rt.config.accounts.session_idle_minutes * 60
        found = await rt.accounts.session(token, rt.clock(), idle)
    if token is None or found is None:
        raise Unauthenticated(
            "Session absente ou expirée. Veuillez vous reconnecter.", code="session_expired"
        )
    request[CALLER] = Caller(found.professional, token, found.method)
    # First gate: refuse roles that may never perform the action. Handlers then call
    # authorize() again with the caller's real relation to the resource.
    if not may_ever(found.professional.role, route.action):
        authorize(found.professional.role, route.action)
    return await handler(request)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    h = response.headers
    h["Server"] = "Relais-Sante"  # no software versions for scanners
    h.setdefault("Strict-Transport-Security", "max-age=31536000")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    )
    if request.path.startswith("/api/"):
        h.setdefault("Cache-Control", "no-store")
    return response


class InFlight:
    """Counts requests being handled, so shutdown can wait for them to finish.

    aiohttp's own graceful shutdown stops reading from connections first, which
    would cut an upload whose body is still arriving; we drain before that.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, limit_seconds: float) -> bool:
        """Stop taking keep-alive requests and wait until none is in flight."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), limit_seconds)
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rt = runtime(request)
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if in_flight.draining:
            response.force_close()  # no further request on this connection
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        in_flight.leave()
        template = _route_template(request)
        rt.metrics.requests.labels(request.method, template, str(status)).inc()
        rt.metrics.latency.labels(request.method, template).observe(time.perf_counter() - started)


def build_app(rt: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, headers_middleware, errors_middleware, auth_middleware],
        # Uploads are streamed with their own limit; this caps anything read whole.
        client_max_size=rt.config.http.max_json_bytes,
    )
    app[RUNTIME] = rt
    app[IN_FLIGHT] = InFlight()
    table: dict[tuple[str, str], Route] = {}
    for route in all_routes():
        app.router.add_route(route.method, route.path, route.handler)
        table[(route.method, route.path)] = route
    app[ROUTE_TABLE] = table
    app.router.add_static("/static/", pages.STATIC_DIR, append_version=False)
    # Before the stores close: seal recordings in progress, flush the rooms' audit events.
    app.on_shutdown.append(signaling_ws.on_shutdown)
    return app


__all__ = ["SESSION_COOKIE", "all_routes", "build_app"]
