"""Teleconsultation recordings over HTTPS: the list, and each recording streamed back.

Recordings exist only when everyone present consented (the room enforces it). Reading one
is a clinical access: authorised by the policy table (``consultation.recording``: the
clinicians who organised or took part in the call), traced in the audit log before the
first byte leaves, streamed from the encrypted blob (a recording can be hundreds of MB).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.audit.events import AuditAction, EntityRef, ResourceKind
from relay.audit.log import Receipt
from relay.consultations import Consultation
from relay.errors import NotFound
from relay.http import trail
from relay.http.consultations import _load_for
from relay.http.context import runtime
from relay.http.files import stream_blob
from relay.http.jsonio import json_response
from relay.http.route import Route
from relay.policy import Action
from relay.recordings import RecordingStore
from signaling.recorder import Recording


def recording_json(consultation_id: str, recording: Recording) -> dict[str, Any]:
    return {
        "id": recording.id,
        "participant_id": recording.participant_id,
        "media_type": recording.media_type,
        "started_at": recording.started_at.isoformat(),
        "ended_at": recording.ended_at.isoformat(),
        "duration_seconds": round(recording.duration_seconds, 1),
        "size": recording.size,
        "sha256": recording.sha256,
        "video_frames": recording.video_frames,
        "audio_frames": recording.audio_frames,
        "end_reason": recording.end_reason,
        "url": f"/api/consultations/{consultation_id}/recordings/{recording.id}",
    }


async def list_recordings(request: web.Request) -> web.StreamResponse:
    _, consultation = await _load_for(request, Action.VIEW_RECORDING)
    found = await RecordingStore(runtime(request).db).list_for(consultation.id)
    await trail.record(
        request,
        AuditAction.CONSULTATION_READ,
        entities=(EntityRef(ResourceKind.CONSULTATION, consultation.id),),
        patient=consultation.patient_ref,
        detail=(("reason", "recordings_listed"), ("count", str(len(found)))),
    )
    return json_response({"recordings": [recording_json(consultation.id, r) for r in found]})


async def _load_recording(
    request: web.Request, action: Action
) -> tuple[Consultation, Recording, RecordingStore]:
    """The consultation (authorized for ``action``) and its recording named in the path."""
    _, consultation = await _load_for(request, action)
    store = RecordingStore(runtime(request).db)
    recording = await store.get(consultation.id, request.match_info["recording"])
    if recording is None:
        raise NotFound("Enregistrement introuvable.")
    return consultation, recording, store


async def _trace(
    request: web.Request,
    action: AuditAction,
    consultation: Consultation,
    recording: Recording,
    *,
    receipt: bool = False,
) -> Receipt | None:
    return await trail.record(
        request,
        action,
        entities=(
            EntityRef(ResourceKind.CONSULTATION, consultation.id),
            EntityRef(ResourceKind.RECORDING, recording.id),
        ),
        patient=consultation.patient_ref,
        detail=(("size", str(recording.size)), ("sha256", recording.sha256)),
        receipt=receipt,
    )


async def download_recording(request: web.Request) -> web.StreamResponse:
    consultation, recording, _ = await _load_recording(request, Action.VIEW_RECORDING)
    if not runtime(request).blobs.exists(recording.blob_id):
        raise NotFound("Enregistrement introuvable.")
    receipt = await _trace(
        request, AuditAction.ATTACHMENT_DOWNLOADED, consultation, recording, receipt=True
    )
    assert receipt is not None
    # No names in the file name: it ends up in download folders and browser histories.
    day = recording.started_at.strftime("%Y%m%d-%H%M%S")
    headers = {
        "Content-Type": recording.media_type,
        "Content-Disposition": f'attachment; filename="teleconsultation-{day}.webm"',
        "Cache-Control": "no-store",
        "X-Content-SHA256": recording.sha256,
        trail.RECEIPT_HEADER: receipt.to_header(),
    }
    return await stream_blob(request, recording.blob_id, recording.size, headers)


async def delete_recording(request: web.Request) -> web.StreamResponse:
    consultation, recording, store = await _load_recording(request, Action.DELETE_RECORDING)
    await _trace(request, AuditAction.RECORDING_DELETED, consultation, recording)
    # The row first: a recording no longer listed cannot be fetched; a blob left by a crash
    # between the two steps is encrypted, unreferenced, and never served.
    if await store.delete(consultation.id, recording.id):
        await runtime(request).blobs.delete(recording.blob_id)
    return web.Response(status=204)


_RECORDING = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "participant_id": {"type": "string"},
        "media_type": {"type": "string"},
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": "string", "format": "date-time"},
        "duration_seconds": {"type": "number"},
        "size": {"type": "integer"},
        "sha256": {"type": "string"},
        "video_frames": {"type": "integer"},
        "audio_frames": {"type": "integer"},
        "end_reason": {"type": "string"},
        "url": {"type": "string"},
    },
}

ROUTES = [
    Route(
        "GET",
        "/api/consultations/{id}/recordings",
        list_recordings,
        Action.VIEW_RECORDING,
        "The consultation's recordings (one per participant and uninterrupted stretch)",
        "consultations",
        response_schema={
            "type": "object",
            "properties": {"recordings": {"type": "array", "items": _RECORDING}},
        },
        errors=(401, 403, 404, 503),
        resource=ResourceKind.CONSULTATION,
    ),
    Route(
        "GET",
        "/api/consultations/{id}/recordings/{recording}",
        download_recording,
        Action.VIEW_RECORDING,
        "One recording (WebM, VP8 + Opus), streamed from its encrypted blob",
        "consultations",
        response_schema={"type": "string", "format": "binary"},
        response_content_type="video/webm",
        errors=(401, 403, 404, 503),
        resource=ResourceKind.CONSULTATION,
    ),
    Route(
        "DELETE",
        "/api/consultations/{id}/recordings/{recording}",
        delete_recording,
        Action.DELETE_RECORDING,
        "Erase one recording, its row and its encrypted media (the organizer; traced)",
        "consultations",
        success_status=204,
        errors=(401, 403, 404, 503),
        resource=ResourceKind.CONSULTATION,
    ),
]
