"""DICOM export of a case's photo (dciodvfy) and the RQD yearly limit warning."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import pydicom

from tests.harness.accounts import NURSE, SPECIALIST
from tests.relay.cases.helpers import with_nir_key
from tests.relay.cases_api.helpers import case_body, create_case, session_of, upload
from tests.relay.imaging.images import phone_jpeg
from tests.relay.imaging.test_dicom_export import dciodvfy


async def test_photo_exported_as_dicom_passes_dciodvfy(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    nurse = await session_of(http, NURSE.email)
    status, uploaded = await upload(http, nurse, phone_jpeg(orientation=6))
    assert status == 200
    status, case = await create_case(
        http, nurse, {**case_body(), "photo_ids": [uploaded["photo_id"]]}
    )
    assert status == 201
    photo_id = case["photos"][0]["id"]
    async with http.get(
        f"/api/cases/{case['id']}/photos/{photo_id}/dicom", headers=nurse
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/dicom"
        assert response.headers["X-Audit-Receipt"]
        data = await response.read()
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic Image
    assert dataset.get("Laterality") == "L"
    assert dataset.PatientID == case_body()["patient"]["nir"]
    path = tmp_path / "photo.dcm"
    path.write_bytes(data)
    errors, _warnings = dciodvfy(path)
    assert errors == []


async def test_fifth_rqd_for_same_patient_warns(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    specialist = await session_of(http, SPECIALIST.email)
    body = case_body(nir=with_nir_key("2500375999888"))  # a patient of this test only
    warnings: list[list[str]] = []
    for _ in range(5):
        status, case = await create_case(http, nurse, body)
        assert status == 201, case
        for event in ({"event": "accept"}, {"event": "answer", "text": "Avis donné."}):
            async with http.post(
                f"/api/cases/{case['id']}/events", json=event, headers=specialist
            ) as response:
                assert response.status == 200, await response.text()
                answered = await response.json()
        warnings.append(answered["billing_warnings"])
    assert warnings[:4] == [[], [], [], []]
    assert len(warnings[4]) == 1 and "RQD" in warnings[4][0]


async def test_earlier_photos_of_the_same_wound_are_listed(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    specialist = await session_of(http, SPECIALIST.email)
    body = case_body(nir=with_nir_key("2500375777666"))
    ids = []
    for _ in range(2):
        status, uploaded = await upload(http, nurse, phone_jpeg())
        assert status == 200
        status, case = await create_case(http, nurse, {**body, "photo_ids": [uploaded["photo_id"]]})
        assert status == 201
        ids.append((case["id"], case["photos"][0]["id"]))
    # The other heel of the same patient: another wound, not listed.
    status, uploaded = await upload(http, nurse, phone_jpeg())
    other_side = {**body, "wound": {**body["wound"], "laterality": "right"}}
    status, _ = await create_case(http, nurse, {**other_side, "photo_ids": [uploaded["photo_id"]]})
    assert status == 201
    async with http.get(f"/api/cases/{ids[1][0]}", headers=specialist) as response:
        view = await response.json()
    assert [(p["case_id"], p["id"]) for p in view["earlier_photos"]] == [ids[0]]
    async with http.get(
        f"/api/cases/{ids[0][0]}/photos/{ids[0][1]}?size=thumbnail", headers=specialist
    ) as response:
        assert response.status == 200
