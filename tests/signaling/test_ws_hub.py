"""The signaling hub (WebSocket adapter) on a loopback aiohttp server of its own (port 0).

Audit before release, audit failure, grace-period expiry by the hub's timer, shutdown, and
the mapping of every room audit event to a valid audit-log record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from relay.audit.events import Actor, AuditAction, Outcome
from relay.http.signaling_ws import RoomContext, SignalingHub, audit_record
from signaling.messages import Role
from signaling.room import Audit, AuditKind, AuditValue, Identity, RoomSettings
from tests.signaling.ws_harness import Signaling


@dataclass
class Recorder:
    """An audit sink that keeps events and can be told to block or fail."""

    events: list[Audit] = field(default_factory=list)
    hold: dict[AuditKind, asyncio.Event] = field(default_factory=dict)
    fail_on: AuditKind | None = None
    ended: list[str] = field(default_factory=list)

    async def audit(self, context: RoomContext, event: Audit) -> None:
        if event.kind is self.fail_on:
            raise OSError("audit log unavailable")
        gate = self.hold.get(event.kind)
        if gate is not None:
            await gate.wait()
        self.events.append(event)

    async def on_ended(self, consultation_id: str) -> None:
        self.ended.append(consultation_id)


@asynccontextmanager
async def serving(hub: SignalingHub) -> AsyncIterator[Callable[[str, str], Awaitable[Signaling]]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        who = request.match_info["who"]
        professional = who.startswith("dr")
        identity = Identity(
            who, Role.PHYSICIAN if professional else Role.PATIENT, who, professional
        )
        ws = web.WebSocketResponse(max_msg_size=128 * 1024)
        await ws.prepare(request)
        await hub.serve(ws, request.match_info["room"], identity, Actor.patient(who))
        return ws

    app = web.Application()
    app.router.add_get("/ws/{room}/{who}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession()
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def open_socket(room: str, who: str) -> Signaling:
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws/{room}/{who}")
        sockets.append(ws)
        return Signaling(ws)

    try:
        yield open_socket
    finally:
        for ws in sockets:
            await ws.close()
        await session.close()
        await runner.cleanup()


async def two_professionals(
    open_socket: Callable[[str, str], Awaitable[Signaling]],
) -> tuple[Signaling, Signaling]:
    """dr1 then dr2 joined in room1, dr1 told that dr2 joined."""
    first = await open_socket("room1", "dr1")
    await first.join()
    second = await open_socket("room1", "dr2")
    await second.join()
    await first.expect("participant_joined")
    return first, second


def _hub(recorder: Recorder, **settings: float) -> SignalingHub:
    return SignalingHub(
        RoomSettings(**settings),  # type: ignore[arg-type]
        audit=recorder.audit,
        on_ended=recorder.on_ended,
    )


async def test_nothing_is_released_before_its_audit_is_written() -> None:
    recorder = Recorder(hold={AuditKind.JOIN: asyncio.Event()})
    async with serving(_hub(recorder)) as open_socket:
        doctor = await open_socket("room1", "dr1")
        await doctor.hello()
        await doctor.send({"type": "join"})
        with pytest.raises(AssertionError):
            await doctor.expect("joined", timeout=0.3)
        recorder.hold[AuditKind.JOIN].set()
        joined = await doctor.expect("joined")
        assert joined["you"]["participant_id"] == "dr1"
        assert [e.kind for e in recorder.events] == [AuditKind.JOIN]
        # Messages queued behind the audit keep their order.
        await doctor.send({"type": "ping", "ref": 1})
        assert (await doctor.expect("pong"))["ref"] == 1


async def test_a_failing_audit_log_closes_the_room_with_1011() -> None:
    recorder = Recorder(fail_on=AuditKind.WAIT)
    async with serving(_hub(recorder)) as open_socket:
        doctor = await open_socket("room1", "dr1")
        assert (await doctor.join())["type"] == "joined"
        patient = await open_socket("room1", "pt1")
        await patient.hello()
        await patient.send({"type": "join"})
        assert await patient.closed() == 1011
        assert await doctor.closed() == 1011
        assert not [m for m in patient.inbox if m["type"] == "waiting"]  # never released


async def test_grace_period_expiry_is_driven_by_the_hub_timer() -> None:
    recorder = Recorder()
    hub = _hub(recorder, grace_seconds=0.3)
    async with serving(hub) as open_socket:
        doctor, second = await two_professionals(open_socket)
        await second.ws.close()  # dropped, not left: the grace period starts
        assert (await doctor.expect("host_reconnecting"))["participant_id"] == "dr2"
        left = await doctor.expect("participant_left", timeout=3.0)
        assert left == {"type": "participant_left", "participant_id": "dr2", "reason": "timeout"}
        await doctor.send({"type": "end"})
        assert (await doctor.expect("ended"))["by"] == "dr1"
        assert await doctor.closed() == 1000
        assert recorder.ended == ["room1"]
        for _ in range(50):
            if hub.room_count == 0:
                break
            await asyncio.sleep(0.02)
        assert hub.room_count == 0  # idle rooms are discarded


async def test_shutdown_closes_every_socket_with_going_away() -> None:
    hub = _hub(Recorder())
    async with serving(hub) as open_socket:
        sockets = [await open_socket(f"room{i}", f"dr{i}") for i in range(3)]
        for socket in sockets:
            await socket.join()
        hub.close_all()
        for socket in sockets:
            assert await socket.closed() == 1001


async def test_binary_frames_are_refused_with_1003() -> None:
    recorder = Recorder()
    async with serving(_hub(recorder)) as open_socket:
        doctor = await open_socket("room1", "dr1")
        await doctor.join()
        await doctor.ws.send_bytes(b"\x01\x02")
        assert await doctor.closed() == 1003
        assert [m["code"] for m in doctor.inbox if m["type"] == "error"] == ["unsupported_data"]
        assert any(
            e.kind is AuditKind.REFUSED and e.detail.get("code") == "unsupported_data"
            for e in recorder.events
        )


@pytest.mark.parametrize("kind", list(AuditKind))
def test_every_room_event_maps_to_a_valid_audit_record(kind: AuditKind) -> None:
    details: dict[AuditKind, dict[str, AuditValue]] = {
        AuditKind.LEAVE: {"reason": "timeout"},
        AuditKind.DROP: {"grace_until": 1_700_000_030.5},
        AuditKind.CONSENT: {"kind": "recording", "granted": False},
        AuditKind.RECORDING_REQUEST: {"enabled": False},
        AuditKind.RECORDING_STOP: {"reason": "missing_consent"},
        AuditKind.CHAT: {"chars": 42},
        AuditKind.REFUSED: {"code": "rate_limited", "message_type": None},
    }
    context = RoomContext("c0ffee", "a" * 64, {"p1": (Actor.patient("p1"), "192.0.2.7")})
    subject = "p2" if kind in (AuditKind.ADMIT, AuditKind.REMOVE) else None
    actor = None if kind in (AuditKind.RECORDING_START, AuditKind.RECORDING_STOP) else "p1"
    event = Audit(kind, "c0ffee", actor, subject, 1_700_000_000.25, details.get(kind, {}))
    record = audit_record(context, event, "relais-1")
    assert record.patient == "a" * 64
    assert record.entities[0].id == "c0ffee"
    assert record.now.timestamp() == 1_700_000_000.25
    if actor is None:
        assert record.actor == Actor.system("relais-1")
    else:
        assert record.actor == Actor.patient("p1") and record.network_address == "192.0.2.7"
    if kind is AuditKind.REFUSED:
        assert (record.action, record.outcome) == (AuditAction.ACCESS_DENIED, Outcome.MINOR_FAILURE)
        assert dict(record.detail)["reason"] == "rate_limited"
    if kind is AuditKind.CONSENT:
        assert dict(record.detail)["reason"] == "recording_revoked"
    if kind is AuditKind.RECORDING_REQUEST:
        assert record.action is AuditAction.CONSULTATION_RECORDING_STOP
    if kind is AuditKind.CHAT:
        assert dict(record.detail) == {"reason": "chat", "size": "42"}
    if subject is not None:
        assert record.entities[1].id == "c0ffee:p2"


async def test_a_relayed_frame_waits_for_an_audit_being_written() -> None:
    """The room's order holds while an earlier batch's audit is being written: a candidate
    sent after a chat message reaches the other peer after it, not before."""
    gate = asyncio.Event()
    recorder = Recorder(hold={AuditKind.CHAT: gate})
    hub = SignalingHub(RoomSettings(), audit=recorder.audit, on_ended=recorder.on_ended)
    async with serving(hub) as open_socket:
        doctor, nurse = await two_professionals(open_socket)
        await doctor.send({"type": "chat", "text": "bonjour"})
        await asyncio.sleep(0.1)  # the chat's audit is being written (held)
        await doctor.send({"type": "candidate", "to": "dr2", "candidate": "candidate:1"})
        await asyncio.sleep(0.1)
        gate.set()
        first = await nurse.expect_any(("chat", "candidate"))
        second = await nurse.expect_any(("chat", "candidate"))
        assert [first["type"], second["type"]] == ["chat", "candidate"]
