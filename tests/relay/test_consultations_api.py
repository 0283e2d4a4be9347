"""Teleconsultation REST API through the real relay: scheduling, policy, join links."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from relay.http.consultations import GUEST_COOKIE
from signaling.messages import Role
from signaling.tokens import issue_join_token
from tests.conftest import bearer, login
from tests.harness.accounts import ADMIN, COORDINATOR, NURSE, OTHER_NURSE, PHYSICIAN
from tests.harness.relay_process import RelayProcess
from tests.signaling.ws_harness import (
    Json,
    client_session,
    guest_pass,
    link_of,
    me,
    participant_id,
    schedule,
)

PATIENT = {"role": "patient", "display_name": "Mme Jeanne Leroy", "birth_date": "1948-02-29"}
GUEST = {"role": "guest", "display_name": "Marc (fils)"}
INS = "255081416802538"  # a valid NIR/INS (key 38) from INSEE's documentation pattern


async def _post(
    http: aiohttp.ClientSession, path: str, token: str | None, body: Json | None = None
) -> tuple[int, Json]:
    headers = bearer(token) if token else {}
    async with http.post(path, json=body, headers=headers) as response:
        data: Json = await response.json() if response.status != 204 else {}
        return response.status, data


async def _get(http: aiohttp.ClientSession, path: str, token: str) -> tuple[int, Json]:
    async with http.get(path, headers=bearer(token)) as response:
        data: Json = await response.json()
        return response.status, data


async def test_schedule_gives_links_with_token_in_fragment_only(
    http: aiohttp.ClientSession,
) -> None:
    physician = await login(http, PHYSICIAN.email)
    doctor = await me(http, physician)
    consultation = await schedule(
        http,
        physician,
        [PATIENT, {"email": NURSE.email}, GUEST],
        patient_ins=INS,
        case_id="case-42",
    )
    assert consultation["status"] == "scheduled"
    assert consultation["patient_linked"] is True
    assert consultation["case_id"] == "case-42"
    assert "patient_ins" not in consultation and INS not in str(consultation)
    roles = [(p["role"], p["display_name"]) for p in consultation["participants"]]
    assert roles == [
        ("physician", PHYSICIAN.name),
        ("patient", "Mme Jeanne Leroy"),
        ("nurse", NURSE.name),
        ("guest", "Marc (fils)"),
    ]
    assert consultation["participants"][0]["professional_id"] == doctor["id"]
    patient = consultation["participants"][1]
    assert patient["link"]["active"] is True and patient["link"]["birth_date_check"] is True
    url = urlsplit(patient["link"]["url"])
    assert url.path == f"/consultation/{consultation['id']}"
    assert url.query == "" and url.fragment.startswith("t=j1.")  # token never sent to a server
    assert "link" not in consultation["participants"][2]  # professionals join with accounts
    # The nurse taking part sees it (with the links); the page URL carries no token.
    nurse = await login(http, NURSE.email)
    status, seen = await _get(http, f"/api/consultations/{consultation['id']}", nurse)
    assert status == 200 and seen["participants"][1]["link"]["url"] == patient["link"]["url"]
    status, listing = await _get(http, "/api/consultations", nurse)
    assert status == 200 and consultation["id"] in [c["id"] for c in listing["consultations"]]


async def test_policy_on_consultations(http: aiohttp.ClientSession) -> None:
    physician = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, physician, [GUEST])
    path = f"/api/consultations/{consultation['id']}"
    outsider = await login(http, OTHER_NURSE.email)
    assert (await _get(http, path, outsider))[0] == 403
    guest_id = consultation["participants"][1]["id"]
    status, _ = await _post(http, f"{path}/participants/{guest_id}/link", outsider)
    assert status == 403
    admin = await login(http, ADMIN.email)
    assert (await _get(http, path, admin))[0] == 403  # no clinical content for admins
    status, body = await _post(http, "/api/consultations", admin, {"scheduled_at": "x"})
    assert status == 403, body
    http.cookie_jar.clear()  # login() left the last session's cookie
    async with http.get(path) as response:
        assert response.status == 401
    assert (await _get(http, "/api/consultations/unknown", physician))[0] == 404
    # A coordinator schedules for others without taking part in the call.
    coordinator = await login(http, COORDINATOR.email)
    planned = await schedule(http, coordinator, [{"email": PHYSICIAN.email}, PATIENT])
    assert [p["role"] for p in planned["participants"]] == ["physician", "patient"]
    assert (await _get(http, f"/api/consultations/{planned['id']}", physician))[0] == 200
    # Denials are audited with the consultation as entity.
    status, found = await _get(
        http, f"/api/audit/events?resource={consultation['id']}&action=access_denied", admin
    )
    assert status == 200 and len(found["events"]) >= 2


async def test_invalid_scheduling_requests_name_the_problem(http: aiohttp.ClientSession) -> None:
    physician = await login(http, PHYSICIAN.email)
    now = datetime.now(UTC)
    cases: list[tuple[Json, str]] = [
        ({}, "missing_field"),
        ({"scheduled_at": "demain 9h"}, "invalid_scheduled_at"),
        ({"scheduled_at": "2030-01-01T09:00:00"}, "invalid_scheduled_at"),  # no time zone
        ({"scheduled_at": (now + timedelta(days=400)).isoformat()}, "invalid_scheduled_at"),
        ({"scheduled_at": now.isoformat(), "duration_minutes": 1}, "invalid_duration"),
        ({"scheduled_at": now.isoformat(), "duration_minutes": "20"}, "invalid_field"),
        (
            {"scheduled_at": now.isoformat(), "participants": [{"role": "surgeon"}]},
            "invalid_role",
        ),
        (
            {"scheduled_at": now.isoformat(), "participants": [{"role": "patient"}]},
            "invalid_display_name",
        ),
        (
            {"scheduled_at": now.isoformat(), "participants": [{"role": "physician"}]},
            "invalid_role",
        ),
        (
            {
                "scheduled_at": now.isoformat(),
                "participants": [{"role": "patient", "email": NURSE.email}],
            },
            "invalid_role",
        ),
        (
            {
                "scheduled_at": now.isoformat(),
                "participants": [{**PATIENT, "birth_date": "2999-01-01"}],
            },
            "invalid_birth_date",
        ),
        (
            {"scheduled_at": now.isoformat(), "participants": [{"email": ADMIN.email}]},
            "invalid_role",
        ),
        (
            {"scheduled_at": now.isoformat(), "participants": [{"email": "nobody@x.fr"}]},
            "unknown_professional",
        ),
        ({"scheduled_at": now.isoformat(), "patient_ins": "255081416802539"}, "invalid_identifier"),
        ({"scheduled_at": now.isoformat(), "case_id": "a b"}, "invalid_field"),
        ({"scheduled_at": now.isoformat(), "participants": [GUEST] * 16}, "too_many_participants"),
    ]
    for body, code in cases:
        status, answer = await _post(http, "/api/consultations", physician, body)
        assert (status, answer["error"]["code"]) == (400, code), (body, answer)
        assert answer["error"]["message"]  # French text for the person
    # The same professional twice is a conflict.
    status, answer = await _post(
        http,
        "/api/consultations",
        physician,
        {"scheduled_at": now.isoformat(), "participants": [{"email": PHYSICIAN.email}]},
    )
    assert (status, answer["error"]["code"]) == (409, "duplicate_participant")


async def test_join_link_reissue_and_revocation(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    physician = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, physician, [GUEST])
    cid = consultation["id"]
    guest_id, token = link_of(consultation, "guest")
    async with client_session(relay) as guest:
        joined = await guest_pass(guest, cid, token)
        assert joined["participant"] == {
            "id": guest_id,
            "role": "guest",
            "display_name": "Marc (fils)",
        }
        cookie = next(c for c in guest.cookie_jar if c.key == GUEST_COOKIE)
        assert cookie["httponly"] and cookie["secure"]
        assert cookie["path"] == f"/ws/consultations/{cid}"
        assert cookie["samesite"] == "Strict"
    # Re-issue: the old link stops working, the new one works.
    status, reissued = await _post(
        http, f"/api/consultations/{cid}/participants/{guest_id}/link", physician
    )
    assert status == 201 and reissued["link"]["version"] == 2
    new_token = urlsplit(reissued["link"]["url"]).fragment[2:]
    async with client_session(relay) as guest:
        status, refused = await _post(
            guest, f"/api/consultations/{cid}/join", None, {"token": token}
        )
        assert (status, refused["error"]["code"]) == (403, "token_revoked")
        assert "révoqué" in refused["error"]["message"]
        await guest_pass(guest, cid, new_token)
    # Revoke: no link at all.
    async with http.delete(
        f"/api/consultations/{cid}/participants/{guest_id}/link", headers=bearer(physician)
    ) as response:
        assert response.status == 204
    status, seen = await _get(http, f"/api/consultations/{cid}", physician)
    assert seen["participants"][1]["link"] == {
        "active": False,
        "version": 2,
        "birth_date_check": False,
        "expires_at": seen["participants"][1]["link"]["expires_at"],
    }
    async with client_session(relay) as guest:
        status, refused = await _post(
            guest, f"/api/consultations/{cid}/join", None, {"token": new_token}
        )
        assert (status, refused["error"]["code"]) == (403, "token_revoked")
    # Professionals have no link; unknown participants are 404.
    doctor_pid = participant_id(consultation, (await me(http, physician))["id"])
    status, answer = await _post(
        http, f"/api/consultations/{cid}/participants/{doctor_pid}/link", physician
    )
    assert (status, answer["error"]["code"]) == (409, "no_link_for_professional")
    status, _ = await _post(http, f"/api/consultations/{cid}/participants/nope/link", physician)
    assert status == 404
    # Adding a participant later issues their link.
    status, added = await _post(
        http,
        f"/api/consultations/{cid}/participants",
        physician,
        {"role": "interpreter", "display_name": "Ana"},
    )
    assert status == 201 and added["link"]["active"] is True


async def test_bad_tokens_are_refused_precisely(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    physician = await login(http, PHYSICIAN.email)
    first = await schedule(http, physician, [GUEST])
    second = await schedule(http, physician, [GUEST])
    _, token = link_of(first, "guest")
    guest_id = first["participants"][1]["id"]
    secret = (Path(relay.data_dir) / "keys" / "join-links.secret").read_text().strip().encode()
    expired = issue_join_token(
        secret,
        consultation_id=first["id"],
        participant_id=guest_id,
        role=Role.GUEST,
        expires_at=int(time.time()) - 5,
        version=1,
    )
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    cases = [
        (first["id"], forged, 401, "token_forged"),
        (first["id"], "not-a-token", 401, "token_malformed"),
        (first["id"], expired, 401, "token_expired"),
        (second["id"], token, 403, "token_wrong_consultation"),  # another consultation's link
    ]
    async with client_session(relay) as guest:
        for cid, bad, status, code in cases:
            answer_status, answer = await _post(
                guest, f"/api/consultations/{cid}/join", None, {"token": bad}
            )
            assert (answer_status, answer["error"]["code"]) == (status, code)
        assert not [c for c in guest.cookie_jar if c.key == GUEST_COOKIE]
    admin = await login(http, ADMIN.email)
    status, found = await _get(
        http, f"/api/audit/events?resource={first['id']}&action=login_failed", admin
    )
    assert status == 200 and len(found["events"]) == 3


async def test_birth_date_check_on_opening_the_link(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    physician = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, physician, [PATIENT])
    cid = consultation["id"]
    _, token = link_of(consultation, "patient")
    path = f"/api/consultations/{cid}/join"
    async with client_session(relay) as patient:
        status, answer = await _post(patient, path, None, {"token": token})
        assert (status, answer["error"]["code"]) == (400, "birth_date_required")
        status, answer = await _post(
            patient, path, None, {"token": token, "birth_date": "1948-03-01"}
        )
        assert (status, answer["error"]["code"]) == (401, "birth_date_mismatch")
        await guest_pass(patient, cid, token, birth_date="1948-02-29")
        # Guessing is limited: 5 failures in the window, then 429 even with the right date.
        for _ in range(5):
            status, _answer = await _post(
                patient, path, None, {"token": token, "birth_date": "1950-01-01"}
            )
            assert status == 401
        status, answer = await _post(
            patient, path, None, {"token": token, "birth_date": "1948-02-29"}
        )
        assert status == 429 and answer["error"]["code"] == "too_many_requests"


async def test_protocol_document_and_openapi(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/consultations/protocol.json") as response:
        assert response.status == 200
        document: Json = await response.json()
    assert document["protocol"] == 1
    assert set(document["messages"]["client"]) >= {"hello", "join", "offer", "answer", "admit"}
    assert document["close_codes"]["1009"].startswith("frame larger")
    assert "to='recorder'" in document["recording"]
    async with http.get("/api/openapi.json") as response:
        paths = (await response.json())["paths"]
    assert "/api/consultations/{id}/join" in paths
    assert "/api/consultations/{id}/recordings/{recording}" in paths
    assert "/ws/consultations/{id}" not in paths
    async with http.get("/consultation/abc") as response:
        assert response.status == 200
        assert "Téléconsultation" in await response.text()
        assert response.headers["Cache-Control"] == "no-store"
