"""The signaling WebSocket ``/ws/consultations/{id}``: a thin adapter around ``signaling.room``.

It authenticates the socket at the upgrade (a professional's session, or a patient's guest
pass cookie from ``POST /api/consultations/{id}/join``: no token ever travels in a URL), then
only translates (DESIGN.md "Cores without I/O"): frames in → ``Room.receive``, the room's
actions out, in order. One :class:`Room` per consultation lives in this process's memory:
a single node serves a consultation (a multi-node deployment must route a consultation's
sockets to one node, e.g. by consultation id; carrying rooms over the bus is not done).

Order and audit: ``Audit`` actions come first in each batch and are written before anything
of the batch is released; a batch waits behind earlier batches of its room, so every socket
sees the room's order. Batches without audit (the offer/answer/candidate relay, the hot path)
are released at once when nothing is pending. When the audit log cannot write, the room's
sockets are closed with 1011 rather than go on untraced.

Each socket has an outbox drained by its own writer task, so a slow receiver never holds up
its room; one that falls ``MAX_OUTBOX`` messages behind is closed with 1013 (it may resume).
Frames over aiohttp's cap are closed with 1009 by aiohttp before being buffered whole; binary
frames with 1003 (RFC 6455 §7.4.1: a type of data the endpoint cannot accept).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import WSMsgType, web

from relay.audit.events import Actor, ActorKind, AuditAction, AuditRecord, EntityRef, Outcome
from relay.audit.events import ResourceKind as Kind
from relay.consultations import ConsultationStatus, identity_of, verify_guest_pass
from relay.errors import Forbidden
from relay.http import trail
from relay.http.consultations import GUEST_COOKIE, Teleconsultation, teleconsultation
from relay.http.context import runtime, session_token
from relay.http.route import Route
from relay.policy import Action, is_allowed
from relay.recordings import RecordingStore
from relay.runtime import utcnow
from signaling.errors import CloseCode, ConsultationEnded, SignalingError, TokenError
from signaling.messages import ErrorReply, RelayedOffer, serialize
from signaling.recorder import Answer as RecorderAnswer
from signaling.recorder import ConsultationRecorder, Recording
from signaling.room import (
    RECORDER_ID,
    Audit,
    AuditKind,
    Close,
    DropFromRecording,
    Identity,
    Room,
    RoomSettings,
    Send,
    StartRecording,
    StopRecording,
    ToRecorder,
)
from signaling.room import (
    Action as RoomAction,
)
from signaling.turn import rtc_configuration

log = logging.getLogger("relais.signaling")

MAX_OUTBOX: Final = 1024
"""Messages queued for one socket before it counts as too slow and is closed (1013)."""
HEARTBEAT_SECONDS: Final = 20.0
"""WebSocket ping interval: a silent peer (no pong) counts as dropped and enters its grace."""
WRITER_GRACE_SECONDS: Final = 10.0
READER_STOP_SECONDS: Final = 0.2
"""How long a closing socket's writer waits for its reader to stop (see ``_Peer._write``)."""
DRAIN_POLL_SECONDS: Final = 0.25
INTERNAL_ERROR: Final = 1011
UNSUPPORTED_DATA: Final = 1003
_END_OF_STREAM: Final = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})


@dataclass
class RoomContext:
    """What the audit sink needs to know about a room's people (ids, never names)."""

    consultation_id: str
    patient_ref: str | None = None
    actors: dict[str, tuple[Actor, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Finish:
    """Close socket ``peer_id`` normally once everything queued before has been released."""

    peer_id: str


_Step = RoomAction | _Finish
AuditSink = Callable[[RoomContext, Audit], Awaitable[None]]
EndedSink = Callable[[str], Awaitable[None]]
RecorderFactory = Callable[[RoomContext, RecorderAnswer], ConsultationRecorder]


class _Peer:
    """One socket: an outbox and the task that drains it in order."""

    def __init__(self, peer_id: str, ws: web.WebSocketResponse) -> None:
        self.peer_id = peer_id
        self.ws = ws
        self.outbox: deque[str] = deque()
        self.close_code: int | None = None
        self.close_reason = ""
        self.stopped_reading = asyncio.Event()
        # The writer's wake-up, created only while it waits for work: a send to a busy
        # writer is then just the append, and a wake-up one set_result (an asyncio.Event
        # costs a waiter list and a Future per wait on the relay hot path).
        self._idle: asyncio.Future[None] | None = None
        self.writer = asyncio.create_task(self._write())

    def send(self, text: str) -> None:
        if self.close_code is not None:
            return
        if len(self.outbox) >= MAX_OUTBOX:
            self.close(CloseCode.TRY_AGAIN_LATER, "slow_consumer")
            return
        self.outbox.append(text)
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():  # done: cancelled with the writer task
                idle.set_result(None)

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            idle = self._idle
            if idle is not None:
                self._idle = None
                if not idle.done():
                    idle.set_result(None)

    async def _write(self) -> None:
        ws, outbox = self.ws, self.outbox
        loop = asyncio.get_running_loop()
        try:
            while True:
                while outbox and self.close_reason != "slow_consumer":
                    await ws.send_str(outbox.popleft())
                if self.close_code is not None:
                    if not self.stopped_reading.is_set():
                        # aiohttp drops the TCP connection at once when close() runs while
                        # another task is reading; with client frames still unread (a
                        # flood), the kernel then resets it and the client can lose our
                        # close frame (seen under load: 1006 instead of 1008). The reader
                        # stops at its next frame; then close() reads up to the client's
                        # own close. A quiet client costs this short wait.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stopped_reading.wait(), READER_STOP_SECONDS)
                    await ws.close(code=self.close_code, message=self.close_reason.encode())
                    return
                if not outbox:
                    self._idle = idle = loop.create_future()
                    await idle
        except ConnectionError:
            return  # the socket went away; the read loop sees it and disconnects


@dataclass(eq=False)
class _RoomRunner:
    room: Room
    context: RoomContext
    peers: dict[str, _Peer] = field(default_factory=dict)
    pending: deque[Sequence[_Step]] = field(default_factory=deque)
    performer: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None


class SignalingHub:
    """The rooms of this process and the sockets attached to them."""

    def __init__(
        self,
        settings: RoomSettings,
        *,
        audit: AuditSink,
        on_ended: EndedSink,
        clock: Callable[[], float] = time.time,
        recorder: RecorderFactory | None = None,
    ) -> None:
        self.settings = settings
        self._audit = audit
        self._on_ended = on_ended
        self._clock = clock
        self._rooms: dict[str, _RoomRunner] = {}
        self._ids = itertools.count(1)
        self._new_recorder = recorder
        self._recorders: dict[str, ConsultationRecorder] = {}
        self._recording_tasks: set[asyncio.Task[None]] = set()

    @property
    def room_count(self) -> int:
        """Rooms in memory."""
        return len(self._rooms)

    def room(self, consultation_id: str) -> Room | None:
        """The live room of a consultation, if any (for tests and metrics)."""
        runner = self._rooms.get(consultation_id)
        return None if runner is None else runner.room

    async def serve(
        self,
        ws: web.WebSocketResponse,
        consultation_id: str,
        identity: Identity,
        actor: Actor,
        address: str | None = None,
        patient_ref: str | None = None,
    ) -> None:
        """Attach a prepared, authenticated socket to its room until it closes."""
        runner = self._rooms.get(consultation_id)
        if runner is None:
            room = Room(consultation_id, self.settings)
            runner = self._rooms[consultation_id] = _RoomRunner(
                room, RoomContext(consultation_id, patient_ref)
            )
        runner.context.actors[identity.participant_id] = (actor, address)
        peer = _Peer(f"s{next(self._ids)}", ws)
        runner.peers[peer.peer_id] = peer
        self._apply(runner, runner.room.connect(peer.peer_id, identity, self._clock()))
        room, peer_id, clock = runner.room, peer.peer_id, self._clock
        try:
            while True:
                # receive() rather than `async for`: one coroutine frame less per frame, and
                # the same end (__anext__ stops on CLOSE, CLOSING and CLOSED).
                message = await ws.receive()
                kind = message.type
                if kind is WSMsgType.TEXT:
                    self._apply(runner, room.receive(peer_id, message.data, clock()))
                    if peer.close_code is not None:
                        break  # closing: let the writer's close() read the rest
                elif kind is WSMsgType.BINARY:
                    self._refuse(runner, peer, identity, UNSUPPORTED_DATA, "unsupported_data")
                    break
                elif kind in _END_OF_STREAM:
                    break
        finally:
            peer.stopped_reading.set()
            if ws.close_code == CloseCode.MESSAGE_TOO_BIG and peer.close_code is None:
                # aiohttp cut a frame over max_msg_size: trace it like the room's refusals.
                self._refuse(runner, peer, identity, CloseCode.MESSAGE_TOO_BIG, "message_too_big")
            gone = runner.room.disconnect(peer.peer_id, self._clock())
            # Closed after whatever the room still has for this socket (an error reply).
            self._apply(runner, [*gone, _Finish(peer.peer_id)], timers=True)
            try:
                await asyncio.wait_for(asyncio.shield(peer.writer), WRITER_GRACE_SECONDS)
            except TimeoutError:
                peer.writer.cancel()
                await ws.close(code=INTERNAL_ERROR)
            runner.peers.pop(peer.peer_id, None)
            self._discard_if_idle(runner)

    def close_all(self, code: int = 1001, reason: str = "going_away") -> None:
        """Close every socket (server shutdown: 1001 Going Away, RFC 6455 §7.4.1)."""
        for runner in self._rooms.values():
            for peer in runner.peers.values():
                peer.close(code, reason)

    async def settle(self) -> None:
        """Wait until every room has written its pending audit events and released them."""
        while performers := [r.performer for r in self._rooms.values() if r.performer]:
            await asyncio.gather(*performers, return_exceptions=True)

    @property
    def recording_participants(self) -> int:
        """Participants whose media is being recorded on this node now."""
        return sum(len(r.participants) for r in self._recorders.values())

    def recorder(self, consultation_id: str) -> ConsultationRecorder | None:
        """The running recording peer of a consultation, if any (for tests and metrics)."""
        return self._recorders.get(consultation_id)

    async def stop_recordings(self, reason: str = "server_stopping") -> None:
        """Stop every recording and wait until each is stored (graceful shutdown)."""
        for consultation_id in list(self._recorders):
            self._stop_recording(consultation_id, reason)
        while self._recording_tasks:
            await asyncio.gather(*list(self._recording_tasks), return_exceptions=True)

    # --- The recording peer (issue 6 item 5) ----------------------------------------------

    def _recording_step(self, runner: _RoomRunner, action: _Step) -> None:
        cid = runner.room.consultation_id
        if isinstance(action, StartRecording):
            if self._new_recorder is None:
                log.warning("recording started but this node has no recorder")
                return
            self._stop_recording(cid, "restarted")  # never two recorders for one room

            def answer(participant_id: str, message: Any) -> None:
                # Back through the room: it drops answers for people no longer in the call.
                if self._rooms.get(cid) is runner:
                    now = self._clock()
                    self._apply(runner, runner.room.from_recorder(participant_id, message, now))

            self._recorders[cid] = self._new_recorder(runner.context, answer)
        elif isinstance(action, StopRecording):
            self._stop_recording(cid, action.reason)
        elif isinstance(action, ToRecorder):
            recorder = self._recorders.get(cid)
            if recorder is not None:
                message = action.message
                if isinstance(message, RelayedOffer):
                    self._spawn_recording(recorder.offer(message))
                else:
                    self._spawn_recording(recorder.candidate(message))
        elif isinstance(action, DropFromRecording):
            recorder = self._recorders.get(cid)
            if recorder is not None:
                self._spawn_recording(recorder.drop(action.participant_id, "left"))

    def _stop_recording(self, consultation_id: str, reason: str) -> None:
        recorder = self._recorders.pop(consultation_id, None)
        if recorder is not None:
            self._spawn_recording(recorder.stop(reason))

    def _spawn_recording(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("recording step failed")

        task = asyncio.ensure_future(run())
        self._recording_tasks.add(task)
        task.add_done_callback(self._recording_tasks.discard)

    # --- Performing the room's actions ----------------------------------------------------

    def _apply(
        self, runner: _RoomRunner, actions: Sequence[_Step], *, timers: bool = False
    ) -> None:
        # Busy: a batch waits, or one is being performed (its audit being written: it has
        # left ``pending`` already, and what follows must not overtake it).
        busy = bool(runner.pending) or runner.performer is not None
        if len(actions) == 1 and not busy and not timers:
            send = actions[0]
            if type(send) is Send:
                # The relay hot path (one offer/answer/candidate for one socket): nothing
                # to order behind, nothing audited, no deadline moved.
                peer = runner.peers.get(send.peer_id)
                if peer is not None:
                    peer.send(serialize(send.message))
                return
        audited = bool(actions) and isinstance(actions[0], Audit)
        if actions:
            if busy or audited:
                runner.pending.append(actions)
                if runner.performer is None:
                    runner.performer = asyncio.create_task(self._perform(runner))
            else:
                self._release(runner, actions)
        # Grace deadlines move only with membership changes, which the room always audits:
        # the relay hot path (un-audited batches) skips this.
        if audited or timers:
            self._schedule_tick(runner)

    def _schedule_tick(self, runner: _RoomRunner) -> None:
        deadline = runner.room.next_deadline()
        if deadline != runner.deadline:
            if runner.timer is not None:
                runner.timer.cancel()
            runner.deadline, runner.timer = deadline, None
            if deadline is not None:
                delay = max(0.0, deadline - self._clock()) + 0.01
                runner.timer = asyncio.get_running_loop().call_later(delay, self._tick, runner)

    def _tick(self, runner: _RoomRunner) -> None:
        runner.timer, runner.deadline = None, None
        self._apply(runner, runner.room.tick(self._clock()), timers=True)
        self._discard_if_idle(runner)

    async def _perform(self, runner: _RoomRunner) -> None:
        try:
            while runner.pending:
                actions = runner.pending.popleft()
                for index, action in enumerate(actions):
                    if not isinstance(action, Audit):
                        self._release(runner, actions[index:])
                        break
                    try:
                        await self._audit(runner.context, action)
                        if action.kind is AuditKind.END:
                            await self._on_ended(action.consultation_id)
                    except Exception:
                        log.exception("audit write failed; closing the consultation's sockets")
                        runner.pending.clear()
                        self.close_room(runner, INTERNAL_ERROR, "audit_unavailable")
                        break
        finally:
            runner.performer = None
            self._discard_if_idle(runner)

    def _release(self, runner: _RoomRunner, actions: Sequence[_Step]) -> None:
        texts: dict[int, str] = {}  # a broadcast is serialised once
        for action in actions:
            if isinstance(action, Send):
                peer = runner.peers.get(action.peer_id)
                if peer is not None:
                    text = texts.get(id(action.message))
                    if text is None:
                        text = texts[id(action.message)] = serialize(action.message)
                    peer.send(text)
            elif isinstance(action, Close | _Finish):
                peer = runner.peers.get(action.peer_id)
                if peer is not None:
                    if isinstance(action, Close):
                        peer.close(action.code, action.reason)
                    else:
                        peer.close(CloseCode.NORMAL, "")
            elif isinstance(
                action, StartRecording | StopRecording | ToRecorder | DropFromRecording
            ):
                self._recording_step(runner, action)

    def close_room(self, runner: _RoomRunner, code: int, reason: str) -> None:
        """Close every socket of one room."""
        for peer in runner.peers.values():
            peer.close(code, reason)

    def _refuse(
        self, runner: _RoomRunner, peer: _Peer, identity: Identity, code: int, reason: str
    ) -> None:
        """A refusal decided here (frame type/size): traced, answered, closed in order."""
        now = self._clock()
        detail = {"code": reason}
        audit = Audit(
            AuditKind.REFUSED,
            runner.room.consultation_id,
            identity.participant_id,
            None,
            now,
            detail,
        )
        reply = ErrorReply(reason, f"closed with {code}: {reason.replace('_', ' ')}")
        self._apply(runner, [audit, Send(peer.peer_id, reply), Close(peer.peer_id, code, reason)])

    def _discard_if_idle(self, runner: _RoomRunner) -> None:
        if runner.peers or runner.pending or runner.performer is not None:
            return
        if not runner.room.is_idle:
            return
        if self._rooms.get(runner.room.consultation_id) is runner:
            del self._rooms[runner.room.consultation_id]
        if runner.timer is not None:
            runner.timer.cancel()


# --- The relay's side: authentication and the audit log ------------------------------------

_AUDIT: Final = {
    AuditKind.JOIN: (AuditAction.CONSULTATION_JOIN, "joined_call"),
    AuditKind.WAIT: (AuditAction.CONSULTATION_JOIN, "waiting_room"),
    AuditKind.RESUME: (AuditAction.CONSULTATION_JOIN, "resumed"),
    AuditKind.ADMIT: (AuditAction.CONSULTATION_ADMIT, "admitted"),
    AuditKind.DROP: (AuditAction.CONSULTATION_LEAVE, "dropped"),
    AuditKind.LEAVE: (AuditAction.CONSULTATION_LEAVE, "left"),
    AuditKind.REMOVE: (AuditAction.CONSULTATION_REMOVE, "removed"),
    AuditKind.END: (AuditAction.CONSULTATION_ENDED, "consultation_ended"),
    AuditKind.CONSENT: (AuditAction.CONSULTATION_CONSENT, "consent"),
    AuditKind.RECORDING_REQUEST: (AuditAction.CONSULTATION_RECORDING_START, "requested"),
    AuditKind.RECORDING_START: (AuditAction.CONSULTATION_RECORDING_START, "all_consented"),
    AuditKind.RECORDING_STOP: (AuditAction.CONSULTATION_RECORDING_STOP, "stopped"),
    AuditKind.CHAT: (AuditAction.CONSULTATION_CHAT, "chat"),
    AuditKind.REFUSED: (AuditAction.ACCESS_DENIED, "refused"),
}


def audit_record(context: RoomContext, audit: Audit, observer: str) -> AuditRecord:
    """The audit log record of a room event (ids and codes only: no names, no chat text)."""
    action, reason = _AUDIT[audit.kind]
    detail = audit.detail
    if audit.kind is AuditKind.RECORDING_REQUEST and detail.get("enabled") is False:
        action, reason = AuditAction.CONSULTATION_RECORDING_STOP, "request_withdrawn"
    elif audit.kind is AuditKind.CONSENT:
        reason = f"{detail.get('kind')}_{'granted' if detail.get('granted') else 'revoked'}"
    elif isinstance(detail.get("reason"), str) or isinstance(detail.get("code"), str):
        reason = str(detail.get("reason") or detail.get("code"))
    pairs: list[tuple[str, str]] = [("reason", reason)]
    if audit.kind is AuditKind.CHAT:
        pairs.append(("size", str(detail.get("chars", 0))))
    cid = audit.consultation_id
    entities = [EntityRef(Kind.CONSULTATION, cid)]
    if audit.subject is not None:
        entities.append(EntityRef(Kind.CONSULTATION, f"{cid}:{audit.subject}"))
    if audit.kind is AuditKind.CONSENT and audit.actor is not None:
        entities.append(EntityRef(Kind.CONSENT, f"{cid}:{audit.actor}:{detail.get('kind')}"))
    actor, address = context.actors.get(audit.actor or "", (Actor.system(observer), None))
    return AuditRecord(
        action=action,
        outcome=Outcome.MINOR_FAILURE if audit.kind is AuditKind.REFUSED else Outcome.SUCCESS,
        now=datetime.fromtimestamp(audit.at, UTC),
        actor=actor,
        observer=observer,
        network_address=address,
        entities=tuple(entities),
        patient=context.patient_ref,
        detail=tuple(pairs),
    )


def recording_stored_record(
    context: RoomContext, recording: Recording, observer: str
) -> AuditRecord:
    """The audit record of a recording whose encrypted media is stored (ids and sizes)."""
    cid = recording.consultation_id
    return AuditRecord(
        action=AuditAction.CONSULTATION_RECORDING_STOP,
        outcome=Outcome.SUCCESS,
        now=recording.ended_at,
        actor=Actor.system(observer),
        observer=observer,
        network_address=None,
        entities=(
            EntityRef(Kind.CONSULTATION, cid),
            EntityRef(Kind.RECORDING, recording.id),
            EntityRef(Kind.CONSULTATION, f"{cid}:{recording.participant_id}"),
        ),
        patient=context.patient_ref,
        detail=(
            ("reason", f"stored_{recording.end_reason}"),
            ("size", str(recording.size)),
        ),
    )


class _NotFound(SignalingError):
    code = "not_found"
    ws_close = CloseCode.POLICY_VIOLATION


class _SessionRequired(SignalingError):
    code = "session_expired"
    ws_close = CloseCode.POLICY_VIOLATION


class _NotAParticipant(SignalingError):
    code = "forbidden"
    ws_close = CloseCode.POLICY_VIOLATION


class _Refused(Exception):
    """A socket refused at the upgrade: the protocol error and who was refused."""

    def __init__(self, error: SignalingError, actor: Actor) -> None:
        super().__init__(error.code)
        self.error = error
        self.actor = actor


_UNKNOWN_GUEST: Final = Actor(ActorKind.PATIENT, "unknown-guest", "guest")
_CONSULTATION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


_HUBS: weakref.WeakKeyDictionary[web.Application, SignalingHub] = weakref.WeakKeyDictionary()


def hub_of(app: web.Application) -> SignalingHub | None:
    """The application's hub, once a socket has been opened."""
    return _HUBS.get(app)


async def on_shutdown(app: web.Application) -> None:
    """For ``app.on_shutdown`` (before the stores close): close every signaling socket with
    1001 (Going Away), store the recordings in progress, write the rooms' pending audit
    events."""
    hub = _HUBS.get(app)
    if hub is not None:
        hub.close_all()
        await hub.stop_recordings()
        await hub.settle()


def _hub(request: web.Request, service: Teleconsultation) -> SignalingHub:
    hub = _HUBS.get(request.app)
    if hub is None:
        rt = runtime(request)
        node = rt.config.server.node_name

        async def audit(context: RoomContext, event: Audit) -> None:
            await rt.audit.record(audit_record(context, event, node))

        async def ended(consultation_id: str) -> None:
            await service.store.mark_ended(consultation_id, rt.clock())

        room_settings = service.settings.room_settings(service.secrets.turn)
        recordings = RecordingStore(rt.db)

        def recorder(context: RoomContext, answer: RecorderAnswer) -> ConsultationRecorder:
            cid = context.consultation_id

            async def stored(recording: Recording) -> None:
                # The blob is durable; list it, then trace it. A failure here leaves an
                # orphaned encrypted blob, never a row without its media.
                try:
                    await recordings.add(recording)
                    rt.metrics.recordings_stored.labels(end_reason=recording.end_reason).inc()
                    await rt.audit.record(recording_stored_record(context, recording, node))
                except Exception:
                    log.exception("a stored recording could not be registered")

            return ConsultationRecorder(
                cid,
                blobs=rt.blobs,
                answer=answer,
                stored=stored,
                max_bytes=service.settings.recording_max_bytes,
                clock=rt.clock,
                rtc=lambda: rtc_configuration(
                    room_settings.turn, cid, RECORDER_ID, rt.clock().timestamp()
                ),
            )

        hub = _HUBS.setdefault(
            request.app,
            SignalingHub(
                room_settings,
                audit=audit,
                on_ended=ended,
                # The wall clock itself unless a test set another: read once per frame,
                # a datetime built and converted costs 0.4 µs against 0.07.
                clock=time.time if rt.clock is utcnow else lambda: rt.clock().timestamp(),
                recorder=recorder if room_settings.recording_available else None,
            ),
        )
        rt.metrics.recording_participants.set_function(lambda: hub.recording_participants)
        _DRAIN_WATCHERS[request.app] = asyncio.create_task(_close_when_draining(request.app, hub))
    return hub


_DRAIN_WATCHERS: weakref.WeakKeyDictionary[web.Application, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


async def _close_when_draining(app: web.Application, hub: SignalingHub) -> None:
    """Close the sockets (1001) as soon as the server starts draining on SIGTERM.

    The graceful shutdown waits for in-flight requests *before* ``on_shutdown`` runs, and a
    signaling socket is a request that lasts the whole call: without this, every stop would
    wait the full shutdown timeout and then cut the calls without a close frame.
    """
    from relay.http.app import IN_FLIGHT  # late: relay.http.app imports this module

    in_flight = app[IN_FLIGHT]
    # InFlight exposes a flag, not an event, hence the (cheap) poll.
    while not in_flight.draining:  # noqa: ASYNC110
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    hub.close_all()


async def _authenticate(
    request: web.Request, service: Teleconsultation
) -> tuple[Identity, Actor, str | None]:
    """Who opens this socket: (room identity, audit actor, patient reference)."""
    rt = runtime(request)
    consultation = await service.store.get(request.match_info["id"])
    if consultation is None:
        raise _Refused(
            _NotFound("no such consultation", human="Consultation introuvable."), _UNKNOWN_GUEST
        )
    if consultation.status is ConsultationStatus.ENDED:
        ended = ConsultationEnded(
            "the consultation has ended", human="Cette consultation est terminée."
        )
        raise _Refused(ended, _UNKNOWN_GUEST)
    now = rt.clock()
    token = session_token(request)
    if request.query.get("as") == "guest" or token is None:
        value = request.cookies.get(GUEST_COOKIE)
        try:
            if not value:
                raise TokenError(
                    "no guest pass: open the join link first",
                    human="Ouvrez à nouveau le lien de consultation reçu.",
                )
            participant = verify_guest_pass(service.secrets, value, consultation, now.timestamp())
        except TokenError as exc:
            raise _Refused(exc, _UNKNOWN_GUEST) from None
        actor = Actor(ActorKind.PATIENT, participant.id, participant.role.value)
        return identity_of(participant), actor, consultation.patient_ref
    found = await rt.accounts.session(token, now, rt.config.accounts.session_idle_minutes * 60)
    if found is None:
        expired = _SessionRequired("session missing or expired", human="Veuillez vous reconnecter.")
        raise _Refused(expired, Actor(ActorKind.PROFESSIONAL, "unknown-account"))
    pro = found.professional
    mine = consultation.participant_for(pro.id)
    if mine is None or not is_allowed(
        pro.role, Action.JOIN_CONSULTATION, consultation.relation(pro.id)
    ):
        outsider = _NotAParticipant(
            "you do not take part in this consultation",
            human="Vous ne participez pas à cette consultation.",
        )
        raise _Refused(outsider, trail.actor_of(pro))
    return identity_of(mine), trail.actor_of(pro), consultation.patient_ref


def _same_origin(request: web.Request) -> bool:
    # Browsers send cookies with cross-site WebSocket upgrades when allowed: check Origin
    # (RFC 6455 §10.2) so another site's page cannot ride a session.
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser
    allowed = {f"https://{request.host}", runtime(request).public_url}
    return origin.rstrip("/") in allowed


async def consultation_socket(request: web.Request) -> web.StreamResponse:
    service = await teleconsultation(request)
    if not _same_origin(request):
        raise Forbidden("Origine de la page non autorisée.", code="forbidden_origin")
    ws = web.WebSocketResponse(
        # Frames a bit over the room's limit get the room's precise error; far larger ones
        # are cut by aiohttp (1009) before being buffered whole.
        max_msg_size=2 * service.settings.max_message_bytes,
        heartbeat=HEARTBEAT_SECONDS,
        compress=False,  # no inflate bombs; signaling frames are small
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="WebSocket upgrade expected")
    hub = _hub(request, service)
    try:
        identity, actor, patient_ref = await _authenticate(request, service)
    except _Refused as refused:
        cid = request.match_info["id"]
        error = refused.error
        await trail.record(
            request,
            AuditAction.ACCESS_DENIED,
            Outcome.MINOR_FAILURE,
            actor=refused.actor,
            entities=(EntityRef(Kind.CONSULTATION, cid),)
            if _CONSULTATION_ID.fullmatch(cid)
            else (),
            detail=(("reason", error.code),),
        )
        # Answered over the socket: a browser cannot read an HTTP refusal of an upgrade.
        await ws.prepare(request)
        await ws.send_str(serialize(ErrorReply(error.code, error.message, error.human)))
        await ws.close(
            code=error.ws_close or CloseCode.POLICY_VIOLATION, message=error.code.encode()
        )
        return ws
    await ws.prepare(request)
    await hub.serve(
        ws, request.match_info["id"], identity, actor, trail.address_of(request), patient_ref
    )
    return ws


ROUTES = [
    Route(
        "GET",
        "/ws/consultations/{id}",
        consultation_socket,
        Action.PUBLIC,
        "Teleconsultation signaling WebSocket (see /api/consultations/protocol.json)",
        "consultations",
        in_api_document=False,
    ),
]
