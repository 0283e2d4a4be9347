"""Server-side recording, end to end: real aiortc peers offer their media to the relay's
recording peer through the real signaling socket, only once everyone consented; a revoked
consent stops it; the stored recordings are encrypted blobs that read back as WebM with the
frames that were sent, listed and downloaded only by the clinicians of the call, traced.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from tests.conftest import bearer, login, metric
from tests.harness.accounts import NURSE, PHYSICIAN, SPECIALIST, add_account
from tests.harness.redis_server import free_port
from tests.harness.relay_process import RelayProcess, init_data_dir
from tests.relay.messaging.helpers import audit_events
from tests.signaling.test_ws_aiortc import SmallVideo
from tests.signaling.ws_harness import (
    Json,
    client_session,
    greeted_peer,
    guest_pass,
    link_of,
    schedule,
    until,
)

RECORDER = "recorder"


class Recorded:
    """One participant: a signaling socket and one send-only connection to the recorder."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.me = ""
        self.pc: RTCPeerConnection | None = None
        self.events: asyncio.Queue[Json] = asyncio.Queue()

    async def send(self, message: Json) -> None:
        await self.ws.send_str(json.dumps(message))

    async def run(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            message: Json = json.loads(msg.data)
            if message["type"] == "answer" and message["from"] == RECORDER:
                assert self.pc is not None
                await self.pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
            await self.events.put(message)

    async def event(self, kind: str, timeout: float = 10.0, **match: Any) -> Json:
        while True:
            message = await asyncio.wait_for(self.events.get(), timeout)
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message

    async def offer_to_recorder(self) -> None:
        """What the page does when recording starts: offer audio and video, send only."""
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(SmallVideo())
        pc.addTrack(AudioStreamTrack())
        for transceiver in pc.getTransceivers():
            transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "offer", "to": RECORDER, "sdp": pc.localDescription.sdp})

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()


async def _recordings(http: aiohttp.ClientSession, cid: str, token: str) -> list[Json]:
    async with http.get(f"/api/consultations/{cid}/recordings", headers=bearer(token)) as r:
        body: Json = await r.json()
        assert r.status == 200, body
        found: list[Json] = body["recordings"]
        return found


@dataclass
class Call:
    """A physician and an admitted patient on the relay, each with a signaling socket."""

    cid: str
    physician: str  # bearer token
    doctor: Recorded
    patient: Recorded


@asynccontextmanager
async def call_with_patient(
    http: aiohttp.ClientSession, relay: RelayProcess, patient_name: str
) -> AsyncIterator[Call]:
    physician = await login(http, PHYSICIAN.email)
    consultation = await schedule(
        http, physician, [{"role": "patient", "display_name": patient_name}]
    )
    cid = consultation["id"]
    path = f"/ws/consultations/{cid}"
    _, patient_token = link_of(consultation, "patient")
    async with client_session(relay) as patient_http:
        await guest_pass(patient_http, cid, patient_token)
        async with (
            greeted_peer(Recorded, http, path, bearer(physician)) as doctor,
            greeted_peer(Recorded, patient_http, f"{path}?as=guest") as patient,
        ):
            await doctor.send({"type": "join"})
            joined = await doctor.event("joined")
            assert "record" in joined["permissions"]  # this node runs a recorder
            doctor.me = joined["you"]["participant_id"]
            await patient.send({"type": "join"})
            patient.me = (await patient.event("waiting"))["you"]["participant_id"]
            await doctor.send({"type": "admit", "participant_id": patient.me})
            await patient.event("admitted")
            yield Call(cid, physician, doctor, patient)


async def _media_to_recorder(*senders: Recorded) -> None:
    for who in senders:
        await who.offer_to_recorder()
    await until(
        lambda: all(w.pc is not None and w.pc.connectionState == "connected" for w in senders),
        20,
        "every connection to the recorder",
    )


async def test_recording_runs_with_everyone_s_consent_and_reads_back_as_webm(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    started = time.time()
    async with call_with_patient(http, relay, "Mme Enregistrée") as call:
        cid, physician, doctor, patient = call.cid, call.physician, call.doctor, call.patient
        # Before everyone consented the recorder is nobody.
        await doctor.send({"type": "record", "enabled": True})
        await doctor.send({"type": "consent", "kind": "recording", "granted": True})
        await patient.send({"type": "offer", "to": RECORDER, "sdp": "v=0\r\n"})
        assert (await patient.event("error"))["code"] == "unknown_peer"
        await patient.send({"type": "consent", "kind": "recording", "granted": True})
        await doctor.event("recording_state", active=True)
        await patient.event("recording_state", active=True)

        # An offer the recorder cannot use is answered with a precise error.
        await patient.send({"type": "offer", "to": RECORDER, "sdp": "v=0\r\nm=nonsense\r\n"})
        assert (await patient.event("error"))["code"] == "invalid_sdp"

        stored_before = await metric(
            http, 'relais_recordings_stored_total{end_reason="missing_consent"}'
        )
        await _media_to_recorder(doctor, patient)
        await asyncio.sleep(2.5)  # about 37 archived frames each at 15 fps
        assert await _recordings(http, cid, physician) == []  # nothing until it stops
        assert await metric(http, "relais_recording_participants") == 2

        # The patient withdraws: the recording stops for everyone and is stored.
        await patient.send({"type": "consent", "kind": "recording", "granted": False})
        await doctor.event("recording_state", active=False)
        stored: list[Json] = []

        async def poll() -> None:
            while len(stored) < 2:
                stored[:] = await _recordings(http, cid, physician)
                await asyncio.sleep(0.2)

        await asyncio.wait_for(poll(), 30)

    assert sorted(r["participant_id"] for r in stored) == sorted([doctor.me, patient.me])
    assert await metric(http, "relais_recording_participants") == 0
    stored_after = await metric(
        http, 'relais_recordings_stored_total{end_reason="missing_consent"}'
    )
    assert stored_after == stored_before + 2
    for recording in stored:
        assert recording["end_reason"] == "missing_consent"
        assert recording["media_type"] == "video/webm"
        assert recording["video_frames"] >= 20
        assert recording["audio_frames"] >= 20
        async with http.get(recording["url"], headers=bearer(physician)) as response:
            body = await response.read()
            assert response.status == 200
            assert response.headers["Content-Type"] == "video/webm"
            assert response.headers["Cache-Control"] == "no-store"
            assert "Mme" not in response.headers["Content-Disposition"]
            assert response.headers["X-Audit-Receipt"]
        assert len(body) == recording["size"]
        assert hashlib.sha256(body).hexdigest() == recording["sha256"]
        with av.open(io.BytesIO(body), mode="r") as container:
            codecs = sorted(s.codec_context.name for s in container.streams)
            assert codecs == ["opus", "vp8"]
            video = container.streams.video[0]
            assert (video.codec_context.width, video.codec_context.height) == (160, 120)
            decoded = len(list(container.decode(video=0)))
        assert decoded >= 20

    # The media is encrypted at rest: no WebM signature in the blobs written meanwhile.
    written = [
        p
        for p in (relay.data_dir / "blobs").rglob("*")
        if p.is_file() and p.stat().st_mtime >= started
    ]
    assert len(written) >= 2
    for blob in written:
        content = blob.read_bytes()
        assert b"webm" not in content and b"\x1a\x45\xdf\xa3" not in content

    # Only the clinicians of the call: outsiders are refused (the coordinator's refusal is in
    # the policy matrix; its account has a second factor by now in a full run).
    for outsider in (SPECIALIST.email, NURSE.email):
        token = await login(http, outsider)
        async with http.get(f"/api/consultations/{cid}/recordings", headers=bearer(token)) as r:
            assert r.status == 403, outsider
        async with http.get(stored[0]["url"], headers=bearer(token)) as r:
            assert r.status == 403, outsider
    async with http.get(
        f"/api/consultations/{cid}/recordings/{'0' * 32}", headers=bearer(physician)
    ) as r:
        assert r.status == 404

    # The organizer erases one: row and encrypted media gone, traced; outsiders cannot.
    gone = stored[0]
    nurse = await login(http, NURSE.email)
    async with http.delete(gone["url"], headers=bearer(nurse)) as r:
        assert r.status == 403
    async with http.delete(gone["url"], headers=bearer(physician)) as r:
        assert r.status == 204
    assert [r["id"] for r in await _recordings(http, cid, physician)] == [stored[1]["id"]]
    async with http.get(gone["url"], headers=bearer(physician)) as r:
        assert r.status == 404
    async with http.delete(gone["url"], headers=bearer(physician)) as r:
        assert r.status == 404
    assert sum(1 for blob in written if blob.exists()) == len(written) - 1
    actions = [e["action"] for e in await audit_events(http, resource=gone["id"])]
    assert "recording_deleted" in actions and "attachment_downloaded" in actions, actions


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
async def test_a_recording_in_progress_when_the_relay_stops(tmp_path: Path, stop: str) -> None:
    """SIGTERM mid-recording: the relay seals what it has before it exits. ``kill -9``: the
    stretch in progress (never acknowledged to anyone) is lost whole, nothing half-stored."""
    data_dir = init_data_dir(tmp_path)
    add_account(data_dir, PHYSICIAN, teams=False)
    blobs = data_dir / "blobs"
    relay = RelayProcess(data_dir, free_port())
    relay.start()
    try:
        async with (
            client_session(relay) as http,
            call_with_patient(http, relay, "M. Arrêt") as call,
        ):
            cid = call.cid
            await call.doctor.send({"type": "record", "enabled": True})
            for who in (call.doctor, call.patient):
                await who.send({"type": "consent", "kind": "recording", "granted": True})
            for who in (call.doctor, call.patient):
                await who.event("recording_state", active=True)
            await _media_to_recorder(call.doctor, call.patient)
            await asyncio.sleep(1.5)
            if stop == "sigterm":
                assert await asyncio.to_thread(relay.stop) == 0
            else:
                await asyncio.to_thread(relay.kill9)
    finally:
        relay.stop()
    first_log = relay.log()
    relay = RelayProcess(data_dir, free_port())
    relay.start()
    try:
        async with client_session(relay) as http:
            physician = await login(http, PHYSICIAN.email)
            stored = await _recordings(http, cid, physician)
    finally:
        assert relay.stop() == 0
    assert not list(blobs.glob("*/.tmp-*"))  # removed at start-up
    # Participants' addresses stay out of the log.
    assert "aioice" not in first_log and "CandidatePair" not in first_log
    if stop == "kill9":
        assert stored == []
        return
    assert len(stored) == 2, first_log
    assert "audit write failed" not in first_log, first_log  # the rooms' last events written
    for recording in stored:
        assert recording["end_reason"] == "server_stopping"
        assert recording["video_frames"] > 0
