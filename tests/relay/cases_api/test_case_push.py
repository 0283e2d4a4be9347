"""The requester's open pages learn of the answer live, over /ws/events."""

from __future__ import annotations

import json

import aiohttp

from tests.harness.accounts import NURSE, SPECIALIST
from tests.relay.cases_api.helpers import create_case, session_of


async def test_answer_is_pushed_to_the_requester(http: aiohttp.ClientSession) -> None:
    nurse = await session_of(http, NURSE.email)
    specialist = await session_of(http, SPECIALIST.email)
    status, case = await create_case(http, nurse)
    assert status == 201, case
    async with http.ws_connect("/ws/events", headers=nurse) as page:
        ready = json.loads((await page.receive(timeout=10)).data)
        assert ready["type"] == "ready"
        for event, text in (
            ("accept", None),
            ("answer", "Pansement hydrocellulaire, revoir à J7."),
        ):
            body = {"event": event} if text is None else {"event": event, "text": text}
            async with http.post(
                f"/api/cases/{case['id']}/events", json=body, headers=specialist
            ) as response:
                assert response.status == 200, await response.text()
        while True:
            message = json.loads((await page.receive(timeout=15)).data)
            if message.get("type") == "case":
                break
    assert message["case_id"] == case["id"] and message["state"] == "answered"
    assert set(message) == {"type", "case_id", "state", "offset"}  # identifiers only
