"""A case's photos pushed to a real Orthanc over DICOMweb STOW-RS, from the API."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.conftest import require_component
from tests.harness.accounts import NURSE, seed
from tests.harness.relay_process import init_data_dir, start_relay
from tests.relay.cases_api.helpers import case_body, create_case, session_of, upload
from tests.relay.imaging.images import phone_jpeg
from tests.relay.imaging.orthanc_server import ORTHANC, orthanc_server


async def test_case_photos_reach_the_pacs_as_one_study(tmp_path: Path) -> None:
    require_component(ORTHANC, "orthanc")
    (tmp_path / "orthanc").mkdir()
    with orthanc_server(tmp_path / "orthanc") as pacs:
        password_file = tmp_path / "pacs-password"
        password_file.write_text(pacs.password)
        root = tmp_path / "relay"
        root.mkdir()
        data_dir = init_data_dir(root)
        seed(data_dir, root)
        relay = start_relay(
            root,
            {
                "RELAIS_PACS_DICOMWEB_URL": pacs.dicomweb_url,
                "RELAIS_PACS_USERNAME": pacs.username,
                "RELAIS_PACS_PASSWORD_FILE": str(password_file),
            },
        )
        try:
            connector = aiohttp.TCPConnector(ssl=relay.ssl_context())
            async with aiohttp.ClientSession(base_url=relay.url, connector=connector) as http:
                nurse = await session_of(http, NURSE.email)
                photo_ids = []
                for orientation in (1, 6):
                    status, uploaded = await upload(
                        http, nurse, phone_jpeg(orientation=orientation)
                    )
                    assert status == 200, uploaded
                    photo_ids.append(uploaded["photo_id"])
                status, case = await create_case(
                    http, nurse, {**case_body(), "photo_ids": photo_ids}
                )
                assert status == 201, case
                async with http.post(f"/api/cases/{case['id']}/pacs", headers=nurse) as r:
                    result = await r.json()
                    assert r.status == 200, result
            assert result["stored"] == 2 and result["ok"] is True
            studies = json.loads(pacs.get("/studies?expand"))
            assert len(studies) == 1
            assert studies[0]["MainDicomTags"]["StudyInstanceUID"] == result["study_instance_uid"]
            instances = json.loads(pacs.get("/instances"))
            assert len(instances) == 2
        finally:
            relay.stop()


async def test_push_without_a_configured_pacs_is_refused(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    status, uploaded = await upload(http, nurse, phone_jpeg())
    assert status == 200
    status, case = await create_case(
        http, nurse, {**case_body(), "photo_ids": [uploaded["photo_id"]]}
    )
    assert status == 201
    async with http.post(f"/api/cases/{case['id']}/pacs", headers=nurse) as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "pacs_not_configured"
