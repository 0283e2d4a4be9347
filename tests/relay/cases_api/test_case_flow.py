"""End to end: a nurse's case reaches the dermatology team and the answer comes back."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.harness.accounts import NURSE, SPECIALIST
from tests.relay.cases_api.helpers import create_case, session_of, upload
from tests.relay.imaging.images import assert_clean, phone_jpeg


async def test_nurse_to_specialist_and_back(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    specialist = await session_of(http, SPECIALIST.email)
    status, uploaded = await upload(http, nurse, phone_jpeg(orientation=6))
    assert status == 200, uploaded
    assert uploaded["complete"] and uploaded["photo_id"]
    body: dict[str, Any]
    status, body = await create_case(http, nurse)
    assert status == 201, body
    case_id = body["id"]
    assert body["state"] == "submitted"
    async with http.post(
        f"/api/cases/{case_id}/photos", json={"photo_ids": [uploaded["photo_id"]]}, headers=nurse
    ) as response:
        assert response.status == 200, await response.text()

    async with http.get("/api/cases/queue", headers=specialist) as response:
        assert response.status == 200
        queue = await response.json()
    assert case_id in [c["id"] for c in queue["cases"]]

    async with http.post(
        f"/api/cases/{case_id}/events", json={"event": "accept"}, headers=specialist
    ) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["state"] == "accepted"
    async with http.post(
        f"/api/cases/{case_id}/events",
        json={"event": "answer", "text": "Détersion puis hydrofibre ; revoir sous 8 jours."},
        headers=specialist,
    ) as response:
        assert response.status == 200, await response.text()
        answered = await response.json()
    assert answered["state"] == "answered"
    assert {a["code"] for a in answered["billing_acts"]} == {"RQD", "TE2"}

    async with http.get(f"/api/cases/{case_id}", headers=nurse) as response:
        assert response.status == 200
        view = await response.json()
    assert view["messages"][-1]["text"].startswith("Détersion")
    assert [h["event"] for h in view["history"]] == ["submit", "accept", "answer"]
    photo_id = view["photos"][0]["id"]
    async with http.get(f"/api/cases/{case_id}/photos/{photo_id}", headers=specialist) as response:
        assert response.status == 200
        assert response.headers["X-Audit-Receipt"]
        jpeg = await response.read()
    assert_clean(jpeg)
