"""Who may open a case, idempotent creation, resumable uploads and the FHIR export."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from fhir.resources.R4B.bundle import Bundle

from tests.harness.accounts import NURSE, OTHER_NURSE, PHYSICIAN, SPECIALIST
from tests.relay.cases_api.helpers import case_body, create_case, session_of, upload
from tests.relay.imaging.images import phone_jpeg


async def test_specialist_outside_recipient_team_cannot_open(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    physician = await session_of(http, PHYSICIAN.email)  # msp-belleville, not dermato-cpts
    specialist = await session_of(http, SPECIALIST.email)
    status, case = await create_case(http, nurse)
    assert status == 201
    async with http.get(f"/api/cases/{case['id']}", headers=physician) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    async with http.post(
        f"/api/cases/{case['id']}/events", json={"event": "accept"}, headers=physician
    ) as response:
        assert response.status == 403
    async with http.get("/api/cases/queue", headers=physician) as response:
        assert case["id"] not in [c["id"] for c in (await response.json())["cases"]]
    async with http.get(f"/api/cases/{case['id']}", headers=specialist) as response:
        assert response.status == 200


async def test_nurse_sees_team_shared_cases_only(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    other = await session_of(http, OTHER_NURSE.email)  # no team
    physician = await session_of(http, PHYSICIAN.email)  # msp-belleville, like NURSE
    status, private = await create_case(http, nurse)
    assert status == 201
    status, shared = await create_case(
        http, nurse, {**case_body(), "share_with_team": "msp-belleville"}
    )
    assert status == 201
    for case_id in (private["id"], shared["id"]):
        async with http.get(f"/api/cases/{case_id}", headers=other) as response:
            assert response.status == 403
    async with http.get("/api/cases", headers=other) as response:
        listed = {c["id"] for c in (await response.json())["cases"]}
    assert not listed & {private["id"], shared["id"]}
    async with http.get(f"/api/cases/{shared['id']}", headers=physician) as response:
        assert response.status == 200
    async with http.get(f"/api/cases/{private['id']}", headers=physician) as response:
        assert response.status == 403
    async with http.get("/api/cases", headers=nurse) as response:
        mine = {c["id"] for c in (await response.json())["cases"]}
    assert {private["id"], shared["id"]} <= mine


async def test_retried_submit_creates_one_case(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    key = uuid.uuid4().hex
    status, uploaded = await upload(http, nurse, phone_jpeg())
    assert status == 200
    body = {**case_body(), "photo_ids": [uploaded["photo_id"]]}
    first_status, first = await create_case(http, nurse, body, key=key)
    second_status, second = await create_case(http, nurse, body, key=key)
    assert (first_status, second_status) == (201, 200)
    assert first["id"] == second["id"]
    assert second["state"] == "submitted" and len(second["photos"]) == 1
    async with http.get("/api/cases", headers=nurse) as response:
        ids = [c["id"] for c in (await response.json())["cases"]]
    assert ids.count(first["id"]) == 1
    third_status, third = await create_case(http, nurse, key=uuid.uuid4().hex)
    assert third_status == 201 and third["id"] != first["id"]


async def test_chunk_at_wrong_offset_gets_409_with_current_offset(
    http: aiohttp.ClientSession,
) -> None:
    nurse = await session_of(http, NURSE.email)
    data = phone_jpeg()
    async with http.post(
        "/api/uploads", json={"size": len(data), "content_type": "image/jpeg"}, headers=nurse
    ) as response:
        upload_id = (await response.json())["id"]
    headers = {**nurse, "Content-Type": "application/offset+octet-stream"}
    async with http.patch(
        f"/api/uploads/{upload_id}", data=data[:1000], headers={**headers, "Upload-Offset": "0"}
    ) as response:
        assert response.status == 200
        assert response.headers["Upload-Offset"] == "1000"
    async with http.patch(
        f"/api/uploads/{upload_id}", data=data[500:], headers={**headers, "Upload-Offset": "500"}
    ) as response:
        assert response.status == 409
        body = await response.json()
        assert body["error"]["code"] == "upload_offset_mismatch"
        assert "1000" in body["error"]["message"]
    async with http.head(f"/api/uploads/{upload_id}", headers=nurse) as response:
        assert response.headers["Upload-Offset"] == "1000"
    other = await session_of(http, OTHER_NURSE.email)
    async with http.head(f"/api/uploads/{upload_id}", headers=other) as response:
        assert response.status == 404  # someone else's upload is not even confirmed


async def test_fhir_bundle_validates(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    specialist = await session_of(http, SPECIALIST.email)
    status, uploaded = await upload(http, nurse, phone_jpeg())
    assert status == 200
    status, case = await create_case(
        http, nurse, {**case_body(), "photo_ids": [uploaded["photo_id"]]}
    )
    assert status == 201
    for event in ({"event": "accept"}, {"event": "answer", "text": "Avis : hydrofibre."}):
        async with http.post(
            f"/api/cases/{case['id']}/events", json=event, headers=specialist
        ) as response:
            assert response.status == 200, await response.text()
    async with http.get(f"/api/cases/{case['id']}/fhir", headers=nurse) as response:
        assert response.status == 200
        assert response.content_type == "application/fhir+json"
        assert response.headers["X-Audit-Receipt"]
        document: dict[str, Any] = await response.json(content_type=None)
    bundle = Bundle.model_validate(document)
    kinds = {entry.resource.__resource_type__ for entry in bundle.entry or [] if entry.resource}
    assert {"ServiceRequest", "Task", "Communication", "Media", "Consent", "Patient"} <= kinds
