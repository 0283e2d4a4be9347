"""Encrypted file upload and download (the base of attachments and photos).

The body is streamed into the encrypted blob store; ``201`` is sent only once the
blob is fsynced and its row committed, so an acknowledged file survives a crash.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator

from aiohttp import web

from relay.accounts import new_id
from relay.audit.events import AuditAction, EntityRef, ResourceKind
from relay.errors import BadRequest, NotFound, PayloadTooLarge
from relay.http import trail
from relay.http.context import caller, runtime
from relay.http.jsonio import json_response
from relay.http.route import Route
from relay.policy import Action, Relation, authorize
from storage.errors import BlobIntegrityError, BlobTooLarge

log = logging.getLogger("relais.files")

# Small files are authenticated whole before the first byte leaves; larger ones are
# streamed chunk by chunk (each chunk authenticated) and the connection is aborted
# on failure, so a client never receives a complete-looking altered file.
VERIFY_WHOLE_BELOW = 8 * 1024 * 1024
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+\-]{0,63}$")


async def _body_chunks(request: web.Request, hasher: hashlib._Hash) -> AsyncIterator[bytes]:
    # Hash as the bytes arrive (the loop mostly waits for the network here; 256 KiB hash in
    # ~0.2 ms), so the blob store only encrypts and writes.
    async for chunk in request.content.iter_chunked(256 * 1024):
        hasher.update(chunk)
        yield chunk


async def upload(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    authorize(who.professional.role, Action.UPLOAD_FILE)
    content_type = request.content_type.lower()
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise BadRequest("Type de contenu invalide.", code="invalid_content_type")
    limit = rt.config.http.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Le fichier dépasse la taille maximale de {limit} octets.")
    try:
        hasher = hashlib.sha256()
        info = await rt.blobs.put(
            _body_chunks(request, hasher), max_bytes=limit, digest=hasher.hexdigest
        )
    except BlobTooLarge:
        raise PayloadTooLarge(f"Le fichier dépasse la taille maximale de {limit} octets.") from None
    file_id = new_id()
    now = rt.clock()

    def insert(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO files (id, blob_id, owner_id, content_type, size, sha256, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                file_id,
                info.blob_id,
                who.professional.id,
                content_type,
                info.size,
                info.sha256,
                now.isoformat(),
            ),
        )

    try:
        await trail.record(
            request,
            AuditAction.IMPORT,
            entities=(EntityRef(ResourceKind.ATTACHMENT, file_id),),
            detail=(("size", str(info.size)), ("sha256", info.sha256)),
        )
        await rt.db.transaction(insert)
    except BaseException:
        await rt.blobs.delete(info.blob_id)
        raise
    return json_response(
        {"id": file_id, "size": info.size, "sha256": info.sha256, "content_type": content_type},
        status=201,
        headers={"Location": f"/api/files/{file_id}"},
    )


async def download(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request)
    row = await rt.db.fetchone("SELECT * FROM files WHERE id = ?", (request.match_info["id"],))
    if row is None:
        raise NotFound("Fichier introuvable.")
    relation = Relation.OWNER if row["owner_id"] == who.professional.id else Relation.NONE
    authorize(who.professional.role, Action.DOWNLOAD_FILE, relation)
    headers = {
        "Content-Type": row["content_type"],
        "Content-Disposition": "attachment",
        "X-Content-SHA256": row["sha256"],
    }
    data = None
    if row["size"] < VERIFY_WHOLE_BELOW:
        # Authenticated before it is traced, traced before it is released.
        data = await rt.blobs.read_all_verified(row["blob_id"], max_bytes=VERIFY_WHOLE_BELOW)
    receipt = await trail.record(
        request,
        AuditAction.ATTACHMENT_DOWNLOADED,
        entities=(EntityRef(ResourceKind.ATTACHMENT, row["id"]),),
        detail=(("size", str(row["size"])), ("sha256", row["sha256"])),
        receipt=True,
    )
    assert receipt is not None
    headers[trail.RECEIPT_HEADER] = receipt.to_header()
    if data is not None:
        return web.Response(body=data, headers=headers)
    return await stream_blob(request, row["blob_id"], row["size"], headers)


async def stream_blob(
    request: web.Request, blob_id: str, size: int, headers: dict[str, str]
) -> web.StreamResponse:
    """Stream a blob whose release is already traced. Each chunk is authenticated before it
    is sent; an integrity failure mid-stream aborts the connection, so the client sees a
    truncated transfer (Content-Length unmet), never altered bytes."""
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    await response.prepare(request)
    try:
        async with await runtime(request).blobs.open_read(blob_id) as reader:
            async for chunk in reader:
                await response.write(chunk)
    except BlobIntegrityError:
        log.error("integrity failure while streaming blob %s; connection aborted", blob_id)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


_FILE_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "size": {"type": "integer"},
        "sha256": {"type": "string"},
        "content_type": {"type": "string"},
    },
}

ROUTES = [
    Route(
        "POST",
        "/api/files",
        upload,
        Action.UPLOAD_FILE,
        "Upload a file (raw body); stored encrypted, acknowledged once durable",
        "files",
        {"type": "string", "format": "binary"},
        request_content_type="application/octet-stream",
        response_schema=_FILE_SCHEMA,
        success_status=201,
        errors=(400, 401, 403, 413, 503),
    ),
    Route(
        "GET",
        "/api/files/{id}",
        download,
        Action.DOWNLOAD_FILE,
        "Download a file you own",
        "files",
        response_content_type="application/octet-stream",
        response_schema={"type": "string", "format": "binary"},
        errors=(401, 403, 404, 503),
        resource=ResourceKind.ATTACHMENT,
    ),
]
