"""A DICOM upload: parsed under limits, its preview kept, its summary shown — no identity."""

from __future__ import annotations

import aiohttp

from tests.harness.accounts import NURSE
from tests.relay.cases_api.helpers import case_body, create_case, session_of, upload
from tests.relay.imaging import dicoms


async def test_dicom_upload_shows_summary_and_preview(http: aiohttp.ClientSession) -> None:
    dataset = dicoms.monochrome(dicoms.half_and_half(100, 3000), rows=24, columns=40)
    dataset.Modality = "CT"
    dataset.BodyPartExamined = "LEG"
    dataset.PatientName = "DUPONT^JEANNE"
    nurse = await session_of(http, NURSE.email)
    status, uploaded = await upload(
        http, nurse, dicoms.to_bytes(dataset), content_type="application/dicom"
    )
    assert status == 200, uploaded
    status, case = await create_case(
        http, nurse, {**case_body(), "photo_ids": [uploaded["photo_id"]]}
    )
    assert status == 201, case
    async with http.get(f"/api/cases/{case['id']}", headers=nurse) as response:
        view = await response.json()
        assert response.status == 200, view
    summary = view["photos"][0]["dicom"]
    assert summary["modality"] == "CT"
    assert summary["body_part"] == "LEG"
    assert (summary["rows"], summary["columns"]) == (24, 40)
    assert "DUPONT" not in str(summary)
    photo_id = view["photos"][0]["id"]
    async with http.get(f"/api/cases/{case['id']}/photos/{photo_id}", headers=nurse) as response:
        assert response.status == 200
        preview = await response.read()
    assert preview.startswith(b"\xff\xd8") and b"DUPONT" not in preview
