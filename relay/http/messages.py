"""Secure messaging JSON API: threads, messages, attachments, read state, team inboxes.

Every release of clinical content is traced first: listing an inbox or opening a thread
(``message_read``, the threads and messages shown), sending (``message_sent``, recorded just
before the commit, so that recipients never see an untraced message), downloading an
attachment (``attachment_downloaded``, with the receipt in ``X-Audit-Receipt``).
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certs.issue import email_of
from relay.audit.events import Actor, AuditAction, EntityRef, ResourceKind
from relay.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable
from relay.http import trail
from relay.http.context import caller, runtime
from relay.http.files import VERIFY_WHOLE_BELOW, stream_blob
from relay.http.jsonio import json_response, read_json_object
from relay.http.pages import signed_in_page
from relay.http.route import Route
from relay.mail.errors import EncryptionFailed
from relay.mail.smime import encrypt_message
from relay.messaging.content import MessageContent, ThreadContent
from relay.messaging.core import (
    parse_address,
    relation_of,
    validate_new_message,
    validate_new_thread,
)
from relay.messaging.model import Message, Participant, Thread, ThreadSummary
from relay.messaging.service import Messaging
from relay.policy import Action, Relation, authorize
from storage.errors import BlobIntegrityError

PAGE: Final = 50
MAX_PAGE: Final = 200
AUDIT_ENTITIES: Final = 16


def _messaging(request: web.Request) -> Messaging:
    return runtime(request).messaging


def _chunks(items: list[EntityRef], size: int = AUDIT_ENTITIES) -> list[tuple[EntityRef, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)] or [()]


def participant_json(p: Participant) -> dict[str, Any]:
    """A participant as pages show it."""
    return {
        "id": p.id,
        "kind": p.kind.value,
        "address": p.address,
        "display_name": p.display_name,
        "professional_id": p.professional_id,
        "team_id": p.team_id,
    }


def thread_json(thread: Thread, content: ThreadContent) -> dict[str, Any]:
    """A thread's header: subject, patient, participants."""
    return {
        "id": thread.id,
        "subject": content.subject,
        "patient": None if content.patient_ins is None else {"ins": content.patient_ins},
        "created_at": thread.created_at.isoformat(),
        "last_message_at": thread.last_message_at.isoformat(),
        "participants": [participant_json(p) for p in thread.participants],
    }


def message_json(
    thread: Thread, message: Message, content: MessageContent, read: set[str]
) -> dict[str, Any]:
    """A message with its attachments and the delivery state to each recipient."""
    author = (
        None
        if message.author_participant_id is None
        else thread.participant(message.author_participant_id)
    )
    names = content.attachment_names
    return {
        "id": message.id,
        "source": message.source.value,
        "created_at": message.created_at.isoformat(),
        "author": None
        if author is None
        else {
            "participant_id": author.id,
            "kind": author.kind.value,
            "professional_id": message.author_professional_id,
            "display_name": author.display_name,
            "address": author.address,
        },
        "text": content.text,
        "read": message.id in read,
        "attachments": [
            {
                "id": a.id,
                "filename": names[a.position] if a.position < len(names) else f"piece-{a.position}",
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
                "url": f"/api/threads/{thread.id}/attachments/{a.id}",
            }
            for a in message.attachments
        ],
        "deliveries": [
            {
                "participant_id": d.participant_id,
                "channel": d.channel.value,
                "state": d.state.value,
                "reason": d.reason,
                "updated_at": d.updated_at.isoformat(),
            }
            for d in message.deliveries
        ],
    }


async def _team_ids(request: web.Request) -> list[str]:
    rt = runtime(request)
    return [team.id for team in await rt.accounts.teams_of(caller(request).professional.id)]


async def _thread_for(request: web.Request, action: Action) -> tuple[Thread, list[str]]:
    """The thread of the URL, after the policy check of the caller's relation to it."""
    who = caller(request).professional
    thread = await _messaging(request).store.thread(request.match_info["id"])
    if thread is None:
        raise NotFound("Échange introuvable.")
    team_ids = await _team_ids(request)
    authorize(who.role, action, relation_of(thread, who.id, team_ids))
    return thread, team_ids


# --- handlers --------------------------------------------------------------------------------


async def list_threads(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request).professional
    authorize(who.role, Action.VIEW_THREAD, Relation.OWNER)
    team_ids = await _team_ids(request)
    only_team = request.query.get("team") or None
    if only_team is not None and only_team not in team_ids:
        raise Forbidden("Vous n'êtes pas membre de cette équipe.")
    try:
        limit = min(MAX_PAGE, max(1, int(request.query.get("limit", PAGE))))
    except ValueError:
        raise BadRequest("« limit » doit être un nombre.", code="invalid_field") from None
    summaries = await rt.messaging.store.threads_for(
        who.id, team_ids, limit=limit, only_team=only_team
    )
    items = [await _summary_json(rt.messaging, s) for s in summaries]
    entities = [EntityRef(ResourceKind.THREAD, s.thread.id) for s in summaries]
    for chunk in _chunks(entities):
        await trail.record(
            request,
            AuditAction.MESSAGE_READ,
            entities=chunk,
            detail=(("count", str(len(summaries))), ("reason", "inbox")),
        )
    unread = sum(s.unread_count for s in summaries)
    return json_response({"threads": items, "unread": unread})


async def _summary_json(messaging: Messaging, summary: ThreadSummary) -> dict[str, Any]:
    data = thread_json(summary.thread, await messaging.thread_content(summary.thread))
    data["patient"] = data["patient"] is not None  # the inbox says whether, not who
    data["message_count"] = summary.message_count
    data["unread_count"] = summary.unread_count
    return data


async def create_thread(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request).professional
    authorize(who.role, Action.START_THREAD)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    new = validate_new_thread(body)
    patient_ref = None if new.patient_ins is None else rt.audit.patient_reference(new.patient_ins)

    async def trace(thread_id: str, message_id: str) -> None:
        await trail.record(
            request,
            AuditAction.MESSAGE_SENT,
            entities=(
                EntityRef(ResourceKind.THREAD, thread_id),
                EntityRef(ResourceKind.MESSAGE, message_id),
            ),
            patient=patient_ref,
            detail=(("count", str(len(new.first.attachments))), ("reason", "thread_started")),
        )

    posted = await rt.messaging.start_thread(who, new, rt.clock(), before_commit=trace)
    thread = await rt.messaging.store.thread(posted.thread_id)
    assert thread is not None
    data = thread_json(thread, await rt.messaging.thread_content(thread))
    data["message_id"] = posted.message_id
    return json_response(data, status=201, headers={"Location": f"/api/threads/{posted.thread_id}"})


async def show_thread(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request).professional
    thread, _ = await _thread_for(request, Action.VIEW_THREAD)
    messaging = rt.messaging
    content = await messaging.thread_content(thread)
    messages = await messaging.store.messages(thread.id)
    read = await messaging.store.read_by(who.id, thread.id)
    shown = [message_json(thread, m, await messaging.message_content(m), read) for m in messages]
    entities = [EntityRef(ResourceKind.MESSAGE, m.id) for m in messages]
    for chunk in _chunks(entities, AUDIT_ENTITIES - 1):
        await trail.record(
            request,
            AuditAction.MESSAGE_READ,
            entities=(EntityRef(ResourceKind.THREAD, thread.id), *chunk),
            patient=thread.patient_ref,
            detail=(("count", str(len(messages))),),
        )
    data = thread_json(thread, content)
    data["messages"] = shown
    return json_response(data)


async def post_message(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request).professional
    thread, team_ids = await _thread_for(request, Action.POST_MESSAGE)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    new = validate_new_message(body)

    async def trace(thread_id: str, message_id: str) -> None:
        await trail.record(
            request,
            AuditAction.MESSAGE_SENT,
            entities=(
                EntityRef(ResourceKind.THREAD, thread_id),
                EntityRef(ResourceKind.MESSAGE, message_id),
            ),
            patient=thread.patient_ref,
            detail=(("count", str(len(new.attachments))),),
        )

    posted = await rt.messaging.reply(who, team_ids, thread, new, rt.clock(), before_commit=trace)
    return json_response(
        {"id": posted.message_id, "thread_id": posted.thread_id},
        status=201,
        headers={"Location": f"/api/threads/{posted.thread_id}"},
    )


async def mark_read(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request).professional
    thread, _ = await _thread_for(request, Action.VIEW_THREAD)
    ids: list[str] | None = None
    if request.can_read_body:
        body = await read_json_object(request, rt.config.http.max_json_bytes)
        raw = body.get("message_ids")
        if raw is not None:
            if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
                raise BadRequest("« message_ids » est une liste d'identifiants.")
            ids = list(raw)
    newly = await rt.messaging.mark_read(who.id, thread.id, ids, rt.clock())
    return json_response({"read": newly})


async def download_attachment(request: web.Request) -> web.StreamResponse:
    thread, _ = await _thread_for(request, Action.VIEW_THREAD)
    return await attachment_response(request, thread, request.match_info["attachment"])


async def attachment_response(
    request: web.Request, thread: Thread, attachment_id: str, *, actor: Actor | None = None
) -> web.StreamResponse:
    """One attachment of ``thread``: authenticated, traced (with receipt), then handed out.

    Shared by the professionals' thread view and the guest view (``actor`` = the guest).
    """
    rt = runtime(request)
    found = await rt.messaging.store.attachment(attachment_id)
    if found is None or found[1] != thread.id:
        raise NotFound("Pièce jointe introuvable.")
    attachment = found[0]
    message = await rt.messaging.store.message(attachment.message_id)
    assert message is not None
    names = (await rt.messaging.message_content(message)).attachment_names
    filename = names[attachment.position] if attachment.position < len(names) else "piece-jointe"
    # Large attachments in a blob of their own are streamed (each chunk authenticated, the
    # connection cut on failure) rather than held whole in memory.
    streamed = (
        attachment.blob_id != message.content_blob_id and attachment.size >= VERIFY_WHOLE_BELOW
    )
    data = b""
    if not streamed:
        try:
            data = await rt.messaging.attachment_data(message, attachment)
        except BlobIntegrityError:
            raise NotFound("Pièce jointe illisible (intégrité).") from None
    receipt = await trail.record(
        request,
        AuditAction.ATTACHMENT_DOWNLOADED,
        actor=actor,
        entities=(
            EntityRef(ResourceKind.THREAD, thread.id),
            EntityRef(ResourceKind.ATTACHMENT, attachment.id),
        ),
        patient=thread.patient_ref,
        detail=(("size", str(attachment.size)), ("sha256", attachment.sha256)),
        receipt=True,
    )
    assert receipt is not None
    headers = {
        "Content-Type": attachment.content_type or "application/octet-stream",
        "Content-Disposition": content_disposition(filename),
        "X-Content-SHA256": attachment.sha256,
        trail.RECEIPT_HEADER: receipt.to_header(),
    }
    if streamed:
        return await stream_blob(request, attachment.blob_id, attachment.size, headers)
    return web.Response(body=data, headers=headers)


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the UTF-8 name (RFC 6266 §4.3, RFC 8187)."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    encoded = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


async def register_certificate(request: web.Request) -> web.StreamResponse:
    """An administrator registers the S/MIME certificate of a recipient address: mail to it
    then carries the whole message, encrypted, instead of a notification."""
    rt = runtime(request)
    who = caller(request).professional
    authorize(who.role, Action.MANAGE_ACCOUNTS)
    body = await read_json_object(request, rt.config.http.max_json_bytes)
    address = parse_address(str(body.get("address", "")))
    pem = body.get("certificate")
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise BadRequest("« certificate » doit être un certificat PEM.", code="invalid_field")
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise BadRequest("Le certificat PEM est illisible.", code="invalid_certificate") from None
    if (email_of(certificate) or "").lower() != address:
        raise BadRequest(
            "Le certificat ne porte pas cette adresse (subjectAltName).",
            code="invalid_certificate",
        )
    now = rt.clock()
    _check_usable(certificate, now)
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    await trail.record(
        request,
        AuditAction.CREDENTIALS_CHANGED,
        entities=(EntityRef(ResourceKind.CERTIFICATE, fingerprint[:64]),),
        detail=(("reason", "smime_recipient_certificate"),),
    )
    await rt.messaging.store.put_certificate(
        address,
        certificate.public_bytes(Encoding.PEM).decode("ascii"),
        fingerprint,
        certificate.not_valid_after_utc,
        who.id,
        now,
    )
    return json_response(
        {
            "address": address,
            "fingerprint_sha256": fingerprint,
            "not_after": certificate.not_valid_after_utc.isoformat(),
        },
        status=201,
    )


def _check_usable(certificate: x509.Certificate, now: datetime) -> None:
    probe = EmailMessage()
    probe.set_content("probe")
    try:
        encrypt_message(probe, [certificate], now=now)
    except EncryptionFailed as exc:
        raise BadRequest(
            f"Certificat inutilisable pour le chiffrement S/MIME ({exc.message}).",
            code="invalid_certificate",
        ) from None


async def relay_certificate(request: web.Request) -> web.StreamResponse:
    """The relay's own S/MIME certificate: senders encrypt mail to the relay with it."""
    from relay.mail.service import relay_smime_paths

    rt = runtime(request)
    cert_path, _ = relay_smime_paths(rt.data, rt)
    try:
        pem = cert_path.read_bytes()
    except FileNotFoundError:
        # Issued in the background at first start (an RSA key takes seconds): not missing,
        # not yet there.
        raise ServiceUnavailable(
            "Le certificat S/MIME du relais est en cours de création ; réessayez dans un instant.",
            retry_after=5,
        ) from None
    return web.Response(
        body=pem,
        headers={
            "Content-Type": "application/pem-certificate-chain",
            "Content-Disposition": 'attachment; filename="relais-smime.pem"',
        },
    )


# --- pages -----------------------------------------------------------------------------------


async def inbox_page(request: web.Request) -> web.StreamResponse:
    return await signed_in_page(request, "inbox.html")


async def compose_page(request: web.Request) -> web.StreamResponse:
    return await signed_in_page(request, "compose.html")


async def thread_page(request: web.Request) -> web.StreamResponse:
    return await signed_in_page(request, "thread.html")


# --- routes ----------------------------------------------------------------------------------

_PARTICIPANT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["professional", "team", "external"]},
        "address": {"type": "string"},
        "display_name": {"type": "string"},
        "professional_id": {"type": ["string", "null"]},
        "team_id": {"type": ["string", "null"]},
    },
}
_ATTACHMENT_REF = {
    "type": "object",
    "required": ["file_id"],
    "properties": {"file_id": {"type": "string"}, "filename": {"type": "string"}},
}
_NEW_MESSAGE = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": 100_000},
        "attachments": {"type": "array", "items": _ATTACHMENT_REF, "maxItems": 20},
    },
}
_NEW_THREAD = {
    "type": "object",
    "required": ["recipients", "subject"],
    "properties": {
        "recipients": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "subject": {"type": "string", "maxLength": 200},
        "patient_ins": {"type": "string", "description": "INS/NIR, key checked"},
        **_NEW_MESSAGE["properties"],  # type: ignore[dict-item]
    },
}
_THREAD = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "subject": {"type": "string"},
        "participants": {"type": "array", "items": _PARTICIPANT},
        "messages": {"type": "array", "items": {"type": "object"}},
    },
}

ROUTES = [
    # The compose page is registered before /messagerie/{id} so that "nouveau" is not an id.
    Route(
        "GET", "/messagerie", inbox_page, Action.PUBLIC, "Inbox page", "web", in_api_document=False
    ),
    Route(
        "GET",
        "/messagerie/nouveau",
        compose_page,
        Action.PUBLIC,
        "Compose page",
        "web",
        in_api_document=False,
    ),
    Route(
        "GET",
        "/messagerie/{id}",
        thread_page,
        Action.PUBLIC,
        "Thread page",
        "web",
        in_api_document=False,
    ),
    Route(
        "GET",
        "/api/threads",
        list_threads,
        Action.VIEW_THREAD,
        "Inbox: threads of the caller and of their teams (?team=ID for one team), unread counts",
        "messages",
        response_schema={"type": "object"},
        errors=(401, 403, 503),
    ),
    Route(
        "POST",
        "/api/threads",
        create_thread,
        Action.START_THREAD,
        "Start a thread to professionals, teams or external addresses",
        "messages",
        _NEW_THREAD,
        response_schema=_THREAD,
        success_status=201,
        errors=(400, 401, 403, 413, 415, 503),
    ),
    Route(
        "GET",
        "/api/threads/{id}",
        show_thread,
        Action.VIEW_THREAD,
        "A thread with its messages, attachments and delivery states",
        "messages",
        response_schema=_THREAD,
        errors=(401, 403, 404, 503),
        resource=ResourceKind.THREAD,
    ),
    Route(
        "POST",
        "/api/threads/{id}/messages",
        post_message,
        Action.POST_MESSAGE,
        "Answer in a thread",
        "messages",
        _NEW_MESSAGE,
        response_schema={"type": "object"},
        success_status=201,
        errors=(400, 401, 403, 404, 413, 415, 503),
        resource=ResourceKind.THREAD,
    ),
    Route(
        "POST",
        "/api/threads/{id}/read",
        mark_read,
        Action.VIEW_THREAD,
        "Mark the thread's messages (or the listed ones) read by the caller",
        "messages",
        {"type": "object", "properties": {"message_ids": {"type": "array"}}},
        response_schema={"type": "object"},
        errors=(400, 401, 403, 404),
        resource=ResourceKind.THREAD,
    ),
    Route(
        "GET",
        "/api/threads/{id}/attachments/{attachment}",
        download_attachment,
        Action.VIEW_THREAD,
        "Download an attachment (audited; receipt in X-Audit-Receipt)",
        "messages",
        response_content_type="application/octet-stream",
        response_schema={"type": "string", "format": "binary"},
        errors=(401, 403, 404, 503),
        resource=ResourceKind.THREAD,
    ),
    Route(
        "POST",
        "/api/mail/certificates",
        register_certificate,
        Action.MANAGE_ACCOUNTS,
        "Register the S/MIME certificate of a recipient address (administrators)",
        "messages",
        {
            "type": "object",
            "required": ["address", "certificate"],
            "properties": {"address": {"type": "string"}, "certificate": {"type": "string"}},
        },
        response_schema={"type": "object"},
        success_status=201,
        errors=(400, 401, 403, 503),
    ),
    Route(
        "GET",
        "/api/mail/certificate",
        relay_certificate,
        Action.PUBLIC,
        "The relay's S/MIME certificate (PEM), to encrypt mail sent to the relay",
        "messages",
        response_content_type="application/pem-certificate-chain",
        response_schema={"type": "string"},
        errors=(503,),
    ),
]
