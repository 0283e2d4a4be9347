"""The recording peer: a server-side WebRTC participant that writes the call to encrypted blobs.

Issue 6 item 5. While the room says recording runs (everyone present consented, a
professional asked), each participant's page offers its media to the peer ``recorder``
(:data:`signaling.room.RECORDER_ID`); this module answers with an aiortc
``RTCPeerConnection`` that only receives, decodes the frames, re-encodes them (VP8 + Opus in
WebM, the formats browsers play) and streams the container into the blob store, which
encrypts it chunk by chunk as it arrives. No clear media ever touches the disk (the only
temporary file is the blob store's own, and it holds ciphertext). A participant's stretch of
media becomes one blob and one :class:`Recording` handed to the ``stored`` callback (the
relay keeps it as a row: ``relay.recordings``) when it ends (recording stopped, consent
revoked, participant left or renegotiated, size cap reached). Here per DESIGN.md's layout
("signaling/: … aiortc peer"); it needs only the blob store below it.

Why re-encode: aiortc hands decoded frames to its consumers; writing the RTP payloads
untouched would need a depacketiser of our own. Encoding runs in one thread per participant
(libvpx releases the GIL), never on the event loop, at :data:`ARCHIVE_FPS`; when it falls
behind, video frames are dropped (counted) rather than queued, audio never is.

Limits: a recording in progress is only in memory and in the blob store's temporary file
until it ends: a ``kill -9`` loses the stretch in progress (never an acknowledged one).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame

from signaling.messages import ErrorReply, RelayedAnswer, RelayedCandidate, RelayedOffer
from signaling.room import RECORDER_ID
from signaling.turn import RtcConfiguration
from storage.blobs import BlobStore

log = logging.getLogger("relais.recorder")
# aioice logs every candidate pair (participants' IP addresses) at INFO: not for our logs.
logging.getLogger("aioice").setLevel(logging.WARNING)
logging.getLogger("aiortc").setLevel(logging.WARNING)

MEDIA_TYPE: Final = "video/webm"
VIDEO_BIT_RATE: Final = 600_000
"""Enough for a face and a wound at 640x480; the call itself adapts, the archive needs less."""
AUDIO_BIT_RATE: Final = 48_000
ARCHIVE_FPS: Final = 15
"""Video frames kept per second: enough to review a consultation, and half the encoding
cost of 30 (libvpx realtime at 640x480 measured here at ~11 ms of CPU per frame)."""

# libvpx tuned for live input: the defaults ("good", cpu-used 0) cannot keep up in real time.
_VP8_OPTIONS: Final = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}


@dataclass(frozen=True)
class Recording:
    """One participant's media over one uninterrupted stretch of a recorded call."""

    id: str
    consultation_id: str
    participant_id: str
    blob_id: str
    media_type: str
    started_at: datetime
    ended_at: datetime
    size: int
    sha256: str
    video_frames: int
    audio_frames: int
    end_reason: str

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


Answer = Callable[[str, RelayedAnswer | RelayedCandidate | ErrorReply], None]
"""Send a message from the recorder to a participant (through the room)."""
Stored = Callable[[Recording], Awaitable[None]]
"""Called once per recording whose blob is durable: adds the row and the audit record."""


class _ChunkSink:
    """The file-like object PyAV writes the container into, from the encoding thread.

    Each write is handed to the event loop, where the blob store consumes it as a stream.
    No ``seek``: the WebM muxer then writes a live (unseekable) file, which players read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]):
        self._loop = loop
        self._queue = queue
        self.size = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.size += len(chunk)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        return len(chunk)


@dataclass
class _Stream:
    """One output stream of the container and how input timestamps map onto it."""

    stream: Any  # av.VideoStream | av.AudioStream (PyAV's stubs differ between versions)
    kind: str
    base_pts: int | None = None
    frames: int = 0


class ParticipantMedia:
    """One participant's media, from one peer connection, into one encrypted WebM blob."""

    def __init__(
        self,
        consultation_id: str,
        participant_id: str,
        blobs: BlobStore,
        *,
        max_bytes: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.consultation_id = consultation_id
        self.participant_id = participant_id
        self._blobs = blobs
        self._max_bytes = max_bytes
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="recorder")
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._sink = _ChunkSink(self._loop, self._queue)
        self._tracks: list[MediaStreamTrack] = []
        self._consumers: list[asyncio.Task[None]] = []
        self._container: Any = None
        self._streams: dict[str, _Stream] = {}
        self._started_at: datetime | None = None
        self._started_mono = 0.0
        self._video_busy = False
        self._last_video = -1.0
        self._failed = False
        self.dropped_video_frames = 0
        self._writer: asyncio.Task[Any] | None = None
        self._finished: asyncio.Future[Recording | None] | None = None
        self.on_limit: Callable[[], None] | None = None

    def add_track(self, track: MediaStreamTrack) -> None:
        """Record this incoming track (audio or video)."""
        if track.kind not in ("audio", "video") or track.kind in {t.kind for t in self._tracks}:
            return  # one audio and one video track per participant
        self._tracks.append(track)
        self._consumers.append(asyncio.create_task(self._consume(track)))

    # --- frames in ---------------------------------------------------------------------------

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if self._failed:
                    return
                if isinstance(frame, VideoFrame):
                    self._on_video(frame)
                elif isinstance(frame, AudioFrame):
                    self._on_audio(frame)

    def _on_video(self, frame: VideoFrame) -> None:
        now = self._loop.time()
        if now - self._last_video < 0.9 / ARCHIVE_FPS:
            return  # above the archive's frame rate
        self._last_video = now
        if self._video_busy:
            self.dropped_video_frames += 1  # encoder behind: drop rather than pile up
            return
        self._video_busy = True
        self._submit(self._encode_video, frame, video=True)

    def _on_audio(self, frame: AudioFrame) -> None:
        if self._container is None and "video" in {t.kind for t in self._tracks}:
            return  # the container opens on the first video frame (its size); audio before
        self._submit(self._encode_audio, frame, video=False)

    def _submit(self, work: Callable[[Any, float], None], frame: Any, *, video: bool) -> None:
        arrived = self._loop.time()
        future = self._loop.run_in_executor(self._encoder, work, frame, arrived)

        def done(f: asyncio.Future[None]) -> None:
            if video:
                self._video_busy = False
            if f.cancelled():
                return
            error = f.exception()
            if error is not None and not self._failed:
                self._failed = True
                log.error("recording encoder failed: %s", type(error).__name__)
            elif self._sink.size > self._max_bytes and self.on_limit is not None:
                callback, self.on_limit = self.on_limit, None
                callback()

        future.add_done_callback(done)

    # --- encoding (in the encoder thread) ----------------------------------------------------

    def _open(self, frame: Any, arrived: float) -> None:
        container = av.open(self._sink, mode="w", format="webm")
        kinds = {t.kind for t in self._tracks}
        if "video" in kinds:
            video = container.add_stream("libvpx", rate=ARCHIVE_FPS, options=dict(_VP8_OPTIONS))
            video.pix_fmt = "yuv420p"
            width, height = (frame.width, frame.height) if isinstance(frame, VideoFrame) else (0, 0)
            video.width, video.height = width or 640, height or 480
            video.bit_rate = VIDEO_BIT_RATE
            self._streams["video"] = _Stream(video, "video")
        if "audio" in kinds:
            audio = container.add_stream("libopus", rate=48000)
            audio.bit_rate = AUDIO_BIT_RATE
            self._streams["audio"] = _Stream(audio, "audio")
        self._container = container
        self._started_mono = arrived

    def _pts(self, out: _Stream, frame: Any, arrived: float) -> int:
        # RTP timestamps start at a random value per stream: rebase each stream so that its
        # first frame sits where it arrived relative to the recording's start (A/V in sync).
        time_base = frame.time_base or fractions.Fraction(1, 90000)
        if out.base_pts is None:
            offset = round((arrived - self._started_mono) / time_base)
            out.base_pts = int(frame.pts or 0) - offset
        return max(0, int(frame.pts or 0) - out.base_pts)

    def _encode_video(self, frame: VideoFrame, arrived: float) -> None:
        if self._container is None:
            self._open(frame, arrived)
        out = self._streams.get("video")
        if out is None:
            return
        pts = self._pts(out, frame, arrived)
        stream = out.stream
        if (frame.width, frame.height, frame.format.name) != (
            stream.width,
            stream.height,
            "yuv420p",
        ):
            # The sender adapts its resolution to the link: keep the archive's size.
            time_base = frame.time_base
            frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            frame.time_base = time_base
        frame.pts = pts
        for packet in stream.encode(frame):
            self._container.mux(packet)
        out.frames += 1

    def _encode_audio(self, frame: AudioFrame, arrived: float) -> None:
        if self._container is None:
            self._open(frame, arrived)
        out = self._streams.get("audio")
        if out is None:
            return
        frame.pts = self._pts(out, frame, arrived)
        for packet in out.stream.encode(frame):
            self._container.mux(packet)
        out.frames += 1

    def _close(self) -> None:
        if self._container is None:
            return
        with contextlib.suppress(Exception):
            for out in self._streams.values():
                for packet in out.stream.encode(None):
                    self._container.mux(packet)
        self._container.close()

    # --- the blob ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start streaming into the blob store (call once, before frames flow)."""
        self._started_at = self._clock()
        self._writer = asyncio.create_task(
            self._blobs.put(self._chunks(), max_bytes=self._max_bytes + 16 * 1024 * 1024)
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            yield chunk

    async def finish(self, reason: str) -> Recording | None:
        """End this stretch: flush the encoders, seal the blob, return the recording (or
        ``None`` when nothing was recorded). Safe to call more than once."""
        if self._finished is None:
            self._finished = asyncio.ensure_future(self._finish(reason))
        return await asyncio.shield(self._finished)

    async def _finish(self, reason: str) -> Recording | None:
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        for track in self._tracks:
            track.stop()
        await self._loop.run_in_executor(self._encoder, self._close)
        self._encoder.shutdown(wait=False)
        self._queue.put_nowait(None)
        assert self._writer is not None and self._started_at is not None
        frames = {kind: out.frames for kind, out in self._streams.items()}
        if self._container is None or self._failed or not any(frames.values()):
            self._writer.cancel()  # the store removes a blob whose stream failed
            await asyncio.gather(self._writer, return_exceptions=True)
            return None
        info = await self._writer
        return Recording(
            id=secrets.token_hex(16),
            consultation_id=self.consultation_id,
            participant_id=self.participant_id,
            blob_id=info.blob_id,
            media_type=MEDIA_TYPE,
            started_at=self._started_at,
            ended_at=self._clock(),
            size=info.size,
            sha256=info.sha256,
            video_frames=frames.get("video", 0),
            audio_frames=frames.get("audio", 0),
            end_reason=reason,
        )


def _ice_servers(rtc: RtcConfiguration | None) -> list[RTCIceServer]:
    if rtc is None:
        return []
    servers = []
    for server in rtc.ice_servers:
        servers.append(
            RTCIceServer(
                urls=list(server.urls), username=server.username, credential=server.credential
            )
        )
    return servers


class ConsultationRecorder:
    """The recording peer of one consultation: one receive-only connection per participant."""

    def __init__(
        self,
        consultation_id: str,
        *,
        blobs: BlobStore,
        answer: Answer,
        stored: Stored,
        max_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rtc: Callable[[], RtcConfiguration | None] = lambda: None,
    ) -> None:
        self.consultation_id = consultation_id
        self._blobs = blobs
        self._answer = answer
        self._stored = stored
        self._max_bytes = max_bytes
        self._clock = clock
        self._rtc = rtc
        self._sessions: dict[str, tuple[RTCPeerConnection, ParticipantMedia]] = {}
        self._lock = asyncio.Lock()  # offers, candidates and stops in arrival order
        self._stopped = False
        self._finishing: set[asyncio.Task[None]] = set()
        self._latest_offer: dict[str, RelayedOffer] = {}

    @property
    def participants(self) -> tuple[str, ...]:
        """Participants whose media is being recorded now."""
        return tuple(self._sessions)

    async def offer(self, message: RelayedOffer) -> None:
        """A participant offers its media: answer with a receive-only connection."""
        pid = message.sender
        self._latest_offer[pid] = message
        async with self._lock:
            if self._latest_offer.get(pid) is not message:
                return  # superseded while waiting: a burst of offers costs one connection
            del self._latest_offer[pid]
            if self._stopped:
                return
            await self._end(pid, "renegotiated")
            pc = RTCPeerConnection(RTCConfiguration(iceServers=_ice_servers(self._rtc())))
            media = ParticipantMedia(
                self.consultation_id, pid, self._blobs, max_bytes=self._max_bytes, clock=self._clock
            )
            media.on_limit = lambda: self._spawn(self.drop(pid, "size_limit"))

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                media.add_track(track)

            @pc.on("connectionstatechange")
            async def on_state() -> None:
                if pc.connectionState == "failed":
                    self._spawn(self._drop_if_current(pid, pc, "connection_failed"))

            try:
                await pc.setRemoteDescription(RTCSessionDescription(message.sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # aiortc raises ValueError and others on bad SDP
                await pc.close()
                log.info("recording offer refused: %s", type(exc).__name__)
                self._answer(
                    pid,
                    ErrorReply(
                        "invalid_sdp",
                        "the recorder could not use this offer",
                        "L'enregistrement n'a pas pu recevoir votre image ; rechargez la page.",
                    ),
                )
                return
            media.start()
            self._sessions[pid] = (pc, media)
            self._answer(pid, RelayedAnswer(RECORDER_ID, pc.localDescription.sdp))

    async def candidate(self, message: RelayedCandidate) -> None:
        """A trickled ICE candidate for the participant's connection (bad ones are ignored,
        as a browser would)."""
        async with self._lock:
            session = self._sessions.get(message.sender)
            text = message.candidate.removeprefix("candidate:")
            if session is None or not text:
                return
            try:
                candidate = candidate_from_sdp(text)
                candidate.sdpMid = message.sdp_mid
                candidate.sdpMLineIndex = message.sdp_mline_index
                await session[0].addIceCandidate(candidate)
            except Exception as exc:
                log.info("recording candidate ignored: %s", type(exc).__name__)

    async def drop(self, participant_id: str, reason: str) -> None:
        """Stop recording one participant (they left, or their recording reached its cap)."""
        async with self._lock:
            await self._end(participant_id, reason)

    async def stop(self, reason: str) -> None:
        """Stop recording everyone and wait until every recording is stored."""
        async with self._lock:
            self._stopped = True
            for pid in list(self._sessions):
                await self._end(pid, reason)
        while self._finishing:
            await asyncio.gather(*list(self._finishing), return_exceptions=True)

    async def _drop_if_current(self, pid: str, pc: RTCPeerConnection, reason: str) -> None:
        async with self._lock:
            session = self._sessions.get(pid)
            if session is not None and session[0] is pc:
                await self._end(pid, reason)

    async def _end(self, pid: str, reason: str) -> None:
        session = self._sessions.pop(pid, None)
        if session is None:
            return
        pc, media = session
        await pc.close()
        recording = await media.finish(reason)
        if recording is not None:
            await self._stored(recording)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("recording task failed")

        task = asyncio.ensure_future(run())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
