"""The signaling WebSocket over real loopback against the real relay subprocess.

Waiting room, admission, relay, chat, bad input and faults, capacity, resume, end.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from relay.consultations import ConsultationSecrets
from relay.http.consultations import GUEST_COOKIE
from signaling.messages import Role
from signaling.tokens import issue_join_token
from tests.conftest import bearer, login
from tests.harness.accounts import NURSE, OTHER_NURSE, PHYSICIAN
from tests.harness.relay_process import RelayProcess
from tests.signaling.ws_harness import (
    Signaling,
    client_session,
    guest_pass,
    guest_socket,
    link_of,
    me,
    participant_id,
    professional_socket,
    schedule,
)

GUEST = {"role": "guest", "display_name": "Invité"}
PATIENT = {"role": "patient", "display_name": "M. Patient"}
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def _admitted_pair(
    http: aiohttp.ClientSession, doctor: Signaling, patient: Signaling
) -> tuple[str, str]:
    """Doctor joins, patient waits and is admitted; returns (doctor id, patient id)."""
    joined = await doctor.join()
    assert joined["type"] == "joined", joined
    waiting = await patient.join()
    assert waiting["type"] == "waiting" and waiting["host_present"] is True
    patient_id = waiting["you"]["participant_id"]
    listed = await doctor.expect("waiting_list")
    while not listed["waiting"]:
        listed = await doctor.expect("waiting_list")
    assert [w["participant_id"] for w in listed["waiting"]] == [patient_id]
    await doctor.send({"type": "admit", "participant_id": patient_id})
    admitted = await patient.expect("admitted")
    doctor_id = joined["you"]["participant_id"]
    assert admitted["by"] == doctor_id
    assert [p["participant_id"] for p in admitted["participants"]] == [doctor_id]
    assert "rtcConfiguration" in admitted
    await doctor.expect("participant_joined")
    return doctor_id, patient_id


async def test_waiting_room_admission_relay_and_chat(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    token = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, token, [PATIENT])
    cid = consultation["id"]
    _, patient_token = link_of(consultation, "patient")
    async with (
        professional_socket(http, cid, token) as doctor,
        guest_socket(relay, cid, patient_token) as patient,
    ):
        doctor_id, patient_id = await _admitted_pair(http, doctor, patient)
        # The newcomer offers; only the addressee receives it, with its sender.
        await patient.send({"type": "offer", "to": doctor_id, "sdp": SDP})
        offer = await doctor.expect("offer")
        assert offer == {"type": "offer", "from": patient_id, "sdp": SDP}
        await doctor.send({"type": "answer", "to": patient_id, "sdp": SDP})
        assert (await patient.expect("answer"))["from"] == doctor_id
        candidate = {
            "type": "candidate",
            "to": patient_id,
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
        await doctor.send(candidate)
        relayed = await patient.expect("candidate")
        assert relayed["from"] == doctor_id and relayed["sdpMid"] == "0"
        await patient.send({"type": "chat", "text": "Bonjour docteur, ça pique un peu."})
        for side in (doctor, patient):
            line = await side.expect("chat")
            assert line["from"] == patient_id and line["text"].startswith("Bonjour")
        await patient.send({"type": "media_state", "audio": False, "video": True})
        assert (await doctor.expect("media_state"))["audio"] is False
        await patient.send({"type": "consent", "kind": "video", "granted": True})
        state = await doctor.expect("consent_state")
        assert state["participant_id"] == patient_id and state["video"]["granted"] is True
        await patient.send({"type": "leave"})
        assert await patient.closed() == 1000
        left = await doctor.expect("participant_left")
        assert left == {"type": "participant_left", "participant_id": patient_id, "reason": "left"}
    # Every step was traced with the consultation as entity.
    admin = await login(http, "admin@relais.localhost")
    async with http.get(
        f"/api/audit/events?resource={cid}&limit=200", headers=bearer(admin)
    ) as response:
        actions = [e["action"] for e in (await response.json())["events"]]
    for action in (
        "consultation_join",
        "consultation_admit",
        "consultation_consent",
        "consultation_leave",
        "consultation_chat",
        "login_succeeded",
    ):
        assert action in actions, (action, actions)


async def test_bad_input_is_answered_and_others_are_unaffected(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    token = await login(http, PHYSICIAN.email)
    first = await schedule(http, token, [GUEST, GUEST, GUEST, GUEST])
    other = await schedule(http, token, [GUEST])
    cid = first["id"]
    doctor_of_other = participant_id(other, (await me(http, token))["id"])
    async with professional_socket(http, cid, token) as doctor:
        await doctor.join()
        # Unknown type: answered, socket kept.
        await doctor.send({"type": "teleport", "to": "mars"})
        error = await doctor.expect("error")
        assert error["code"] == "unknown_type" and "teleport" in error["message"]
        # An offer to a participant of another consultation reaches nobody.
        await doctor.send({"type": "offer", "to": doctor_of_other, "sdp": SDP})
        assert (await doctor.expect("error"))["code"] == "unknown_peer"
        # A field too large, a wrong field type: precise errors, socket kept.
        await doctor.send({"type": "chat", "text": "x" * 3000})
        error = await doctor.expect("error")
        assert error["code"] == "field_too_large" and "text" in error["message"]
        await doctor.send({"type": "media_state", "audio": "yes", "video": True})
        assert (await doctor.expect("error"))["code"] == "invalid_field"
        # Each bad socket below is a guest of the same consultation.
        bad_cases: list[tuple[str | bytes, int, str | None]] = [
            ("{not json", 1007, "malformed_message"),
            (b"\x00\x01binary", 1003, "unsupported_data"),
            ("x" * (100 * 1024), 1009, "message_too_big"),  # over the room's 64 KiB limit
            ("y" * (1024 * 1024), 1009, None),  # 1 MB: cut by the server before buffering
        ]
        for index, (frame, code, error_code) in enumerate(bad_cases):
            _, guest_token = link_of(first, "guest", index)
            async with guest_socket(relay, cid, guest_token) as guest:
                await guest.hello()
                if isinstance(frame, bytes):
                    await guest.ws.send_bytes(frame)
                else:
                    await guest.ws.send_str(frame)
                assert await guest.closed() == code, frame[:20]
                if error_code is not None:
                    assert [m["code"] for m in guest.inbox if m["type"] == "error"] == [error_code]
        # The doctor's socket is untouched and the server keeps serving.
        await doctor.send({"type": "ping", "ref": 7})
        assert (await doctor.expect("pong"))["ref"] == 7


async def test_first_message_must_be_hello_and_versions_are_checked(
    http: aiohttp.ClientSession,
) -> None:
    token = await login(http, PHYSICIAN.email)
    cid = (await schedule(http, token, []))["id"]
    async with professional_socket(http, cid, token) as doctor:
        await doctor.send({"type": "join"})
        assert (await doctor.expect("error"))["code"] == "hello_required"
        assert await doctor.closed() == 1002
    async with professional_socket(http, cid, token) as doctor:
        await doctor.send({"type": "hello", "protocol": 99})
        error = await doctor.expect("error")
        assert error["code"] == "unsupported_protocol" and error["human"]
        assert await doctor.closed() == 4000


async def _refused(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
    socket = Signaling(ws)
    error = await socket.expect("error")
    return error["code"], await socket.closed()


async def test_refused_credentials_close_with_policy_violation(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    token = await login(http, PHYSICIAN.email)
    first = await schedule(http, token, [PATIENT, GUEST])
    second = await schedule(http, token, [GUEST])
    cid = first["id"]
    patient_id, patient_token = link_of(first, "patient")
    links = (Path(relay.data_dir) / "keys" / "join-links.secret").read_text().strip().encode()
    passes = ConsultationSecrets(links=links, turn="unused").guest_passes
    expired_pass = issue_join_token(
        passes,
        consultation_id=cid,
        participant_id=patient_id,
        role=Role.PATIENT,
        expires_at=int(time.time()) - 1,
        version=1,
    )
    async with client_session(relay) as patient:
        await guest_pass(patient, cid, patient_token)
        real_pass = next(c.value for c in patient.cookie_jar if c.key == GUEST_COOKIE)
    forged_pass = real_pass[:-3] + ("abc" if not real_pass.endswith("abc") else "abd")
    cases = [
        (cid, {}, "token_invalid"),  # no pass at all
        (cid, {"Cookie": f"{GUEST_COOKIE}={forged_pass}"}, "token_forged"),
        (cid, {"Cookie": f"{GUEST_COOKIE}={expired_pass}"}, "token_expired"),
        # The patient's pass presented on another consultation.
        (second["id"], {"Cookie": f"{GUEST_COOKIE}={real_pass}"}, "token_wrong_consultation"),
        (cid, {"Authorization": "Bearer not-a-session"}, "session_expired"),
        ("unknown", {}, "not_found"),
    ]
    async with client_session(relay) as stranger:
        for target, headers, code in cases:
            async with stranger.ws_connect(
                f"/ws/consultations/{target}?as=guest"
                if "Authorization" not in headers
                else f"/ws/consultations/{target}",
                headers=headers,
            ) as ws:
                assert await _refused(ws) == (code, 1008), (target, headers)
        # A professional who does not take part.
        outsider = await login(http, OTHER_NURSE.email)
        async with stranger.ws_connect(f"/ws/consultations/{cid}", headers=bearer(outsider)) as ws:
            assert await _refused(ws) == ("forbidden", 1008)
        # A cross-site page cannot ride a session.
        try:
            async with stranger.ws_connect(
                f"/ws/consultations/{cid}",
                headers={**bearer(token), "Origin": "https://evil.example"},
            ):
                raise AssertionError("cross-origin upgrade accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
    # Revoking the link voids the pass obtained with it.
    async with client_session(relay) as patient:
        await guest_pass(patient, cid, patient_token)
        async with http.delete(
            f"/api/consultations/{cid}/participants/{patient_id}/link", headers=bearer(token)
        ) as response:
            assert response.status == 204
        async with patient.ws_connect(f"/ws/consultations/{cid}?as=guest") as ws:
            assert await _refused(ws) == ("token_revoked", 1008)


async def test_flood_is_closed_with_1008_and_others_keep_talking(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    token = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, token, [PATIENT])
    cid = consultation["id"]
    _, patient_token = link_of(consultation, "patient")
    async with (
        professional_socket(http, cid, token) as doctor,
        guest_socket(relay, cid, patient_token) as patient,
    ):
        _, patient_id = await _admitted_pair(http, doctor, patient)
        frame = json.dumps({"type": "ping"})
        started = time.monotonic()
        for _ in range(1000):  # 1,000 messages in well under a second
            await patient.ws.send_str(frame)
        assert time.monotonic() - started < 1.0
        assert await patient.closed() == 1008
        assert [m["code"] for m in patient.inbox if m["type"] == "error"] == ["rate_limited"]
        assert sum(1 for m in patient.inbox if m["type"] == "pong") <= 220  # the burst only
        left = await doctor.expect("participant_left")
        assert left["participant_id"] == patient_id and left["reason"] == "closed"
        await doctor.send({"type": "chat", "text": "Toujours là ?"})
        assert (await doctor.expect("chat"))["text"] == "Toujours là ?"


async def test_waiting_room_capacity(http: aiohttp.ClientSession, relay: RelayProcess) -> None:
    token = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, token, [GUEST] * 11)
    cid = consultation["id"]
    async with client_session(relay) as session:
        sockets: list[Signaling] = []
        try:
            for index in range(11):
                _, guest_token = link_of(consultation, "guest", index)
                # Each guest needs its own pass cookie at the upgrade.
                await guest_pass(session, cid, guest_token)
                ws = await session.ws_connect(f"/ws/consultations/{cid}?as=guest")
                sockets.append(Signaling(ws))
                answer = await sockets[-1].join()
                if index < 10:
                    assert answer["type"] == "waiting", answer
                else:
                    assert answer["type"] == "error" and answer["code"] == "room_full"
                    assert answer["human"].startswith("La consultation a atteint")
        finally:
            for socket in sockets:
                await socket.ws.close()


async def test_physician_drop_and_resume_within_grace_keeps_the_call(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    token = await login(http, PHYSICIAN.email)
    consultation = await schedule(http, token, [PATIENT, GUEST])
    cid = consultation["id"]
    _, patient_token = link_of(consultation, "patient")
    _, guest_token = link_of(consultation, "guest")
    async with (
        guest_socket(relay, cid, patient_token) as patient,
        guest_socket(relay, cid, guest_token) as waiting_guest,
    ):
        doctor_ws = await http.ws_connect(f"/ws/consultations/{cid}", headers=bearer(token))
        doctor = Signaling(doctor_ws)
        await doctor.hello()
        await doctor.send({"type": "join"})
        joined = await doctor.expect("joined")
        doctor_id, resume_token = joined["you"]["participant_id"], joined["resume_token"]
        assert joined["grace_seconds"] == 30.0
        waiting = await patient.join()
        patient_id = waiting["you"]["participant_id"]
        await doctor.send({"type": "admit", "participant_id": patient_id})
        await patient.expect("admitted")
        assert (await waiting_guest.join())["type"] == "waiting"
        # The physician's network drops mid-call.
        await doctor_ws.close()
        assert (await patient.expect("host_reconnecting"))["participant_id"] == doctor_id
        assert (await waiting_guest.expect("host_reconnecting"))["participant_id"] == doctor_id
        async with professional_socket(http, cid, token) as back:
            await back.hello()
            await back.send({"type": "resume", "token": resume_token})
            resumed = await back.expect("joined")
            assert resumed["resumed"] is True and resumed["you"]["participant_id"] == doctor_id
            assert [p["participant_id"] for p in resumed["participants"]] == [patient_id]
            assert resumed["resume_token"] != resume_token  # rotated
            listed = await back.expect("waiting_list")
            assert len(listed["waiting"]) == 1  # the waiting guest was never dropped
            assert (await patient.expect("ice_restart"))["participant_id"] == doctor_id
            assert (await patient.expect("host_returned"))["participant_id"] == doctor_id
            assert (await waiting_guest.expect("host_returned"))["participant_id"] == doctor_id
            # The call goes on: the resumed side re-offers (ICE restart).
            await back.send({"type": "offer", "to": patient_id, "sdp": SDP})
            assert (await patient.expect("offer"))["from"] == doctor_id
            # The last professional ends it for everyone; it is persisted.
            await back.send({"type": "end"})
            for side in (back, patient, waiting_guest):
                assert (await side.expect("ended"))["by"] == doctor_id
                assert await side.closed() == 1000
    async with http.get(f"/api/consultations/{cid}", headers=bearer(token)) as response:
        assert (await response.json())["status"] == "ended"
    async with http.ws_connect(f"/ws/consultations/{cid}", headers=bearer(token)) as ws:
        assert await _refused(ws) == ("consultation_ended", 4004)


async def test_a_nurse_and_a_physician_share_the_call(
    http: aiohttp.ClientSession,
) -> None:
    physician = await login(http, PHYSICIAN.email)
    nurse = await login(http, NURSE.email)
    consultation = await schedule(http, physician, [{"email": NURSE.email}])
    cid = consultation["id"]
    async with (
        professional_socket(http, cid, physician) as doctor,
        professional_socket(http, cid, nurse) as ide,
    ):
        first = await doctor.join()
        second = await ide.join()
        assert first["type"] == second["type"] == "joined"
        assert [p["role"] for p in second["participants"]] == ["physician"]
        assert (await doctor.expect("participant_joined"))["participant"]["role"] == "nurse"
        # `end` while another professional remains only makes the sender leave.
        await doctor.send({"type": "end"})
        assert await doctor.closed() == 1000
        assert (await ide.expect("participant_left"))["reason"] == "left"
        await ide.send({"type": "ping"})
        await ide.expect("pong")
    await asyncio.sleep(0)
