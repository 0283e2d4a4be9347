"""The consultation room: waiting room, call membership, relay, resume, consent, recording.

A core without I/O in the style of aioquic's ``QuicConnection`` and h11 (DESIGN.md "Cores
without I/O"): the adapter feeds it what happened on the sockets together with ``now``, and
performs the ``Action`` list it gets back, in order. The room never reads the clock, the
environment or a socket; randomness (resume tokens) comes from an injectable function.

Adapter contract::

    room.connect(peer_id, identity, now)      # socket authenticated (join link or session)
    room.receive(peer_id, frame, now)         # every text frame, raw
    room.disconnect(peer_id, now)             # socket gone (any reason)
    room.tick(now)                            # at room.next_deadline() (grace expiry)

Each returns ``list[Action]``: ``Audit`` actions come first so the audit record is written
before any result is released (issue 6); then ``Send``/``Close``/``StartRecording``/
``StopRecording`` in the order they must happen. After the room emits ``Close(peer)`` it
has already forgotten that socket: the adapter's later ``disconnect(peer)`` is a no-op, and
the member behind it is gone (no grace period for a socket the server closed).

Rules (decisions documented here, see issue 6):

- Professionals (``identity.is_professional``) join the call directly; patients and guests
  wait until a professional in the call admits them.
- A dropped socket keeps its member for ``grace_seconds``: ``resume`` with the token from
  ``joined``/``waiting`` restores identity, place (waiting position or call) and consents;
  the others get ``ice_restart``. After the grace period the member is removed and the others
  get ``participant_left`` (reason ``timeout``).
- The waiting list survives a professional's disconnect: everyone connected (waiting
  patients included) gets ``host_reconnecting`` (then ``host_returned``), and waiters are never
  dropped for it — not even when that professional's grace period runs out, since another
  professional may still come. A non-professional's drop is not announced (their video just
  freezes): the others hear ``ice_restart`` on resume or ``participant_left`` on timeout.
- A second ``join`` by a participant already connected is ``already_joined`` (use
  ``resume``); a ``join`` while the old session is in grace discards it (``participant_left``
  reason ``rejoined``) and starts afresh — for a patient, back to the waiting room.
- ``end`` by the last admitted professional (dropped ones in their grace period count as
  present) ends the consultation for all; sent while another professional remains, it only
  makes the sender leave. ``leave`` never ends the consultation: the last professional can
  step out and another one can join and admit. Ended is final for this room.
- ``remove`` (professionals) works on admitted and waiting participants; a removed patient
  who comes back waits for admission again.
- ``offer``/``answer``/``candidate`` reach only the addressed participant, and only if both
  are admitted members of this room (anything else is ``unknown_peer``, whichever room the
  id belongs to).
- Recording runs exactly while a professional has asked for it and every admitted
  participant has consented to recording: it stops as soon as someone revokes or someone
  without that consent is admitted, and starts again once all have consented.
- The recorder is a server-side peer with the reserved id ``recorder``: while recording
  runs, each admitted participant offers it their media (``offer``/``candidate`` with
  ``to: "recorder"``, relayed to the adapter as ``ToRecorder``); its answers come back
  through ``from_recorder``. It is never a member: no tile, no consent of its own, not in
  participant lists. Outside a recording it is ``unknown_peer`` like any absent id. When a
  recorded participant leaves, ``DropFromRecording`` tells the adapter to close their media.
  With ``RoomSettings.recording_available`` false (no recorder on this node) nobody has the
  ``record`` permission, so no one can believe a call is recorded when it is not.
- A per-socket token bucket (``rate_per_second``, ``rate_burst``) closes floods with 1008.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Final, TypeAlias, TypeVar

from signaling.errors import (
    AlreadyJoined,
    CloseCode,
    ConsultationEnded,
    Forbidden,
    HelloRequired,
    InvalidField,
    InvalidState,
    PeerUnavailable,
    RateLimited,
    ResumeFailed,
    RoomFull,
    SignalingError,
    TooManyConnections,
    UnknownPeer,
    UnsupportedProtocol,
)
from signaling.frozen import quick_init
from signaling.messages import (
    CLIENT_MESSAGE_TYPES,
    DEFAULT_MAX_MESSAGE_BYTES,
    ID_PATTERN,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
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
    ParticipantInfo,
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
    parse_client_message,
)
from signaling.turn import (
    RtcConfiguration,
    TurnSettings,
    credentials_expire_at,
    rtc_configuration,
)

# --- Inputs --------------------------------------------------------------------------------

RECORDER_ID: Final = "recorder"
"""The server-side recording peer's participant id (reserved: no member may use it)."""

# Which roles may (must) be professionals. An interpreter may be a professional interpreter
# with an account or someone the family brings.
PROFESSIONAL_ROLES: Final[Mapping[Role, frozenset[bool]]] = {
    Role.PHYSICIAN: frozenset({True}),
    Role.NURSE: frozenset({True}),
    Role.SPECIALIST: frozenset({True}),
    Role.INTERPRETER: frozenset({True, False}),
    Role.PATIENT: frozenset({False}),
    Role.GUEST: frozenset({False}),
}


@dataclass(frozen=True)
class Identity:
    """Who is behind a socket, as the adapter authenticated it (session or join link)."""

    participant_id: str
    role: Role
    display_name: str
    is_professional: bool

    def __post_init__(self) -> None:
        if len(self.participant_id) > MAX_ID_CHARS or not ID_PATTERN.fullmatch(self.participant_id):
            raise ValueError("participant id must match [A-Za-z0-9_-]{1,64}")
        if self.participant_id == RECORDER_ID:
            raise ValueError(f"participant id {RECORDER_ID!r} is reserved for the recorder")
        if not 0 < len(self.display_name) <= MAX_NAME_CHARS:
            raise ValueError(f"display name must have 1 to {MAX_NAME_CHARS} characters")
        if self.is_professional not in PROFESSIONAL_ROLES[self.role]:
            raise ValueError(
                f"role {self.role.value} cannot have is_professional={self.is_professional}"
            )


@dataclass(frozen=True)
class RoomSettings:
    """Limits and timings of a room (from the configuration; never read by the room)."""

    max_participants: int = 6
    """Admitted members, dropped ones in grace included (a browser mesh stays small)."""
    max_waiting: int = 10
    max_connections: int = 32
    """Sockets on the room, joined or not (bounds what unjoined sockets can hold)."""
    grace_seconds: float = 30.0
    rate_per_second: float = 50.0
    """Sustained messages per second per socket; ICE trickling needs bursts, hence
    ``rate_burst``."""
    rate_burst: int = 200
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    turn: TurnSettings | None = None
    recording_available: bool = True
    """Whether this node runs a recorder; without one nobody gets the ``record`` permission
    (the adapter sets it from the configuration)."""


# --- Outputs -------------------------------------------------------------------------------


@quick_init  # built for every relayed frame (see signaling.frozen)
@dataclass(frozen=True)
class Send:
    """Send ``message`` on socket ``peer_id``."""

    peer_id: str
    message: ServerMessage


@quick_init
@dataclass(frozen=True)
class Close:
    """Close socket ``peer_id`` with a WebSocket close code and a short reason (RFC 6455
    §5.5.1 caps the reason at 123 bytes: ours are machine codes)."""

    peer_id: str
    code: int
    reason: str


class AuditKind(StrEnum):
    """Audit event kinds the room emits (the adapter maps them to the audit log)."""

    JOIN = "consultation.join"  # professional joined the call
    WAIT = "consultation.wait"  # entered the waiting room
    ADMIT = "consultation.admit"
    RESUME = "consultation.resume"
    DROP = "consultation.drop"  # socket lost; grace period starts
    LEAVE = "consultation.leave"  # detail.reason: left / timeout / closed / rejoined
    REMOVE = "consultation.remove"
    END = "consultation.end"
    CONSENT = "consultation.consent"
    RECORDING_REQUEST = "consultation.recording_request"
    RECORDING_START = "consultation.recording_start"
    RECORDING_STOP = "consultation.recording_stop"
    CHAT = "consultation.chat"  # metadata only, never the text
    REFUSED = "consultation.refused"  # detail.code: the error code answered


AuditValue: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True)
class Audit:
    """Record an audit event *before* performing the actions that follow it.

    ``actor`` did it, ``subject`` underwent it (admitted, removed); participant ids only, no
    names and no content.
    """

    kind: AuditKind
    consultation_id: str
    actor: str | None
    subject: str | None
    at: float
    detail: Mapping[str, AuditValue] = field(default_factory=dict)


@dataclass(frozen=True)
class StartRecording:
    """Start the server-side recording peer for these admitted participants."""

    consultation_id: str
    participants: tuple[str, ...]


@dataclass(frozen=True)
class StopRecording:
    """Stop the recording peer (``reason``: missing_consent, not_requested, no_participants,
    ended)."""

    consultation_id: str
    reason: str


@dataclass(frozen=True)
class ToRecorder:
    """Hand a participant's ``offer``/``candidate`` to the recording peer (``message.sender``
    is the participant)."""

    consultation_id: str
    message: RelayedOffer | RelayedCandidate


@dataclass(frozen=True)
class DropFromRecording:
    """A recorded participant left the call: close their media on the recording peer."""

    consultation_id: str
    participant_id: str


Action: TypeAlias = (
    Send | Close | Audit | StartRecording | StopRecording | ToRecorder | DropFromRecording
)

# --- States and transitions as tables (h11 style) ------------------------------------------


class RoomState(Enum):
    """The consultation as a whole."""

    OPEN = "open"
    ENDED = "ended"


class RoomEvent(Enum):
    END = "end"


ROOM_TRANSITIONS: Final[Mapping[tuple[RoomState, RoomEvent], RoomState]] = {
    (RoomState.OPEN, RoomEvent.END): RoomState.ENDED,
}


class MemberState(Enum):
    """Where a participant is."""

    WAITING = "waiting"
    ADMITTED = "admitted"


class MemberEvent(Enum):
    JOIN_DIRECT = "join directly"
    JOIN_WAITING = "join the waiting room"
    ADMIT = "be admitted"


MEMBER_TRANSITIONS: Final[Mapping[tuple[MemberState | None, MemberEvent], MemberState]] = {
    (None, MemberEvent.JOIN_DIRECT): MemberState.ADMITTED,
    (None, MemberEvent.JOIN_WAITING): MemberState.WAITING,
    (MemberState.WAITING, MemberEvent.ADMIT): MemberState.ADMITTED,
}
"""Leaving (leave, remove, timeout, closed, end) deletes the member from any state."""


class Presence(Enum):
    """Whether a member's socket is there."""

    CONNECTED = "connected"
    DROPPED = "dropped"  # in its grace period


class PresenceEvent(Enum):
    DROP = "drop"
    RESUME = "resume"


PRESENCE_TRANSITIONS: Final[Mapping[tuple[Presence, PresenceEvent], Presence]] = {
    (Presence.CONNECTED, PresenceEvent.DROP): Presence.DROPPED,
    (Presence.DROPPED, PresenceEvent.RESUME): Presence.CONNECTED,
    # The old socket may be half-open (not yet seen as closed): the new one takes over.
    (Presence.CONNECTED, PresenceEvent.RESUME): Presence.CONNECTED,
}


class Phase(Enum):
    """Where a socket is in the session, which decides the messages it may send."""

    AWAITING_HELLO = "awaiting hello"
    GREETED = "greeted"
    WAITING = "waiting"
    ADMITTED = "admitted"

    # Looked up in ALLOWED_MESSAGES on every frame; Enum.__hash__ is a Python-level call
    # (it hashes the name). Members are singletons compared by identity: hashing by identity
    # is equivalent, and C-level.
    __hash__ = object.__hash__


ALLOWED_MESSAGES: Final[Mapping[Phase, frozenset[type[ClientMessage]]]] = {
    Phase.AWAITING_HELLO: frozenset({Hello}),
    Phase.GREETED: frozenset({Join, Resume, Ping, Leave}),
    Phase.WAITING: frozenset({Ping, Leave, Consent, MediaState}),
    Phase.ADMITTED: frozenset(
        {
            Offer,
            Answer,
            Candidate,
            MediaState,
            Chat,
            Ping,
            Consent,
            Leave,
            RefreshTurn,
            Admit,
            Remove,
            End,
            Record,
        }
    ),
}

REQUIRED_PERMISSION: Final[Mapping[type[ClientMessage], Permission]] = {
    Offer: Permission.PUBLISH,
    Answer: Permission.PUBLISH,
    Candidate: Permission.PUBLISH,
    Chat: Permission.CHAT,
    Admit: Permission.ADMIT,
    Remove: Permission.REMOVE,
    End: Permission.END,
    Record: Permission.RECORD,
}

PROFESSIONAL_PERMISSIONS: Final = frozenset(Permission)
OTHER_PERMISSIONS: Final = frozenset({Permission.PUBLISH, Permission.CHAT})


def permissions_for(identity: Identity, *, recording: bool = True) -> frozenset[Permission]:
    """What this participant may do in a room (``recording``: whether a recorder exists)."""
    allowed = PROFESSIONAL_PERMISSIONS if identity.is_professional else OTHER_PERMISSIONS
    return allowed if recording else allowed - {Permission.RECORD}


_K = TypeVar("_K")
_E = TypeVar("_E")
_V = TypeVar("_V")


def _transition(table: Mapping[tuple[_K, _E], _V], state: _K, event: _E) -> _V:
    """The next state from a transition table; a missing entry is an invalid transition."""
    try:
        return table[(state, event)]
    except KeyError:
        raise InvalidState(f"cannot {event} from state {state}") from None


def _new_token() -> str:
    return secrets.token_urlsafe(24)


def _token_key(token: str) -> bytes:
    # Index by digest: the dict lookup then leaks nothing usable about stored tokens.
    return hashlib.sha256(token.encode()).digest()


# --- Mutable internals ---------------------------------------------------------------------


@dataclass
class _TokenBucket:
    rate: float
    burst: float
    tokens: float
    last: float

    def take(self, now: float) -> bool:
        # min(burst, tokens + max(0.0, elapsed) * rate), without the two builtin calls
        # (run on every frame); the same value, NaN included.
        elapsed = now - self.last
        tokens = self.tokens + (elapsed if elapsed > 0.0 else 0.0) * self.rate
        self.tokens = tokens if tokens < self.burst else self.burst
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(eq=False)
class _Member:
    identity: Identity
    state: MemberState
    presence: Presence
    peer_id: str | None
    resume_key: bytes
    drop_deadline: float | None = None
    audio: bool = True
    video: bool = True

    @property
    def participant_id(self) -> str:
        return self.identity.participant_id


@dataclass(eq=False)
class _Connection:
    peer_id: str
    identity: Identity
    bucket: _TokenBucket
    permitted: frozenset[type[ClientMessage]]
    """The message types ``permissions_for(identity)`` allows, looked up per message (a
    type hashes by identity; a Permission's hash is a Python-level Enum.__hash__ call)."""
    greeted: bool = False
    member: _Member | None = None


# --- The room ------------------------------------------------------------------------------


class Room:
    """One consultation's signaling state. Not thread-safe; one per consultation per node."""

    def __init__(
        self,
        consultation_id: str,
        settings: RoomSettings,
        *,
        new_token: Callable[[], str] = _new_token,
    ) -> None:
        if len(consultation_id) > MAX_ID_CHARS or not ID_PATTERN.fullmatch(consultation_id):
            raise ValueError("consultation id must match [A-Za-z0-9_-]{1,64}")
        self.consultation_id = consultation_id
        self.settings = settings
        self._new_token = new_token
        self._state = RoomState.OPEN
        self._connections: dict[str, _Connection] = {}
        self._members: dict[str, _Member] = {}  # insertion order = arrival order
        self._resume_index: dict[bytes, str] = {}
        self._consents: dict[str, dict[ConsentKind, ConsentRecord]] = {}
        self._recording_requested = False
        self._recording_active = False
        self._out: list[Action] = []
        self._out_audited = False  # whether _out holds an Audit (to be moved first)
        # No grace period ends before this (may be early, never late): the per-frame
        # expiry check is then one comparison.
        self._next_expiry = math.inf

    # --- Inspection (read-only views for the adapter and tests) ----------------------------

    @property
    def state(self) -> RoomState:
        """``OPEN`` or ``ENDED``."""
        return self._state

    @property
    def recording_active(self) -> bool:
        """Whether the recording peer should be running."""
        return self._recording_active

    @property
    def recording_requested(self) -> bool:
        """Whether a professional asked for recording."""
        return self._recording_requested

    @property
    def is_idle(self) -> bool:
        """No socket and no member: the adapter may discard the room."""
        return not self._connections and not self._members

    @property
    def connection_count(self) -> int:
        """Sockets currently attached to the room."""
        return len(self._connections)

    def participants(self) -> tuple[ParticipantInfo, ...]:
        """Admitted members (dropped ones included, ``connected=False``)."""
        return tuple(self._info(m) for m in self._members_in(MemberState.ADMITTED))

    def waiting(self) -> tuple[ParticipantInfo, ...]:
        """The waiting room, in arrival order."""
        return tuple(self._info(m) for m in self._members_in(MemberState.WAITING))

    def member_state(self, participant_id: str) -> MemberState | None:
        """Where a participant is, or ``None`` if not a member."""
        member = self._members.get(participant_id)
        return None if member is None else member.state

    def presence(self, participant_id: str) -> Presence | None:
        """Whether a member's socket is there, or ``None`` if not a member."""
        member = self._members.get(participant_id)
        return None if member is None else member.presence

    def consent(self, participant_id: str, kind: ConsentKind) -> ConsentRecord | None:
        """A participant's latest answer to a consent question."""
        return self._consents.get(participant_id, {}).get(kind)

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (a grace period ends), or ``None``."""
        deadlines = [m.drop_deadline for m in self._members.values() if m.drop_deadline is not None]
        return min(deadlines, default=None)

    # --- Inputs ----------------------------------------------------------------------------

    def connect(self, peer_id: str, identity: Identity, now: float) -> list[Action]:
        """A socket authenticated as ``identity`` opened; it must now send ``hello``."""
        if peer_id in self._connections:
            raise ValueError(f"peer {peer_id!r} is already connected")
        self._expire(now)
        error: SignalingError | None = None
        if self._state is RoomState.ENDED:
            error = ConsultationEnded(
                "the consultation has ended", human="Cette consultation est terminée."
            )
        elif len(self._connections) >= self.settings.max_connections:
            error = TooManyConnections("too many sockets on this consultation")
        if error is not None:
            self._refuse(peer_id, identity.participant_id, error, None, now)
        else:
            bucket = _TokenBucket(
                rate=self.settings.rate_per_second,
                burst=float(self.settings.rate_burst),
                tokens=float(self.settings.rate_burst),
                last=now,
            )
            permissions = permissions_for(identity, recording=self.settings.recording_available)
            permitted = frozenset(
                kind
                for kind in CLIENT_MESSAGE_TYPES.values()
                if kind not in REQUIRED_PERMISSION or REQUIRED_PERMISSION[kind] in permissions
            )
            self._connections[peer_id] = _Connection(peer_id, identity, bucket, permitted)
        return self._flush()

    def receive(self, peer_id: str, frame: str | bytes, now: float) -> list[Action]:
        """A raw text frame arrived: rate limit, parse, then handle it."""
        if now >= self._next_expiry:  # _expire's own first test, without the call per frame
            self._expire(now)
        conn = self._connections.get(peer_id)
        if conn is not None:  # late frames from a socket we closed are dropped
            if not conn.bucket.take(now):
                self._fail(conn, RateLimited("too many messages"), None, now)
            else:
                try:
                    message = parse_client_message(frame, max_bytes=self.settings.max_message_bytes)
                except SignalingError as exc:
                    self._fail(conn, exc, None, now)
                else:
                    self._dispatch(conn, message, now)
        return self._flush()

    def handle(self, peer_id: str, message: ClientMessage, now: float) -> list[Action]:
        """An already parsed message arrived (rate limited like ``receive``)."""
        self._expire(now)
        conn = self._connections.get(peer_id)
        if conn is not None:
            if not conn.bucket.take(now):
                self._fail(conn, RateLimited("too many messages"), message.TYPE, now)
            else:
                self._dispatch(conn, message, now)
        return self._flush()

    def disconnect(self, peer_id: str, now: float) -> list[Action]:
        """The socket closed or failed. A member keeps its place for the grace period."""
        self._expire(now)
        conn = self._connections.pop(peer_id, None)
        member = None if conn is None else conn.member
        if member is not None:
            member.presence = _transition(PRESENCE_TRANSITIONS, member.presence, PresenceEvent.DROP)
            member.peer_id = None
            until = now + self.settings.grace_seconds
            member.drop_deadline = until
            self._next_expiry = min(self._next_expiry, until)
            self._audit(AuditKind.DROP, member.participant_id, None, now, {"grace_until": until})
            if member.identity.is_professional:
                for other in self._connected_members(exclude=member):
                    self._send(other, HostReconnecting(member.participant_id, until))
        return self._flush()

    def tick(self, now: float) -> list[Action]:
        """Time passed: remove members whose grace period ended."""
        self._expire(now)
        return self._flush()

    def from_recorder(
        self, to: str, message: RelayedAnswer | RelayedCandidate | ErrorReply, now: float
    ) -> list[Action]:
        """The recording peer answers participant ``to``. Dropped when the recording stopped
        or the participant is no longer in the call (the recorder works asynchronously, so
        its answer can arrive late: that is not an error)."""
        self._expire(now)
        target = self._members.get(to)
        if (
            self._recording_active
            and target is not None
            and target.state is MemberState.ADMITTED
            and target.peer_id is not None
        ):
            self._send_to_peer(target.peer_id, message)
        return self._flush()

    # --- Dispatch --------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection, message: ClientMessage, now: float) -> None:
        kind = type(message)
        try:
            phase = self._phase(conn)
            if kind not in ALLOWED_MESSAGES[phase]:
                if phase is Phase.AWAITING_HELLO:
                    raise HelloRequired("the first message must be 'hello'")
                raise InvalidState(f"'{message.TYPE}' is not allowed while {phase.value}")
            if kind not in conn.permitted:
                needed = REQUIRED_PERMISSION[kind]
                raise Forbidden(f"'{message.TYPE}' needs the '{needed.value}' permission")
            # Handlers validate everything before emitting or mutating anything, so an error
            # raised by one leaves the room as it was.
            _HANDLERS[kind](self, conn, message, now)
        except SignalingError as exc:
            self._fail(conn, exc, message.TYPE, now)

    # --- Handlers (one per client message type, see _HANDLERS) -----------------------------

    def _on_offer(self, conn: _Connection, message: Offer, now: float) -> None:
        relayed = RelayedOffer(conn.identity.participant_id, message.sdp)
        self._relay(conn, message.to, relayed)

    def _on_answer(self, conn: _Connection, message: Answer, now: float) -> None:
        relayed = RelayedAnswer(conn.identity.participant_id, message.sdp)
        self._relay(conn, message.to, relayed)

    def _on_candidate(self, conn: _Connection, message: Candidate, now: float) -> None:
        relayed = RelayedCandidate(
            conn.identity.participant_id,
            message.candidate,
            message.sdp_mid,
            message.sdp_mline_index,
            message.username_fragment,
        )
        self._relay(conn, message.to, relayed)

    def _on_ping(self, conn: _Connection, message: Ping, now: float) -> None:
        self._send_to_peer(conn.peer_id, Pong(ref=message.ref))

    def _on_refresh_turn(self, conn: _Connection, message: RefreshTurn, now: float) -> None:
        rtc, expires_at = self._rtc(conn.identity.participant_id, now)
        self._send_to_peer(conn.peer_id, TurnCredentials(rtc, expires_at))

    def _on_hello(self, conn: _Connection, message: Hello, now: float) -> None:
        if message.protocol not in SUPPORTED_PROTOCOLS:
            raise UnsupportedProtocol(
                f"protocol {message.protocol} is not supported; this server speaks "
                f"{PROTOCOL_VERSION}",
                human="Cette page n'est plus à jour : rechargez-la pour rejoindre la consultation.",
            )
        conn.greeted = True
        self._send_to_peer(conn.peer_id, Welcome(PROTOCOL_VERSION, self.settings.max_message_bytes))

    def _on_join(self, conn: _Connection, message: Join, now: float) -> None:
        identity = conn.identity
        pid = identity.participant_id
        previous = self._members.get(pid)
        if previous is not None and previous.presence is Presence.CONNECTED:
            raise AlreadyJoined(
                "this participant is already connected on another socket; send 'resume'",
                human="Vous êtes déjà connecté(e) à cette consultation dans une autre fenêtre.",
            )
        direct = identity.is_professional
        if direct:
            self._check_capacity(MemberState.ADMITTED, self.settings.max_participants, previous)
        else:
            self._check_capacity(MemberState.WAITING, self.settings.max_waiting, previous)
        if previous is not None:
            # Back after a crash without the resume token: the old session is discarded
            # and this is a fresh arrival (a patient waits to be admitted again).
            self._remove_member(previous, LeaveReason.REJOINED, now, actor=pid)
        event = MemberEvent.JOIN_DIRECT if direct else MemberEvent.JOIN_WAITING
        token = self._new_token()
        member = _Member(
            identity=identity,
            state=_transition(MEMBER_TRANSITIONS, None, event),
            presence=Presence.CONNECTED,
            peer_id=conn.peer_id,
            resume_key=_token_key(token),
        )
        self._members[pid] = member
        self._resume_index[member.resume_key] = pid
        conn.member = member
        if member.state is MemberState.ADMITTED:
            self._audit(AuditKind.JOIN, pid, None, now)
            self._update_recording(now, exclude=member)
            self._send(member, self._joined(member, token, now, resumed=False))
            self._send(member, WaitingList(self.waiting()))
            for other in self._admitted_connected(exclude=member):
                self._send(other, ParticipantJoined(self._info(member)))
        else:
            self._audit(AuditKind.WAIT, pid, None, now)
            self._send(member, self._waiting(member, token, resumed=False))
            self._send_waiting_list()

    def _on_resume(self, conn: _Connection, message: Resume, now: float) -> None:
        pid = conn.identity.participant_id
        key = _token_key(message.token)
        member = self._members.get(self._resume_index.get(key, ""))
        # A token is only good for the identity it was issued to (a leaked token alone does
        # not let someone else take a patient's place).
        if member is None or member.participant_id != pid:
            raise ResumeFailed("unknown or expired resume token; send 'join'")
        was_dropped = member.presence is Presence.DROPPED
        if member.peer_id is not None:
            old = self._connections.pop(member.peer_id, None)
            if old is not None:
                old.member = None
                self._out.append(Close(old.peer_id, CloseCode.SESSION_REPLACED, "session_replaced"))
        member.presence = _transition(PRESENCE_TRANSITIONS, member.presence, PresenceEvent.RESUME)
        member.peer_id = conn.peer_id
        member.drop_deadline = None
        conn.member = member
        # Rotate the token so a copy of the old one cannot be replayed.
        del self._resume_index[key]
        token = self._new_token()
        member.resume_key = _token_key(token)
        self._resume_index[member.resume_key] = pid
        self._audit(AuditKind.RESUME, pid, None, now)
        if member.state is MemberState.ADMITTED:
            self._send(member, self._joined(member, token, now, resumed=True))
            if member.identity.is_professional:
                self._send(member, WaitingList(self.waiting()))
            for other in self._admitted_connected(exclude=member):
                self._send(other, IceRestart(pid))
        else:
            self._send(member, self._waiting(member, token, resumed=True))
        if was_dropped and member.identity.is_professional:
            for other in self._connected_members(exclude=member):
                self._send(other, HostReturned(pid))

    def _on_leave(self, conn: _Connection, message: Leave, now: float) -> None:
        self._close_connection(conn, CloseCode.NORMAL, "left", now, LeaveReason.LEFT)

    def _on_end(self, conn: _Connection, message: End, now: float) -> None:
        member = conn.member
        assert member is not None  # only admitted sockets may send `end` (ALLOWED_MESSAGES)
        others = [
            m
            for m in self._members_in(MemberState.ADMITTED)
            if m is not member and m.identity.is_professional
        ]
        if others:
            self._close_connection(conn, CloseCode.NORMAL, "left", now, LeaveReason.LEFT)
            return
        self._state = _transition(ROOM_TRANSITIONS, self._state, RoomEvent.END)
        self._audit(AuditKind.END, member.participant_id, None, now)
        if self._recording_active:
            self._recording_active = False
            self._audit(AuditKind.RECORDING_STOP, None, None, now, {"reason": "ended"})
            self._out.append(StopRecording(self.consultation_id, "ended"))
        ended = Ended(EndReason.ENDED_BY_PROFESSIONAL, by=member.participant_id)
        for peer_id in list(self._connections):
            self._send_to_peer(peer_id, ended)
            self._out.append(Close(peer_id, CloseCode.NORMAL, "consultation_ended"))
        self._connections.clear()
        self._members.clear()
        self._resume_index.clear()
        self._recording_requested = False

    def _on_admit(self, conn: _Connection, message: Admit, now: float) -> None:
        target = self._members.get(message.participant_id)
        if target is None or target.state is not MemberState.WAITING:
            raise UnknownPeer(f"nobody with id '{message.participant_id}' is waiting")
        if target.peer_id is None:
            raise PeerUnavailable("this participant's connection dropped; wait for them")
        self._check_capacity(MemberState.ADMITTED, self.settings.max_participants, None)
        target.state = _transition(MEMBER_TRANSITIONS, target.state, MemberEvent.ADMIT)
        by = conn.identity.participant_id
        self._audit(AuditKind.ADMIT, by, target.participant_id, now)
        self._update_recording(now, exclude=target)
        rtc, expires_at = self._rtc(target.participant_id, now)
        admitted = Admitted(
            by=by,
            participants=self._others(target),
            permissions=self._permissions(target.identity),
            rtc_configuration=rtc,
            turn_expires_at=expires_at,
            recording=self._recording_active,
        )
        self._send(target, admitted)
        for other in self._admitted_connected(exclude=target):
            self._send(other, ParticipantJoined(self._info(target)))
        self._send_waiting_list()

    def _on_remove(self, conn: _Connection, message: Remove, now: float) -> None:
        by = conn.identity.participant_id
        if message.participant_id == by:
            raise InvalidField("participant_id", "must not be yourself (send 'leave')")
        target = self._members.get(message.participant_id)
        if target is None:
            raise UnknownPeer(f"no participant '{message.participant_id}' in this consultation")
        if target.peer_id is not None:
            target_conn = self._connections.pop(target.peer_id)
            target_conn.member = None
            self._send_to_peer(target.peer_id, Removed(by=by))
            self._out.append(Close(target.peer_id, CloseCode.REMOVED, "removed"))
            target.peer_id = None
        self._remove_member(target, LeaveReason.REMOVED, now, actor=by)

    def _relay(
        self, conn: _Connection, to: str, message: RelayedOffer | RelayedAnswer | RelayedCandidate
    ) -> None:
        if to == RECORDER_ID and self._recording_active:
            if isinstance(message, RelayedAnswer):
                raise InvalidField("to", "the recorder answers offers; it never sends one")
            self._out.append(ToRecorder(self.consultation_id, message))
            return
        target = self._members.get(to)
        if target is None or target.state is not MemberState.ADMITTED or target is conn.member:
            raise UnknownPeer(f"no admitted participant '{to}' in this consultation")
        if target.peer_id is None:
            raise PeerUnavailable(f"participant '{to}' is reconnecting")
        self._out.append(Send(target.peer_id, message))

    def _on_media_state(self, conn: _Connection, message: MediaState, now: float) -> None:
        member = conn.member
        assert member is not None
        member.audio, member.video = message.audio, message.video
        if member.state is MemberState.ADMITTED:
            relayed = RelayedMediaState(member.participant_id, message.audio, message.video)
            for other in self._admitted_connected(exclude=member):
                self._send(other, relayed)

    def _on_chat(self, conn: _Connection, message: Chat, now: float) -> None:
        pid = conn.identity.participant_id
        self._audit(AuditKind.CHAT, pid, None, now, {"chars": len(message.text)})
        line = RelayedChat(sender=pid, text=message.text, at=now)
        for member in self._admitted_connected():
            self._send(member, line)

    def _on_consent(self, conn: _Connection, message: Consent, now: float) -> None:
        member = conn.member
        assert member is not None
        pid = member.participant_id
        record = ConsentRecord(granted=message.granted, at=now)
        self._consents.setdefault(pid, {})[message.kind] = record
        self._audit(
            AuditKind.CONSENT,
            pid,
            None,
            now,
            {"kind": message.kind.value, "granted": message.granted},
        )
        consents = self._consents[pid]
        state = ConsentState(
            pid, consents.get(ConsentKind.VIDEO), consents.get(ConsentKind.RECORDING)
        )
        self._send(member, state)
        # Waiting patients are visible to professionals only.
        audience = (
            self._admitted_connected(exclude=member)
            if member.state is MemberState.ADMITTED
            else self._professionals_connected()
        )
        for other in audience:
            self._send(other, state)
        self._update_recording(now)

    def _on_record(self, conn: _Connection, message: Record, now: float) -> None:
        self._recording_requested = message.enabled
        self._audit(
            AuditKind.RECORDING_REQUEST,
            conn.identity.participant_id,
            None,
            now,
            {"enabled": message.enabled},
        )
        self._update_recording(now, announce=True)

    # --- Membership helpers ----------------------------------------------------------------

    def _check_capacity(self, state: MemberState, limit: int, replacing: _Member | None) -> None:
        count = sum(1 for m in self._members_in(state) if m is not replacing)
        if count >= limit:
            where = "call" if state is MemberState.ADMITTED else "waiting room"
            raise RoomFull(
                f"the {where} is full ({limit})",
                human="La consultation a atteint le nombre maximal de participants.",
            )

    def _remove_member(
        self, member: _Member, reason: LeaveReason, now: float, actor: str | None
    ) -> None:
        """Forget a member whose socket (if any) the caller already closed or lost."""
        pid = member.participant_id
        del self._members[pid]
        self._resume_index.pop(member.resume_key, None)
        if reason is LeaveReason.REMOVED:
            self._audit(AuditKind.REMOVE, actor, pid, now)
        else:
            self._audit(AuditKind.LEAVE, pid, None, now, {"reason": reason.value})
        if member.state is MemberState.ADMITTED:
            for other in self._admitted_connected():
                self._send(other, ParticipantLeft(pid, reason))
            if self._recording_active:
                self._out.append(DropFromRecording(self.consultation_id, pid))
        else:
            self._send_waiting_list()
        self._update_recording(now)

    def _close_connection(
        self, conn: _Connection, code: int, reason: str, now: float, leave: LeaveReason
    ) -> None:
        """Close a socket on our side; its member (if any) leaves at once, without grace."""
        self._out.append(Close(conn.peer_id, code, reason))
        del self._connections[conn.peer_id]
        member = conn.member
        if member is not None:
            conn.member = None
            member.peer_id = None
            self._remove_member(member, leave, now, actor=None)

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return  # the common case: called on every frame
        for member in list(self._members.values()):
            if member.drop_deadline is not None and member.drop_deadline <= now:
                self._remove_member(member, LeaveReason.TIMEOUT, now, actor=None)
        self._next_expiry = min(
            (m.drop_deadline for m in self._members.values() if m.drop_deadline is not None),
            default=math.inf,
        )

    def _update_recording(
        self, now: float, *, exclude: _Member | None = None, announce: bool = False
    ) -> None:
        """Recording runs iff requested and every admitted member consented to it."""
        admitted = list(self._members_in(MemberState.ADMITTED))
        missing = tuple(
            m.participant_id
            for m in admitted
            if not self._granted(m.participant_id, ConsentKind.RECORDING)
        )
        desired = self._recording_requested and bool(admitted) and not missing
        if desired != self._recording_active:
            self._recording_active = desired
            announce = True
            if desired:
                self._audit(AuditKind.RECORDING_START, None, None, now)
                ids = tuple(m.participant_id for m in admitted)
                self._out.append(StartRecording(self.consultation_id, ids))
            else:
                if not self._recording_requested:
                    reason = "not_requested"
                elif not admitted:
                    reason = "no_participants"
                else:
                    reason = "missing_consent"
                self._audit(AuditKind.RECORDING_STOP, None, None, now, {"reason": reason})
                self._out.append(StopRecording(self.consultation_id, reason))
        if announce:
            state = RecordingState(self._recording_requested, self._recording_active, missing)
            for member in self._admitted_connected(exclude=exclude):
                self._send(member, state)

    def _granted(self, participant_id: str, kind: ConsentKind) -> bool:
        record = self._consents.get(participant_id, {}).get(kind)
        return record is not None and record.granted

    # --- Views and builders ----------------------------------------------------------------

    def _phase(self, conn: _Connection) -> Phase:
        if not conn.greeted:
            return Phase.AWAITING_HELLO
        if conn.member is None:
            return Phase.GREETED
        if conn.member.state is MemberState.WAITING:
            return Phase.WAITING
        return Phase.ADMITTED

    def _members_in(self, state: MemberState) -> Iterator[_Member]:
        return (m for m in self._members.values() if m.state is state)

    def _admitted_connected(self, exclude: _Member | None = None) -> list[_Member]:
        return [
            m
            for m in self._members.values()
            if m.state is MemberState.ADMITTED and m.peer_id is not None and m is not exclude
        ]

    def _professionals_connected(self) -> list[_Member]:
        return [m for m in self._admitted_connected() if m.identity.is_professional]

    def _connected_members(self, exclude: _Member | None = None) -> list[_Member]:
        return [m for m in self._members.values() if m.peer_id is not None and m is not exclude]

    def _info(self, member: _Member) -> ParticipantInfo:
        consents = self._consents.get(member.participant_id, {})
        identity = member.identity
        return ParticipantInfo(
            participant_id=identity.participant_id,
            role=identity.role,
            display_name=identity.display_name,
            is_professional=identity.is_professional,
            audio=member.audio,
            video=member.video,
            connected=member.presence is Presence.CONNECTED,
            video_consent=consents.get(ConsentKind.VIDEO),
            recording_consent=consents.get(ConsentKind.RECORDING),
        )

    def _others(self, member: _Member) -> tuple[ParticipantInfo, ...]:
        return tuple(
            self._info(m) for m in self._members_in(MemberState.ADMITTED) if m is not member
        )

    def _permissions(self, identity: Identity) -> tuple[Permission, ...]:
        allowed = permissions_for(identity, recording=self.settings.recording_available)
        return tuple(p for p in Permission if p in allowed)

    def _rtc(self, participant_id: str, now: float) -> tuple[RtcConfiguration, int | None]:
        turn = self.settings.turn
        rtc = rtc_configuration(turn, self.consultation_id, participant_id, now)
        return rtc, None if turn is None else credentials_expire_at(now, turn)

    def _joined(self, member: _Member, token: str, now: float, *, resumed: bool) -> Joined:
        rtc, expires_at = self._rtc(member.participant_id, now)
        return Joined(
            you=self._info(member),
            participants=self._others(member),
            permissions=self._permissions(member.identity),
            rtc_configuration=rtc,
            turn_expires_at=expires_at,
            resume_token=token,
            grace_seconds=self.settings.grace_seconds,
            recording=self._recording_active,
            resumed=resumed,
        )

    def _waiting(self, member: _Member, token: str, *, resumed: bool) -> Waiting:
        return Waiting(
            you=self._info(member),
            resume_token=token,
            grace_seconds=self.settings.grace_seconds,
            host_present=bool(self._professionals_connected()),
            resumed=resumed,
        )

    # --- Output helpers --------------------------------------------------------------------

    def _send(self, member: _Member, message: ServerMessage) -> None:
        if member.peer_id is not None:
            self._out.append(Send(member.peer_id, message))

    def _send_to_peer(self, peer_id: str, message: ServerMessage) -> None:
        self._out.append(Send(peer_id, message))

    def _send_waiting_list(self) -> None:
        waiting = WaitingList(self.waiting())
        for member in self._professionals_connected():
            self._send(member, waiting)

    def _audit(
        self,
        kind: AuditKind,
        actor: str | None,
        subject: str | None,
        now: float,
        detail: Mapping[str, AuditValue] | None = None,
    ) -> None:
        self._out.append(Audit(kind, self.consultation_id, actor, subject, now, dict(detail or {})))
        self._out_audited = True

    def _fail(
        self, conn: _Connection, error: SignalingError, message_type: str | None, now: float
    ) -> None:
        self._refuse(conn.peer_id, conn.identity.participant_id, error, message_type, now)
        if error.ws_close is not None:
            # _refuse already emitted the Close; forget the socket and its member.
            del self._connections[conn.peer_id]
            member = conn.member
            if member is not None:
                conn.member = None
                member.peer_id = None
                self._remove_member(member, LeaveReason.CLOSED, now, actor=None)

    def _refuse(
        self,
        peer_id: str,
        participant_id: str,
        error: SignalingError,
        message_type: str | None,
        now: float,
    ) -> None:
        self._audit(
            AuditKind.REFUSED,
            participant_id,
            None,
            now,
            {"code": error.code, "message_type": message_type},
        )
        self._send_to_peer(peer_id, ErrorReply(error.code, error.message, error.human))
        if error.ws_close is not None:
            self._out.append(Close(peer_id, error.ws_close, error.code))

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        if not self._out_audited:
            return out
        self._out_audited = False
        audits = [a for a in out if isinstance(a, Audit)]
        return audits + [a for a in out if not isinstance(a, Audit)]


_Handler: TypeAlias = Callable[[Room, _Connection, Any, float], None]

_HANDLERS: Final[Mapping[type[ClientMessage], _Handler]] = {
    # The relay first: a dict lookup, not a chain of isinstance tests.
    Offer: Room._on_offer,
    Answer: Room._on_answer,
    Candidate: Room._on_candidate,
    Hello: Room._on_hello,
    Join: Room._on_join,
    Resume: Room._on_resume,
    Leave: Room._on_leave,
    MediaState: Room._on_media_state,
    Chat: Room._on_chat,
    Ping: Room._on_ping,
    Consent: Room._on_consent,
    Admit: Room._on_admit,
    Remove: Room._on_remove,
    End: Room._on_end,
    RefreshTurn: Room._on_refresh_turn,
    Record: Room._on_record,
}
if set(_HANDLERS) != set(CLIENT_MESSAGE_TYPES.values()):  # pragma: no cover
    raise RuntimeError("every client message type needs exactly one handler")
