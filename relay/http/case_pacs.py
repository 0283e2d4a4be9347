"""Push a case's wound photos to the configured PACS (DICOMweb STOW-RS), audited first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from relay.audit.events import AuditAction, EntityRef, ResourceKind
from relay.dicom_export import new_uid
from relay.errors import BadRequest, Conflict
from relay.http import trail
from relay.http.cases import _dicom_of, _load, _patient_ref, store_of
from relay.http.context import runtime
from relay.http.jsonio import json_response
from relay.http.route import Route
from relay.pacs import BasicCredentials, stow
from relay.policy import Action
from relay.runtime import Runtime


def _credentials(rt: Runtime) -> BasicCredentials | None:
    settings = rt.config.pacs
    if not settings.username:
        return None
    password = ""
    if settings.password_file:
        path = rt.data.resolve(settings.password_file)
        assert path is not None
        password = Path(path).read_text(encoding="utf-8").strip()
    return BasicCredentials(settings.username, password)


async def push(request: web.Request) -> web.StreamResponse:
    """Every photo of the case as one DICOM study (new UIDs), sent in one STOW-RS request."""
    rt = runtime(request)
    url = rt.config.pacs.dicomweb_url.rstrip("/")
    if not url:
        raise Conflict("Aucun PACS n'est configuré sur ce relais.", code="pacs_not_configured")
    stored, _ = await _load(request, Action.VIEW_CASE)
    store = store_of(rt)
    photos = await store.photos_of(stored.case.id)
    if not photos:
        raise BadRequest("Cette demande n'a aucune photo à envoyer.", code="no_photo")
    req = await store.load_request(stored.request_blob_id)
    study, series, now = new_uid(), new_uid(), rt.clock()
    datasets = []
    for number, record in enumerate(photos, start=1):
        jpeg = await rt.blobs.read_all_verified(
            record.jpeg_blob_id, max_bytes=rt.config.http.max_upload_bytes
        )
        datasets.append(
            await asyncio.to_thread(
                _dicom_of,
                req,
                jpeg,
                record.created_at,
                now,
                study_uid=study,
                series_uid=series,
                instance_number=number,
            )
        )
    # Traced before anything leaves the relay (export of patient data to another system).
    await trail.record(
        request,
        AuditAction.EXPORT,
        entities=(EntityRef(ResourceKind.CASE, stored.case.id),),
        patient=stored.case.patient_key or _patient_ref(rt, req),
        detail=(("format", "dicomweb"), ("count", str(len(datasets)))),
    )
    timeout = aiohttp.ClientTimeout(total=rt.config.pacs.timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        result = await stow(
            url, datasets, session=session, auth=_credentials(rt), study_instance_uid=study
        )
    return json_response(
        {
            "study_instance_uid": study,
            "stored": len(result.stored),
            "failed": [
                {"sop_instance_uid": f.sop_instance_uid, "failure_reason": f.failure_reason}
                for f in result.failed
            ],
            "unaccounted": len(result.unaccounted),
            "ok": result.ok,
        },
        status=200 if result.ok else 502,
    )


ROUTES = [
    Route(
        "POST",
        "/api/cases/{id}/pacs",
        push,
        Action.VIEW_CASE,
        "Send the case's photos to the configured PACS (DICOMweb STOW-RS); audited export",
        "cases",
        errors=(400, 401, 403, 404, 409, 502, 503),
        resource=ResourceKind.CASE,
    )
]
