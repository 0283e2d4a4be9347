"""Account administration through the API: admins only, validated like the CLI."""

from __future__ import annotations

import aiohttp

from tests.conftest import bearer, login
from tests.harness.accounts import ADMIN, NURSE, luhn_complete


async def test_admin_creates_team_and_professional_then_adds_member(
    http: aiohttp.ClientSession,
) -> None:
    admin = await login(http, ADMIN.email)
    team = {"address": "cpts-nord", "name": "CPTS Nord", "kind": "cpts"}
    async with http.post("/api/admin/teams", json=team, headers=bearer(admin)) as response:
        assert response.status == 201
        created_team = await response.json()
    assert created_team["address"] == "cpts-nord@relais.localhost"
    async with http.post("/api/admin/teams", json=team, headers=bearer(admin)) as response:
        assert response.status == 409
    new = {
        "email": "ide.nord@relais.localhost",
        "display_name": "Inès Nord",
        "role": "nurse",
        "rpps": luhn_complete("1000000099"),
        "password": "a long enough password",
    }
    async with http.post("/api/admin/professionals", json=new, headers=bearer(admin)) as r:
        assert r.status == 201, await r.text()
        pro = await r.json()
    async with http.post(
        f"/api/admin/teams/{created_team['id']}/members",
        json={"professional_id": pro["id"]},
        headers=bearer(admin),
    ) as r:
        assert r.status == 204
    token = await login(http, "ide.nord@relais.localhost", "a long enough password")
    async with http.get("/api/me", headers=bearer(token)) as response:
        me = await response.json()
    assert [t["name"] for t in me["teams"]] == ["CPTS Nord"]


async def test_admin_input_is_validated(http: aiohttp.ClientSession) -> None:
    admin = await login(http, ADMIN.email)
    bad = {
        "email": "x@relais.localhost",
        "display_name": "X",
        "role": "nurse",
        "rpps": "12345678901",
        "password": "a long enough password",
    }
    async with http.post("/api/admin/professionals", json=bad, headers=bearer(admin)) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_identifier"
    bad_team = {"address": "Bad Address!", "name": "X", "kind": "msp"}
    async with http.post("/api/admin/teams", json=bad_team, headers=bearer(admin)) as r:
        assert r.status == 400
    async with http.post(
        "/api/admin/teams", json={**bad_team, "kind": "club"}, headers=bearer(admin)
    ) as r:
        assert r.status == 400


async def test_non_admins_are_refused(http: aiohttp.ClientSession) -> None:
    nurse = await login(http, NURSE.email)
    team = {"address": "sneaky", "name": "Sneaky", "kind": "msp"}
    async with http.post("/api/admin/teams", json=team, headers=bearer(nurse)) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
