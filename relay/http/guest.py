"""The guest view: an external recipient (no account, no certificate) opens ONE thread.

The notification mail links to ``/invite/<participant id>``. The page asks for a one-time
code, mailed to the participant's own address (``POST /api/guest/{id}/code``); the code opens
a guest session (``POST /api/guest/{id}/session``, an HttpOnly cookie scoped to
``/api/guest``) that reads that thread, downloads its attachments and answers in it —
nothing else. Codes and session tokens are stored hashed; a code serves once, expires, and
five wrong tries void it. Every step is audited with the guest as actor.

A guest answers (``POST /api/guest/messages``) with text as JSON, or with files too as
``multipart/form-data`` (fields ``text`` and ``files``): the files are streamed into the encrypted
blob store under the professionals' limits (per file ``http.max_upload_bytes``, per message
``messaging.max_message_bytes``), each traced as an import, and belong to the answer (deleted
if it fails). That request must carry ``X-Relais-Guest: 1``: the session is a cookie, and a
cross-site form can post multipart but not set a header without a CORS preflight, never
granted (the JSON endpoints get the same protection from their content type).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import BodyPartReader, web

from relay.audit.events import Actor, ActorKind, AuditAction, EntityRef, Outcome, ResourceKind
from relay.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
)
from relay.http import trail
from relay.http.context import runtime
from relay.http.jsonio import field_str, json_response, read_json_object
from relay.http.messages import AUDIT_ENTITIES, attachment_response
from relay.http.route import Route
from relay.mail.limits import sanitize_filename
from relay.messaging.core import MAX_ATTACHMENTS, MAX_TEXT
from relay.messaging.model import NewAttachment, Participant, Thread
from relay.policy import Action
from storage.errors import BlobTooLarge

GUEST_COOKIE: Final = "relais_guest_thread"
GUEST_HEADER: Final = "X-Relais-Guest"
# A declared type/subtype as /api/files accepts it; anything else is stored as octet-stream.
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}$")


def guest_actor(participant: Participant) -> Actor:
    """The audit actor of a guest: the external participant, by opaque id only."""
    # No guest actor kind in the audit vocabulary yet: the patient/guest kind, another role.
    return Actor(ActorKind.PATIENT, participant.id, "external_guest")


async def _participant(request: web.Request) -> Participant:
    participant = await runtime(request).messaging.store.external_participant(
        request.match_info["id"]
    )
    if participant is None:
        raise NotFound("Lien d'accès invalide.")
    return participant


async def _guest(request: web.Request) -> tuple[Participant, Thread]:
    rt = runtime(request)
    token = request.cookies.get(GUEST_COOKIE)
    participant = None if not token else await rt.messaging.store.guest_session(token, rt.clock())
    if participant is None:
        raise Unauthenticated(
            "Accès invité expiré : demandez un nouveau code depuis le lien reçu.",
            code="guest_session_expired",
        )
    thread = await rt.messaging.store.thread(participant.thread_id)
    if thread is None or thread.participant(participant.id) is None:
        raise Unauthenticated("Cet échange n'est plus accessible.", code="guest_session_expired")
    return participant, thread


async def request_code(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    participant = await _participant(request)
    await trail.record(
        request,
        AuditAction.CREDENTIALS_CHANGED,
        actor=guest_actor(participant),
        entities=(EntityRef(ResourceKind.THREAD, participant.thread_id),),
        detail=(("reason", "guest_code_sent"),),
    )
    await rt.messaging.send_guest_code(participant, rt.clock())
    return json_response({"sent_to": _masked(participant.address)}, status=202)


def _masked(address: str) -> str:
    """Where the code went, without spelling out the address to whoever holds the link."""
    local, _, domain = address.partition("@")
    return f"{local[:2]}{'•' * max(1, len(local) - 2)}@{domain}"


async def open_session(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    participant = await _participant(request)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    code = field_str(body, "code", max_length=32) or ""
    actor = guest_actor(participant)
    entities = (EntityRef(ResourceKind.THREAD, participant.thread_id),)
    try:
        token, expires_at = await rt.messaging.open_guest_session(participant, code, rt.clock())
    except Unauthenticated:
        await trail.record(
            request,
            AuditAction.LOGIN_FAILED,
            Outcome.MINOR_FAILURE,
            actor=actor,
            entities=entities,
            detail=(("method", "join_link"), ("reason", "guest_code_invalid")),
        )
        raise
    await trail.record(
        request,
        AuditAction.LOGIN_SUCCEEDED,
        actor=actor,
        entities=entities,
        detail=(("method", "join_link"), ("reason", "guest_code")),
    )
    response = json_response({"expires_at": expires_at.isoformat()})
    response.set_cookie(
        GUEST_COOKIE,
        token,
        max_age=int(rt.config.messaging.guest_session_hours * 3600),
        secure=True,
        httponly=True,
        samesite="Strict",
        path="/api/guest",
    )
    return response


async def show_thread(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    participant, thread = await _guest(request)
    messaging = rt.messaging
    content = await messaging.thread_content(thread)
    messages = await messaging.store.messages(thread.id)
    read = await messaging.store.read_by(participant.id, thread.id)
    shown: list[dict[str, Any]] = []
    for message in messages:
        body = await messaging.message_content(message)
        author = (
            None
            if message.author_participant_id is None
            else thread.participant(message.author_participant_id)
        )
        shown.append(
            {
                "id": message.id,
                "created_at": message.created_at.isoformat(),
                "author": None if author is None else author.display_name,
                "mine": author is not None and author.id == participant.id,
                "text": body.text,
                "read": message.id in read,
                "attachments": [
                    {
                        "id": a.id,
                        "filename": body.attachment_names[a.position]
                        if a.position < len(body.attachment_names)
                        else "piece-jointe",
                        "content_type": a.content_type,
                        "size": a.size,
                        "url": f"/api/guest/attachments/{a.id}",
                    }
                    for a in message.attachments
                ],
            }
        )
    ids = [EntityRef(ResourceKind.MESSAGE, m.id) for m in messages]
    for start in range(0, max(1, len(ids)), AUDIT_ENTITIES - 1):
        await trail.record(
            request,
            AuditAction.MESSAGE_READ,
            actor=guest_actor(participant),
            entities=(
                EntityRef(ResourceKind.THREAD, thread.id),
                *ids[start : start + AUDIT_ENTITIES - 1],
            ),
            patient=thread.patient_ref,
            detail=(("count", str(len(messages))),),
        )
    await messaging.mark_read(participant.id, thread.id, None, rt.clock())
    return json_response(
        {
            "subject": content.subject,
            "patient": None if content.patient_ins is None else {"ins": content.patient_ins},
            "me": participant.display_name,
            "participants": [p.display_name for p in thread.participants],
            "messages": shown,
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    participant, thread = await _guest(request)
    return await attachment_response(
        request, thread, request.match_info["id"], actor=guest_actor(participant)
    )


async def reply(request: web.Request) -> web.StreamResponse:
    if request.content_type == "multipart/form-data":
        return await _reply_with_files(request)
    rt = runtime(request)
    participant, thread = await _guest(request)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    text = (field_str(body, "text", max_length=MAX_TEXT) or "").replace("\r\n", "\n")
    if not text.strip():
        raise BadRequest("Le message est vide.", code="missing_field")

    async def trace(thread_id: str, message_id: str) -> None:
        await trail.record(
            request,
            AuditAction.MESSAGE_SENT,
            actor=guest_actor(participant),
            entities=(
                EntityRef(ResourceKind.THREAD, thread_id),
                EntityRef(ResourceKind.MESSAGE, message_id),
            ),
            patient=thread.patient_ref,
            detail=(("reason", "guest_reply"),),
        )

    posted = await rt.messaging.post_guest(participant, text, rt.clock(), before_commit=trace)
    return json_response({"id": posted.message_id}, status=201)


async def _chunks(part: BodyPartReader, hasher: hashlib._Hash) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(256 * 1024):
        hasher.update(chunk)
        yield chunk


async def _text_field(part: BodyPartReader) -> str:
    limit = MAX_TEXT * 4  # UTF-8: at most 4 bytes a character
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"Le message dépasse {MAX_TEXT} caractères.")
    try:
        text = data.decode(part.get_charset("utf-8"))
    except (LookupError, UnicodeDecodeError):
        raise BadRequest("Le texte n'est pas encodé en UTF-8.", code="invalid_field") from None
    if len(text) > MAX_TEXT:
        raise PayloadTooLarge(f"Le message dépasse {MAX_TEXT} caractères.")
    return text.replace("\r\n", "\n")


async def _reply_with_files(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    participant, thread = await _guest(request)
    if request.headers.get(GUEST_HEADER) != "1":
        raise Forbidden(f"En-tête {GUEST_HEADER} manquant.", code="guest_header_missing")
    actor = guest_actor(participant)
    per_file = rt.config.http.max_upload_bytes
    per_message = rt.messaging.config.max_message_bytes
    too_large = PayloadTooLarge(
        f"Le message et ses pièces jointes dépassent {per_message // (1024 * 1024)} Mo."
    )
    text = ""
    files: list[NewAttachment] = []
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Formulaire imbriqué non accepté.", code="invalid_field")
            if part.name == "text":
                text = await _text_field(part)
                continue
            if part.name != "files":
                raise BadRequest(f"Champ inconnu « {part.name} ».", code="invalid_field")
            if len(files) >= MAX_ATTACHMENTS:
                raise BadRequest(
                    f"{MAX_ATTACHMENTS} pièces jointes au plus.", code="too_many_attachments"
                )
            declared = (part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            content_type = (
                declared if _CONTENT_TYPE.fullmatch(declared) else "application/octet-stream"
            )
            budget = min(per_file, per_message - sum(f.size for f in files))
            hasher = hashlib.sha256()
            try:
                info = await rt.blobs.put(
                    _chunks(part, hasher), max_bytes=max(0, budget), digest=hasher.hexdigest
                )
            except BlobTooLarge:
                raise too_large from None
            files.append(
                NewAttachment(
                    info.blob_id,
                    sanitize_filename(part.filename, content_type, len(files) + 1),
                    content_type,
                    info.size,
                    info.sha256,
                )
            )
            await trail.record(
                request,
                AuditAction.IMPORT,
                actor=actor,
                entities=(
                    EntityRef(ResourceKind.THREAD, thread.id),
                    EntityRef(ResourceKind.ATTACHMENT, info.blob_id),
                ),
                detail=(("size", str(info.size)), ("sha256", info.sha256)),
            )
        if not text.strip() and not files:
            raise BadRequest("Le message est vide.", code="missing_field")
    except BaseException:
        for stored in files:
            assert stored.blob_id is not None
            await rt.blobs.delete(stored.blob_id)
        raise

    async def trace(thread_id: str, message_id: str) -> None:
        await trail.record(
            request,
            AuditAction.MESSAGE_SENT,
            actor=actor,
            entities=(
                EntityRef(ResourceKind.THREAD, thread_id),
                EntityRef(ResourceKind.MESSAGE, message_id),
            ),
            patient=thread.patient_ref,
            detail=(("reason", "guest_reply"), ("count", str(len(files)))),
        )

    posted = await rt.messaging.post_guest(
        participant, text, rt.clock(), attachments=files, before_commit=trace
    )
    return json_response({"id": posted.message_id}, status=201)


async def guest_page(request: web.Request) -> web.StreamResponse:
    from relay.http.pages import WEB

    return web.FileResponse(
        WEB / "guest.html", headers={"Content-Type": "text/html; charset=utf-8"}
    )


ROUTES = [
    Route(
        "GET",
        "/invite/{id}",
        guest_page,
        Action.PUBLIC,
        "Guest view page",
        "web",
        in_api_document=False,
    ),
    Route(
        "POST",
        "/api/guest/{id}/code",
        request_code,
        Action.PUBLIC,
        "Mail a one-time code to the external participant's own address",
        "guest",
        response_schema={"type": "object"},
        success_status=202,
        errors=(404, 429, 503),
    ),
    Route(
        "POST",
        "/api/guest/{id}/session",
        open_session,
        Action.PUBLIC,
        "Exchange the one-time code for a guest session (cookie)",
        "guest",
        {"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}},
        response_schema={"type": "object"},
        errors=(400, 401, 404, 415, 429, 503),
    ),
    Route(
        "GET",
        "/api/guest/thread",
        show_thread,
        Action.PUBLIC,
        "The guest's thread (guest session)",
        "guest",
        response_schema={"type": "object"},
        errors=(401, 503),
    ),
    Route(
        "GET",
        "/api/guest/attachments/{id}",
        download,
        Action.PUBLIC,
        "Download an attachment of the guest's thread (guest session; audited)",
        "guest",
        response_content_type="application/octet-stream",
        response_schema={"type": "string", "format": "binary"},
        errors=(401, 404, 503),
    ),
    Route(
        "POST",
        "/api/guest/messages",
        reply,
        Action.PUBLIC,
        "Answer in the guest's thread (guest session). With files: multipart/form-data, fields"
        " text and files, header X-Relais-Guest: 1 (each file stored encrypted and audited)",
        "guest",
        {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        other_request_bodies=(
            (
                "multipart/form-data",
                {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                    },
                },
            ),
        ),
        response_schema={"type": "object"},
        success_status=201,
        errors=(400, 401, 403, 413, 415, 503),
    ),
]
