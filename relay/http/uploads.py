"""Resumable chunked uploads over HTTP (tus-like; the core and the design are
:mod:`relay.uploads`). The last chunk runs the photo pipeline in the imaging process pool."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from relay.accounts import new_id
from relay.audit.events import AuditAction, EntityRef, ResourceKind
from relay.case_store import CaseStore, PhotoRecord
from relay.errors import NotFound
from relay.http import trail
from relay.http.context import caller, runtime
from relay.http.jsonio import json_response, read_json_object
from relay.http.route import Route
from relay.imaging.dicom_in import DicomSummary, read_dicom
from relay.imaging.errors import MalformedDicom
from relay.imaging.sanitize import SanitizedPhoto, sanitize_photo, sniff_format
from relay.imaging.workers import create_pool
from relay.locks import KeyedLocks
from relay.policy import Action
from relay.runtime import Runtime
from relay.uploads import Upload, UploadLimits, accept_chunk, new_upload, parse_offset

OFFSET_HEADER = "Upload-Offset"
UPLOAD_LIFETIME = timedelta(days=2)
_POOL: ProcessPoolExecutor | None = None
_COMPLETING = KeyedLocks()  # one completion of an upload at a time


def imaging_pool() -> ProcessPoolExecutor:
    """The process's imaging pool, started on first use (workers import Pillow once).

    Module-level because the aiohttp application is frozen once started; the pool's
    workers are joined by ``concurrent.futures``' exit hook.
    """
    global _POOL
    if _POOL is None:
        _POOL = create_pool(max_workers=2)
    return _POOL


def limits_of(rt: Runtime) -> UploadLimits:
    return UploadLimits(max_bytes=rt.config.http.max_upload_bytes)


def _upload_of(row: sqlite3.Row) -> Upload:
    return Upload(
        row["id"],
        row["owner_id"],
        row["size"],
        row["content_type"],
        row["offset_bytes"],
        datetime.fromisoformat(row["created_at"]),
    )


async def _owned(request: web.Request) -> tuple[Upload, sqlite3.Row]:
    rt = runtime(request)
    row = await rt.db.fetchone("SELECT * FROM uploads WHERE id = ?", (request.match_info["id"],))
    # Someone else's upload is answered like a missing one: ids are not to be probed.
    if row is None or row["owner_id"] != caller(request).professional.id:
        raise NotFound("Envoi introuvable.")
    return _upload_of(row), row


async def _state(rt: Runtime, upload: Upload, photo_id: str | None) -> dict[str, Any]:
    photo = None if photo_id is None else await CaseStore(rt.db, rt.blobs).photo(photo_id)
    return {
        "id": upload.id,
        "size": upload.size,
        "offset": upload.offset,
        "complete": upload.complete,
        "photo_id": photo_id,
        # Lets a client check that what it sent became the photo it attaches.
        "photo": None
        if photo is None
        else {"width": photo.width, "height": photo.height, "sha256": photo.sha256},
    }


async def create(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    who = caller(request).professional
    body = await read_json_object(request, 4096)
    upload = new_upload(
        new_id(), who.id, body.get("size"), body.get("content_type"), rt.clock(), limits_of(rt)
    )
    await rt.db.execute(
        "INSERT INTO uploads (id, owner_id, size, content_type, offset_bytes, created_at)"
        " VALUES (?, ?, ?, ?, 0, ?)",
        (upload.id, who.id, upload.size, upload.content_type, upload.created_at.isoformat()),
    )
    return json_response(
        await _state(rt, upload, None),
        status=201,
        headers={"Location": f"/api/uploads/{upload.id}", OFFSET_HEADER: "0"},
    )


async def status(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    upload, row = await _owned(request)
    headers = {OFFSET_HEADER: str(upload.offset), "Upload-Length": str(upload.size)}
    if request.method == "HEAD":
        return web.Response(status=200, headers=headers)
    return json_response(await _state(rt, upload, row["photo_id"]), headers=headers)


async def append(request: web.Request) -> web.StreamResponse:
    rt = runtime(request)
    upload, row = await _owned(request)
    limits = limits_of(rt)
    offset = parse_offset(request.headers.get(OFFSET_HEADER))
    chunk = await _read_body(request, limits.max_chunk_bytes + 1)
    if not (upload.complete and offset == upload.size and not chunk):
        advanced = accept_chunk(upload, offset, len(chunk), limits)
        if chunk:
            info = await rt.blobs.put(chunk)

            def record(conn: sqlite3.Connection) -> bool:
                # Conditional on the offset we checked: two racing PATCHes cannot both land.
                moved = conn.execute(
                    "UPDATE uploads SET offset_bytes = ? WHERE id = ? AND offset_bytes = ?",
                    (advanced.offset, upload.id, upload.offset),
                ).rowcount
                if moved:
                    conn.execute(
                        "INSERT INTO upload_chunks (upload_id, offset_bytes, length, blob_id)"
                        " VALUES (?, ?, ?, ?)",
                        (upload.id, upload.offset, len(chunk), info.blob_id),
                    )
                return bool(moved)

            try:
                landed = await rt.db.transaction(record)
            except BaseException:
                await rt.blobs.delete(info.blob_id)
                raise
            if not landed:
                await rt.blobs.delete(info.blob_id)
                current, _ = await _owned(request)
                accept_chunk(current, offset, len(chunk), limits)  # raises the 409
            upload = advanced
    photo_id: str | None = row["photo_id"]
    if upload.complete and photo_id is None:
        # A client retrying its last PATCH while the first still runs must not make two
        # photos: completions of one upload are serialised, and the second finds the first's.
        async with _COMPLETING.hold(upload.id):
            again = await rt.db.fetchone("SELECT photo_id FROM uploads WHERE id = ?", (upload.id,))
            if again is None:
                raise NotFound("Envoi introuvable.")
            photo_id = again["photo_id"] or await _complete(request, upload)
    return json_response(
        await _state(rt, upload, photo_id), headers={OFFSET_HEADER: str(upload.offset)}
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, up to ``limit`` bytes (``StreamReader.read(n)`` returns as soon as
    *some* bytes are there: a chunk is only acknowledged once entirely received)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        piece = await request.content.read(limit - size)
        if not piece:
            break
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)


def dicom_summary_json(summary: DicomSummary) -> bytes:
    """What the case view shows about a DICOM upload: acquisition facts, no identity."""
    return json.dumps(
        {
            "modality": summary.modality,
            "study_date": summary.study_date.isoformat() if summary.study_date else None,
            "body_part": summary.body_part,
            "anatomic_region": summary.anatomic_region,
            "rows": summary.rows,
            "columns": summary.columns,
            "frames": summary.frames,
            "photometric_interpretation": summary.photometric_interpretation,
        }
    ).encode()


def _process(data: bytes) -> SanitizedPhoto | DicomSummary:
    """In a worker: DICOM by its preamble magic, else the photo pipeline (allow-list)."""
    if sniff_format(data) == "DICOM":
        return read_dicom(data)
    return sanitize_photo(data)


async def _complete(request: web.Request, upload: Upload) -> str:
    """Join the chunks, sanitize off the loop, store only the outputs, drop the original."""
    rt = runtime(request)
    chunks = await rt.db.fetchall(
        "SELECT blob_id, length FROM upload_chunks WHERE upload_id = ? ORDER BY offset_bytes",
        (upload.id,),
    )
    parts = [await rt.blobs.read_all_verified(c["blob_id"], max_bytes=c["length"]) for c in chunks]
    data = b"".join(parts)
    del parts
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(imaging_pool(), _process, data)
    except BaseException:
        await _discard(rt, upload.id, [c["blob_id"] for c in chunks], delete_row=True)
        raise
    if isinstance(result, DicomSummary):
        if result.preview is None:
            await _discard(rt, upload.id, [c["blob_id"] for c in chunks], delete_row=True)
            raise MalformedDicom(
                "Fichier DICOM lu, mais sans image affichable : "
                f"{result.preview_unavailable or 'aperçu indisponible'}."
            )
        jpeg, thumbnail, fmt = result.preview, result.preview, "dicom"
        width, height = result.columns or 0, result.rows or 0
        summary_blob_id: str | None = (await rt.blobs.put(dicom_summary_json(result))).blob_id
    else:
        jpeg, thumbnail, fmt = result.jpeg, result.thumbnail, result.source_format.value
        width, height = result.width, result.height
        summary_blob_id = None
    jpeg_info = await rt.blobs.put(jpeg)
    thumb_info = await rt.blobs.put(thumbnail)
    photo = PhotoRecord(
        id=new_id(),
        case_id=None,
        owner_id=upload.owner_id,
        jpeg_blob_id=jpeg_info.blob_id,
        thumbnail_blob_id=thumb_info.blob_id,
        width=width,
        height=height,
        size=jpeg_info.size,
        sha256=jpeg_info.sha256,
        source_format=fmt,
        created_at=rt.clock(),
        summary_blob_id=summary_blob_id,
    )
    await trail.record(
        request,
        AuditAction.IMPORT,
        entities=(EntityRef(ResourceKind.PHOTO, photo.id),),
        detail=(("sha256", photo.sha256), ("format", fmt)),
    )
    await CaseStore(rt.db, rt.blobs).add_photo(photo)
    await rt.db.execute("UPDATE uploads SET photo_id = ? WHERE id = ?", (photo.id, upload.id))
    await _discard(rt, upload.id, [c["blob_id"] for c in chunks], delete_row=False)
    return photo.id


async def _discard(rt: Runtime, upload_id: str, blob_ids: list[str], *, delete_row: bool) -> None:
    """The original upload is never kept: its chunks go once processed (or refused)."""
    await rt.db.execute("DELETE FROM upload_chunks WHERE upload_id = ?", (upload_id,))
    if delete_row:
        await rt.db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
    for blob_id in blob_ids:
        await rt.blobs.delete(blob_id)


async def expire_uploads(rt: Runtime, now: datetime) -> int:
    """Forget uploads started more than :data:`UPLOAD_LIFETIME` ago: unfinished ones with
    their (encrypted) chunks, finished ones' bookkeeping rows. Returns how many."""
    rows = await rt.db.fetchall(
        "SELECT id FROM uploads WHERE created_at < ?", ((now - UPLOAD_LIFETIME).isoformat(),)
    )
    for row in rows:
        chunks = await rt.db.fetchall(
            "SELECT blob_id FROM upload_chunks WHERE upload_id = ?", (row["id"],)
        )
        await _discard(rt, row["id"], [c["blob_id"] for c in chunks], delete_row=True)
    return len(rows)


_STATE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "size": {"type": "integer"},
        "offset": {"type": "integer"},
        "complete": {"type": "boolean"},
        "photo_id": {"type": ["string", "null"]},
        "photo": {"type": ["object", "null"]},
    },
}

ROUTES = [
    Route(
        "POST",
        "/api/uploads",
        create,
        Action.UPLOAD_FILE,
        "Start a resumable photo upload (tus-like): {size, content_type}",
        "uploads",
        {
            "type": "object",
            "required": ["size", "content_type"],
            "properties": {"size": {"type": "integer"}, "content_type": {"type": "string"}},
        },
        response_schema=_STATE,
        success_status=201,
        errors=(400, 401, 403, 413, 415),
    ),
    Route(
        "PATCH",
        "/api/uploads/{id}",
        append,
        Action.UPLOAD_FILE,
        "Append a chunk at Upload-Offset; the last one runs the photo pipeline",
        "uploads",
        {"type": "string", "format": "binary"},
        request_content_type="application/offset+octet-stream",
        response_schema=_STATE,
        errors=(400, 401, 403, 404, 409, 413, 415, 422, 503),
    ),
    Route(
        "GET",
        "/api/uploads/{id}",
        status,
        Action.UPLOAD_FILE,
        "Current offset of an upload (to resume it)",
        "uploads",
        response_schema=_STATE,
        errors=(401, 403, 404),
    ),
    Route(
        "HEAD",
        "/api/uploads/{id}",
        status,
        Action.UPLOAD_FILE,
        "Current offset of an upload in the Upload-Offset header",
        "uploads",
        errors=(401, 403, 404),
        in_api_document=False,
    ),
]
