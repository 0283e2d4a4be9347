"""Real WebRTC peers (aiortc) meet through the real relay's signaling WebSocket.

Two peers exchange a data-channel message and video frames; a third joins and the mesh
forms (the newcomer offers to everyone already there). Loopback, host candidates, no TURN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from tests.conftest import bearer, login
from tests.harness.accounts import NURSE, PHYSICIAN
from tests.harness.relay_process import RelayProcess
from tests.signaling.ws_harness import (
    Json,
    client_session,
    greeted_peer,
    guest_pass,
    link_of,
    schedule,
    until,
)

FRAMES_WANTED = 5


class SmallVideo(VideoStreamTrack):
    """A 160x120 test pattern: cheap to encode on a CI machine."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=160, height=120)
        for plane in frame.planes:
            plane.update(bytes([pts % 251]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


class MeshPeer:
    """One participant: a signaling socket and one RTCPeerConnection per other participant."""

    def __init__(self, name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.name = name
        self.ws = ws
        self.me = ""
        self.connections: dict[str, RTCPeerConnection] = {}
        self.frames: dict[str, int] = {}
        self.chat: list[tuple[str, str]] = []
        self.channels: dict[str, RTCDataChannel] = {}
        self.events: asyncio.Queue[Json] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, message: Json) -> None:
        await self.ws.send_str(json.dumps(message))

    def _connection(self, other: str) -> RTCPeerConnection:
        # No ICE server: host candidates only (aiortc would otherwise try Google's STUN).
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.connections[other] = pc
        pc.addTrack(SmallVideo())

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._count_frames(other, track))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self._listen(other, channel)

        return pc

    def _listen(self, other: str, channel: RTCDataChannel) -> None:
        self.channels[other] = channel

        @channel.on("message")
        def on_message(message: Any) -> None:
            self.chat.append((other, str(message)))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _count_frames(self, other: str, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames[other] = self.frames.get(other, 0) + 1

    async def offer_to(self, other: str) -> None:
        """Mesh rule: the newcomer offers, with a data channel greeting the other side."""
        pc = self._connection(other)
        channel = pc.createDataChannel("chat")
        self._listen(other, channel)

        @channel.on("open")
        def on_open() -> None:
            channel.send(f"bonjour de {self.name}")

        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "offer", "to": other, "sdp": pc.localDescription.sdp})

    async def run(self) -> None:
        """Answer offers, apply answers (aiortc puts its candidates in the SDP)."""
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            message: Json = json.loads(msg.data)
            kind = message["type"]
            if kind == "offer":
                pc = self._connection(message["from"])
                await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                await self.send(
                    {"type": "answer", "to": message["from"], "sdp": pc.localDescription.sdp}
                )
            elif kind == "answer":
                pc = self.connections[message["from"]]
                await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
            else:
                await self.events.put(message)

    async def event(self, kind: str, timeout: float = 5.0) -> Json:
        while True:
            message = await asyncio.wait_for(self.events.get(), timeout)
            if message["type"] == kind:
                return message

    async def close(self) -> None:
        for pc in self.connections.values():
            await pc.close()
        for task in list(self.tasks):
            task.cancel()


def peer(
    name: str, session: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None
) -> AbstractAsyncContextManager[MeshPeer]:
    """A mesh participant on its signaling socket, greeted."""
    return greeted_peer(lambda ws: MeshPeer(name, ws), session, path, headers)


async def test_two_peers_then_a_third_form_a_mesh(
    http: aiohttp.ClientSession, relay: RelayProcess
) -> None:
    physician = await login(http, PHYSICIAN.email)
    nurse = await login(http, NURSE.email)
    consultation = await schedule(
        http,
        physician,
        [{"email": NURSE.email}, {"role": "patient", "display_name": "Mme Patiente"}],
    )
    cid = consultation["id"]
    path = f"/ws/consultations/{cid}"
    _, patient_token = link_of(consultation, "patient")
    async with client_session(relay) as patient_http:
        await guest_pass(patient_http, cid, patient_token)
        async with (
            peer("medecin", http, path, bearer(physician)) as doctor,
            peer("patient", patient_http, f"{path}?as=guest") as patient,
        ):
            await doctor.send({"type": "join"})
            doctor.me = (await doctor.event("joined"))["you"]["participant_id"]
            await patient.send({"type": "join"})
            patient.me = (await patient.event("waiting"))["you"]["participant_id"]
            await doctor.send({"type": "admit", "participant_id": patient.me})
            admitted = await patient.event("admitted")
            assert admitted["rtcConfiguration"] == {"iceServers": []}
            # The admitted newcomer offers to everyone already in the call.
            for other in admitted["participants"]:
                await patient.offer_to(other["participant_id"])
            await until(
                lambda: (
                    doctor.frames.get(patient.me, 0) >= FRAMES_WANTED
                    and patient.frames.get(doctor.me, 0) >= FRAMES_WANTED
                    and doctor.chat
                ),
                20,
                "video both ways and the data-channel greeting",
            )
            assert doctor.chat == [(patient.me, "bonjour de patient")]
            patient.channels[doctor.me].send("merci docteur")  # and back the other way
            doctor.channels[patient.me].send("je vous entends bien")
            await until(lambda: len(patient.chat) >= 1 and len(doctor.chat) >= 2, 10, "chat")
            assert patient.chat == [(doctor.me, "je vous entends bien")]
            # A third participant (the nurse, a professional) joins: the mesh forms.
            async with peer("infirmiere", http, path, bearer(nurse)) as ide:
                await ide.send({"type": "join"})
                joined = await ide.event("joined")
                ide.me = joined["you"]["participant_id"]
                others = [p["participant_id"] for p in joined["participants"]]
                assert sorted(others) == sorted([doctor.me, patient.me])
                for other in others:
                    await ide.offer_to(other)
                await until(
                    lambda: (
                        all(ide.frames.get(o, 0) >= FRAMES_WANTED for o in others)
                        and doctor.frames.get(ide.me, 0) >= FRAMES_WANTED
                        and patient.frames.get(ide.me, 0) >= FRAMES_WANTED
                    ),
                    20,
                    "the three-way mesh",
                )
                assert (ide.me, "bonjour de infirmiere") in patient.chat
                for pc in (*doctor.connections.values(), *ide.connections.values()):
                    assert pc.connectionState == "connected"
