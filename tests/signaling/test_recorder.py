"""The recording peer in-process: a real aiortc sender offers to it directly (no relay).

Covers the ways one participant's recording ends (size cap, renegotiation, leaving) and
what happens to bad input, against a real encrypted blob store.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from signaling.messages import ErrorReply, RelayedAnswer, RelayedCandidate, RelayedOffer
from signaling.recorder import ConsultationRecorder, Recording
from storage.blobs import BlobStore
from storage.keys import Keyring
from tests.signaling.test_ws_aiortc import SmallVideo

CID = "c0ffee"


class Bench:
    """A recorder wired to a blob store, and what it answered and stored."""

    def __init__(self, tmp_path: Path, max_bytes: int = 50_000_000) -> None:
        self.blobs = BlobStore(tmp_path / "blobs", Keyring.create(tmp_path / "keys"))
        self.answers: dict[str, list[RelayedAnswer | RelayedCandidate | ErrorReply]] = {}
        self.stored: list[Recording] = []
        self.recorder = ConsultationRecorder(
            CID,
            blobs=self.blobs,
            answer=lambda pid, m: self.answers.setdefault(pid, []).append(m),
            stored=self._store,
            max_bytes=max_bytes,
        )
        self.senders: list[RTCPeerConnection] = []

    async def _store(self, recording: Recording) -> None:
        self.stored.append(recording)

    async def send_media(self, participant_id: str, *, audio: bool = True) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.senders.append(pc)
        pc.addTrack(SmallVideo())
        if audio:
            pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        await self.recorder.offer(RelayedOffer(participant_id, pc.localDescription.sdp))
        (answer,) = [m for m in self.answers[participant_id] if isinstance(m, RelayedAnswer)][-1:]
        assert answer.sender == "recorder"
        await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        return pc

    async def wait_stored(self, count: int, timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.stored) < count:
            assert asyncio.get_running_loop().time() < deadline, self.stored
            await asyncio.sleep(0.05)


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(tmp_path)
    yield b
    await b.recorder.stop("test_over")
    for pc in b.senders:
        await pc.close()


async def _frames(bench: Bench, recording: Recording) -> tuple[list[str], int]:
    data = await bench.blobs.read_all_verified(recording.blob_id, max_bytes=100_000_000)
    with av.open(io.BytesIO(data), mode="r") as container:
        codecs = sorted(s.codec_context.name for s in container.streams)
        return codecs, len(list(container.decode(video=0)))


async def test_renegotiating_seals_the_first_stretch_and_starts_another(bench: Bench) -> None:
    await bench.send_media("p1")
    await asyncio.sleep(1.5)
    await bench.send_media("p1")  # e.g. the page reconnected: a fresh offer
    await bench.wait_stored(1)
    first = bench.stored[0]
    assert first.end_reason == "renegotiated" and first.participant_id == "p1"
    assert bench.recorder.participants == ("p1",)
    await asyncio.sleep(1.0)
    await bench.recorder.drop("p1", "left")
    await bench.wait_stored(2)
    assert bench.stored[1].end_reason == "left"
    assert not bench.recorder.participants
    for recording in bench.stored:
        codecs, frames = await _frames(bench, recording)
        assert codecs == ["opus", "vp8"]
        assert frames == recording.video_frames > 5


async def test_video_only_participant(bench: Bench) -> None:
    await bench.send_media("p2", audio=False)
    await asyncio.sleep(1.5)
    await bench.recorder.stop("not_requested")
    (recording,) = bench.stored
    codecs, frames = await _frames(bench, recording)
    assert codecs == ["vp8"] and frames > 5 and recording.audio_frames == 0


async def test_a_recording_stops_at_its_size_cap_and_is_kept(tmp_path: Path) -> None:
    bench = Bench(tmp_path, max_bytes=20_000)
    try:
        await bench.send_media("p3")
        await bench.wait_stored(1)
        (recording,) = bench.stored
        assert recording.end_reason == "size_limit"
        assert 20_000 <= recording.size < 20_000 + 1_000_000
        codecs, frames = await _frames(bench, recording)
        assert codecs == ["opus", "vp8"] and frames > 0  # sealed: a playable file
        assert bench.recorder.participants == ()
    finally:
        await bench.recorder.stop("test_over")
        for pc in bench.senders:
            await pc.close()


async def test_unusable_offers_and_candidates_get_errors_not_crashes(bench: Bench) -> None:
    await bench.recorder.offer(RelayedOffer("p4", "v=0\r\nm=nonsense\r\n"))
    (reply,) = bench.answers["p4"]
    assert isinstance(reply, ErrorReply) and reply.code == "invalid_sdp"
    assert reply.human is not None and "enregistrement" in reply.human.lower()
    assert bench.recorder.participants == ()
    # Candidates for nobody, or garbage for someone: ignored, the recording goes on.
    await bench.recorder.candidate(RelayedCandidate("nobody", "candidate:1 1 udp 1 1.2.3.4 9"))
    await bench.send_media("p5")
    await bench.recorder.candidate(RelayedCandidate("p5", "candidate:garbage"))
    await asyncio.sleep(1.0)
    await bench.recorder.stop("not_requested")
    assert [r.participant_id for r in bench.stored] == ["p5"]


async def test_nothing_is_stored_when_no_frame_arrived(bench: Bench) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    bench.senders.append(pc)
    pc.addTrack(SmallVideo())
    await pc.setLocalDescription(await pc.createOffer())
    await bench.recorder.offer(RelayedOffer("p6", pc.localDescription.sdp))
    # The sender never applies the answer: no media flows.
    await bench.recorder.stop("not_requested")
    assert bench.stored == []
    assert list(bench.blobs.iter_blob_ids()) == []


async def test_a_burst_of_offers_costs_one_connection(bench: Bench) -> None:
    offers = []
    for _ in range(20):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        bench.senders.append(pc)
        pc.addTrack(SmallVideo())
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(RelayedOffer("p7", pc.localDescription.sdp))
    await asyncio.gather(*(bench.recorder.offer(o) for o in offers))
    answers = [m for m in bench.answers["p7"] if isinstance(m, RelayedAnswer)]
    # The first (already running) and the latest are answered; those in between are skipped.
    assert len(answers) == 2
    assert bench.recorder.participants == ("p7",)
