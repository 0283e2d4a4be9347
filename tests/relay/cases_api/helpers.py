"""Builders shared by the case API end-to-end tests (real relay subprocess)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.conftest import bearer, login
from tests.harness.accounts import NURSE, SPECIALIST
from tests.relay.cases.helpers import NIR


async def session_of(http: aiohttp.ClientSession, email: str) -> dict[str, str]:
    return bearer(await login(http, email))


async def me(http: aiohttp.ClientSession, headers: dict[str, str]) -> dict[str, Any]:
    async with http.get("/api/me", headers=headers) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def case_body(
    *, consent: bool = True, nir: str = NIR, team: str = "dermato-cpts"
) -> dict[str, Any]:
    """A complete request (the requester comes from the session)."""
    body: dict[str, Any] = {
        "patient": {
            "kind": "ins",
            "nir": nir,
            "family_name": "Durand",
            "given_name": "Jeanne",
            "birth_date": "1950-03-02",
            "sex": "female",
        },
        "recipient": {"team_id": team},
        "question": "La plaie du talon ne cicatrise pas depuis 3 semaines : conduite à tenir ?",
        "wound": {
            "site": "heel",
            "laterality": "left",
            "size_cm": {"length": 3, "width": 2.5},
            "duration": {"value": 3, "unit": "weeks"},
            "treatment": "Hydrocolloïde",
        },
        "urgency": "72h",
    }
    if consent:
        body["consent"] = {
            "collected_by": "ide-martin",
            "collected_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
            "method": "oral",
        }
    return body


async def upload(
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    data: bytes,
    *,
    content_type: str = "image/jpeg",
    chunk: int = 16 * 1024,
) -> tuple[int, dict[str, Any]]:
    """Upload ``data`` in chunks; the status and JSON of the last answer."""
    async with http.post(
        "/api/uploads", json={"size": len(data), "content_type": content_type}, headers=headers
    ) as response:
        body: dict[str, Any] = await response.json()
        if response.status != 201:
            return response.status, body
    upload_id = body["id"]
    offset = 0
    while offset < len(data):
        piece = data[offset : offset + chunk]
        async with http.patch(
            f"/api/uploads/{upload_id}",
            data=piece,
            headers={
                **headers,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        ) as response:
            body = await response.json()
            if response.status != 200:
                return response.status, body
            offset = body["offset"]
    return 200, body


async def create_case(
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    *,
    submit: bool = True,
    key: str | None = None,
) -> tuple[int, dict[str, Any]]:
    payload = {**(body if body is not None else case_body()), "submit": submit}
    extra = {"Idempotency-Key": key or uuid.uuid4().hex}
    async with http.post("/api/cases", json=payload, headers={**headers, **extra}) as response:
        answer: dict[str, Any] = await response.json()
        return response.status, answer


__all__ = ["NURSE", "SPECIALIST", "case_body", "create_case", "me", "session_of", "upload"]
