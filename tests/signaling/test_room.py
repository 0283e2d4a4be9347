"""The room core, without sockets: every flow of issue 6 items 2–5 and each refusal."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from typing import TypeVar

import pytest

from signaling.errors import CloseCode
from signaling.messages import (
    CLIENT_MESSAGE_TYPES,
    Admit,
    Admitted,
    Answer,
    Candidate,
    Chat,
    ClientMessage,
    Consent,
    ConsentKind,
    ConsentRecord,
    ConsentState,
    End,
    Ended,
    EndReason,
    ErrorReply,
    Hello,
    HostReconnecting,
    HostReturned,
    IceRestart,
    Join,
    Joined,
    Leave,
    LeaveReason,
    MediaState,
    Offer,
    ParticipantJoined,
    ParticipantLeft,
    Permission,
    Ping,
    Pong,
    Record,
    RecordingState,
    RefreshTurn,
    RelayedAnswer,
    RelayedCandidate,
    RelayedChat,
    RelayedMediaState,
    RelayedOffer,
    Remove,
    Removed,
    Resume,
    Role,
    ServerMessage,
    TurnCredentials,
    Waiting,
    WaitingList,
    Welcome,
    serialize,
)
from signaling.room import (
    ALLOWED_MESSAGES,
    RECORDER_ID,
    Action,
    Audit,
    AuditKind,
    Close,
    DropFromRecording,
    Identity,
    MemberState,
    Phase,
    Presence,
    Room,
    RoomSettings,
    RoomState,
    Send,
    StartRecording,
    StopRecording,
    ToRecorder,
    _TokenBucket,
)
from signaling.turn import TurnSettings, turn_password

CID = "consult-1"
T0 = 1_700_000_000.0
TURN = TurnSettings(
    secret="turn-secret", turn_urls=("turn:turn.example:3478?transport=udp",), lifetime=600
)

DOC = Identity("doc-1", Role.PHYSICIAN, "Dr Émilie Martin", is_professional=True)
DOC2 = Identity("doc-2", Role.SPECIALIST, "Dr Paul Leroy", is_professional=True)
NURSE = Identity("nurse-1", Role.NURSE, "Inf. Claire Durand", is_professional=True)
PAT = Identity("pat-1", Role.PATIENT, "Jean Dupont", is_professional=False)
GUEST = Identity("guest-1", Role.GUEST, "Marie Dupont", is_professional=False)
INTERPRETER = Identity("int-1", Role.INTERPRETER, "Ahmed B.", is_professional=False)
NAMES = {i.display_name for i in (DOC, DOC2, NURSE, PAT, GUEST, INTERPRETER)}


class Harness:
    """Drives one room as an adapter would, checking invariants on every batch."""

    def __init__(self, settings: RoomSettings | None = None, consultation_id: str = CID) -> None:
        counter = itertools.count(1)
        self.room = Room(
            consultation_id,
            settings or RoomSettings(turn=TURN),
            new_token=lambda: f"resume{next(counter):020d}",
        )
        self.now = T0
        self.tokens: dict[str, str] = {}  # participant id -> latest resume token
        self.chat_texts: set[str] = set()

    def _check(self, actions: list[Action]) -> list[Action]:
        # Audit before release: every Audit comes before every other action.
        kinds = [isinstance(a, Audit) for a in actions]
        assert kinds == sorted(kinds, reverse=True), actions
        for action in actions:
            if isinstance(action, Audit):
                assert action.consultation_id == self.room.consultation_id
                assert action.at == self.now
                # Audit events carry ids and codes, never names or chat text.
                for value in action.detail.values():
                    assert value not in NAMES and value not in self.chat_texts
            if isinstance(action, Send):
                message = action.message
                if isinstance(message, Joined | Waiting):
                    self.tokens[message.you.participant_id] = message.resume_token
                serialize(message).encode("utf-8")  # every emitted frame is sendable
        return actions

    def connect(self, peer: str, identity: Identity) -> list[Action]:
        return self._check(self.room.connect(peer, identity, self.now))

    def send(self, peer: str, message: ClientMessage) -> list[Action]:
        """Through the wire format, as the adapter will."""
        if isinstance(message, Chat):
            self.chat_texts.add(message.text)
        return self._check(self.room.receive(peer, serialize(message), self.now))

    def raw(self, peer: str, frame: str | bytes) -> list[Action]:
        return self._check(self.room.receive(peer, frame, self.now))

    def drop(self, peer: str) -> list[Action]:
        return self._check(self.room.disconnect(peer, self.now))

    def tick(self) -> list[Action]:
        return self._check(self.room.tick(self.now))

    def greet(self, peer: str, identity: Identity) -> None:
        assert self.connect(peer, identity) == []
        assert sent(self.send(peer, Hello(protocol=1)), peer) == [Welcome(1, 65536)]

    def enter(self, peer: str, identity: Identity) -> list[Action]:
        self.greet(peer, identity)
        return self.send(peer, Join())

    def admit(self, admitter: str, peer: str, identity: Identity) -> list[Action]:
        self.enter(peer, identity)
        return self.send(admitter, Admit(identity.participant_id))


def sent(actions: Iterable[Action], peer: str) -> list[ServerMessage]:
    return [a.message for a in actions if isinstance(a, Send) and a.peer_id == peer]


M = TypeVar("M")


def of_type(actions: Iterable[Action], peer: str, kind: type[M]) -> list[M]:
    return [m for m in sent(actions, peer) if isinstance(m, kind)]


def closes(actions: Iterable[Action]) -> dict[str, tuple[int, str]]:
    return {a.peer_id: (a.code, a.reason) for a in actions if isinstance(a, Close)}


def audits(actions: Iterable[Action]) -> list[Audit]:
    return [a for a in actions if isinstance(a, Audit)]


def errors(actions: Iterable[Action], peer: str) -> list[str]:
    return [m.code for m in of_type(actions, peer, ErrorReply)]


def peers_reached(actions: Iterable[Action]) -> set[str]:
    return {a.peer_id for a in actions if isinstance(a, Send)}


def state(h: Harness) -> RoomState:
    """Read through a call so mypy does not keep a narrowed property across actions."""
    return h.room.state


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def call(h: Harness) -> Harness:
    """Doctor "d" in the call, patient "p" admitted."""
    h.enter("d", DOC)
    h.admit("d", "p", PAT)
    return h


# --- Handshake ------------------------------------------------------------------------------


def test_hello_gets_welcome(h: Harness) -> None:
    h.connect("s", DOC)
    assert h.send("s", Hello(protocol=1)) == [Send("s", Welcome(1, 65536))]


def test_unsupported_protocol_closes_4000(h: Harness) -> None:
    h.connect("s", PAT)
    actions = h.send("s", Hello(protocol=2))
    (reply,) = of_type(actions, "s", ErrorReply)
    assert reply.code == "unsupported_protocol"
    assert reply.human is not None and "rechargez" in reply.human
    assert closes(actions) == {"s": (4000, "unsupported_protocol")}
    assert h.room.connection_count == 0
    assert h.send("s", Hello(protocol=1)) == []  # forgotten


def test_anything_before_hello_closes_1002(h: Harness) -> None:
    h.connect("s", DOC)
    actions = h.send("s", Join())
    assert errors(actions, "s") == ["hello_required"]
    assert closes(actions) == {"s": (CloseCode.PROTOCOL_ERROR, "hello_required")}


def test_second_hello_is_answered_not_closed(h: Harness) -> None:
    h.greet("s", DOC)
    actions = h.send("s", Hello(protocol=1))
    assert errors(actions, "s") == ["invalid_state"]
    assert closes(actions) == {}


# Every (phase, message type) pair outside the table is refused, none silently accepted.
_SAMPLE: dict[type[ClientMessage], ClientMessage] = {
    Hello: Hello(protocol=1),
    Join: Join(),
    Offer: Offer(to="x", sdp="v=0"),
    Answer: Answer(to="x", sdp="v=0"),
    Candidate: Candidate(to="x", candidate=""),
    Leave: Leave(),
    MediaState: MediaState(audio=True, video=True),
    Chat: Chat(text="x"),
    Ping: Ping(),
    Consent: Consent(kind=ConsentKind.VIDEO, granted=True),
    Admit: Admit("x"),
    Remove: Remove("x"),
    End: End(),
    Resume: Resume(token="x" * 20),
    RefreshTurn: RefreshTurn(),
    Record: Record(enabled=True),
}


def test_sample_covers_every_client_type() -> None:
    assert set(_SAMPLE) == set(CLIENT_MESSAGE_TYPES.values())


def _in_phase(phase: Phase) -> Harness:
    h = Harness()
    h.enter("d", DOC)
    if phase is Phase.AWAITING_HELLO:
        h.connect("s", DOC2)
    elif phase is Phase.GREETED:
        h.greet("s", DOC2)
    elif phase is Phase.WAITING:
        h.enter("s", PAT)
    else:
        h.enter("s", DOC2)
    return h


@pytest.mark.parametrize(
    ("phase", "kind"),
    [
        (phase, kind)
        for phase in Phase
        for kind in CLIENT_MESSAGE_TYPES.values()
        if kind not in ALLOWED_MESSAGES[phase]
    ],
    ids=str,
)
def test_messages_outside_the_phase_table_are_refused(
    phase: Phase, kind: type[ClientMessage]
) -> None:
    h = _in_phase(phase)
    actions = h.send("s", _SAMPLE[kind])
    expected = "hello_required" if phase is Phase.AWAITING_HELLO else "invalid_state"
    assert errors(actions, "s") == [expected]
    assert peers_reached(actions) == {"s"}
    (audit,) = audits(actions)
    assert audit.kind is AuditKind.REFUSED
    assert audit.detail == {"code": expected, "message_type": kind.TYPE}


# --- Join and waiting room ------------------------------------------------------------------


def test_professional_joins_directly_with_permissions_and_turn(h: Harness) -> None:
    actions = h.enter("d", DOC)
    joined, waiting_list = sent(actions, "d")
    assert isinstance(joined, Joined)
    assert joined.you.participant_id == "doc-1" and joined.you.role is Role.PHYSICIAN
    assert joined.participants == ()
    assert set(joined.permissions) == set(Permission)
    assert joined.recording is False and joined.resumed is False
    assert joined.grace_seconds == 30.0
    (ice,) = joined.rtc_configuration.ice_servers
    assert ice.username == f"{int(T0) + 600}:{CID}:doc-1"
    assert ice.credential == turn_password("turn-secret", ice.username)
    assert joined.turn_expires_at == int(T0) + 600
    assert waiting_list == WaitingList(waiting=())
    assert [(a.kind, a.actor) for a in audits(actions)] == [(AuditKind.JOIN, "doc-1")]
    assert h.room.member_state("doc-1") is MemberState.ADMITTED


@pytest.mark.parametrize("identity", [PAT, GUEST, INTERPRETER])
def test_patients_and_guests_wait_and_professionals_see_them(
    h: Harness, identity: Identity
) -> None:
    h.enter("d", DOC)
    actions = h.enter("p", identity)
    (waiting,) = sent(actions, "p")
    assert isinstance(waiting, Waiting)
    assert waiting.host_present is True
    assert waiting.you.participant_id == identity.participant_id
    (waiting_list,) = sent(actions, "d")
    assert isinstance(waiting_list, WaitingList)
    assert [w.participant_id for w in waiting_list.waiting] == [identity.participant_id]
    assert [a.kind for a in audits(actions)] == [AuditKind.WAIT]
    assert h.room.member_state(identity.participant_id) is MemberState.WAITING


def test_waiting_before_any_professional(h: Harness) -> None:
    (waiting,) = sent(h.enter("p", PAT), "p")
    assert isinstance(waiting, Waiting) and waiting.host_present is False
    actions = h.enter("d", DOC)
    _joined, waiting_list = sent(actions, "d")
    assert isinstance(waiting_list, WaitingList)
    assert [w.participant_id for w in waiting_list.waiting] == ["pat-1"]
    assert sent(actions, "p") == []  # the patient learns nothing until admitted


def test_admit(h: Harness) -> None:
    h.enter("d", DOC)
    h.enter("n", NURSE)
    h.enter("p", PAT)
    actions = h.send("d", Admit("pat-1"))
    (admitted,) = sent(actions, "p")
    assert isinstance(admitted, Admitted)
    assert admitted.by == "doc-1"
    assert {p.participant_id for p in admitted.participants} == {"doc-1", "nurse-1"}
    assert admitted.permissions == (Permission.PUBLISH, Permission.CHAT)
    (ice,) = admitted.rtc_configuration.ice_servers
    assert ice.username == f"{int(T0) + 600}:{CID}:pat-1"
    for pro in ("d", "n"):
        joined, waiting_list = sent(actions, pro)
        assert (
            isinstance(joined, ParticipantJoined) and joined.participant.participant_id == "pat-1"
        )
        assert waiting_list == WaitingList(waiting=())
    (audit,) = audits(actions)
    assert (audit.kind, audit.actor, audit.subject) == (AuditKind.ADMIT, "doc-1", "pat-1")
    assert h.room.member_state("pat-1") is MemberState.ADMITTED


def test_only_waiting_participants_can_be_admitted(call: Harness) -> None:
    assert errors(call.send("d", Admit("pat-1")), "d") == ["unknown_peer"]  # already in
    assert errors(call.send("d", Admit("nobody")), "d") == ["unknown_peer"]


def test_patients_cannot_admit_remove_end_or_record(call: Harness) -> None:
    call.enter("g", GUEST)
    for message in (Admit("guest-1"), Remove("doc-1"), End(), Record(enabled=True)):
        actions = call.send("p", message)
        assert errors(actions, "p") == ["forbidden"], message
        assert peers_reached(actions) == {"p"}
    assert call.room.member_state("guest-1") is MemberState.WAITING
    assert state(call) is RoomState.OPEN


def test_forbidden_names_the_missing_permission(call: Harness) -> None:
    expected: dict[ClientMessage, str] = {
        Admit("doc-1"): "'admit' needs the 'admit' permission",
        Remove("doc-1"): "'remove' needs the 'remove' permission",
        End(): "'end' needs the 'end' permission",
        Record(enabled=True): "'record' needs the 'record' permission",
    }
    for message, text in expected.items():
        (reply,) = of_type(call.send("p", message), "p", ErrorReply)
        assert (reply.code, reply.message) == ("forbidden", text)
    # What the permissions allow passes the check (and reaches its handler).
    assert errors(call.send("p", Chat(text="Bonjour")), "p") == []
    assert of_type(call.send("p", Offer(to="doc-1", sdp="v=0")), "d", RelayedOffer)


def test_waiting_patient_cannot_signal(h: Harness) -> None:
    h.enter("d", DOC)
    h.enter("p", PAT)
    actions = h.send("p", Offer(to="doc-1", sdp="v=0"))
    assert errors(actions, "p") == ["invalid_state"]
    assert sent(actions, "d") == []


def test_same_participant_on_a_second_socket_is_told_to_resume(call: Harness) -> None:
    call.greet("p2", PAT)
    actions = call.send("p2", Join())
    (reply,) = of_type(actions, "p2", ErrorReply)
    assert reply.code == "already_joined"
    assert reply.human is not None
    assert closes(actions) == {}
    assert call.room.presence("pat-1") is Presence.CONNECTED


def test_fresh_join_after_a_drop_discards_the_old_session(call: Harness) -> None:
    call.drop("p")
    actions = call.enter("p2", PAT)
    assert ParticipantLeft("pat-1", LeaveReason.REJOINED) in sent(actions, "d")
    assert isinstance(sent(actions, "p2")[0], Waiting)  # must be admitted again
    assert call.room.member_state("pat-1") is MemberState.WAITING
    assert [a.kind for a in audits(actions)] == [AuditKind.LEAVE, AuditKind.WAIT]


def test_identity_rules() -> None:
    with pytest.raises(ValueError, match="cannot have is_professional"):
        Identity("p", Role.PATIENT, "X", is_professional=True)
    with pytest.raises(ValueError, match="cannot have is_professional"):
        Identity("d", Role.PHYSICIAN, "X", is_professional=False)
    Identity("i", Role.INTERPRETER, "X", is_professional=True)
    with pytest.raises(ValueError, match="participant id"):
        Identity("a:b", Role.GUEST, "X", is_professional=False)
    with pytest.raises(ValueError, match="display name"):
        Identity("g", Role.GUEST, "", is_professional=False)
    with pytest.raises(ValueError, match="consultation id"):
        Room("bad id", RoomSettings())


def test_duplicate_peer_id_is_an_adapter_bug(h: Harness) -> None:
    h.connect("s", DOC)
    with pytest.raises(ValueError, match="already connected"):
        h.connect("s", DOC)


# --- Waiting list survives a professional's disconnect -----------------------------------


def test_waiters_are_told_the_doctor_is_reconnecting_then_back(h: Harness) -> None:
    h.enter("d", DOC)
    h.enter("p", PAT)
    h.now += 5
    actions = h.drop("d")
    assert sent(actions, "p") == [HostReconnecting("doc-1", T0 + 5 + 30)]
    assert [a.kind for a in audits(actions)] == [AuditKind.DROP]
    assert h.room.member_state("pat-1") is MemberState.WAITING
    assert h.room.next_deadline() == T0 + 35

    h.now += 20
    h.greet("d2", DOC)
    actions = h.send("d2", Resume(h.tokens["doc-1"]))
    joined, waiting_list = sent(actions, "d2")
    assert isinstance(joined, Joined) and joined.resumed
    assert isinstance(waiting_list, WaitingList)
    assert [w.participant_id for w in waiting_list.waiting] == ["pat-1"]
    assert sent(actions, "p") == [HostReturned("doc-1")]
    assert h.room.next_deadline() is None
    assert isinstance(sent(h.send("d2", Admit("pat-1")), "p")[0], Admitted)


def test_waiters_are_never_dropped_when_the_doctor_does_not_come_back(h: Harness) -> None:
    h.enter("d", DOC)
    h.enter("p", PAT)
    h.enter("g", GUEST)
    h.drop("d")
    h.now += 30
    actions = h.tick()
    assert [(a.kind, a.actor, a.detail) for a in audits(actions)] == [
        (AuditKind.LEAVE, "doc-1", {"reason": "timeout"})
    ]
    assert closes(actions) == {}
    assert h.room.member_state("pat-1") is MemberState.WAITING
    assert state(h) is RoomState.OPEN
    # Another professional arrives and finds the waiting list intact, in arrival order.
    _joined, waiting_list = sent(h.enter("d2", DOC2), "d2")
    assert isinstance(waiting_list, WaitingList)
    assert [w.participant_id for w in waiting_list.waiting] == ["pat-1", "guest-1"]


# --- Remove ---------------------------------------------------------------------------------


def test_remove_admitted_participant(call: Harness) -> None:
    call.enter("n", NURSE)
    actions = call.send("d", Remove("pat-1"))
    assert sent(actions, "p") == [Removed(by="doc-1")]
    assert closes(actions) == {"p": (CloseCode.REMOVED, "removed")}
    assert sent(actions, "n") == [ParticipantLeft("pat-1", LeaveReason.REMOVED)]
    assert sent(actions, "d") == [ParticipantLeft("pat-1", LeaveReason.REMOVED)]
    (audit,) = audits(actions)
    assert (audit.kind, audit.actor, audit.subject) == (AuditKind.REMOVE, "doc-1", "pat-1")
    assert call.room.member_state("pat-1") is None
    assert call.drop("p") == []  # the adapter's later disconnect is a no-op
    # Coming back means waiting to be admitted again.
    assert isinstance(sent(call.enter("p2", PAT), "p2")[0], Waiting)


def test_remove_waiting_participant_and_one_in_grace(call: Harness) -> None:
    call.enter("g", GUEST)
    actions = call.send("d", Remove("guest-1"))
    assert closes(actions) == {"g": (4003, "removed")}
    assert sent(actions, "d") == [WaitingList(waiting=())]
    call.drop("p")
    actions = call.send("d", Remove("pat-1"))
    assert closes(actions) == {}
    assert sent(actions, "d") == [ParticipantLeft("pat-1", LeaveReason.REMOVED)]
    assert call.room.next_deadline() is None


def test_remove_refusals(call: Harness) -> None:
    assert errors(call.send("d", Remove("doc-1")), "d") == ["invalid_field"]
    assert errors(call.send("d", Remove("nobody")), "d") == ["unknown_peer"]


def test_professional_may_remove_another_professional(call: Harness) -> None:
    call.enter("d2", DOC2)
    actions = call.send("d", Remove("doc-2"))
    assert closes(actions) == {"d2": (4003, "removed")}


# --- Leave and end --------------------------------------------------------------------------


def test_leave(call: Harness) -> None:
    actions = call.send("p", Leave())
    assert closes(actions) == {"p": (1000, "left")}
    assert sent(actions, "d") == [ParticipantLeft("pat-1", LeaveReason.LEFT)]
    assert call.room.member_state("pat-1") is None


def test_leave_before_joining(h: Harness) -> None:
    h.greet("s", PAT)
    assert h.send("s", Leave()) == [Close("s", 1000, "left")]
    assert h.room.is_idle


def test_last_professional_ending_ends_for_all(call: Harness) -> None:
    call.enter("g", GUEST)
    call.greet("x", GUEST.__class__("guest-2", Role.GUEST, "Voisin", is_professional=False))
    actions = call.send("d", End())
    ended = Ended(EndReason.ENDED_BY_PROFESSIONAL, by="doc-1")
    for peer in ("d", "p", "g", "x"):
        assert sent(actions, peer) == [ended]
    assert closes(actions) == {peer: (1000, "consultation_ended") for peer in ("d", "p", "g", "x")}
    assert [a.kind for a in audits(actions)] == [AuditKind.END]
    assert state(call) is RoomState.ENDED
    assert call.room.is_idle
    # Nobody gets back in.
    actions = call.connect("late", PAT)
    assert errors(actions, "late") == ["consultation_ended"]
    assert closes(actions) == {"late": (CloseCode.CONSULTATION_ENDED, "consultation_ended")}


def test_end_while_another_professional_remains_only_leaves(call: Harness) -> None:
    call.enter("n", NURSE)
    actions = call.send("d", End())
    assert closes(actions) == {"d": (1000, "left")}
    assert sent(actions, "n") == [ParticipantLeft("doc-1", LeaveReason.LEFT)]
    assert sent(actions, "p") == [ParticipantLeft("doc-1", LeaveReason.LEFT)]
    assert state(call) is RoomState.OPEN
    # The nurse is now the last professional: her `end` ends it.
    actions = call.send("n", End())
    assert state(call) is RoomState.ENDED
    assert set(closes(actions)) == {"n", "p"}


def test_a_professional_in_grace_counts_as_remaining(call: Harness) -> None:
    call.enter("n", NURSE)
    call.drop("n")
    call.send("d", End())
    assert state(call) is RoomState.OPEN
    assert call.room.member_state("pat-1") is MemberState.ADMITTED


def test_last_professional_leaving_does_not_end(call: Harness) -> None:
    call.enter("g", GUEST)
    actions = call.send("d", Leave())
    assert state(call) is RoomState.OPEN
    assert closes(actions) == {"d": (1000, "left")}
    assert call.room.member_state("pat-1") is MemberState.ADMITTED
    assert call.room.member_state("guest-1") is MemberState.WAITING
    # A colleague takes over and admits.
    call.enter("d2", DOC2)
    assert isinstance(sent(call.send("d2", Admit("guest-1")), "g")[0], Admitted)


# --- Relay ----------------------------------------------------------------------------------


def test_offer_answer_candidate_reach_only_the_addressed_peer(call: Harness) -> None:
    call.enter("n", NURSE)
    actions = call.send("d", Offer(to="pat-1", sdp="v=0 offer"))
    assert actions == [Send("p", RelayedOffer(sender="doc-1", sdp="v=0 offer"))]
    actions = call.send("p", Answer(to="doc-1", sdp="v=0 answer"))
    assert actions == [Send("d", RelayedAnswer(sender="pat-1", sdp="v=0 answer"))]
    actions = call.send("p", Candidate(to="nurse-1", candidate="candidate:1", sdp_mid="0"))
    assert actions == [
        Send("n", RelayedCandidate(sender="pat-1", candidate="candidate:1", sdp_mid="0"))
    ]
    (relayed,) = sent(actions, "n")
    wire = json.loads(serialize(relayed))
    assert wire["from"] == "pat-1" and "to" not in wire


def test_offer_to_a_peer_of_another_consultation_is_unknown(call: Harness) -> None:
    other = Harness(consultation_id="consult-2")
    other.enter("od", DOC2)
    other.admit("od", "op", GUEST)
    actions = call.send("d", Offer(to="guest-1", sdp="v=0"))
    (reply,) = of_type(actions, "d", ErrorReply)
    assert reply.code == "unknown_peer"
    assert reply.message == "no admitted participant 'guest-1' in this consultation"
    assert peers_reached(actions) == {"d"}
    assert other.room.member_state("guest-1") is MemberState.ADMITTED


def test_signal_to_waiting_self_or_dropped_peer_is_refused(call: Harness) -> None:
    call.enter("g", GUEST)
    assert errors(call.send("d", Offer(to="guest-1", sdp="v=0")), "d") == ["unknown_peer"]
    assert errors(call.send("d", Offer(to="doc-1", sdp="v=0")), "d") == ["unknown_peer"]
    call.drop("p")
    actions = call.send("d", Candidate(to="pat-1", candidate=""))
    assert errors(actions, "d") == ["peer_unavailable"]
    assert peers_reached(actions) == {"d"}


def test_chat_reaches_everyone_admitted_but_not_waiting(call: Harness) -> None:
    call.enter("g", GUEST)
    actions = call.send("p", Chat(text="J'ai mal au genou"))
    line = RelayedChat(sender="pat-1", text="J'ai mal au genou", at=T0)
    assert sent(actions, "d") == [line]
    assert sent(actions, "p") == [line]
    assert sent(actions, "g") == []
    (audit,) = audits(actions)
    assert audit.kind is AuditKind.CHAT and audit.detail == {"chars": 17}


def test_media_state_is_shared_and_remembered(call: Harness) -> None:
    actions = call.send("p", MediaState(audio=False, video=True))
    assert actions == [Send("d", RelayedMediaState("pat-1", audio=False, video=True))]
    (pat,) = [p for p in call.room.participants() if p.participant_id == "pat-1"]
    assert (pat.audio, pat.video) == (False, True)
    call.enter("g", GUEST)
    assert call.send("g", MediaState(audio=True, video=False)) == []  # waiting: device check


def test_ping_pong(call: Harness) -> None:
    assert call.send("p", Ping(ref=7)) == [Send("p", Pong(ref=7))]
    call.greet("s", GUEST)
    assert call.send("s", Ping()) == [Send("s", Pong())]


def test_refresh_turn_gives_fresh_credentials(call: Harness) -> None:
    call.now += 500
    (reply,) = sent(call.send("p", RefreshTurn()), "p")
    assert isinstance(reply, TurnCredentials)
    assert reply.expires_at == int(T0) + 500 + 600
    (ice,) = reply.rtc_configuration.ice_servers
    assert ice.username == f"{int(T0) + 1100}:{CID}:pat-1"


def test_without_turn_the_configuration_is_empty() -> None:
    h = Harness(RoomSettings(turn=None))
    joined, _ = sent(h.enter("d", DOC), "d")
    assert isinstance(joined, Joined)
    assert joined.rtc_configuration.ice_servers == ()
    assert joined.turn_expires_at is None


# --- Capacity -------------------------------------------------------------------------------


def test_call_capacity() -> None:
    h = Harness(RoomSettings(max_participants=2, turn=TURN))
    h.enter("d", DOC)
    h.admit("d", "p", PAT)
    h.enter("g", GUEST)
    actions = h.send("d", Admit("guest-1"))
    (reply,) = of_type(actions, "d", ErrorReply)
    assert reply.code == "room_full"
    assert reply.human == "La consultation a atteint le nombre maximal de participants."
    assert sent(actions, "g") == []
    assert h.room.member_state("guest-1") is MemberState.WAITING
    assert errors(h.enter("n", NURSE), "n") == ["room_full"]
    # A place freed by a departure can be used.
    h.send("p", Leave())
    assert isinstance(sent(h.send("d", Admit("guest-1")), "g")[0], Admitted)


def test_waiting_room_capacity() -> None:
    h = Harness(RoomSettings(max_waiting=1))
    h.enter("p", PAT)
    assert errors(h.enter("g", GUEST), "g") == ["room_full"]
    assert [w.participant_id for w in h.room.waiting()] == ["pat-1"]


def test_socket_capacity_closes_1013() -> None:
    h = Harness(RoomSettings(max_connections=2))
    h.connect("a", PAT)
    h.connect("b", GUEST)
    actions = h.connect("c", DOC)
    assert errors(actions, "c") == ["too_many_connections"]
    assert closes(actions) == {"c": (CloseCode.TRY_AGAIN_LATER, "too_many_connections")}
    assert h.room.connection_count == 2


# --- Resume ---------------------------------------------------------------------------------


def test_resume_within_grace_keeps_place_and_restarts_ice(call: Harness) -> None:
    call.enter("n", NURSE)
    call.send("p", Consent(kind=ConsentKind.VIDEO, granted=True))
    old_token = call.tokens["pat-1"]
    actions = call.drop("p")
    assert sent(actions, "d") == []  # a patient's drop is not announced; only the host's
    call.now += 29.9
    call.greet("p2", PAT)
    actions = call.send("p2", Resume(old_token))
    (joined,) = sent(actions, "p2")
    assert isinstance(joined, Joined) and joined.resumed
    assert joined.you.video_consent == ConsentRecord(granted=True, at=T0)
    assert {p.participant_id for p in joined.participants} == {"doc-1", "nurse-1"}
    assert joined.resume_token != old_token  # rotated
    assert sent(actions, "d") == [IceRestart("pat-1")]
    assert sent(actions, "n") == [IceRestart("pat-1")]
    assert [a.kind for a in audits(actions)] == [AuditKind.RESUME]
    # The call goes on through the new socket.
    assert call.send("d", Offer(to="pat-1", sdp="v=0")) == [
        Send("p2", RelayedOffer("doc-1", "v=0"))
    ]
    # The old token is spent.
    call.drop("p2")
    call.greet("p3", PAT)
    assert errors(call.send("p3", Resume(old_token)), "p3") == ["resume_failed"]
    assert isinstance(sent(call.send("p3", Resume(call.tokens["pat-1"])), "p3")[0], Joined)


def test_physician_comes_back_with_the_call_intact(call: Harness) -> None:
    call.send("p", MediaState(audio=True, video=False))
    actions = call.drop("d")
    assert sent(actions, "p") == [HostReconnecting("doc-1", T0 + 30)]
    call.now += 10
    call.greet("d2", DOC)
    actions = call.send("d2", Resume(call.tokens["doc-1"]))
    joined, _waiting_list = sent(actions, "d2")
    assert isinstance(joined, Joined)
    (pat,) = joined.participants
    assert pat.participant_id == "pat-1" and pat.video is False
    assert sent(actions, "p") == [IceRestart("doc-1"), HostReturned("doc-1")]
    assert call.room.member_state("pat-1") is MemberState.ADMITTED


def test_after_grace_the_peer_is_removed_and_others_told(call: Harness) -> None:
    token = call.tokens["pat-1"]
    call.drop("p")
    call.now += 30
    actions = call.tick()
    assert sent(actions, "d") == [ParticipantLeft("pat-1", LeaveReason.TIMEOUT)]
    call.greet("p2", PAT)
    assert errors(call.send("p2", Resume(token)), "p2") == ["resume_failed"]


def test_grace_expiry_is_applied_even_if_tick_is_late(call: Harness) -> None:
    token = call.tokens["pat-1"]
    call.drop("p")
    call.now += 31
    call.connect("p2", PAT)
    call.send("p2", Hello(protocol=1))
    actions = call.send("p2", Resume(token))
    assert errors(actions, "p2") == ["resume_failed"]
    assert call.room.member_state("pat-1") is None


def test_resume_token_is_bound_to_its_participant(call: Harness) -> None:
    call.enter("g", GUEST)
    call.drop("p")
    call.greet("g2", GUEST)
    actions = call.send("g2", Resume(call.tokens["pat-1"]))
    assert errors(actions, "g2") == ["resume_failed"]
    assert call.room.presence("pat-1") is Presence.DROPPED


def test_resume_takes_over_a_half_open_socket(call: Harness) -> None:
    call.greet("p2", PAT)
    actions = call.send("p2", Resume(call.tokens["pat-1"]))
    assert closes(actions) == {"p": (CloseCode.SESSION_REPLACED, "session_replaced")}
    assert isinstance(sent(actions, "p2")[0], Joined)
    assert sent(actions, "d") == [IceRestart("pat-1")]
    assert call.drop("p") == []  # the stale socket's close changes nothing
    assert call.room.presence("pat-1") is Presence.CONNECTED


def test_waiting_participant_resumes_in_place(h: Harness) -> None:
    h.enter("d", DOC)
    h.enter("p", PAT)
    h.enter("g", GUEST)
    h.drop("p")
    h.greet("p2", PAT)
    actions = h.send("p2", Resume(h.tokens["pat-1"]))
    (waiting,) = sent(actions, "p2")
    assert isinstance(waiting, Waiting) and waiting.resumed and waiting.host_present
    assert [w.participant_id for w in h.room.waiting()] == ["pat-1", "guest-1"]
    assert isinstance(sent(h.send("d", Admit("pat-1")), "p2")[0], Admitted)


def test_admitting_a_dropped_waiter_is_refused(h: Harness) -> None:
    h.enter("d", DOC)
    h.enter("p", PAT)
    h.drop("p")
    assert errors(h.send("d", Admit("pat-1")), "d") == ["peer_unavailable"]


# --- Consent and recording ------------------------------------------------------------------


def test_consent_is_stored_timestamped_shared_and_revocable(call: Harness) -> None:
    actions = call.send("p", Consent(kind=ConsentKind.VIDEO, granted=True))
    state = ConsentState("pat-1", video=ConsentRecord(granted=True, at=T0))
    assert sent(actions, "p") == [state]
    assert sent(actions, "d") == [state]
    (audit,) = audits(actions)
    assert (audit.kind, audit.actor) == (AuditKind.CONSENT, "pat-1")
    assert audit.detail == {"kind": "video", "granted": True}
    call.now += 60
    call.send("p", Consent(kind=ConsentKind.VIDEO, granted=False))
    assert call.room.consent("pat-1", ConsentKind.VIDEO) == ConsentRecord(False, T0 + 60)
    assert call.room.consent("pat-1", ConsentKind.RECORDING) is None


def test_waiting_consent_is_shown_to_professionals_only(call: Harness) -> None:
    call.enter("g", GUEST)
    actions = call.send("g", Consent(kind=ConsentKind.RECORDING, granted=True))
    assert peers_reached(actions) == {"g", "d"}


def _consent_all(h: Harness, peers: Iterable[str]) -> list[Action]:
    out: list[Action] = []
    for peer in peers:
        out += h.send(peer, Consent(kind=ConsentKind.RECORDING, granted=True))
    return out


def _recording_actions(actions: Iterable[Action]) -> list[Action]:
    return [a for a in actions if isinstance(a, StartRecording | StopRecording)]


def test_recording_starts_only_when_everyone_admitted_consented(call: Harness) -> None:
    actions = call.send("d", Record(enabled=True))
    assert _recording_actions(actions) == []
    expected = RecordingState(requested=True, active=False, missing_consent=("doc-1", "pat-1"))
    assert sent(actions, "p") == [expected]
    actions = _consent_all(call, ["d"])
    assert _recording_actions(actions) == []
    actions = _consent_all(call, ["p"])
    assert _recording_actions(actions) == [StartRecording(CID, ("doc-1", "pat-1"))]
    assert RecordingState(True, True, ()) in sent(actions, "d")
    assert AuditKind.RECORDING_START in [a.kind for a in audits(actions)]
    assert call.room.recording_active


def test_recording_stops_when_anyone_revokes(call: Harness) -> None:
    call.send("d", Record(enabled=True))
    _consent_all(call, ["d", "p"])
    actions = call.send("p", Consent(kind=ConsentKind.RECORDING, granted=False))
    assert _recording_actions(actions) == [StopRecording(CID, "missing_consent")]
    assert RecordingState(True, False, ("pat-1",)) in sent(actions, "d")
    assert not call.room.recording_active
    # Consent again: it resumes, since it is still requested.
    assert _recording_actions(_consent_all(call, ["p"])) == [
        StartRecording(CID, ("doc-1", "pat-1"))
    ]


def test_admitting_someone_without_consent_stops_recording(call: Harness) -> None:
    call.send("d", Record(enabled=True))
    _consent_all(call, ["d", "p"])
    call.enter("g", GUEST)
    actions = call.send("d", Admit("guest-1"))
    # Stopped before the newcomer's media can flow: the stop precedes the admission message.
    stop = actions.index(StopRecording(CID, "missing_consent"))
    assert stop < actions.index(next(a for a in actions if isinstance(a, Send)))
    (admitted,) = sent(actions, "g")
    assert isinstance(admitted, Admitted) and admitted.recording is False
    # A newcomer who consented in the waiting room does not stop it.
    _consent_all(call, ["g"])
    assert call.room.recording_active
    call.enter("i", INTERPRETER)
    _consent_all(call, ["i"])
    actions = call.send("d", Admit("int-1"))
    assert _recording_actions(actions) == []
    assert call.room.recording_active


def test_recording_resumes_when_the_non_consenting_participant_leaves(call: Harness) -> None:
    call.enter("g", GUEST)
    call.send("d", Admit("guest-1"))
    call.send("d", Record(enabled=True))
    _consent_all(call, ["d", "p"])
    assert not call.room.recording_active
    actions = call.send("g", Leave())
    assert _recording_actions(actions) == [StartRecording(CID, ("doc-1", "pat-1"))]


def test_recording_stops_when_no_longer_requested_or_on_end(call: Harness) -> None:
    call.send("d", Record(enabled=True))
    _consent_all(call, ["d", "p"])
    actions = call.send("d", Record(enabled=False))
    assert _recording_actions(actions) == [StopRecording(CID, "not_requested")]
    call.send("d", Record(enabled=True))
    assert call.room.recording_active
    actions = call.send("d", End())
    assert _recording_actions(actions) == [StopRecording(CID, "ended")]
    assert not call.room.recording_active


def _recording(call: Harness) -> None:
    call.send("d", Record(enabled=True))
    _consent_all(call, ["d", "p"])
    assert call.room.recording_active


def test_offers_to_the_recorder_reach_the_adapter_only_while_recording(call: Harness) -> None:
    actions = call.send("p", Offer(to=RECORDER_ID, sdp="v=0 patient"))
    assert errors(actions, "p") == ["unknown_peer"]
    _recording(call)
    actions = call.send("p", Offer(to=RECORDER_ID, sdp="v=0 patient"))
    assert actions == [ToRecorder(CID, RelayedOffer("pat-1", "v=0 patient"))]
    candidate = Candidate(to=RECORDER_ID, candidate="candidate:1 1 udp 1 1.2.3.4 9 typ host")
    (handed,) = call.send("d", candidate)
    assert isinstance(handed, ToRecorder) and handed.message.sender == "doc-1"
    # The recorder answers offers; nobody answers it.
    assert errors(call.send("p", Answer(to=RECORDER_ID, sdp="v=0")), "p") == ["invalid_field"]
    call.send("p", Consent(kind=ConsentKind.RECORDING, granted=False))
    assert errors(call.send("p", Offer(to=RECORDER_ID, sdp="v=0")), "p") == ["unknown_peer"]


def test_recorder_answers_reach_admitted_participants_while_recording(call: Harness) -> None:
    answer = RelayedAnswer(RECORDER_ID, "v=0 recorder")
    assert call.room.from_recorder("pat-1", answer, call.now) == []  # not recording
    _recording(call)
    assert call.room.from_recorder("pat-1", answer, call.now) == [Send("p", answer)]
    assert call.room.from_recorder("nobody", answer, call.now) == []
    call.drop("p")  # in grace: nothing to send it to
    assert call.room.from_recorder("pat-1", answer, call.now) == []


def test_the_recorder_id_is_reserved() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Identity(RECORDER_ID, Role.PHYSICIAN, "Dr Enregistreur", is_professional=True)


def test_a_recorded_participant_leaving_is_dropped_from_the_recording(call: Harness) -> None:
    call.enter("n", NURSE)
    _consent_all(call, ["n"])
    _recording(call)
    actions = call.send("n", Leave())
    assert DropFromRecording(CID, "nurse-1") in actions
    assert call.room.recording_active  # the others all consented: it goes on
    actions = call.send("p", Leave())
    assert DropFromRecording(CID, "pat-1") in actions


def test_without_a_recorder_nobody_may_ask_for_recording() -> None:
    h = Harness(RoomSettings(turn=TURN, recording_available=False))
    joined = of_type(h.enter("d", DOC), "d", Joined)[0]
    assert Permission.RECORD not in joined.permissions
    assert Permission.ADMIT in joined.permissions
    assert errors(h.send("d", Record(enabled=True)), "d") == ["forbidden"]
    assert not h.room.recording_requested


# --- Rate limit and bad frames --------------------------------------------------------------


def test_a_thousand_messages_a_second_closes_1008_and_spares_the_others(call: Harness) -> None:
    pongs = 0
    closed_at = None
    for i in range(1000):
        call.now = T0 + i / 1000
        actions = call.send("p", Ping(ref=i))
        pongs += len(of_type(actions, "p", Pong))
        if closes(actions):
            assert closes(actions) == {"p": (CloseCode.POLICY_VIOLATION, "rate_limited")}
            assert errors(actions, "p") == ["rate_limited"]
            assert ParticipantLeft("pat-1", LeaveReason.CLOSED) in sent(actions, "d")
            assert {a.detail.get("code") for a in audits(actions)} >= {"rate_limited"}
            closed_at = i
        elif closed_at is not None:
            assert actions == []  # later frames from the closed socket are dropped
    assert closed_at is not None and 200 <= closed_at <= 215  # burst 200 + refill 50/s
    assert pongs == closed_at
    # The doctor is unaffected.
    assert call.send("d", Ping(ref=1)) == [Send("d", Pong(ref=1))]
    assert call.room.member_state("doc-1") is MemberState.ADMITTED


@pytest.mark.parametrize(
    ("tokens", "last", "now"),
    [
        (200.0, T0, T0),
        (0.5, T0, T0 + 0.01),
        (0.0, T0, T0 - 5.0),  # the clock went back: no refill, no loss
        (199.5, T0, T0 + 100.0),  # refilled past the burst: capped
        (3.0, T0, T0 + 1e-9),
        (1.0, T0, math.nan),
    ],
)
def test_token_bucket_refills_as_min_max_would(tokens: float, last: float, now: float) -> None:
    bucket = _TokenBucket(rate=50.0, burst=200.0, tokens=tokens, last=last)
    refilled = min(200.0, tokens + max(0.0, now - last) * 50.0)
    assert bucket.take(now) is (refilled >= 1.0)
    expected = refilled - 1.0 if refilled >= 1.0 else refilled
    assert bucket.tokens == expected or (math.isnan(bucket.tokens) and math.isnan(expected))
    assert bucket.last == now or math.isnan(now)


def test_sustained_normal_rate_is_fine(call: Harness) -> None:
    for i in range(400):  # 40 messages/s for 10 s
        call.now = T0 + i / 40
        assert call.send("p", Ping()) == [Send("p", Pong())]


def test_malformed_json_closes_1007_and_spares_the_others(call: Harness) -> None:
    actions = call.raw("p", '{"type": "offer", "to": ')
    assert errors(actions, "p") == ["malformed_message"]
    assert closes(actions) == {"p": (CloseCode.INVALID_DATA, "malformed_message")}
    assert sent(actions, "d") == [ParticipantLeft("pat-1", LeaveReason.CLOSED)]
    assert call.send("d", Ping()) == [Send("d", Pong())]


def test_unknown_type_and_bad_fields_are_answered(call: Harness) -> None:
    actions = call.raw("p", '{"type":"screen_share"}')
    assert errors(actions, "p") == ["unknown_type"]
    assert closes(actions) == {}
    actions = call.raw("p", '{"type":"offer","to":"doc-1"}')
    (reply,) = of_type(actions, "p", ErrorReply)
    assert (reply.code, reply.message) == ("missing_field", "missing field 'sdp'")
    assert sent(actions, "d") == []
    actions = call.raw("p", json.dumps({"type": "offer", "to": "doc-1", "sdp": "v" * 40_000}))
    assert errors(actions, "p") == ["field_too_large"]
    actions = call.raw("p", '{"type":"chat","text":"\\udc00"}')  # lone surrogate
    assert errors(actions, "p") == ["invalid_field"]
    assert sent(actions, "d") == []
    assert call.room.member_state("pat-1") is MemberState.ADMITTED


def test_one_megabyte_frame_closes_1009(call: Harness) -> None:
    actions = call.raw("p", json.dumps({"type": "chat", "text": "x" * 1_000_000}))
    assert closes(actions) == {"p": (CloseCode.MESSAGE_TOO_BIG, "message_too_big")}
    assert sent(actions, "d") == [ParticipantLeft("pat-1", LeaveReason.CLOSED)]
    assert call.room.member_state("doc-1") is MemberState.ADMITTED


def test_handle_accepts_parsed_messages_with_the_same_rules(call: Harness) -> None:
    actions = call.room.handle("p", Offer(to="doc-1", sdp="v=0"), call.now)
    assert actions == [Send("d", RelayedOffer("pat-1", "v=0"))]
    assert call.room.handle("nobody", Ping(), call.now) == []


# --- Housekeeping ---------------------------------------------------------------------------


def test_tick_with_nothing_due_does_nothing(call: Harness) -> None:
    assert call.tick() == []
    assert call.room.next_deadline() is None


def test_room_is_idle_when_everyone_is_gone(call: Harness) -> None:
    assert not call.room.is_idle
    call.send("p", Leave())
    call.drop("d")
    assert not call.room.is_idle  # the doctor is in grace
    call.now += 30
    call.tick()
    assert call.room.is_idle
