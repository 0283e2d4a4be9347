"""Login, logout, second factor, and the caller's own account."""

from __future__ import annotations

import secrets
import ssl
from datetime import timedelta
from typing import Any

from aiohttp import web
from cryptography import x509

from certs.errors import CertificateNotTrusted
from certs.trust import verify_client_certificate
from relay import totp
from relay.accounts import Professional
from relay.audit.events import Actor, ActorKind, AuditAction, EntityRef, Outcome, ResourceKind
from relay.errors import BadRequest, TooManyRequests, Unauthenticated
from relay.http import trail
from relay.http.context import SESSION_COOKIE, caller, client_address, runtime, session_token
from relay.http.jsonio import field_str, json_response, read_json_object
from relay.http.route import Route
from relay.policy import Action
from relay.runtime import Runtime

INVALID_CREDENTIALS = "Adresse e-mail ou mot de passe incorrect."


def professional_json(pro: Professional) -> dict[str, Any]:
    return {
        "id": pro.id,
        "email": pro.email,
        "display_name": pro.display_name,
        "role": pro.role.value,
        "specialty": pro.specialty,
        "rpps": pro.rpps,
        "totp_enabled": pro.totp_enabled,
    }


async def _login_failed(
    request: web.Request, pro: Professional | None, attempted: str, method: str, reason: str
) -> None:
    """Trace a failed login: the account when it exists, else a keyed hash of the name tried.

    The attempted name is not stored in clear: people often type a password there.
    """
    rt = runtime(request)
    entities: tuple[EntityRef, ...] = ()
    if pro is not None:
        actor = trail.actor_of(pro)
    else:
        actor = Actor(ActorKind.PROFESSIONAL, "unknown-account")
        digest = rt.audit.search_reference({"login": attempted})
        entities = (EntityRef(ResourceKind.ACCOUNT, f"attempt-{digest}"),)
    await trail.record(
        request,
        AuditAction.LOGIN_FAILED,
        Outcome.MINOR_FAILURE,
        actor=actor,
        entities=entities,
        detail=(("method", method), ("reason", reason)),
    )


async def _check_limits(
    request: web.Request, rt: Runtime, email: str, address: str, now: float, method: str
) -> None:
    wait = max(
        rt.account_failures.retry_after(f"account:{email}", now),
        rt.address_failures.retry_after(f"address:{address}", now),
    )
    if wait:
        await _login_failed(request, None, email, method, "rate_limited")
        raise TooManyRequests(
            f"Trop de tentatives de connexion. Réessayez dans {wait} secondes.", retry_after=wait
        )


def _record_failure(rt: Runtime, email: str, address: str, now: float) -> None:
    rt.account_failures.record_failure(f"account:{email}", now)
    rt.address_failures.record_failure(f"address:{address}", now)


async def _open_session(
    request: web.Request, rt: Runtime, pro: Professional, method: str
) -> web.Response:
    now = rt.clock()
    await trail.record(
        request,
        AuditAction.LOGIN_SUCCEEDED,
        actor=trail.actor_of(pro),
        detail=(("method", method),),
    )
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(hours=rt.config.accounts.session_hours)
    await rt.accounts.create_session(token, pro.id, method, now, expires_at)
    rt.metrics.logins.labels(method=method, outcome="success").inc()
    response = json_response(
        {
            "token": token,
            "expires_at": expires_at.isoformat(),
            "professional": professional_json(pro),
        }
    )
    # Secure + HttpOnly + SameSite=Strict: never sent over plain HTTP, unreadable by
    # scripts, and not attached to cross-site requests (CSRF).
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(rt.config.accounts.session_hours * 3600),
        secure=True,
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return response


async def login(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    email = (field_str(body, "email", max_length=254) or "").strip().lower()
    password = field_str(body, "password", max_length=1024) or ""
    code = field_str(body, "totp", required=False, max_length=16)
    address = client_address(request)
    now_ts = rt.clock().timestamp()
    await _check_limits(request, rt, email, address, now_ts, "password")
    creds = await rt.accounts.credentials(email)
    ok = await rt.passwords.verify(creds.password_hash if creds else None, password)
    if creds is None or not ok:
        _record_failure(rt, email, address, now_ts)
        rt.metrics.logins.labels(method="password", outcome="failure").inc()
        await _login_failed(
            request, creds.professional if creds else None, email, "password", "bad_password"
        )
        raise Unauthenticated(INVALID_CREDENTIALS, code="invalid_credentials")
    method = "password"
    if creds.professional.totp_enabled:
        if code is None:
            raise Unauthenticated(
                "Saisissez le code à 6 chiffres de votre application d'authentification.",
                code="totp_required",
            )
        if creds.totp_secret is None or totp.verify(creds.totp_secret, code, now_ts) < 0:
            _record_failure(rt, email, address, now_ts)
            rt.metrics.logins.labels(method="totp", outcome="failure").inc()
            await _login_failed(request, creds.professional, email, "totp", "bad_code")
            raise Unauthenticated("Code de vérification incorrect.", code="invalid_totp")
        method = "totp"
    rt.account_failures.reset(f"account:{email}")
    return await _open_session(request, rt, creds.professional, method)


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


async def login_with_certificate(request: web.Request) -> web.StreamResponse:
    """Mutual-TLS login: the certificate presented in the TLS handshake opens a session."""
    rt = runtime(request)
    address = client_address(request)
    now = rt.clock()
    await _check_limits(request, rt, "certificate", address, now.timestamp(), "client_certificate")
    certificate = _peer_certificate(request)
    if certificate is None:
        raise Unauthenticated(
            "Aucun certificat client n'a été présenté. Installez le certificat délivré par "
            "votre administrateur dans votre navigateur.",
            code="certificate_required",
        )
    try:
        identity = verify_client_certificate(certificate, [], rt.trust_anchors, now)
    except CertificateNotTrusted:
        _record_failure(rt, "certificate", address, now.timestamp())
        rt.metrics.logins.labels(method="client_certificate", outcome="failure").inc()
        await _login_failed(request, None, "certificate", "client_certificate", "not_trusted")
        raise Unauthenticated(
            "Ce certificat n'est pas reconnu par le relais.", code="certificate_not_trusted"
        ) from None
    pro = await rt.accounts.by_client_certificate(identity.fingerprint_sha256)
    if pro is None:
        _record_failure(rt, "certificate", address, now.timestamp())
        rt.metrics.logins.labels(method="client_certificate", outcome="failure").inc()
        await _login_failed(request, None, "certificate", "client_certificate", "not_registered")
        raise Unauthenticated(
            "Ce certificat a été révoqué ou n'est associé à aucun compte actif.",
            code="certificate_not_trusted",
        )
    return await _open_session(request, rt, pro, "client_certificate")


async def logout(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    token = session_token(request)
    if token:
        idle = rt.config.accounts.session_idle_minutes * 60
        found = await rt.accounts.session(token, rt.clock(), idle)
        if found is not None:
            await trail.record(
                request, AuditAction.LOGOUT, actor=trail.actor_of(found.professional)
            )
        await rt.accounts.delete_session(token)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    teams = await rt.accounts.teams_of(who.professional.id)
    data = professional_json(who.professional)
    data["login_method"] = who.method
    data["teams"] = [
        {"id": t.id, "name": t.name, "kind": t.kind.value, "address": _team_address(rt, t.address)}
        for t in teams
    ]
    return json_response(data)


def _team_address(rt: Runtime, local: str) -> str:
    return f"{local}@{rt.config.server.domain}"


async def change_password(request: web.Request) -> web.StreamResponse:
    """Change one's own password; other sessions are kept (they belong to the same person)."""
    rt = runtime(request)
    who = caller(request)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    current = field_str(body, "current_password", max_length=1024) or ""
    new = field_str(body, "new_password", max_length=1024) or ""
    creds = await rt.accounts.credentials(who.professional.email)
    if creds is None or not await rt.passwords.verify(creds.password_hash, current):
        raise BadRequest("Le mot de passe actuel est incorrect.", code="invalid_credentials")
    rt.passwords.check_strength(new)
    await _credentials_changed(request, "password")
    await rt.accounts.set_password(who.professional.id, await rt.passwords.hash(new))
    return web.Response(status=204)


async def _credentials_changed(request: web.Request, what: str) -> None:
    who = caller(request)
    await trail.record(
        request,
        AuditAction.CREDENTIALS_CHANGED,
        entities=(EntityRef(ResourceKind.ACCOUNT, who.professional.id),),
        detail=(("setting", what),),
    )


async def totp_setup(request: web.Request) -> web.StreamResponse:
    """Start enrolling a second factor: a new secret, not active until confirmed."""
    rt = runtime(request)
    who = caller(request)
    if who.professional.totp_enabled:
        raise BadRequest("La double authentification est déjà activée.", code="totp_active")
    secret = totp.new_secret()
    await rt.accounts.set_totp(who.professional.id, secret, enabled=False)
    uri = totp.provisioning_uri(secret, who.professional.email, rt.config.accounts.totp_issuer)
    return json_response({"secret": secret, "otpauth_uri": uri})


async def totp_confirm(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    code = field_str(body, "code", max_length=16) or ""
    secret = await rt.accounts.totp_secret(who.professional.id)
    if secret is None or totp.verify(secret, code, rt.clock().timestamp()) < 0:
        raise BadRequest("Code de vérification incorrect.", code="invalid_totp")
    await _credentials_changed(request, "totp")
    await rt.accounts.set_totp(who.professional.id, secret, enabled=True)
    return json_response({"totp_enabled": True})


_CREDENTIALS_SCHEMA = {
    "type": "object",
    "required": ["email", "password"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "password": {"type": "string"},
        "totp": {"type": "string", "description": "6-digit code when TOTP is enabled"},
    },
}
PROFESSIONAL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "email": {"type": "string"},
        "display_name": {"type": "string"},
        "role": {
            "type": "string",
            "enum": ["nurse", "physician", "specialist", "coordinator", "admin"],
        },
        "specialty": {"type": ["string", "null"]},
        "rpps": {"type": ["string", "null"]},
        "totp_enabled": {"type": "boolean"},
    },
}
_SESSION_SCHEMA = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "description": "Bearer token for API clients"},
        "expires_at": {"type": "string", "format": "date-time"},
        "professional": PROFESSIONAL_SCHEMA,
    },
}

ROUTES = [
    Route(
        "POST",
        "/api/login",
        login,
        Action.PUBLIC,
        "Log in with e-mail and password (+TOTP)",
        "session",
        _CREDENTIALS_SCHEMA,
        response_schema=_SESSION_SCHEMA,
        errors=(400, 401, 413, 415, 429),
    ),
    Route(
        "POST",
        "/api/login/certificate",
        login_with_certificate,
        Action.PUBLIC,
        "Log in with the client certificate presented during the TLS handshake",
        "session",
        None,
        response_schema=_SESSION_SCHEMA,
        errors=(401, 429),
    ),
    Route(
        "POST",
        "/api/logout",
        logout,
        Action.PUBLIC,
        "End the current session",
        "session",
        success_status=204,
    ),
    Route(
        "GET",
        "/api/me",
        me,
        Action.VIEW_SELF,
        "The signed-in professional and their teams",
        "session",
        response_schema=PROFESSIONAL_SCHEMA,
        errors=(401,),
    ),
    Route(
        "POST",
        "/api/me/password",
        change_password,
        Action.MANAGE_OWN_SECURITY,
        "Change your password",
        "session",
        {
            "type": "object",
            "required": ["current_password", "new_password"],
            "properties": {
                "current_password": {"type": "string"},
                "new_password": {"type": "string"},
            },
        },
        success_status=204,
        errors=(400, 401, 413, 415),
    ),
    Route(
        "POST",
        "/api/me/totp",
        totp_setup,
        Action.MANAGE_OWN_SECURITY,
        "Start TOTP enrolment (returns a secret to confirm)",
        "session",
        errors=(400, 401),
    ),
    Route(
        "POST",
        "/api/me/totp/confirm",
        totp_confirm,
        Action.MANAGE_OWN_SECURITY,
        "Confirm TOTP enrolment with a current code",
        "session",
        {"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}},
        errors=(400, 401),
    ),
]
